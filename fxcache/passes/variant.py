"""A variant: one compiled piece of the model for one plan (passes/specialize.py), with the keys the runtime
wires its tensors by, and the two variants that run none of the model (the cached output returned; the uncond
output rebuilt from the peer stream's, FasterCache's CFG-Cache).

Inputs and outputs are described by keys, which the runtime uses to wire tensors:
  inputs : ("arg", i) original input i | ("val", name) value computed by the probe | ("cache", site, j, slot) |
           ("peer", site, j, slot) the same from the plan's peer stream | ("coef",) the forecast weights (1-D
           float32) | ("scales",) the CFG rebuild's band scales (1-D float32)
  outputs: ("out", i) original output i | ("val", name) | ("site", site, j) | ("fin", site): all values finite |
           ("reads", keys): the plan's distances, one float32 vector, entry i for (site, metric) keys[i]
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.fx as fx

from .. import derived
from ..plan import CFG, DELTA, OUTPUT, Site
from ..triton_kernels import residual_apply
from . import cfg
from .discover import Discovery

# The order of a variant's inputs: the order the runtime gathers them fastest (graph inputs, probe values, cached
# values, weights; executor.Wiring relies on it).
INPUT_ORDER = {"arg": 0, "val": 1, "cache": 2, "peer": 2, "coef": 3, "scales": 3}


@dataclass
class Variant:
    gm: fx.GraphModule
    inputs: list[tuple]
    outputs: list[tuple]
    units_computed: int
    units_probe: int | None = None  # a fused plan's: the units its probe part computes
    wiring: object = None  # the runtime's precomputed gathering of `inputs` (executor.Wiring)
    reductions: int = 0  # all-reduces it runs to make a decision's values global (context parallelism)


def finish(g: fx.Graph, placeholders: list[fx.Node], inputs: list[tuple]) -> list[tuple]:
    """Put the placeholders of `g` (keyed by `inputs`) in INPUT_ORDER, eliminate dead code and drop the inputs
    nothing reads any more; returns the keys of the inputs kept, in order."""
    order = sorted(range(len(inputs)), key=lambda k: (INPUT_ORDER[inputs[k][0]], k))
    inputs, placeholders = [inputs[k] for k in order], [placeholders[k] for k in order]
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
    return keep


def site_nodes(d: Discovery, site: Site) -> tuple[list[fx.Node], list[fx.Node]]:
    """(outputs, inputs) of a site in original nodes; an indicator has no inputs."""
    if site.kind in ("residual", "stream"):
        pairs = d.pairs(site.start, site.stop)
        return [y for _, y in pairs], [x for x, _ in pairs]
    if site.kind == "indicator":  # a derived one (derived.py) has the latent input's shape and dtype
        return [d.indicators[site.name] if site.name in d.indicators else d.placeholders[d.hidden]], []
    if site.kind == "delta":
        return site_nodes(d, OUTPUT)[0], [d.placeholders[d.hidden]]
    if site.kind == "module":
        return list(d.modules[site].outputs), []
    if site.kind in ("output", "cfg"):
        out = d.nodes[-1].args[0]
        out = out[0] if isinstance(out, (tuple, list)) else out
        return ([out, out] if site.kind == "cfg" else [out]), []
    raise ValueError(f"unsupported site {site}")


def rebuild_variant(gm: fx.GraphModule, d: Discovery, write_output: bool = False) -> Variant:
    """The output rebuilt from the peer stream's output and this stream's cached band images; nothing of the
    model runs. Only for graphs whose outputs are one tensor (checked by the policy: `Discovery.why_not_rebuildable`). With
    `write_output`, the rebuilt output is also this stream's OUTPUT site (MixCache's step reuse reads it)."""
    g = fx.Graph()
    out = site_nodes(d, OUTPUT)[0][0]
    keys = [("peer", OUTPUT, 0, 0), ("cache", CFG, 0, 0), ("cache", CFG, 1, 0), ("scales",)]
    phs = [g.placeholder(name) for name in ("peer_output", "cfg_low", "cfg_high", "cfg_scales")]
    for ph in phs[:3]:
        ph.meta = copy.copy(out.meta)
    rebuilt = g.call_function(cfg.rebuild, tuple(phs))
    if not write_output:
        g.output((rebuilt,))
        return Variant(fx.GraphModule(gm, g), keys, [("out", 0)], 0)
    finite = g.call_method("all", (g.call_function(torch.isfinite, (rebuilt,)),))
    g.output((rebuilt, rebuilt, finite))
    return Variant(fx.GraphModule(gm, g), keys, [("out", 0), ("site", OUTPUT, 0), ("fin", OUTPUT)], 0)


def output_variant(gm: fx.GraphModule, d: Discovery) -> Variant:
    """The stream's cached output returned as this call's output (MixCache's step level); nothing runs. Only
    for graphs whose outputs are one tensor (`Discovery.why_not_rebuildable`)."""
    g = fx.Graph()
    ph = g.placeholder("cached_output")
    ph.meta = copy.copy(site_nodes(d, OUTPUT)[0][0].meta)
    g.output((g.call_function(torch.clone, (ph,)),))  # a fresh tensor: the caller may modify what it gets
    return Variant(fx.GraphModule(gm, g), [("cache", OUTPUT, 0, 0)], [("out", 0)], 0)


def runs_nothing(gm: fx.GraphModule, d: Discovery, plan) -> Variant | None:
    """The variant of a plan that runs none of the model (a CFG rebuild, a reused output or DELTA), else None."""
    if CFG in plan.reuse:
        return rebuild_variant(gm, d, OUTPUT in plan.write)
    if OUTPUT in plan.reuse:
        return output_variant(gm, d)
    return delta_variant(gm, d) if DELTA in plan.reuse else None


def derived_value(g: fx.Graph, d: Discovery, site: Site, value) -> fx.Node:
    """An indicator computed from the inputs (derived.py): its registered function on the latent and timestep
    inputs (`value` maps an original node to its node in `g`)."""
    fn, params = derived.lookup(site.name)
    ts = value(d.placeholders[d.timestep]) if d.timestep is not None else None
    return g.call_function(fn, (value(d.placeholders[d.hidden]), ts), params)


def delta_variant(gm: fx.GraphModule, d: Discovery) -> Variant:
    """The latent input plus the stream's cached DELTA (model output - latent input) as this call's output
    (EasyCache's skipped step); nothing of the model runs. Only for graphs whose one output has the latent's
    shape (checked by the policy)."""
    g = fx.Graph()
    x, cached = g.placeholder("latent"), g.placeholder("cached_delta")
    x.meta = copy.copy(d.placeholders[d.hidden].meta)
    cached.meta = copy.copy(site_nodes(d, OUTPUT)[0][0].meta)
    g.output((g.call_function(residual_apply, (x, cached)),))
    return Variant(fx.GraphModule(gm, g), [("arg", d.hidden), ("cache", DELTA, 0, 0)], [("out", 0)], 0)
