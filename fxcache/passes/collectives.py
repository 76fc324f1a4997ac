"""Collectives in a Dynamo graph: a model sharded over several ranks (context parallelism).

diffusers' context parallelism (`enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))`) shards the
sequence with forward hooks: `x.chunk(N, dim)[rank]` on the way in, functional collectives (`_c10d_functional.*`
and `wait_tensor`) in every attention, an all-gather on the way out. Dynamo traces the hooks into the graph the
backend receives, so the graph itself says which process groups it spans (`groups`).

Two facts the rest of fxcache builds on:
- `hoist_shards`: where the split of a carried stream runs in the first block's own hook (Wan's `blocks.0` entry
  of its `_cp_plan`), its nodes are attributed to that block. They are moved out of it (before the block), so that
  a residual site is taken between sharded tensors on both sides, never between an unsharded input and a sharded
  output.
- `all_reduce_sum`: a value every rank must agree on (a distance's sums, the finiteness of a cached value) is summed
  over the groups inside the variant, so that every rank reads the global value and takes the same decision.
"""

from __future__ import annotations

import operator
import re

import torch
import torch.fx as fx

from .. import metrics
from .nodes import block_of, normalise

_FUNCTIONAL = "_c10d_functional"
_SPLITS = {"chunk", "split", "tensor_split"}


def is_collective(n: fx.Node) -> bool:
    return n.op == "call_function" and _FUNCTIONAL in str(getattr(n.target, "namespace", "") or n.target)


def groups_of(nodes) -> tuple[str, ...]:
    """The process groups (by name) the graph's collectives span, sorted; () for a graph on one rank."""
    names = set()
    for n in nodes:
        if is_collective(n) and "wait_tensor" not in str(n.target):
            name = n.kwargs.get("group_name", n.args[-1] if n.args else None)
            if isinstance(name, str):
                names.add(name)
    return tuple(sorted(names))


def _is_split(n: fx.Node) -> bool:
    name = n.target if n.op == "call_method" else getattr(n.target, "__name__", "")
    return n.op in ("call_method", "call_function") and name in _SPLITS


def hoist_shards(gm: fx.GraphModule) -> fx.GraphModule:
    """Move the shard of a tensor that enters a block (a split of a value computed outside the block, and the
    `getitem`s taking this rank's piece) out of the block: just before the block's first node, attributed to the
    block's parent. A graph without collectives is returned unchanged. Edits `gm` in place and returns it."""
    nodes = list(gm.graph.nodes)
    if not groups_of(nodes):
        return gm
    moved = False
    for n in nodes:
        b = block_of(n)
        if b is None or not _is_split(n) or not n.args or not isinstance(n.args[0], fx.Node):
            continue
        source = n.args[0]
        if block_of(source) is not None and block_of(source)[:2] == b[:2]:
            continue  # a split of the block's own value (modulation chunks): block work
        if len(n.users) != 1 or next(iter(n.users)).target is not operator.getitem:
            continue  # a shard keeps one piece (this rank's); modulation chunks use all of theirs
        pieces = list(n.users)
        order = {m: i for i, m in enumerate(gm.graph.nodes)}
        anchor = next((m for m in gm.graph.nodes if m not in (n, *pieces) and block_of(m) is not None
                       and block_of(m)[:2] == b[:2] and m.op not in ("placeholder", "get_attr")), None)
        if anchor is None or order[source] > order[anchor]:
            continue  # the value is computed after the block starts: cannot be moved before it
        for m in (n, *pieces):  # in order, just before the block's first other node
            anchor.prepend(m)
            m.meta["nn_module_stack"] = _outside(m.meta.get("nn_module_stack"))
        moved = True
    if moved:
        gm.graph.lint()
        gm.recompile()
    return gm


def _outside(stack: dict | None) -> dict:
    """The module stack without its block and anything inside it: the node now runs in the block's parent."""
    out = {}
    for key, (path, mtype) in (stack or {}).items():
        if re.search(r"\.\d+$", normalise(path)):  # the block (as `block_of` finds it)
            break
        out[key] = (path, mtype)
    return out


def all_reduce_sum(x: torch.Tensor, groups: tuple[str, ...]) -> torch.Tensor:
    """`x` summed over every rank of `groups` (a functional all-reduce per group; over the groups of a device mesh
    that is the sum over the whole mesh). Traced into a variant; gloo and NCCL both sum exactly what they get."""
    for name in groups:
        x = torch.ops._c10d_functional.wait_tensor(torch.ops._c10d_functional.all_reduce(x, "sum", name))
    return x


def agree(g: fx.Graph, reads: list, fins: list[int], results: list, groups: tuple[str, ...]) -> list:
    """A model sharded over ranks: every value a decision reads becomes the global one, the same on every rank. The
    distances' additive sums ([a, b] each) and the flags "this shard is not finite" are packed into one vector,
    summed over the groups in one all-reduce each, and unpacked: distance a / b; finite where no shard is not.
    Replaces the flags in `results`; returns `reads` with the global distances."""
    parts = [v for _, v in reads]
    if fins:
        bad = [g.call_method("float", (g.call_function(torch.logical_not, (results[i],)),)) for i in fins]
        parts.append(g.call_function(torch.stack, (bad,)))
    packed = g.call_function(all_reduce_sum, (g.call_function(torch.cat, (parts,)), groups))
    for k, i in enumerate(fins):
        results[i] = g.call_function(operator.eq, (g.call_function(operator.getitem, (packed, 2 * len(reads) + k)), 0))
    sums = [g.call_function(operator.getitem, (packed, slice(2 * i, 2 * i + 2))) for i in range(len(reads))]
    return [(key, g.call_function(metrics.from_sums, (s,))) for (key, _), s in zip(reads, sums)]
