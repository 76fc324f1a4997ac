"""A human-readable account of what the backend found and what it does, for `fxcache.explain(model)`."""

from __future__ import annotations

from .backend import _PLAIN_GRAPHS, instances_of
from .passes.nodes import shape
from .plan import Site


def describe(model) -> str:
    lines = []
    found = instances_of(model)
    if not found:
        lines.append("fxcache: no cached graph for this model (not compiled yet, or compiled without blocks)")
    for k, (r, inst) in enumerate(found):
        d = r.discovery
        lists = ", ".join(f"{name} x{n}" for name, n in d.block_lists().items())
        lines.append(f"graph {k}: {len(d.nodes)} nodes; block lists: {lists} ({d.num_units} units)")
        lines.append(f"  prefix: nodes [0, {d.cuts[0]}), blocks [{d.cuts[0]}, {d.cuts[-1]}), "
                     f"suffix [{d.cuts[-1]}, {len(d.nodes)})")
        names = {i: d.placeholders[i].name for i in (d.timestep, d.hidden, d.encoder) if i is not None}
        lines.append(f"  inputs: timestep={names.get(d.timestep)}, hidden={names.get(d.hidden)}, "
                     f"encoder={names.get(d.encoder)}")
        lines.append("  carried streams at block 0: " + ", ".join(f"{n.name}{list(shape(n) or [])}"
                                                             for n in d.streams[0]))
        sites = [Site("residual", 0, d.num_units)]
        c = d.first_residual_cut()
        if c is not None:
            sites += [Site("residual", 0, c), Site("residual", c, d.num_units)]
        sites = [s for s in sites if d.site_ok(s)] + [Site("indicator", name=n) for n in d.indicators]
        lines.append("  sites: " + ", ".join(str(s) for s in sites))
        if d.modules:
            per_block: dict = {}
            for m in d.modules.values():
                per_block.setdefault(m.site.start, []).append(f"{m.site.name}={m.role}{'/temporal' if m.temporal else ''}")
            first = next(iter(per_block.values()))
            same = all(v == first for v in per_block.values())
            lines.append(f"  inside blocks ({len(d.modules)} module sites, before their gates): "
                         + (f"every block: {', '.join(first)}" if same else
                            "; ".join(f"{k}: {', '.join(v)}" for k, v in per_block.items())))
        else:
            lines.append("  inside blocks: no attention or MLP module found (block-level policies only)")
        streams = sorted({name for s in inst.all_streams() for name in s.states})
        lines.append(f"  streams seen: {', '.join(streams) or '-'} "
                     f"({'separate cond/uncond calls' if len(streams) > 1 else 'one call per step'})")
        lines.append(f"  policy: {r.policy.name} ({r.policy.describe()}); compiler: {r.variants.compiler}; "
                     f"variants: {len(r.variants)}")
        with inst.lock:
            summary = inst.stats.summary()
        lines.append(f"  stats: {summary} (this model instance)")
    ids = {id(p) for p in getattr(getattr(model, "_orig_mod", model), "parameters", lambda: [])()}
    for g in _PLAIN_GRAPHS:
        if g["params"] & ids or not g["params"]:
            lines.append(f"plain graph ({g['nodes']} nodes): {g['reason']}")
    return "\n".join(lines)
