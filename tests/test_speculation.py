"""A probe run with its guessed continuation as one variant (Plan.then, option `speculate`) must give exactly what
the probe and the decided continuation give as two variants, whether the guess was right or wrong; and the
engine options of issue 10 (`speculate`, `piecewise`) are validated and do what they say."""

from __future__ import annotations

import pytest
from fxcache.metrics import REL_L1
import torch

import fxcache

from .loop import denoise
from .test_engine import compile_
from .zoo import ZOO

# Settings that skip some steps and compute others on the zoo, so both guesses are made and both miss sometimes.
MIXED = {
    "fbcache": {"policy": "fbcache", "threshold": 0.1, "max_consecutive_skips": 3},
    "fbcache-taylor": {"policy": "fbcache", "threshold": 0.1, "forecast": "taylor", "max_consecutive_skips": 3},
    "fbcache-foca": {"policy": "fbcache", "threshold": 0.1, "forecast": "foca", "max_consecutive_skips": 3},
    "teacache": {"policy": "teacache", "threshold": 0.3},
    "dbcache": {"policy": "dbcache", "Fn": 1, "Bn": 0, "threshold": 0.12, "warmup_steps": 2},
}


@pytest.fixture(scope="module")
def wan():
    entry = ZOO["wan"]
    return entry, entry.build()


@pytest.mark.parametrize("setting", list(MIXED))
def test_speculation_equals_two_variants(setting, wan):
    entry, model = wan
    outs, stats = {}, {}
    for speculate in (False, True):
        torch._dynamo.reset()
        cm = compile_(model, **MIXED[setting], speculate=speculate)
        outs[speculate] = denoise(cm, entry, steps=12)
        stats[speculate] = fxcache.stats(cm)
    assert torch.equal(outs[True], outs[False])
    on, off = stats[True], stats[False]
    assert (on.blocks_computed, on.skipped_steps, on.decision_counts) == (
        off.blocks_computed, off.skipped_steps, off.decision_counts)
    assert off.guesses_right == off.guesses_wrong == 0
    assert on.guesses_right > 0 and on.guesses_wrong > 0, (setting, on.decision_counts)
    assert on.skipped_steps > 0 and on.full_steps > 2


def test_speculation_under_inductor(wan):
    """Under Inductor the fused variant is another compiled graph than probe + continuation, so outputs may differ by
    float rounding; the decisions may not."""
    entry, model = wan
    outs, stats = {}, {}
    for speculate in (False, True):
        torch._dynamo.reset()
        cm = compile_(model, **MIXED["fbcache-taylor"], speculate=speculate, compiler="inductor")
        outs[speculate] = denoise(cm, entry, steps=12)
        stats[speculate] = fxcache.stats(cm)
    torch.testing.assert_close(outs[True], outs[False], rtol=1e-4, atol=1e-5)
    on, off = stats[True], stats[False]
    assert [d["decision"] for d in on.decisions] == [d["decision"] for d in off.decisions]
    assert on.guesses_right > 0 and on.guesses_wrong > 0 and on.skipped_steps > 0


def test_a_right_guess_is_one_variant_call(wan):
    """Once every step is skipped (the guess always right), each probing call runs one compiled variant."""
    entry, model = wan
    torch._dynamo.reset()
    cm = compile_(model, policy="fbcache", threshold=1e9)
    calls = []
    with torch.no_grad():
        for t in (900.0, 800.0, 700.0):  # computed, then probes that guess "skip" and skip
            cm(**entry.inputs(torch.tensor(t), 1))
        (runtime,) = fxcache.runtimes_of(cm)
        for key, (variant, fn) in list(runtime.variants._entries.items()):
            runtime.variants._entries[key] = (variant, lambda *a, fn=fn, key=key: calls.append(key) or fn(*a))
        for t in (600.0, 500.0, 400.0):
            before = len(calls)
            cm(**entry.inputs(torch.tensor(t), 1))
            assert len(calls) - before == 1
    s = fxcache.stats(cm)
    assert (s.guesses_right, s.guesses_wrong) == (5, 0)


@pytest.mark.parametrize("value, allowed", [("yes", "True or False"), (1, "True or False")])
def test_speculate_option_is_validated(value, allowed):
    with pytest.raises(ValueError, match=f"option 'speculate' must be {allowed}"):
        fxcache.backend(policy="fbcache", speculate=value)


def test_piecewise_option(wan):
    entry, model = wan
    with pytest.raises(ValueError, match=r"option 'piecewise' must be one of \('auto', True, False\)"):
        fxcache.backend(policy="fbcache", piecewise="yes")
    with pytest.raises(ValueError, match="option 'piecewise'"):
        fxcache.backend(policy="fbcache", piecewise=1)
    expected = {("fbcache", "auto"): False, ("pab", "auto"): True, ("fbcache", True): True, ("pab", False): False}
    for (policy, piecewise), split in expected.items():
        torch._dynamo.reset()
        cm = compile_(model, policy=policy, piecewise=piecewise)
        with torch.no_grad():
            cm(**entry.inputs(torch.tensor(900.0), 1))
        (runtime,) = fxcache.runtimes_of(cm)
        assert runtime.variants.piecewise is split, (policy, piecewise)


def test_variant_inputs_come_in_gathering_order(wan):
    """specialize orders a variant's inputs (graph inputs, probe values, cached values, weights) and the runtime's
    precomputed wiring relies on it."""
    from fxcache.passes.specialize import specialize
    from fxcache.plan import Plan, residual
    from fxcache.runtime.speculation import fuse
    from fxcache.runtime.wiring import Wiring

    entry, model = wan
    torch._dynamo.reset()
    cm = compile_(model, policy="none")
    with torch.no_grad():
        cm(**entry.inputs(torch.tensor(900.0), 1))
    (runtime,) = fxcache.runtimes_of(cm)
    d = runtime.discovery
    c = d.first_residual_cut()
    head, tail = residual(0, c), residual(c, d.num_units)
    from fxcache.plan import Stop

    cut = Stop("cut", c)
    skip = Plan(forecast=frozenset({tail}), coeffs=(2.0, -1.0), start=cut)
    probe = Plan(measure=frozenset({(head, REL_L1)}), stop=cut, then=skip)
    plans = [probe, skip, fuse(probe), Plan(write=frozenset({head, tail}))]
    for plan in plans:
        v = specialize(runtime.gm, d, plan)
        w = Wiring(v.inputs)  # raises where the order is not kept
        assert len(w.args) + len(w.vals) + len(w.cached) + len(w.constants) == len(v.inputs)
    with pytest.raises(RuntimeError, match="gathering order"):
        Wiring([("cache", head, 0, 0), ("arg", 0)])
