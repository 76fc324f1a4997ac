"""The engine on the zoo of tiny diffusers transformers (tests/zoo.py).

Thresholds. Random-weight models change more from step to step than trained ones, so the published defaults
(tuned on real models) would skip nothing here. The caching tests use one fixed, larger setting per policy for
every family (not tuned per model) so that each policy really skips steps on each model.

Tolerance. A skipped step adds back a residual computed at most a few steps earlier; on the zoo that moves the
final 20-step output by 0.1-3% (relative L1) with the settings below. A cache that holds the wrong thing (here:
zeroed residuals, so skipped blocks become the identity) moves it by far more than 15%: `test_tolerance_catches_a_
broken_cache` shows that the 5% bound can fail. It cannot tell the cond and uncond residuals of a random model
apart (they differ by ~5%), so stream separation is checked structurally in `test_separate_calls_keep_separate_state`.
"""

from __future__ import annotations

import gc

import pytest
import torch

import fxcache
from fxcache.plan import Site

from .loop import denoise, first
from .zoo import CORE, ZOO

CACHING = {
    "fbcache": {"policy": "fbcache", "threshold": 0.2},
    "teacache": {"policy": "teacache", "threshold": 0.3},
    # a random model's timestep embedding moves 30-80% per step: the accumulator needs a larger bound
    "teacache-timestep": {"policy": "teacache", "indicator": "timestep", "threshold": 1.0, "coefficients": "identity"},
    "dynamiccache-output": {"policy": "dynamiccache", "indicator": "output", "threshold": 0.3},
    "magcache": {"policy": "magcache", "threshold": 0.3},
    # a random model's outputs change faster than the paper's theta 0.1 allows: any D_step < 1 ends the warm-up
    "mixcache": {"policy": "mixcache", "theta": 1.0},
    "adacache": {"policy": "adacache", "codebook": "30-fast"},
}
TOLERANCE = 0.05


def rel_l1(a, b) -> float:
    return float((a - b).abs().mean() / b.abs().mean())


def compile_(model, **options):
    options.setdefault("compiler", "eager")
    return torch.compile(model, backend="fxcache", fullgraph=True, options=options)


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            entry = ZOO[name]
            model = entry.build()
            cache[name] = (entry, model, denoise(model, entry))
        return cache[name]

    return get


@pytest.mark.parametrize("name", CORE)
def test_discovery_finds_the_blocks(name, models):
    entry, model, _ = models(name)
    cm = compile_(model, policy="none")
    with torch.no_grad():
        cm(**entry.inputs(torch.tensor(500.0), 1))
    (runtime,) = fxcache.runtimes_of(cm)
    d = runtime.discovery
    expected = {b: len(getattr(model, b)) for b in entry.blocks}
    assert {k.split(".")[-1]: v for k, v in d.block_lists().items()} == expected
    assert d.residual_ok(0, d.num_units) and d.first_residual_cut() is not None
    assert "modulated_input" in d.indicators and "timestep" in d.indicators
    text = fxcache.explain(cm)
    assert "block lists" in text and "residual[0:" in text


