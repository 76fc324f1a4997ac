"""The metric registry (fxcache/metrics.py): typed parameters, the batch and per-sample reductions against torch
written out, and metrics registered here (unknown to the passes) measured inside compiled variants."""

from __future__ import annotations

import pytest
import torch

from fxcache import metrics
from fxcache.backend import _compile
from fxcache.metrics import CFG_REL_L1, MAG_RATIO, REL_L1, evaluate, metric, register
from fxcache.plan import OUTPUT, Plan
from fxcache.policies.base import Policy

from .loop import denoise
from .zoo import ZOO


@register("test_rel_l1_torch")
def _rel_l1_torch(value: torch.Tensor, cached: torch.Tensor):
    """rel_l1 written with plain torch ops (no fused kernel)."""
    d = (value.float() - cached.float()).abs().flatten(1).sum(1)
    return d, cached.float().abs().flatten(1).sum(1)


@register("test_scaled_abs", reduce="mean")
def _scaled_abs(value: torch.Tensor, *, scale: float):
    return value.float().abs().flatten(1) * scale


def test_metric_is_typed_and_hashable():
    m = metric("motion", per_frame=16, stride=1, output=1)
    assert m == metric("motion", stride=1, per_frame=16, output=1) and hash(m) == hash(metric(
        "motion", stride=1, per_frame=16, output=1))
    assert m.kwargs == {"per_frame": 16, "stride": 1} and m.output == 1
    assert m != metric("motion", per_frame=16, stride=1) and REL_L1 == metric("rel_l1")
    assert str(m) == "motion(per_frame=16, stride=1, output=1)" and str(REL_L1) == "rel_l1"
    assert {(OUTPUT, REL_L1): 1.0}[(OUTPUT, metric("rel_l1"))] == 1.0  # what a policy reads `measured` with
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        metric("nope")
    with pytest.raises(ValueError, match=r"takes parameters \['per_frame', 'stride'\]"):
        metric("motion", per_frame=16)
    with pytest.raises(ValueError, match="parameter stride must be int"):
        metric("motion", per_frame=16, stride=1.0)
    with pytest.raises(ValueError, match="parameter stride must be int"):
        metric("motion", per_frame=16, stride=True)
    with pytest.raises(ValueError, match="output must be an int >= 0"):
        metric("rel_l1", output=-1)
    assert metric("test_scaled_abs", scale=2).kwargs == {"scale": 2}  # an int where a float is declared
    with pytest.raises(TypeError, match=r"\(site, Metric\) pairs"):
        metrics.definition("rel_l1")
    with pytest.raises(ValueError, match="registered already"):
        register("rel_l1")(_rel_l1_torch)
    with pytest.raises(ValueError, match="must be among"):
        register("test_bad_reference")(lambda value, other: value)


def test_definitions_say_what_they_read():
    assert metrics.definition(REL_L1).references == ("cached",)
    assert metrics.definition(metric("peer_rel_l1")).references == ("peer",)
    assert metrics.definition(CFG_REL_L1).references == ()
    assert metrics.definition(metric("motion", per_frame=1, stride=1)).params == {"per_frame": int, "stride": int}


def test_batch_and_per_sample_values():
    g = torch.Generator().manual_seed(0)
    x, ref = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    ref[1] *= 10  # samples of different sizes: the batch value weighs them, the per-sample one does not
    num, den = (x - ref).abs().flatten(1).sum(1), ref.abs().flatten(1).sum(1)
    assert torch.allclose(evaluate(REL_L1, x, ref, per_sample=True), num / den)
    assert torch.allclose(evaluate(REL_L1, x, ref), num.sum() / den.sum())
    assert evaluate(REL_L1, x, ref).ndim == 0
    halves = torch.cat([x, ref])
    assert torch.allclose(evaluate(CFG_REL_L1, halves, per_sample=True), num / den)
    q = x.norm(dim=-1) / ref.norm(dim=-1)
    assert torch.allclose(evaluate(MAG_RATIO, x, ref, per_sample=True), q.mean(1))
    assert torch.allclose(evaluate(MAG_RATIO, x, ref), q.mean())
    assert torch.equal(evaluate(REL_L1, ref, ref, per_sample=True), torch.zeros(3))


class Measuring(Policy):
    """Computes every call, writes OUTPUT and measures it with `measure` from the second call on."""

    name = "test-measuring"

    def __init__(self, measure) -> None:
        super().__init__()
        self.measure, self.seen = measure, []

    def plan(self, call, state) -> Plan:
        measure = frozenset((OUTPUT, m) for m in self.measure) if call.cached(OUTPUT) else frozenset()
        return Plan(write=frozenset({OUTPUT}), measure=measure)

    def observe(self, call, state, plan: Plan) -> None:
        if call.measured:
            self.seen.append({m: call.measured[(OUTPUT, m)] for m in self.measure})


def test_registered_metrics_measured_in_the_variant():
    """Metrics the passes have never heard of run inside the compiled variant, with their parameters and the
    cached value they declare; the torch rel_l1 gives the fused kernel's distance."""
    entry = ZOO["wan"]
    ms = [REL_L1, metric("test_rel_l1_torch"), metric("test_scaled_abs", scale=1.0),
          metric("test_scaled_abs", scale=2.5)]
    policy = Measuring(ms)
    engine = {"compiler": "eager", "num_steps": None, "max_variants": 8, "decision_log": 0}
    torch._dynamo.reset()
    try:
        cm = torch.compile(entry.build(), backend=lambda gm, ex, **_: _compile(gm, ex, policy, engine))
        denoise(cm, entry, steps=4)
    finally:
        torch._dynamo.reset()
    assert len(policy.seen) >= 3
    for seen in policy.seen:
        rel, torch_rel, one, scaled = (seen[m] for m in ms)
        assert 0 < rel < 10 and torch_rel == pytest.approx(rel, rel=1e-5)
        assert one > 0 and scaled == pytest.approx(2.5 * one, rel=1e-6)
