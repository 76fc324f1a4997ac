"""fxcache under diffusers' context parallelism (Ulysses degree 2, two gloo processes on 127.0.0.1).

For tiny Wan (its shard taken in block 0's own hook) and tiny Flux (sharded at the model's input), each policy runs
once in this process (the single-process reference) and once on two ranks, as a user runs it: `enable_parallelism`,
one eager call, `torch.compile(..., backend="fxcache")`. The decisions must be the same on both ranks and equal to
the single process's, and so must the output, up to float rounding. `check_ranks` is on: a rank that disagrees
raises at once instead of hanging. Every two-process run is bounded (bench/ranks.py): a process group timeout and a
deadline after which the parent kills the ranks.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import fxcache
from bench.ranks import enable_ulysses, run_ranks

from .loop import denoise, first
from .zoo import ZOO

STEPS = 12
# Settings at which each policy both computes and caches on these tiny models (their distances are larger than a
# trained model's), so that agreement is tested where a decision could go either way.
SPECS = {
    "wan": {
        "none": {"policy": "none"},
        "default": {},
        "fbcache": {"policy": "fbcache"},
        "teacache": {"policy": "teacache"},
        "magcache": {"policy": "magcache", "threshold": 0.3, "ratios": "calibrate"},
        "taylorseer": {"policy": "taylorseer"},
        "fastercache": {"policy": "fastercache"},
        "mixcache": {"policy": "mixcache", "theta": 1.0},
    },
    "flux": {  # the policies that decide per step (Wan above covers none, the default and schedules; CI time)
        "fbcache": {"policy": "fbcache", "threshold": 0.3},
        "teacache": {"policy": "teacache", "threshold": 0.6},
        "magcache": {"policy": "magcache", "threshold": 0.3, "ratios": "calibrate"},
        "fastercache": {"policy": "fastercache"},
        "mixcache": {"policy": "mixcache"},
    },
}


def _generate(family: str, options: dict, degree: int, steps: int = STEPS, nan_at: int | None = None,
              cfg: str | None = None):
    """One generation of `family` with fxcache `options`, sharded over `degree` ranks (1: not sharded). Returns
    (output, [(step, stream, decision)], stats)."""
    torch._dynamo.reset()
    entry = ZOO[family]
    model = entry.build()
    if degree > 1:
        enable_ulysses(model, degree)
    with torch.no_grad():  # the eager call diffusers' hooks need before Dynamo traces them
        model(**entry.inputs(torch.tensor(1000.0), 1))
    options = {"compiler": "eager", **options, "check_ranks": degree > 1}
    compiled = torch.compile(model, backend="fxcache", options=options)
    if nan_at is None:
        out = denoise(compiled, entry, steps=steps, cfg=cfg)
    else:
        out = _nan_loop(compiled, entry, steps, nan_at)
    s = fxcache.stats(compiled)
    return out.numpy(), [(d["step"], d["stream"], d["decision"]) for d in s.decisions], s


@torch.no_grad()
def _nan_loop(model, entry, steps: int, nan_at: int) -> torch.Tensor:
    """A cond-only Euler loop whose call at step `nan_at` sees NaN in the last latent row (the tokens of the last
    rank's shard); that call's output is discarded, as a pipeline that retries a step would."""
    x = entry.inputs(torch.tensor(1000.0), 1)["hidden_states"]
    sigmas = torch.linspace(1.0, 1.0 / steps, steps).tolist() + [0.0]
    for k in range(steps):
        inp = x.clone()
        if k == nan_at:
            inp[..., -1, :] = float("nan")
        v = first(model(**{**entry.inputs(torch.tensor(1000.0 * sigmas[k]), 1), "hidden_states": inp}))
        if k != nan_at:
            x = x + (sigmas[k + 1] - sigmas[k]) * v
    return x


def _family_on_ranks(rank: int, world: int, family: str, specs: dict) -> dict:
    return {name: _generate(family, options, world)[:2] for name, options in specs.items()}


def _resolve_ratios(specs: dict, tmp_path) -> dict:
    """MagCache calibrated on one uncached single-process generation; both runs read the same ratios."""
    out = {}
    for name, options in specs.items():
        if options.get("ratios") == "calibrate":
            path = tmp_path / f"{name}-ratios.json"
            out[name] = {**options, "ratios": str(path)}
        else:
            out[name] = options
    return out


@pytest.mark.parametrize("family", ["wan", "flux"])
def test_ranks_decide_alike_and_as_one_process(family, tmp_path):
    specs = _resolve_ratios(SPECS[family], tmp_path)
    calibrate = next((o["ratios"] for o in specs.values() if "ratios" in o), None)
    if calibrate is not None:
        _generate(family, {"policy": "magcache", "calibrate": calibrate}, 1)
    alone = {name: _generate(family, options, 1)[:2] for name, options in specs.items()}
    ranks = run_ranks(_family_on_ranks, world=2, args=(family, specs), timeout_s=420, pg_timeout_s=120)
    cached_somewhere = []
    for name in specs:
        ref_out, ref_decisions = alone[name]
        for r in ranks:
            out, decisions = r.value[name]
            assert decisions == ref_decisions, f"{family}/{name}: rank {r.rank} decided otherwise than one process"
            np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=1e-5, err_msg=f"{family}/{name} rank {r.rank}")
        if any(d != "full" for _, _, d in ref_decisions):
            cached_somewhere.append(name)
    # Agreement is tested where it matters: every caching policy cached some steps at these settings.
    assert set(cached_somewhere) >= set(specs) - {"none", "default", "taylorseer"}, cached_somewhere


BATCHED = {"fbcache": {"policy": "fbcache"}, "fastercache": {"policy": "fastercache"}}


def _batched_on_ranks(rank: int, world: int) -> dict:
    import warnings

    out = {}
    for name, options in BATCHED.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out[name] = (*_generate("wan", options, world, cfg="batched")[:2],
                         sum("context parallelism" in str(w.message) for w in caught))
    return out


def test_batched_cfg_under_context_parallelism():
    """One call on [uncond; cond]: the ranks agree (check_ranks); FBCache decides as one process; FasterCache's
    CFG-Cache needs the cond-half graph, which is not traced under context parallelism: one warning, then feature
    reuse only, on every rank alike."""
    alone = _generate("wan", BATCHED["fbcache"], 1, cfg="batched")
    ranks = run_ranks(_batched_on_ranks, world=2, timeout_s=240, pg_timeout_s=60)
    assert ranks[0].value["fastercache"][1] == ranks[1].value["fastercache"][1]
    for r in ranks:
        out, decisions, warned = r.value["fbcache"]
        assert decisions == alone[1] and warned == 0
        np.testing.assert_allclose(out, alone[0], rtol=1e-4, atol=1e-5)
        assert r.value["fastercache"][2] == 1


def _nan_on_ranks(rank: int, world: int) -> tuple:
    out, decisions, s = _generate("wan", {"policy": "fbcache", "threshold": 0.5}, world, nan_at=3)
    return decisions, s.not_cached, bool(np.isfinite(out).all())


def test_a_shard_that_sees_nan_makes_every_rank_compute():
    _, alone, s = _generate("wan", {"policy": "fbcache", "threshold": 0.5}, 1, nan_at=3)
    ranks = run_ranks(_nan_on_ranks, world=2, timeout_s=240, pg_timeout_s=60)
    assert s.not_cached > 0
    assert alone[4][2] == "full"  # the step after the NaN one computes: nothing finite was cached
    for r in ranks:
        decisions, not_cached, finite = r.value
        assert decisions == alone and not_cached == s.not_cached and finite


def _fail_on_rank_1(rank: int, world: int) -> None:
    entry = ZOO["wan"]
    model = enable_ulysses(entry.build(), world)
    compiled = torch.compile(model, backend="fxcache", options={"compiler": "eager", "policy": "fbcache"})
    with torch.no_grad():
        model(**entry.inputs(torch.tensor(1000.0), 1))
        for k in range(4):
            if rank == 1 and k == 2:
                raise RuntimeError("rank 1 fails on purpose")
            compiled(**entry.inputs(torch.tensor(1000.0 - 100 * k), 1))


def test_a_rank_that_fails_raises_on_every_rank_and_nothing_hangs():
    start = time.monotonic()
    ranks = run_ranks(_fail_on_rank_1, world=2, timeout_s=180, pg_timeout_s=20, check=False)
    assert time.monotonic() - start < 180
    assert not ranks[1].ok and "fails on purpose" in ranks[1].value
    assert not ranks[0].ok  # waited in a collective for rank 1, then raised at the process group's timeout


def _disagree(rank: int, world: int) -> None:
    # Each rank its own threshold: rank 0 never skips, rank 1 always would. Only a bug could do this in fxcache;
    # check_ranks must stop both ranks before they run different variants (and wait in different collectives).
    threshold = 0.0 if rank == 0 else 100.0
    _generate("wan", {"policy": "fbcache", "threshold": threshold, "warmup_steps": 0}, world)


def test_check_ranks_names_the_step_and_the_plans_of_ranks_that_disagree():
    ranks = run_ranks(_disagree, world=2, timeout_s=180, pg_timeout_s=60, check=False)
    for r in ranks:
        assert not r.ok and "took different plans at step 2" in r.value, r.value[-2000:]
        assert "rank 0: step 2" in r.value and "rank 1: step 2" in r.value
