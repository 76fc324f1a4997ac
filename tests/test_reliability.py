"""Reliability (issue 7): cache state belongs to one model instance, one thread, one generation; memory is bounded;
nothing non-finite is ever reused. Each test reproduces a failure that was measured on the code before the fix.

Tiny zoo models (tests/zoo.py), `compiler="eager"` (the runtime's logic does not depend on the inner compiler),
caching thresholds of tests/test_engine.py so that every policy really skips on random weights.
"""

from __future__ import annotations

import gc
import threading
import warnings
import weakref
from itertools import zip_longest

import pytest
import torch

import fxcache

from .loop import _batched, denoise, denoising, first
from .test_engine import CACHING
from .zoo import ZOO


def compile_(model, **options):
    options.setdefault("compiler", "eager")
    return torch.compile(model, backend="fxcache", fullgraph=True, options=options)


def twin(entry, seed: int):
    """Another model of the same architecture with different weights."""
    model = entry.build()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def reference(model, entry, steps, options, **kw):
    """The output of a fresh compiled model running alone."""
    torch._dynamo.reset()
    out = denoise(compile_(model, **options), entry, steps=steps, **kw)
    torch._dynamo.reset()
    return out


# ----------------------------------------------------------------------------------- 1. one state per model instance


@pytest.mark.parametrize("policy", ["fbcache", "magcache"])
def test_two_models_of_one_class_keep_their_own_state(policy):
    """Interleaving two Wans of different weights (20 and 12 steps) used to share one runtime: 10 spurious new
    generations and no skips for A, a changed output for B under MagCache, and stats(B) == 0 steps."""
    entry = ZOO["wan"]
    a, b = entry.build(), twin(entry, 1)
    options = dict(CACHING[policy])
    if policy == "magcache":
        # per-stream ratios, different for cond and uncond: a shared state would mix them up
        options["ratios"] = {"stream0": [1.0] * 20, "stream1": [0.9] * 20}
    ref_a = reference(a, entry, 20, options)
    ref_b = reference(b, entry, 12, options)
    ca, cb = compile_(a, **options), compile_(b, **options)
    outs = {}
    for xa, xb in zip_longest(denoising(ca, entry, steps=20), denoising(cb, entry, steps=12)):
        outs["a"] = xa if xa is not None else outs["a"]
        outs["b"] = xb if xb is not None else outs["b"]
    assert torch.equal(outs["a"], ref_a) and torch.equal(outs["b"], ref_b)
    sa, sb = fxcache.stats(ca), fxcache.stats(cb)
    assert (sa.steps, sb.steps) == (40, 24)
    assert (sa.generations, sb.generations) == (1, 1)
    assert sa.skipped_steps > 0 and sb.skipped_steps > 0
    fxcache.reset(cb)  # reset is per instance too
    assert fxcache.stats(cb).cache_bytes == 0 and fxcache.stats(ca).cache_bytes > 0


def test_state_is_freed_with_the_model():
    entry = ZOO["wan"]
    model = entry.build()
    cm = compile_(model, **CACHING["fbcache"])
    denoise(cm, entry, steps=4)
    ((runtime, inst),) = fxcache.instances_of(cm)
    buffer = weakref.ref(next(iter(inst.streams().states["stream0"].cache.values()))[0][0])  # newest slot, output 0
    assert buffer() is not None
    del model, cm, inst
    gc.collect()
    assert buffer() is None and runtime.instances.all() == []


# -------------------------------------------------------------------------------------------------------- 2. threads


def _threads(jobs):
    results, errors = {}, []

    def run(key, fn):
        try:
            results[key] = fn()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_different_models_in_different_threads():
    """Used to raise 'read residual[0:1] before writing it' in 2-5 of 6 generations, or give wrong outputs."""
    entry = ZOO["wan"]
    a, b = entry.build(), twin(entry, 1)
    options = CACHING["fbcache"]
    ref = {"a": reference(a, entry, 12, options), "b": reference(b, entry, 12, options)}
    ca, cb = compile_(a, **options), compile_(b, **options)
    out = _threads({"a": lambda: [denoise(ca, entry, steps=12) for _ in range(3)],
                    "b": lambda: [denoise(cb, entry, steps=12) for _ in range(3)]})
    for key in ("a", "b"):
        assert all(torch.equal(o, ref[key]) for o in out[key])
    assert fxcache.stats(ca).steps == fxcache.stats(cb).steps == 3 * 12 * 2


