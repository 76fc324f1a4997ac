"""AdaCache (its paper's Section 3 and the official code's rules, docs/methods.md): the schedule on scripted
distances against sequences worked out by hand, MoReg's motion term against a torch reference, and the policy on zoo models (eager inner compiler)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import fxcache
from fxcache.backend import parse_options
from fxcache.metrics import REL_L1, metric, motion
from fxcache.plan import Site, residual
from fxcache.policies.adacache import lookup

from .driver import Driver
from .loop import denoise
from .test_block_policies import bound as bound_policy
from .zoo import ZOO

TOLERANCE = 0.05  # tests/test_engine.py's
BOOK = {0.125: 3, 0.25: 2, 1.0: 1}  # thresholds exact in binary: the boundary cases below are exact


def compile_(model, **options):
    options.setdefault("compiler", "eager")
    return torch.compile(model, backend="fxcache", fullgraph=True, options={"policy": "adacache", **options})


def bound(name: str = "wan", **options):
    return bound_policy(name, policy="adacache", **options)


def script(policy, n: int, raw: dict, motion: dict | None = None, num_steps: int | None | str = "n"):
    """One stream's calls 1..n; computed steps with a reference get `raw[k]` as the probe's rel_l1 (and
    `motion[k]` as every motion metric the plan asks for). Returns (labels, plans, rates after each call)."""
    drive = Driver(policy, n if num_steps == "n" else num_steps,
                   measure=lambda call, site, metric: raw[call.step] if metric == REL_L1 else motion[call.step])
    labels, plans, rates = "", [], []
    for k in range(1, n + 1):
        plan = drive(1000.0 * (1 - k / n))
        labels += "C" if plan.label == "full" else "s"
        plans.append(plan)
        rates.append(drive.state().rate)
    return labels, plans, rates


# ----------------------------------------------------------------------------------------------------- schedule


def test_rate_sequence_by_hand():
    """N = 12, codebook {0.125: 3, 0.25: 2, 1: 1}. Worked by hand (d = raw / steps since the last compute):
    k=1 forced, no reference; k=2 d=0.0625 -> 3; k=3,4 skipped; k=5 d=0.375/3=0.125, not < 0.125 (boundary) -> 2
    (undivided, 0.375 would give 1); k=6 skipped; k=7 d=0.375/2=0.1875 -> 2; k=8 skipped; k=9 d=1.5/2=0.75 -> 1;
    k=10 d=0.0625 -> 3; k=11 = N-1 forced (10 + 3 = 13); k=12 = N forced."""
    policy = bound(codebook=BOOK)
    raw = {2: 0.0625, 5: 0.375, 7: 0.375, 9: 1.5, 10: 0.0625, 11: 0.0625, 12: 0.0625}
    labels, plans, rates = script(policy, 12, raw)
    assert labels == "CCssCsCsCCCC"
    assert rates == [1, 3, 3, 3, 2, 2, 2, 2, 1, 3, 3, 3]
    probe = policy.probes[0]
    assert not plans[0].measure  # the first computed step has no reference
    assert all(p.measure == {(probe, REL_L1)} for p, c in zip(plans[1:], labels[1:]) if c == "C")
    assert all(p.write == {residual(0, 3), probe} for p, c in zip(plans, labels) if c == "C")
    assert all(p.reuse == {residual(0, 3)} and not p.write for p, c in zip(plans, labels) if c == "s")
    # Without num_steps only step 1 is forced: steps 11 and 12 follow the rate set at step 10.
    labels, _, _ = script(policy, 12, raw, num_steps=None)
    assert labels == "CCssCsCsCCss"


def test_codebook_lookup_and_presets():
    book = sorted(BOOK.items())
    assert [lookup(book, d) for d in (0.0, 0.124, 0.125, 0.2, 0.25, 0.99, 1.0, 7.0, math.nan)] == [3, 3, 2, 2, 1, 1,
                                                                                                  1, 1, 1]
    p = bound()
    # "auto": the 100-step preset from 55 steps on, the 30-step slow one below and when N is unknown.
    assert p.table(100) == (sorted({0.03: 12, 0.05: 10, 0.07: 8, 0.09: 6, 0.11: 4, 1.0: 3}.items()), (10, 90))
    assert p.table(30) == (sorted({0.08: 3, 0.16: 2, 0.24: 1, 0.32: 1, 0.40: 1, 1.0: 1}.items()), (4, 26))
    assert p.table(None) == p.table(30)
    # Rescaled: thresholds times P / N, rates times N / P (rounded down, >= 1), the MoReg window times N / P.
    book20, window20 = p.table(20)
    assert [r for _, r in book20] == [2, 1, 1, 1, 1, 1] and window20 == (3, 17)
    assert [t for t, _ in book20] == pytest.approx([0.12, 0.24, 0.36, 0.48, 0.60, 1.5])
    book60, window60 = p.table(60)
    assert [r for _, r in book60] == [7, 6, 4, 3, 2, 1] and window60 == (6, 54)
    assert [r for _, r in bound(codebook="100").table(50)[0]] == [6, 5, 4, 3, 2, 1]  # = the 30-step fast rates
    assert bound(codebook="30-fast").table(30)[0] == sorted({0.08: 6, 0.16: 5, 0.24: 4, 0.32: 3, 0.40: 2,
                                                             1.0: 1}.items())
    # An explicit mapping is used as given, sorted by threshold.
    assert bound(codebook={1.0: 1, 0.25: 2, 0.125: 3}).table(20)[0] == book


def test_moreg_sequence_by_hand():
    """N = 10, moreg_steps (3, 6), moreg_hyp (0.5, 2, 1): m = (motion / 0.5)^2, mograd_mul 10.
    k=2: outside the window, m = 1, g = 0: d = 0.0625 -> 3. k=5: motion 0.25 -> m = 0.25, g = 10 (0.25 - 1) / 3 =
    -2.5, m = 2.75; d = 0.1875 / 3 = 0.0625, score 0.171875 -> 2. k=7: outside, m = 1, g = 10 (1 - 0.25) / 2 = 3.75,
    m = 4.75; d = 0.0625 / 2, score 0.1484375 -> 2 (0.03125 -> 3 without MoReg). k=9 = N-1 forced: m = 1, g = 0,
    d = 0.03125 -> 3. k=10 forced."""
    policy = bound(codebook=BOOK, moreg=True, moreg_steps=(3, 6), moreg_hyp=(0.5, 2, 1))
    assert [m for _, m in policy.motion] == [metric("motion", per_frame=16, stride=1)]  # Wan zoo: 2 latent frames of 4 x 4 tokens
    raw = {2: 0.0625, 5: 0.1875, 7: 0.0625, 9: 0.0625, 10: 0.0625}
    labels, plans, rates = script(policy, 10, raw, motion={5: 0.25})
    assert labels == "CCssCsCsCC"
    assert rates == [1, 3, 3, 3, 2, 2, 2, 2, 3, 3]
    motion = set(policy.motion)
    assert [k + 1 for k, p in enumerate(plans) if p.measure & motion] == [5]  # only inside the window
    plain, _, plain_rates = script(bound(codebook=BOOK), 10, {k: raw.get(k, 0.0625) for k in range(2, 11)})
    assert plain_rates[6] == 3  # the motion gradient is what lowered the rate at k = 7


def test_non_finite_distance_computes_next():
    policy = bound(codebook=BOOK)
    labels, _, rates = script(policy, 8, {2: 0.0625, 5: math.nan, 6: 0.0625, 7: 0.0625, 8: 0.0625})
    assert labels == "CCssCCCC" and rates[4] == 1


# ------------------------------------------------------------------------------------------------------- MoReg


def _motion_reference(r: torch.Tensor, per_frame: int, stride: int) -> float:
    """The official term on a (B, frames * S, C) residual: offsets of stride * S tokens, L1 norms over all."""
    o = stride * per_frame
    a, b = r[:, o:], r[:, :-o]
    return float((a - b).abs().sum() / (a.abs().sum() + b.abs().sum()))


@pytest.mark.parametrize("shape, per_frame, stride", [((2, 5 * 6, 7), 6, 1), ((1, 4 * 9, 3), 9, 2),
                                                     ((3, 3, 8), 1, 1)])
def test_motion_matches_reference(shape, per_frame, stride):
    r = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    num, den = motion(r, per_frame=per_frame, stride=stride)
    assert num.shape == den.shape == (shape[0],)  # per sample, as the other distance sums
    assert float(num.sum() / den.sum()) == pytest.approx(_motion_reference(r, per_frame, stride), rel=1e-5)


def test_motion_measured_in_the_variant_matches_reference():
    """Inside the compiled variant: the runtime's motion value equals the reference on the probe's stored value."""
    entry = ZOO["wan"]
    cm = compile_(entry.build(), moreg=True, moreg_steps=(1, 20), num_steps=6)
    seen = []
    with torch.no_grad():
        cm(**entry.inputs(torch.tensor(900.0), 1))  # binds the policy
    ((runtime, inst),) = fxcache.instances_of(cm)
    policy = runtime.policy
    observe = policy.observe

    def spy(call, state, plan):
        (site, metric), = policy.motion
        if (site, metric) in call.measured:
            value = inst.streams().states[call.stream].cache[site][0][0]
            seen.append((call.measured[(site, metric)], _motion_reference(value.float(), 16, 1)))
        observe(call, state, plan)

    policy.observe = spy
    fxcache.reset(cm)
    denoise(cm, entry, steps=6)
    assert seen and all(got == pytest.approx(want, rel=1e-4) for got, want in seen), seen


def test_moreg_layouts():
    assert [m for _, m in bound("latte", moreg=True).motion] == [metric("motion", per_frame=1, stride=1)]  # temporal block (B * S, F, D)
    p = bound("cogvideox", moreg=True)
    assert p.probes == [Site("module", 1, 2, "attn1")]  # no temporal modules: the self-attention
    assert [m for _, m in p.motion] == [metric("motion", per_frame=16, stride=1, output=1)]  # the video output of the joint attention (text first)
    assert [m for _, m in bound("wan", moreg=True, tokens_per_frame=8, moreg_strides=[1, 3]).motion] == [
        metric("motion", per_frame=8, stride=1), metric("motion", per_frame=8, stride=3)]


# ------------------------------------------------------------------------------------------------------ probes


def test_probe_sites_and_blocks():
    assert bound("wan").probes == [Site("module", 1, 2, "attn1")]  # 13 of 28 -> 1 of 3
    assert bound("wan", probe_site="ca-mlp").probes == [Site("module", 1, 2, "attn2"), Site("module", 1, 2, "ffn")]
    assert bound("wan", probe_block=[0, 2]).probes == [Site("module", 0, 1, "attn1"), Site("module", 2, 3, "attn1")]
    assert bound("latte").probes == [Site("module", 3, 4, "attn1")]  # the temporal blocks 1, 3, 5: the middle one
    assert bound("latte", probe_site="s-attn").probes == [Site("module", 2, 3, "attn1")]
    assert bound("cogvideox", probe_site="ca-mlp").probes == [Site("module", 1, 2, "ff")]  # no cross-attention
    from fxcache.policies import Unsupported

    with pytest.raises(Unsupported, match="probe_block"):
        bound("wan", probe_block=7)
    with pytest.raises(Unsupported, match="probe_block"):
        bound("latte", probe_site="t-attn", probe_block=0)  # a spatial block


def test_two_probes_are_averaged():
    policy = bound(codebook=BOOK, probe_site="ca-mlp")
    a, b = policy.probes
    measured = {2: {(a, REL_L1): 0.0625, (b, REL_L1): 0.3125}}
    drive = Driver(policy, 10, measure=lambda call, site, metric: measured[call.step][(site, metric)])
    for _ in range(2):
        drive(None)
    state = drive.state()
    assert state.last["distance"] == pytest.approx(0.1875) and state.rate == 2


# ------------------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize("options, words", [
    ({"codebook": "50"}, ["codebook", "'100'", "'30-fast'", "'30-slow'", "'auto'"]),
    ({"codebook": {0.1: 0}}, ["codebook", "int rates >= 1"]),
    ({"codebook": {-0.1: 2}}, ["codebook", "thresholds > 0"]),
    ({"codebook": {}}, ["codebook", "non-empty"]),
    ({"codebook": {0.1: 2.5}}, ["codebook", "int rates"]),
    ({"probe_site": "t-mlp"}, ["probe_site", "t-attn | s-attn | ca-mlp"]),
    ({"probe_block": -1}, ["probe_block", "unit index >= 0"]),
    ({"probe_block": True}, ["probe_block"]),
    ({"moreg": "yes"}, ["moreg", "bool"]),
    ({"moreg_steps": (9, 3)}, ["moreg_steps", "first <= last"]),
    ({"moreg_strides": [0]}, ["moreg_strides", ">= 1"]),
    ({"moreg_hyp": (0.0, 8, 1)}, ["moreg_hyp", "h0 > 0"]),
    ({"mograd_mul": math.inf}, ["mograd_mul", "finite"]),
    ({"tokens_per_frame": 0}, ["tokens_per_frame", ">= 1"]),
])
def test_bad_options_name_the_option(options, words):
    with pytest.raises(ValueError) as e:
        parse_options({"policy": "adacache", **options})
    assert all(w in str(e.value) for w in words), (words, str(e.value))


def test_equal_thresholds_are_refused():
    from fractions import Fraction

    with pytest.raises(ValueError, match="equal thresholds"):  # distinct keys, one float
        parse_options({"policy": "adacache", "codebook": {0.1: 2, Fraction(1, 10): 3, 1.0: 1}})


def test_moreg_refused_on_image_models_and_unknown_layouts():
    with pytest.raises(ValueError, match=r"moreg.*4-D.*video"):
        bound("pixart", moreg=True)
    with pytest.raises(ValueError, match=r"moreg.*layout"):
        bound("cogvideox", moreg=True, probe_site="ca-mlp")  # its MLP runs on text + video tokens
    with pytest.raises(ValueError, match=r"moreg.*latent frames"):
        bound("wan", moreg=True, moreg_strides=[2])  # 2 latent frames: no pair 2 frames apart
    entry = ZOO["pixart"]
    cm = compile_(entry.build(), moreg=True)
    with pytest.raises(ValueError, match="moreg"):  # reaches the caller unwrapped (an OptionError)
        with torch.no_grad():
            cm(**entry.inputs(torch.tensor(500.0), 1))


# --------------------------------------------------------------------------------------------------- on models


def rel_l1(a, b) -> float:
    return float((a - b).abs().mean() / b.abs().mean())


@pytest.mark.parametrize("name, options", [
    ("wan", {"num_steps": 20}),
    ("wan", {"num_steps": 20, "moreg": True, "codebook": "30-fast"}),
    ("latte", {"num_steps": 20, "moreg": True}),
    ("cogvideox", {"num_steps": 20, "codebook": "30-fast"}),  # batched CFG: one schedule for both halves
])
def test_on_zoo_model(name, options):
    entry = ZOO[name]
    model = entry.build()
    ref = denoise(model, entry)
    cm = compile_(model, **options)
    out = denoise(cm, entry)
    s = fxcache.stats(cm)
    assert s.skipped_steps > 0 and s.blocks_skipped > 0, s
    computed = [r["step"] for r in s.decisions if r["decision"] == "full"]
    assert {1, 19, 20} <= set(computed)  # forced steps
    assert rel_l1(out, ref) < TOLERANCE
    again = denoise(cm, entry)
    assert torch.equal(out, again)  # deterministic, independent of the previous generation
    assert [r["decision"] for r in fxcache.stats(cm).decisions[-len(s.decisions):]] == [
        r["decision"] for r in s.decisions]


def test_probe_outside_the_model_falls_back_with_a_warning():
    entry = ZOO["wan"]
    model = entry.build()
    cm = compile_(model, probe_block=9)
    with pytest.warns(UserWarning, match=r"adacache.*probe_block"):
        out = denoise(cm, entry, steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(out, denoise(model, entry, steps=3), rtol=1e-5, atol=1e-6)
