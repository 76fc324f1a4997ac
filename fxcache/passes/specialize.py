"""Specialize: plan -> variant graph. A pure function of (Dynamo graph, discovery, plan).

The variant computes the node range [start, stop) of the original graph with:
- reused residual sites: the range's nodes are not copied; its output streams become `input + cached residual`;
- written / measured sites: their values (and relative-L1 numerator/denominator against the cached value) become
  extra outputs;
- a probe (`plan.stop`): outputs everything a continuation may need; a continuation (`plan.start`): takes the
  probe's values as inputs.
Dead code (the skipped blocks, the work only they needed) is eliminated, so it is gone from the compiled graph.

Inputs and outputs are described by keys, which the runtime uses to wire tensors:
  inputs : ("arg", i) original input i | ("val", name) value computed by the probe | ("cache", site, j)
  outputs: ("out", i) original output i | ("val", name) | ("site", site, j) | ("fin", site): all values finite |
           ("num", site) | ("den", site) | ("mag", site)
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass

import torch
import torch.fx as fx

from ..plan import Plan, Site
from ..triton_kernels import rel_l1_sums
from .discover import Discovery


@dataclass
class Variant:
    gm: fx.GraphModule
    inputs: list[tuple]
    outputs: list[tuple]
    units_computed: int


def _site_nodes(d: Discovery, site: Site) -> tuple[list[fx.Node], list[fx.Node]]:
    """(outputs, inputs) of a site in original nodes; an indicator has no inputs."""
    if site.kind == "residual":
        pairs = d.pairs(site.start, site.stop)
        return [y for _, y in pairs], [x for x, _ in pairs]
    if site.kind == "indicator":
        return [d.indicators[site.name]], []
    if site.kind == "output":
        out = d.nodes[-1].args[0]
        return [out[0] if isinstance(out, (tuple, list)) else out], []
    raise ValueError(f"unsupported site {site}")


def specialize(gm: fx.GraphModule, d: Discovery, plan: Plan) -> Variant:
    start = d.position(plan.start) if plan.start is not None else 0
    stop = d.position(plan.stop) if plan.stop is not None else len(d.nodes)
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    inputs: list[tuple] = []
    placeholders: list[fx.Node] = []

    def placeholder(key: tuple, like: fx.Node | None, name: str) -> fx.Node:
        ph = g.placeholder(name)
        if like is not None:
            ph.meta = copy.copy(like.meta)
        ph._dynamo_source = getattr(like, "_dynamo_source", None) if key[0] == "arg" else None
        inputs.append(key)
        placeholders.append(ph)
        return ph

    arg_index = {n: i for i, n in enumerate(d.placeholders)}

    def value(n: fx.Node) -> fx.Node:
        if n not in env:
            if n.op == "placeholder":
                env[n] = placeholder(("arg", arg_index[n]), n, n.name)
            elif d.pos[n] < start:
                env[n] = placeholder(("val", n.name), n, f"probe_{n.name}")
            else:
                raise RuntimeError(f"fxcache: {n.name} is needed before it is computed (plan {plan})")
        return env[n]

    # Reused residual ranges: at the cut where the range ends, its streams become input + cached residual.
    skip_ranges = []
    at_cut: dict[int, list[Site]] = {}
    for site in plan.reuse:
        lo, hi = d.cuts[site.start], d.cuts[site.stop]
        skip_ranges.append((lo, hi))
        at_cut.setdefault(hi, []).append(site)

    def rebuild(p: int) -> None:
        for site in at_cut.pop(p, []):
            outs, ins = _site_nodes(d, site)
            for j, (o, i) in enumerate(zip(outs, ins)):
                cached = placeholder(("cache", site, j), o, f"cache_{site.kind}_{site.start}_{site.stop}_{j}")
                env[o] = g.call_function(torch.add, (value(i), cached))

    output_node = d.nodes[-1]
    for p in range(start, min(stop, len(d.nodes))):
        rebuild(p)
        n = d.nodes[p]
        if n.op in ("placeholder", "output") or any(lo <= p < hi for lo, hi in skip_ranges):
            continue
        env[n] = g.node_copy(n, value)
    rebuild(min(stop, len(d.nodes) - 1))

    outputs: list[tuple] = []
    results: list = []

    def emit(key: tuple, node: fx.Node) -> None:
        outputs.append(key)
        results.append(node)

    def site_values(site: Site) -> list[fx.Node]:
        outs, ins = _site_nodes(d, site)
        if site.kind == "residual":
            return [g.call_function(torch.sub, (value(o), value(i))) for o, i in zip(outs, ins)]
        return [value(o) for o in outs]

    measured = {site: [] for site, _ in plan.measure}
    for site, metric in plan.measure:
        measured[site].append(metric)
    for site in sorted(plan.write | set(measured), key=str):
        vals = site_values(site)
        for j, v in enumerate(vals):  # measured values are emitted too: a later plan may store them
            emit(("site", site, j), v)
        # Whether the values are finite: one fused reduction, read by the runtime with the next value it reads
        # anyway, so that NaN / inf never stays in a cache.
        finite = [g.call_method("all", (g.call_function(torch.isfinite, (v,)),)) for v in vals]
        while len(finite) > 1:
            finite = [g.call_function(torch.logical_and, (finite[0], finite[1]))] + finite[2:]
        emit(("fin", site), finite[0])
        if measured.get(site):
            # Against the cached value, per sample (dim 0), first stream only (the image stream of
            # dual-stream blocks, as FBCache does).
            ref = placeholder(("cache", site, 0), None, f"ref_{site.kind}_{site.start}_{site.stop}{site.name}")
            x = g.call_method("float", (vals[0],))
            r = g.call_method("float", (ref,))
            b = g.call_method("size", (x, 0))
            for metric in measured[site]:
                if metric == "rel_l1":  # sum|x - ref| and sum|ref|, one fused pass (fxcache.triton_kernels)
                    sums = g.call_function(rel_l1_sums, (vals[0], ref))
                    emit(("num", site), g.call_function(operator.getitem, (sums, 0)))
                    emit(("den", site), g.call_function(operator.getitem, (sums, 1)))
                elif metric == "mag_ratio":  # MagCache: mean over tokens of |x|_2 / |ref|_2 over channels
                    nx = g.call_function(torch.linalg.vector_norm, (x,), {"dim": -1})
                    nr = g.call_function(torch.linalg.vector_norm, (r,), {"dim": -1})
                    q = g.call_method("reshape", (g.call_function(torch.div, (nx, nr)), b, -1))
                    emit(("mag", site), g.call_method("mean", (q, 1)))
                else:
                    raise ValueError(f"unknown metric {metric!r}")

    if plan.stop is None:
        orig = output_node.args[0]
        flat = list(orig) if isinstance(orig, (tuple, list)) else [orig]
        for i, o in enumerate(flat):
            emit(("out", i), value(o) if isinstance(o, fx.Node) else o)
    else:
        # Everything the rest of the graph may read, whichever continuation the policy picks.
        needed = {n for n in d.live_at(stop)}
        for site in _continuation_sites(d):
            _, ins = _site_nodes(d, site)
            needed.update(i for i in ins if d.pos[i] < stop and i.op != "placeholder")
        for n in sorted(needed, key=d.pos.__getitem__):
            if n in env or d.pos[n] < start:
                emit(("val", n.name), value(n))
    g.output(tuple(results))

    anchor = next((n for n in g.nodes if n.op != "placeholder"), None)
    if anchor is not None:
        for ph in placeholders:
            anchor.prepend(ph)
    g.eliminate_dead_code()
    keep = []
    for ph, key in zip(placeholders, inputs):
        if ph.users:
            keep.append(key)
        else:
            g.erase_node(ph)
    g.lint()
    computed = sum(1 for k, u in enumerate(d.units)
                   if start <= u.start < stop and not any(s.start <= k < s.stop for s in plan.reuse))
    return Variant(fx.GraphModule(gm, g), keep, outputs, computed)


def _continuation_sites(d: Discovery) -> list[Site]:
    """Residual sites a continuation may add cached residuals to: those starting at a cut before the end."""
    return [Site("residual", a, d.num_units) for a in range(d.num_units) if d.residual_ok(a, d.num_units)]