def test_one_model_in_two_threads():
    """Each thread has its own streams: concurrent generations on one model do not see each other's caches."""
    entry = ZOO["wan"]
    model = entry.build()
    options = CACHING["fbcache"]
    ref = {s: reference(model, entry, 12, options, seed=s) for s in (0, 1)}
    cm = compile_(model, **options)
    out = _threads({s: (lambda s=s: [denoise(cm, entry, steps=12, seed=s) for _ in range(3)]) for s in (0, 1)})
    for s in (0, 1):
        assert all(torch.equal(o, ref[s]) for o in out[s])
    s = fxcache.stats(cm)
    assert s.steps == 2 * 3 * 12 * 2 and s.skipped_steps > 0


# ---------------------------------------------------------------------------- 3. generations: interrupted and 1-step


@pytest.mark.parametrize("name", ["wan", "pixart"])
@pytest.mark.parametrize("policy", ["fbcache", "teacache"])
def test_generation_after_an_interrupted_or_one_step_run(name, policy):
    """A run interrupted inside its first step, or a 1-step run, left the next generation's calls named
    stream2/stream3 and its step 2 on stale state."""
    entry = ZOO[name]
    model = entry.build()
    options = CACHING[policy]
    ref = reference(model, entry, 12, options)
    cm = compile_(model, **options)
    with torch.no_grad():  # interrupted after the first call of its first step
        kw = entry.inputs(torch.tensor(1000.0), 1, prompt=0)
        cm(**(kw if entry.cfg == "separate" else _batched(entry.inputs(torch.tensor(1000.0), 1, prompt=1), kw)))
    assert torch.equal(denoise(cm, entry, steps=12), ref)
    denoise(cm, entry, steps=1)  # a 1-step generation
    assert torch.equal(denoise(cm, entry, steps=12), ref)
    streams = {d["stream"] for d in fxcache.stats(cm).decisions}
    assert streams == ({"stream0", "stream1"} if entry.cfg == "separate" else {"stream0"})


def test_one_step_generation_through_wan_pipeline():
    """The measured case: the reference model through diffusers' WanPipeline, TeaCache 0.1; after a 1-step
    generation the same seed gave a different video (max |diff| 0.49)."""
    from bench.pipeline import generate
    from bench.reference.data import all_prompts
    from bench.reference.model import load

    model, encoder = load()
    cond, uncond = encoder.encode(all_prompts()[:1])
    cm = compile_(model, policy="teacache", threshold=0.1)
    a = generate(cm, cond, uncond, num_inference_steps=20, seed=0)
    generate(cm, uncond, cond, num_inference_steps=1, seed=1)  # another prompt and seed
    b = generate(cm, cond, uncond, num_inference_steps=20, seed=0)
    assert torch.equal(a, b)
    assert fxcache.stats(cm).skipped_steps > 0


def test_block_graph_without_timestep_starts_new_generations():
    """Lumina2 breaks the graph before its blocks: the block graph takes the timestep its first graph published.
    Generation 2 used to start with a skip computed from generation 1's cache."""
    entry = ZOO["lumina2"]
    model = entry.build()
    cm = torch.compile(model, backend="fxcache", options={**CACHING["fbcache"], "compiler": "eager"})
    first_run = denoise(cm, entry, steps=12)
    again = denoise(cm, entry, steps=12)
    assert torch.equal(first_run, again)
    s = fxcache.stats(cm)
    assert s.generations == 2 and s.skipped_steps > 0
    # (cond and uncond differ in text length, so each has a block graph of its own: 2 x 2 first steps)
    assert [d["decision"] for d in s.decisions if d["step"] == 1] == ["full"] * 4


def test_num_steps_ends_a_generation():
    entry = ZOO["wan"]
    cm = compile_(entry.build(), **CACHING["fbcache"], num_steps=6)
    denoise(cm, entry, steps=6)
    with torch.no_grad():  # the same timesteps again, as if a second generation began at 1000 with the same latent
        denoise(cm, entry, steps=6)
    assert fxcache.stats(cm).generations == 2


