"""TeaCache's indicators in a block graph (Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video
Diffusion Model", section 3.3): the values of block 0 whose change between steps predicts the output's."""

from __future__ import annotations

import re

import torch.fx as fx

from .nodes import is_tensor, normalise, shape
from .streams import external_reads


def indicators(d) -> dict[str, fx.Node]:
    """TeaCache's indicators. "modulated_input": the tensor block 0 feeds into its first attention module
    (norm1(h) * (1 + scale) + shift). "timestep": the timestep embedding that block 0 reads (temb / e0)."""
    found: dict[str, fx.Node] = {}
    u0 = d.units[0]
    inside = d.nodes[u0.start:u0.stop]
    unit_set = set(inside)
    for n in inside:
        stack = n.meta.get("nn_module_stack") or {}
        paths = [normalise(p) for p, _ in stack.values()]
        if any(re.search(r"\.(attn\w*|attention\w*|self_attn\w*)$", p) for p in paths):
            cands = [a for a in n.all_input_nodes if a in unit_set and is_tensor(a)
                     and not any(re.search(r"\.(attn\w*|attention\w*|self_attn\w*)$", normalise(p))
                                 for p, _ in (a.meta.get("nn_module_stack") or {}).values())]
            if cands:
                found["modulated_input"] = cands[0]
                break
    if d.timestep is not None:
        ts = d.placeholders[d.timestep]
        dep = _descendants(ts)
        for a in external_reads(inside, unit_set):
            if a in dep and is_tensor(a) and len(shape(a) or ()) >= 2:
                found["timestep"] = a
                break
    return found


def _descendants(root: fx.Node) -> set[fx.Node]:
    out, todo = set(), [root]
    while todo:
        n = todo.pop()
        for u in n.users:
            if u not in out:
                out.add(u)
                todo.append(u)
    return out
