"""Specialize: plan -> variant graph. A pure function of (Dynamo graph, discovery, plan).

The variant computes the node range [start, stop) of the original graph with:
- reused sites: a residual site's units are not copied, its output streams become `input + cached residual`
  (a "stream" site: the cached streams themselves); a module site's (attention / MLP inside a block) ops are not
  copied and what the block reads from it becomes the cached value, so the norms, modulation and gates around it
  still use the current step's inputs;
- forecast sites: as reused ones, with "the cached value" replaced by `sum_i coeffs[i] * cached value i` (slot 0
  the newest), the weights (the policy's) an input of the variant;
- written / measured sites: their values (and the plan's metrics of them) become extra outputs;
- a probe (`plan.stop`): outputs everything a continuation may need; a continuation (`plan.start`): takes the
  probe's values as inputs; a fused plan (`plan.emit_at`, a probe and its guessed continuation) computes to the end
  and outputs what a continuation from `emit_at` needs as well;
- a rebuild (FasterCache's CFG-Cache): none of the graph, the output blended from the peer stream's (passes/cfg.py);
  a cond-half plan (`plan.half`, batched CFG, specialised on the half-batch graph) returns [rebuilt uncond; cond].
Dead code (the skipped blocks, the work only they needed) is eliminated, so it is gone from the compiled graph.

A measured site's metrics are registered functions (fxcache/metrics.py), called on the site's value and the
references they declare; this pass knows no metric by name. A plan that reuses OUTPUT or DELTA runs none of the model (variant.py).
Inputs and outputs are described by keys (passes/variant.py).
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.fx as fx

from .. import metrics
from ..plan import CFG_BATCH, OUTPUT, Plan, Site, window_of
from ..triton_kernels import forecast, residual_apply
from . import cfg, collectives, symbolic
from .discover import Discovery
from .variant import Variant, derived_value, finish, runs_nothing, site_nodes


def specialize(gm: fx.GraphModule, d: Discovery, plan: Plan) -> Variant:
    if (nothing := runs_nothing(gm, d, plan)) is not None:
        return nothing
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
    coef: list[fx.Node] = []
    forecasts: dict[tuple[Site, int], fx.Node] = {}  # (site, j) -> its forecast value in this variant

    def cached_value(site: Site, j: int, like: fx.Node, name: str) -> fx.Node:
        """The value of output j of `site` taken from the cache: the newest value, or the plan's forecast."""
        if site not in plan.forecast:
            return placeholder(("cache", site, j, 0), like, name)
        if not coef:
            coef.append(placeholder(("coef",), None, "forecast_coeffs"))
        terms = [(site, i) for i in range(plan.slots)] + [(window_of(site), k) for k in range(plan.window)]
        slots = [placeholder(("cache", src, j, i), like, f"{name}_{src.name}slot{i}") for src, i in terms]
        acc = g.call_function(forecast, (slots, coef[0]))  # one fused pass (triton_kernels/forecasting.py)
        forecasts[(site, j)] = acc
        return acc

    # Module sites replaced from the cache: their outputs are read from it, their ops are not copied.
    replaced: dict[fx.Node, tuple[Site, int]] = {}
    for site in plan.reuse | plan.forecast:
        if site.kind == "module":
            for j, o in enumerate(d.modules[site].outputs):
                replaced[o] = (site, j)
    dropped = set().union(*(d.modules[s].nodes for s in plan.reuse | plan.forecast if s.kind == "module"))

    def value(n: fx.Node) -> fx.Node:
        if n not in env:
            if n.op == "placeholder":
                env[n] = placeholder(("arg", arg_index[n]), n, n.name)
            elif n in replaced:
                site, j = replaced[n]
                env[n] = cached_value(site, j, n, f"cache_{site.name}_{site.start}_{j}")
            elif d.recomputable(n):  # a size value in a skipped range or before `start`: computed here
                env[n] = size_value(n)
            elif d.pos[n] < start:
                env[n] = placeholder(("val", n.name), n, f"probe_{n.name}")
            else:
                raise RuntimeError(f"fxcache: {n.name} is needed before it is computed (plan {plan})")
        return env[n]

    def size_value(n: fx.Node):
        """Copy size node `n` when what it reads is at hand here (placeholders, copied nodes, other size values);
        otherwise rebuild it from its sympy expression over the graph's size inputs."""
        if all(a.op == "placeholder" or a in env or d.recomputable(a) for a in n.all_input_nodes):
            return g.node_copy(n, value)

        def symbol(sym):
            where = d.symbols[sym]
            if where[0] == "arg":
                return value(where[1])
            return g.call_method("size", (value(where[1]), where[2]))

        return symbolic.build(g, n, symbol)

    # Reused residual ranges: at the cut where the range ends, its streams become input + cached residual.
    skip_ranges = []
    at_cut: dict[int, list[Site]] = {}
    # A fused plan computes its probe part whole: what is skipped starts at the probe's stop at the earliest (the
    # probe may stop inside the first skipped block, like TeaCache's modulated input).
    probe_end = d.position(plan.emit_at) if plan.emit_at is not None else 0
    for site in plan.reuse | plan.forecast:
        if site.kind in ("residual", "stream"):
            lo, hi = max(d.cuts[site.start], probe_end), d.cuts[site.stop]
            skip_ranges.append((lo, hi))
            at_cut.setdefault(hi, []).append(site)

    def rebuild(p: int) -> None:
        for site in at_cut.pop(p, []):
            outs, ins = site_nodes(d, site)
            for j, (o, i) in enumerate(zip(outs, ins)):
                cached = cached_value(site, j, o, f"cache_{site.kind}_{site.start}_{site.stop}_{j}")
                env[o] = cached if site.kind == "stream" else g.call_function(residual_apply, (value(i), cached))

    output_node = d.nodes[-1]
    for p in range(start, min(stop, len(d.nodes))):
        rebuild(p)
        n = d.nodes[p]
        if n.op in ("placeholder", "output") or n in dropped or any(lo <= p < hi for lo, hi in skip_ranges):
            continue
        env[n] = g.node_copy(n, value)
    rebuild(min(stop, len(d.nodes) - 1))

    outputs: list[tuple] = []
    results: list = []

    def emit(key: tuple, node: fx.Node) -> None:
        outputs.append(key)
        results.append(node)

    def site_values(site: Site) -> list[fx.Node]:
        outs, ins = site_nodes(d, site)
        base = Site(site.kind, site.start, site.stop)
        if site.name == "window" and base in plan.forecast:  # the forecast itself, exactly
            return [forecasts[(base, j)] if (base, j) in forecasts else cached_value(base, j, o, f"fc_{j}")
                    for j, o in enumerate(outs)]
        if site.kind in ("residual", "delta"):
            return [g.call_function(torch.sub, (value(o), value(i))) for o, i in zip(outs, ins)]
        if site.kind == "indicator" and site.name not in d.indicators:  # computed from the inputs (derived.py)
            return [derived_value(g, d, site, value)]
        if site == CFG_BATCH:  # band images of (uncond half - cond half) of this output
            both = g.call_function(cfg.batch_bands, (value(outs[0]),))
            return [g.call_function(operator.getitem, (both, j)) for j in (0, 1)]
        if site.kind == "cfg":  # band images of (this output - the peer stream's output of this step)
            peer = placeholder(("peer", OUTPUT, 0, 0), outs[0], "peer_output")
            both = g.call_function(cfg.bands, (value(outs[0]), peer))
            return [g.call_function(operator.getitem, (both, j)) for j in (0, 1)]
        if site.kind == "output" and finals:  # what the call returns (under `half`: both halves)
            return [finals[0]]
        return [value(o) for o in outs]

    finals: list = []  # the variant's outputs (a continuation or a whole call)
    if plan.stop is None:
        orig = output_node.args[0]
        flat = list(orig) if isinstance(orig, (tuple, list)) else [orig]
        for i, o in enumerate(flat):
            out = value(o) if isinstance(o, fx.Node) else o
            if plan.half and i == 0:  # the cond half's output -> [rebuilt uncond; cond], inside the variant
                low, high = (placeholder(("cache", CFG_BATCH, j, 0), o, f"cfg_{band}")
                             for j, band in enumerate(("low", "high")))
                scales = placeholder(("scales",), None, "cfg_scales")
                out = g.call_function(torch.cat, ([g.call_function(cfg.rebuild, (out, low, high, scales)), out],))
            finals.append(out)

    reads: list = []  # ((site, metric), 0-dim value) of the plan's distances
    fins: list[int] = []  # where in `results` the finiteness flags are
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
        fins.append(len(results))
        emit(("fin", site), finite[0])
        for m in measured.get(site, ()):
            # The registered function on output `m.output`, and what it reads besides (metrics.py); its terms
            # reduced to one value for the batch inside the variant.
            spec = metrics.definition(m)
            like = site_nodes(d, site)[0][m.output]
            refs = [placeholder(("cache" if ref == "cached" else "peer", site, m.output, 0), like,
                                f"{ref}_{m.name}_{site.kind}_{site.start}_{site.stop}{site.name}")
                    for ref in spec.references]
            terms = g.call_function(spec.fn, (vals[m.output], *refs), m.kwargs)
            # per batch row ([2, rows] additive sums, for per-request decisions), over the ranks, or for the batch
            args = (terms, g.call_method("size", (value(d.placeholders[d.hidden]), 0))) if plan.rows else (terms,)
            reduce = spec.row_sums() if plan.rows else spec.sums() if d.groups else spec.batch()
            reads.append(((site, m), g.call_function(reduce, args)))
    if d.groups and (reads or fins):
        reads = collectives.agree(g, reads, fins, results, d.groups)
    if reads:  # every distance of the plan in one float32 vector: the runtime reads them in one host read
        emit(("reads", tuple(k for k, _ in reads)), g.call_function(
            torch.stack, ([g.call_method("float", (v,)) for _, v in reads],)))

    if plan.stop is None:
        for i, out in enumerate(finals):
            emit(("out", i), out)
    boundary = plan.stop or plan.emit_at
    if boundary is not None:
        # Everything the rest of the graph may read, whichever continuation the policy picks.
        at = d.position(boundary)
        needed = {n for n in d.live_at(at)}
        for site in _continuation_sites(d):
            _, ins = site_nodes(d, site)
            needed.update(i for i in ins if d.pos[i] < at and i.op != "placeholder")
        for n in sorted(needed, key=d.pos.__getitem__):
            if d.recomputable(n):  # the continuation computes size values itself
                continue
            if n in env or d.pos[n] < start:
                emit(("val", n.name), value(n))
    g.output(tuple(results))

    keep = finish(g, placeholders, inputs)
    skipped_units = {k for s in plan.reuse | plan.forecast if s.kind in ("residual", "stream")
                     for k in range(s.start, s.stop)}

    def units(lo: int, hi: int, skips: bool = True) -> int:
        return sum(1 for k, u in enumerate(d.units) if lo <= u.start < hi and not (skips and k in skipped_units))

    reductions = len(d.groups) if d.groups and (reads or fins) else 0
    if plan.emit_at is None:
        return Variant(fx.GraphModule(gm, g), keep, outputs, units(start, stop), reductions=reductions)
    # Counted as the probe and the guess would be on their own: a unit the probe entered is computed.
    probe = units(start, probe_end, skips=False)
    return Variant(fx.GraphModule(gm, g), keep, outputs, probe + units(probe_end, stop), probe, reductions=reductions)


def _continuation_sites(d: Discovery) -> list[Site]:
    """Residual sites a continuation may add cached residuals to: those starting at a cut before the end."""
    return [Site("residual", a, d.num_units) for a in range(d.num_units) if d.residual_ok(a, d.num_units)]