# ---------------------------------------------------------------------------------------------- 4. bounded memory


def test_decision_log_is_bounded():
    entry = ZOO["wan"]
    cm = compile_(entry.build(), **CACHING["fbcache"], decision_log=50)
    for _ in range(5):
        denoise(cm, entry, steps=10)
    s = fxcache.stats(cm)
    assert s.steps == 100 and len(s.decisions) == 50
    assert sum(s.decision_counts.values()) == 100
    assert s.decisions[-1]["step"] == 10


# ------------------------------------------------------------------------------------------ 5. nothing non-finite


def _poisoned_loop(cm, entry, steps: int, bad_step: int, value: float):
    """A separate-CFG loop in which the calls of `bad_step` get a latent with one non-finite value (as a numerical
    overflow would); that step's outputs are dropped, so only the cache can carry the poison on."""
    outs = []
    x = torch.randn(entry.inputs(torch.tensor(1000.0), 1)["hidden_states"].shape,
                    generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for k in range(steps):
            t = torch.tensor(1000.0 * (1 - k / steps))
            xin = x.clone()
            if k + 1 == bad_step:
                xin.view(-1)[0] = value
            cond = first(cm(**{**entry.inputs(t, 1, prompt=0), "hidden_states": xin}))
            uncond = first(cm(**{**entry.inputs(t, 1, prompt=1), "hidden_states": xin}))
            if k + 1 != bad_step:
                x = x - (1 / steps) * (uncond + 3.0 * (cond - uncond))
                outs.append(cond)
    return outs


@pytest.mark.parametrize("options", [
    # MagCache computes steps 1-4 (retention 0.2 of 20) and then reuses: step 4 writes a NaN residual.
    {"policy": "magcache", "ratios": [1.0] * 20, "threshold": 0.3, "max_skips": 2, "retention": 0.2},
    # TeaCache on the timestep indicator: the distance stays finite while the residual holds inf.
    {"policy": "teacache", "indicator": "timestep", "threshold": 1.0, "coefficients": "identity"},
    {"policy": "fbcache", "threshold": 0.2},
    # FORA computes steps 1, 4, 7, ...: step 4 writes NaN attention / MLP outputs, steps 5-6 would reuse them.
    {"policy": "fora", "interval": 3},
], ids=["magcache", "teacache", "fbcache", "fora"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_values_are_never_reused(options, value):
    entry = ZOO["wan"]
    cm = compile_(entry.build(), **options)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        outs = _poisoned_loop(cm, entry, steps=20, bad_step=4, value=value)
    assert all(torch.isfinite(o).all() for o in outs), [bool(torch.isfinite(o).all()) for o in outs]
    s = fxcache.stats(cm)
    assert s.not_cached >= 1 and s.skipped_steps + s.sites_reused > 0
    assert sum("non-finite" in str(x.message) for x in w) == 1


@pytest.mark.parametrize("name", ["fbcache", "teacache", "magcache"])
def test_a_nan_distance_means_compute(name):
    from fxcache.policies import POLICIES

    from .driver import Driver

    policy = POLICIES[name](**{k: v for k, v in CACHING[name].items() if k != "policy"},
                            **({"ratios": [1.0] * 10} if name == "magcache" else {}))

    class D:  # the minimum of a discovery the policies bind to
        num_units = 3
        indicators = {"modulated_input": None}
        units = []

        def residual_ok(self, a, b):
            return True

        def first_residual_cut(self):
            return 1

        def snap(self, c, lo=0, hi=None):  # every cut is valid: the cut in [lo, hi] nearest to c
            return min(max(c, lo), self.num_units if hi is None else hi)

    policy.bind(D())
    drive = Driver(policy, 10, measure=lambda call, site, metric: float("nan"))
    assert drive(999.0).label == "full"
    plan = drive(900.0)
    if drive.history[-1][1].stop is not None:  # probing policies: a NaN distance must compute
        assert len(drive.history[-1][1].measure) == 1
        assert plan.label == "full"