@pytest.mark.parametrize("name", CORE)
def test_none_equals_eager(name, models):
    entry, model, _ = models(name)
    cm = compile_(model, policy="none")
    with torch.no_grad():
        for t, prompt in ((900.0, 0), (900.0, 1), (400.0, 0)):
            kw = entry.inputs(torch.tensor(t), 1, prompt=prompt)
            torch.testing.assert_close(first(cm(**kw)), first(model(**kw)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CORE)
def test_none_equals_eager_with_inductor(name, models):
    """fp32 Inductor (C++ on CPU) reorders float arithmetic: agreement to ~1e-5 relative is float rounding."""
    entry, model, _ = models(name)
    cm = compile_(model, policy="none", compiler="inductor")
    with torch.no_grad():
        for t in (900.0, 300.0):
            kw = entry.inputs(torch.tensor(t), 1)
            out, ref = first(cm(**kw)), first(model(**kw))
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert fxcache.stats(cm).compiles == 1


@pytest.mark.parametrize("policy", list(CACHING))
@pytest.mark.parametrize("name", CORE)
def test_policy_skips_and_stays_close(name, policy, models, tmp_path):
    entry, model, ref = models(name)
    options = dict(CACHING[policy])
    if options["policy"] == "magcache":  # calibrate on one uncached generation first
        ratios = tmp_path / "ratios.json"
        calib = compile_(model, policy="magcache", calibrate=str(ratios))
        torch.testing.assert_close(denoise(calib, entry), ref, rtol=1e-5, atol=1e-6)
        assert fxcache.stats(calib).skipped_steps == 0
        options["ratios"] = str(ratios)
        torch._dynamo.reset()
    cm = compile_(model, **options)
    out = denoise(cm, entry)
    s = fxcache.stats(cm)
    streams = 2 if entry.cfg == "separate" else 1
    # calls counts compiled variants run: one per step, plus a continuation after each probe whose guess was wrong
    assert s.steps == 20 * streams and s.steps + s.guesses_wrong <= s.calls <= 2 * s.steps
    assert s.full_steps + s.skipped_steps == s.steps
    assert s.skipped_steps >= 1, s.decisions
    units = fxcache.runtimes_of(cm)[0].discovery.num_units
    assert s.blocks_computed + s.blocks_skipped == s.steps * units
    assert s.blocks_skipped > 0
    assert rel_l1(out, ref) < TOLERANCE
    # Deterministic, and independent of the previous generation (a new one starts from a clean state).
    again = denoise(cm, entry)
    assert torch.equal(out, again)
    other = denoise(cm, entry, seed=1)
    assert not torch.equal(other, out)
    assert torch.equal(denoise(cm, entry), out)


@pytest.mark.parametrize("name", [n for n in CORE if ZOO[n].cfg == "separate"])
def test_separate_calls_keep_separate_state(name, models):
    entry, model, _ = models(name)
    cm = compile_(model, policy="fbcache", threshold=0.2)
    out = denoise(cm, entry)
    ((runtime, inst),) = fxcache.instances_of(cm)
    decisions = fxcache.stats(cm).decisions
    per_stream = {}
    for rec in decisions:
        per_stream.setdefault(rec["stream"], []).append(rec["step"])
    assert sorted(per_stream) == ["stream0", "stream1"]
    assert all(steps == list(range(1, 21)) for steps in per_stream.values())
    caches = [inst.streams().states[s].cache for s in ("stream0", "stream1")]
    head = next(k for k in caches[0] if k.start == 0)
    assert not torch.equal(caches[0][head][0][0], caches[1][head][0][0])  # cond and uncond residuals differ
    # Naming the streams explicitly gives the same result as detecting them.
    del runtime, inst, caches, cm
    torch._dynamo.reset()
    gc.collect()
    named = compile_(model, policy="fbcache", threshold=0.2)
    torch.testing.assert_close(denoise(named, entry, names=("cond", "uncond")), out, rtol=0, atol=0)
    assert {r["stream"] for r in fxcache.stats(named).decisions} == {"cond", "uncond"}


def test_tolerance_catches_a_broken_cache(models, monkeypatch):
    """Negative control: the same FBCache run with the cached residuals zeroed (a cache that stores the wrong
    thing, so skipped blocks silently become the identity) lands far outside the tolerance."""
    from fxcache.runtime.state import StreamState

    entry, model, ref = models("wan")
    cm = compile_(model, policy="fbcache", threshold=0.2)
    assert rel_l1(denoise(cm, entry), ref) < TOLERANCE
    store = StreamState.store
    monkeypatch.setattr(StreamState, "store", lambda self, site, values, *rest: store(
        self, site, [v * 0 if site.start > 0 else v for v in values], *rest))
    broken = denoise(cm, entry)
    assert fxcache.stats(cm).skipped_steps > 0
    assert rel_l1(broken, ref) > 3 * TOLERANCE


def test_reset_clears_state(models):
    entry, model, _ = models("wan")
    cm = compile_(model, policy="fbcache", threshold=0.2)
    denoise(cm, entry, steps=5)
    ((_, inst),) = fxcache.instances_of(cm)
    assert inst.streams().states and fxcache.stats(cm).cache_bytes > 0
    fxcache.reset(cm)
    assert not inst.streams().states and fxcache.stats(cm).cache_bytes == 0


def test_site_vocabulary():
    assert str(Site("residual", 0, 3)) == "residual[0:3]"
    assert str(Site("indicator", name="timestep")) == "indicator:timestep"


def test_graph_breaks_cache_where_the_blocks_are(models):
    """Lumina2 cannot be traced in one graph (data-dependent sequence lengths): Dynamo hands the backend several
    graphs; the ones holding blocks are cached, the others compiled plainly, and the output stays right."""
    entry, model, ref = models("lumina2")
    cm = torch.compile(model, backend="fxcache", options={"policy": "fbcache", "threshold": 0.2,
                                                          "compiler": "eager"})
    out = denoise(cm, entry)
    s = fxcache.stats(cm)
    assert s.steps > 0 and s.skipped_steps > 0
    assert rel_l1(out, ref) < TOLERANCE


def test_dynamic_shapes_with_inductor(models):
    """dynamic=True (or Dynamo's automatic dynamic shapes after a batch-size change) adds size inputs such as
    L['timestep'].size()[0] to the graph: the timestep must still be found, and symbolic variants compile."""
    entry, model, ref = models("wan")
    cm = torch.compile(model, backend="fxcache", dynamic=True,
                       options={"policy": "teacache", "threshold": 0.3, "compiler": "inductor"})
    out = denoise(cm, entry)
    s = fxcache.stats(cm)
    assert s.skipped_steps > 0 and [d["step"] for d in s.decisions[:4]] == [1, 1, 2, 2]
    assert rel_l1(out, ref) < TOLERANCE
