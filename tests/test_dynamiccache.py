"""DynamicCache (a reconstruction, fxcache/policies/dynamiccache.py): the accumulation on scripted trajectories
against sequences worked out by hand, its options, and end to end on zoo models."""

from __future__ import annotations

import pytest
import torch

import fxcache
from fxcache.metrics import REL_L1
from fxcache.backend import parse_options
from fxcache.plan import Site

from .driver import Driver
from .loop import denoise
from .test_block_policies import bound as bound_policy
from .zoo import ZOO

OUT = (Site("output"), REL_L1)



def compile_(model, **options):
    options.setdefault("compiler", "eager")
    return torch.compile(model, backend="fxcache", fullgraph=True, options=options)


def bound(name: str = "wan", **options):
    return bound_policy(name, policy="dynamiccache", **options)


def run_output(policy, n: int, measured: dict, streams=("stream0",)):
    """Drive the "output" indicator through `n` steps of `streams` (called in that order at each step, as a
    pipeline calls cond then uncond). `measured[stream][k]`: relL1 between this computed output and the previous
    computed one, handed over only when the plan asks for it. Returns {stream: "FFS..."}."""
    drive = Driver(policy, n, measure=lambda call, site, metric: measured[call.stream][call.step])
    out = {s: "" for s in streams}
    for k in range(1, n + 1):
        for s in streams:
            plan = drive(1000.0 * (1 - k / n), s)
            assert drive.history[-1][1].stop is None  # the output indicator never probes
            assert set(drive.history[-1][0].measured) <= {OUT}
            out[s] += "F" if plan.label == "full" else "S"
            assert plan.label in ("full", "skip")
    return out


def test_output_accumulation_matches_hand_worked_sequence():
    # threshold 0.1, identity. 1: forced. 2: no estimate yet -> F, measures 0.04 over 1 step: estimate 0.04.
    # 3: acc 0.04 S; 4: 0.08 S; 5: 0.12 F (acc 0), measures 0.09 over 3 steps: 0.03. 6: 0.03, 7: 0.06, 8: 0.09 S;
    # 9: 0.12 F, measures 0.2 over 4 steps: 0.05. 10: last, forced.
    policy = bound(indicator="output", threshold=0.1)
    measured = {"stream0": {2: 0.04, 5: 0.09, 9: 0.2, 10: 0.05}}
    assert run_output(policy, 10, measured) == {"stream0": "FFSSFSSSFF"}


def test_output_measures_only_after_the_first_computed_step():
    policy = bound(indicator="output", threshold=0.1)
    drive = Driver(policy, 5, measure=lambda call, site, metric: 0.0)
    first = drive(1000.0)
    assert first.label == "full" and OUT not in first.measure and Site("output") in first.write
    second = drive(800.0)
    assert second.label == "full" and OUT in second.measure


def test_joint_decision_adds_the_mean_of_the_streams_estimates():
    # stream0 measures 0.02, stream1 0.06 at step 2: the mean 0.04 is the hand-worked sequence above, for both.
    measured = {"stream0": {2: 0.02, 5: 0.06, 9: 0.1, 10: 0.0}, "stream1": {2: 0.06, 5: 0.12, 9: 0.3, 10: 0.0}}
    joint = run_output(bound(indicator="output", threshold=0.1), 10, measured, ("stream0", "stream1"))
    assert joint == {"stream0": "FFSSFSSSFF", "stream1": "FFSSFSSSFF"}
    # Separate decisions (TeaCache's per-stream state). stream0: 0.03 per step -> 3, 4, 5 S, 6 F, measures 0.24
    # over 4 steps: 0.06 -> 7 S, 8 F, 0.14 over 2: 0.07 -> 9 S, 10 last. stream1: 0.06 -> 3 S, 4 F, 0.12 over 2
    # steps: 0.06 -> 5 S, 6 F, and so on.
    separate = {"stream0": {2: 0.03, 6: 0.24, 8: 0.14, 10: 0.0},
                "stream1": {2: 0.06, 4: 0.12, 6: 0.12, 8: 0.12, 10: 0.0}}
    alone = run_output(bound(indicator="output", threshold=0.1, joint=False), 10, separate, ("stream0", "stream1"))
    assert alone == {"stream0": "FFSSSFSFSF", "stream1": "FFSFSFSFSF"}


