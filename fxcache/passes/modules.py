"""Sites inside blocks: the attention and MLP submodules of each transformer block, found from the graph alone.

Every op Dynamo traces carries the stack of modules it ran in (`nn_module_stack`). Inside block `blocks.3` the
ops of `blocks.3.attn1` form one group; the group's *outputs* are the tensors the rest of the graph reads from it
(the attention output before the block applies its gate and residual add). Replacing those outputs with cached or
forecast values removes the whole group from a variant, while the norms, the timestep modulation and the gates,
which live outside the submodule, are still computed with the current step's inputs.

Roles, from the module class and the data it reads (never from model names):
- "attn": an attention module over the block's own streams (self-attention; joint text+image attention of MMDiT
  blocks, whose text stream is carried from block to block);
- "cross": an attention module that also reads the text embedding from outside the carried streams;
- "mlp": a feed-forward module.
`temporal` marks modules of a temporal block list or with "temp" in their name (Latte, Open-Sora style models).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.fx as fx

from ..plan import Site
from .nodes import is_param_like, is_tensor, normalise

_ATTENTION = re.compile(r"attention|attn", re.I)
_MLP = re.compile(r"feedforward|mlp|ffn", re.I)


@dataclass
class ModuleSite:
    site: Site
    path: str  # e.g. "blocks.3.attn1"
    module_type: str  # e.g. "WanAttention"
    role: str  # "attn" | "cross" | "mlp"
    temporal: bool
    nodes: frozenset  # the ops computed inside the module
    outputs: list  # the tensors the rest of the graph reads from it, in graph order

    def __str__(self) -> str:
        return f"{self.path}({self.role}{', temporal' if self.temporal else ''})"


def _child(node: fx.Node) -> tuple[str, str] | None:
    """(path, class name) of the module directly inside the outermost indexed module (the block) around `node`."""
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    for k, (path, _) in enumerate(stack):
        if re.match(r"^.*\.\d+$", normalise(path)):
            if k + 1 < len(stack):
                child, mtype = stack[k + 1]
                return normalise(child), getattr(mtype, "__qualname__", str(mtype))
            return None
    return None


def _descendants(roots, limit: set) -> set:
    out, todo = set(), list(roots)
    while todo:
        n = todo.pop()
        for u in n.users:
            if u not in out and u in limit:
                out.add(u)
                todo.append(u)
    return out


def find_module_sites(d) -> dict[Site, ModuleSite]:
    """Attention and MLP sites of every unit of Discovery `d` whose outputs are tensors a variant can replace."""
    encoder = d.placeholders[d.encoder] if d.encoder is not None else None
    from_text = _descendants([encoder], set(d.nodes)) | {encoder} if encoder is not None else set()
    found: dict[Site, ModuleSite] = {}
    for k, unit in enumerate(d.units):
        inside = d.nodes[unit.start:unit.stop]
        unit_set = set(inside)
        from_streams = _descendants(d.streams[k], unit_set) | set(d.streams[k])
        groups: dict[str, tuple[str, list]] = {}
        for n in inside:
            c = _child(n)
            if c is not None and n.op not in ("placeholder", "output", "get_attr"):
                groups.setdefault(c[0], (c[1], []))[1].append(n)
        for path, (mtype, members) in groups.items():
            if _ATTENTION.search(mtype):
                role = "attn"
            elif _MLP.search(mtype):
                role = "mlp"
            else:
                continue
            member_set = frozenset(members)
            outputs = [n for n in members if any(u not in member_set for u in n.users) and not d.recomputable(n)]
            if not outputs or not all(is_tensor(n) for n in outputs):
                continue
            reads = [a for n in members for a in n.all_input_nodes if a not in member_set]
            if role == "attn" and any(is_tensor(a) and a in from_text and a not in from_streams
                                      and not (a.op == "placeholder" and is_param_like(a)) for a in reads):
                role = "cross"
            local = path.rsplit(".", 1)[-1]
            site = Site("module", k, k + 1, local)
            found[site] = ModuleSite(site, path, mtype, role,
                                     "temporal" in unit.list_name or "temp" in local.lower(),
                                     member_set, outputs)
    return found


def sites_with(d, roles=("attn", "cross", "mlp"), temporal: bool | None = None) -> list[Site]:
    """The module sites of `d` with one of `roles` (and, if given, that temporal flag), in block order."""
    return [s for s, m in d.modules.items() if m.role in roles and (temporal is None or m.temporal == temporal)]