def test_joint_nan_estimate_computes():
    measured = {"stream0": {2: float("nan"), 3: 0.01, 4: 0.01, 5: 0.01}}
    got = run_output(bound(indicator="output", threshold=0.1), 5, measured)
    assert got["stream0"][:3] == "FFF"


def test_timestep_accumulation_matches_hand_worked_sequence():
    # threshold 0.05, raw relL1 of the timestep embedding: 1 forced; 0.02 per step -> 2 S (0.02), 3 S (0.04),
    # 4 F (0.06, acc 0); 0.03 per step -> 5 S, 6 F; 7 S, 8 F (last).
    policy = bound(indicator="timestep", threshold=0.05)
    rel = {2: 0.02, 3: 0.02, 4: 0.02, 5: 0.03, 6: 0.03, 7: 0.03, 8: 0.03}
    drive = Driver(policy, 8, measure=lambda call, site, metric: rel[call.step])
    seq = ""
    for k in range(1, 9):
        plan = drive(1000.0 * (1 - k / 8))
        first = drive.history[-1][1]
        if first.stop is not None:
            assert first.label == "probe" and first.measure == {(Site("indicator", name="timestep"), REL_L1)}
        seq += "F" if plan.label == "full" else "S"
    assert seq == "FSSFSFSF"


def test_defaults_presets_and_coefficients():
    assert bound().indicator == "output" and bound().threshold == 0.02
    assert bound(indicator="timestep").threshold == 0.05
    assert bound(indicator="timestep", preset="latte").threshold == 0.03
    assert bound(preset="latte").threshold == 0.03
    assert bound(indicator="timestep", preset="open-sora-plan").threshold == 0.05
    with pytest.raises(Exception, match="not offered with indicator='output'"):
        parse_options({"policy": "dynamiccache", "preset": "latte-fast"})
    # raw indicators: Wan's published timestep polynomial is not applied unless asked for
    assert bound(indicator="timestep").poly(0.5) == pytest.approx(0.5)
    assert bound(indicator="timestep", coefficients="auto").poly(0.5) != pytest.approx(0.5)
    with pytest.raises(Exception, match="preset"):
        parse_options({"policy": "dynamiccache", "preset": "open-sora"})
    with pytest.raises(Exception, match="cannot be combined"):
        parse_options({"policy": "dynamiccache", "preset": "latte", "threshold": 0.2})
    with pytest.raises(Exception, match="indicator"):
        parse_options({"policy": "dynamiccache", "indicator": "modulated_input"})


@pytest.mark.parametrize("indicator, threshold", [("output", 0.3), ("timestep", 1.0)])
def test_on_zoo_model(indicator, threshold):
    # Random weights change far more per step than trained ones: larger thresholds than the defaults
    # (tests/test_engine.py's note), so that steps are skipped.
    entry = ZOO["wan"]
    model = entry.build()
    ref = denoise(model, entry)
    cm = compile_(model, policy="dynamiccache", indicator=indicator, threshold=threshold, decision_log=1024)
    out = denoise(cm, entry)
    s = fxcache.stats(cm)
    assert s.skipped_steps > 0 and s.full_steps > 0, s.decision_counts
    assert float((out - ref).abs().mean() / ref.abs().mean()) < 0.05
    # one decision per step for both CFG branches (the streams see the same timestep embedding, and share the
    # output decision)
    by_step: dict = {}
    for d in s.decisions:
        if d["decision"] != "probe":
            by_step.setdefault(d["step"], set()).add(d["decision"])
    assert all(len(v) == 1 for v in by_step.values()), by_step
    assert torch.equal(denoise(cm, entry), out)  # deterministic, independent of the previous generation
