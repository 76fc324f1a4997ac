"""Per-request decisions in one batch (fxcache/runtime/persample.py).

The criterion: a batch of B prompts gives each prompt the decisions and the output (up to float rounding) of
generating that prompt alone with the same policy, for every probing and schedule policy; requests batched at
different steps (a serving engine) keep their own state across calls, whatever their row.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import fxcache
from tests.zoo import ZOO

STEPS = 10
GUIDANCE = 3.0

# Probing policies at settings that skip on the tiny models within 10 steps, and every schedule policy's defaults.
POLICIES = {
    "fbcache": {"threshold": 0.15, "warmup_steps": 1},
    "dbcache": {"Fn": 1, "threshold": 0.3, "warmup_steps": 1},
    "teacache": {"threshold": 0.3},
    "dynamiccache": {"threshold": 0.1},
    "magcache": {"ratios": [1.0] * STEPS, "threshold": 0.3},
    "seacache": {"threshold": 0.6},
    "easycache": {"threshold": 0.4, "warmup_steps": 3},
    "adacache": {},
    "mixcache": {},
    "fora": {},
    "deltadit": {},
    "taylorseer": {"interval": 3, "warmup_steps": 2},
    "tgate": {},
    "pab": {},
    "blockdance": {},
    "fastercache": {},
    "default": {},
}


def rows_inputs(entry, ts: list[float], prompts: list[int], x: torch.Tensor) -> dict:
    """One call's keyword arguments for rows r = 0..B-1: latent x[r], timestep ts[r], prompt prompts[r]."""
    per = [entry.inputs(torch.tensor(t), 1, prompt=p) for t, p in zip(ts, prompts)]
    out = {}
    for k, v in per[0].items():
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == 1 and k != "hidden_states":
            out[k] = torch.cat([p[k] for p in per])
        else:
            out[k] = v
    out["hidden_states"] = x
    return out


def latents(entry, seeds: list[int]) -> torch.Tensor:
    shape = entry.inputs(torch.tensor(1000.0), 1)["hidden_states"].shape
    return torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


@torch.no_grad()
def denoise(model, entry, x: torch.Tensor, prompts: list[int], steps: int = STEPS) -> torch.Tensor:
    """Separate-CFG Euler sampling of the batch `x` (prompt 1 is every row's uncond prompt)."""
    sig = torch.linspace(1.0, 1.0 / steps, steps).tolist() + [0.0]
    for k in range(steps):
        ts = [1000.0 * sig[k]] * x.shape[0]
        cond = model(**rows_inputs(entry, ts, prompts, x))[0]
        uncond = model(**rows_inputs(entry, ts, [1] * len(prompts), x))[0]
        x = x + (sig[k + 1] - sig[k]) * (uncond + GUIDANCE * (cond - uncond))
    return x


def compiled(entry, name: str, **extra):
    options = {"compiler": "eager", "decision_log": 4096, **extra}
    if name != "default":
        options.update(policy=name, **POLICIES[name])
    torch.manual_seed(0)
    return torch.compile(entry.build(), backend="fxcache", options=options)


def decisions(model, request=None) -> list:
    """A request's decisions by (step, stream): Dynamo compiles one graph per batch size, so the model's log is
    the logs of several graphs, one after the other."""
    return sorted((d["step"], d["stream"], d["decision"], d["blocks"]) for d in fxcache.stats(model).decisions
                  if d.get("request") == request)


def batch_and_alone(family: str, name: str, seeds=(1, 2), prompts=(0, 2)):
    entry = ZOO[family]
    x = latents(entry, list(seeds))
    model = compiled(entry, name)
    out = denoise(model, entry, x, list(prompts))
    together = [decisions(model, r) for r in range(len(seeds))]
    alone, outs = [], []
    for r in range(len(seeds)):
        torch._dynamo.reset()
        m = compiled(entry, name)
        outs.append(denoise(m, entry, x[r:r + 1], [prompts[r]]))
        alone.append(decisions(m))
    return out, together, torch.cat(outs), alone


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_batch_equals_alone_wan(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, together, alone_out, alone = batch_and_alone("wan", name)
    for r, (a, b) in enumerate(zip(together, alone)):
        assert a == b, f"request {r}: decisions in the batch differ from alone"
    assert len(alone[0]) == 2 * STEPS
    torch.testing.assert_close(out, alone_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["fbcache", "taylorseer"])
def test_batch_equals_alone_flux(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, together, alone_out, alone = batch_and_alone("flux", name)
    assert together == alone
    torch.testing.assert_close(out, alone_out, rtol=1e-4, atol=1e-5)


def test_requests_decide_apart():
    """The batch's requests take different decisions at some step (rows split into groups), and a whole-batch
    decision differs from alone where per-request decisions do not."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, together, alone_out, alone = batch_and_alone("wan", "fbcache", seeds=(1, 2, 3, 4), prompts=(0, 2, 3, 4))
    by_step = {}
    for r, ds in enumerate(together):
        for step, stream, decision, _ in ds:
            by_step.setdefault((step, stream), set()).add(decision)
    assert any(len(v) > 1 for v in by_step.values()), "no step where the requests decided differently"
    torch.testing.assert_close(out, alone_out, rtol=1e-4, atol=1e-5)
    entry = ZOO["wan"]
    torch._dynamo.reset()
    whole = denoise(compiled(entry, "fbcache", per_sample=False), entry, latents(entry, [1, 2, 3, 4]), [0, 2, 3, 4])
    assert (whole - alone_out).abs().amax() > 1e-3  # one decision for the batch: not what each prompt gets alone


@torch.no_grad()
def test_step_batched_requests():
    """Requests at different steps in one call ([B] timesteps, `context(requests=...)`): each gets what it gets
    alone; released requests free their state; an id used again starts clean."""
    entry = ZOO["wan"]
    steps = {"a": 8, "b": 6, "c": 7}
    start = {"a": 0, "b": 2, "c": 3}  # the iteration each joins
    x0 = {rid: latents(entry, [s]) for s, rid in enumerate(steps, start=5)}
    prompt = {"a": 0, "b": 2, "c": 3}

    def run(model, rids) -> dict:
        x, done, out = dict(x0), {r: 0 for r in rids}, {}
        it = 0
        while len(out) < len(rids):
            active = [r for r in rids if start[r] <= it and r not in out]
            if not active:  # not arrived yet
                it += 1
                continue
            sig = {r: torch.linspace(1.0, 1.0 / steps[r], steps[r]).tolist() + [0.0] for r in active}
            ts = [1000.0 * sig[r][done[r]] for r in active]
            xb = torch.cat([x[r] for r in active])
            with fxcache.context(requests=active):
                cond = model(**rows_inputs(entry, ts, [prompt[r] for r in active], xb))[0]
                uncond = model(**rows_inputs(entry, ts, [1] * len(active), xb))[0]
            v = uncond + GUIDANCE * (cond - uncond)
            for k, r in enumerate(active):
                d = done[r]
                x[r] = x[r] + (sig[r][d + 1] - sig[r][d]) * v[k:k + 1]
                done[r] += 1
                if done[r] == steps[r]:
                    out[r] = x[r]
                    assert fxcache.release(model, [r]) == 1
            it += 1
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = compiled(entry, "fbcache")
        together = run(model, list(steps))
        assert fxcache.stats(model).requests_live == 0
        got = {r: decisions(model, r) for r in steps}
        for rid in steps:
            torch._dynamo.reset()
            m = compiled(entry, "fbcache")
            alone = run(m, [rid])
            assert decisions(m, rid) == got[rid]
            torch.testing.assert_close(together[rid], alone[rid], rtol=1e-4, atol=1e-5)
        assert any(d[2] == "skip" for ds in got.values() for d in ds)
        again = run(model, list(steps))  # the same ids again: clean states, the same results
        for rid in steps:
            torch.testing.assert_close(again[rid], together[rid])


@torch.no_grad()
def test_request_errors_and_stats():
    entry = ZOO["wan"]
    model = compiled(entry, "fbcache")
    x = latents(entry, [1, 2])
    with pytest.raises(ValueError, match="requests has 3 ids for a batch of 2"):
        with fxcache.context(requests=["a", "b", "c"]):
            model(**rows_inputs(entry, [900.0, 900.0], [0, 2], x))
    with pytest.raises(ValueError, match="different timesteps"):
        with fxcache.context(requests=["a", "a"]):
            model(**rows_inputs(entry, [900.0, 800.0], [0, 2], x))
    with pytest.raises(ValueError, match="requests=|stream name"):
        with fxcache.context():
            pass
    with pytest.raises(ValueError, match="hashable ids"):
        with fxcache.context(requests=[None]):
            pass
    with pytest.raises(ValueError, match="per_sample"):
        torch.compile(entry.build(), backend=fxcache.backend(policy="fbcache", per_sample="yes"))
    with fxcache.context(requests=["a", "b"]):
        model(**rows_inputs(entry, [900.0, 700.0], [0, 2], x))
    st = fxcache.stats(model)
    assert st.requests_live == 2 and st.request_cache_bytes > 0
    bigger = torch.randn(2, 4, 2, 16, 16)
    with pytest.raises(ValueError, match="changed input shapes in the middle of its generation"):
        with fxcache.context(requests=["a", "b"]):
            model(**rows_inputs(entry, [800.0, 600.0], [0, 2], bigger))
    assert fxcache.release(model, "a") == 1 and fxcache.stats(model).requests_live == 1
    fxcache.reset(model)
    assert fxcache.stats(model).requests_live == 0


def test_whole_batch_option():
    """per_sample=False: one decision for the batch (the peers' behaviour), no request state."""
    entry = ZOO["wan"]
    torch.manual_seed(0)
    model = torch.compile(entry.build(), backend="fxcache",
                          options={"policy": "fbcache", "compiler": "eager", "per_sample": False, **POLICIES["fbcache"]})
    denoise(model, entry, latents(entry, [1, 2]), [0, 2], steps=4)
    st = fxcache.stats(model)
    assert st.requests_live == 0 and st.steps == 8 and all("request" not in d for d in st.decisions)


@pytest.mark.parametrize("name", ["fbcache", "taylorseer", "seacache", "easycache"])
def test_batched_cfg_pairs(name):
    """Batched CFG with several prompts ([uncond x B; cond x B], PixArt's layout): a prompt's uncond and cond rows are
    one request, and each prompt gets what it gets alone ([uncond; cond])."""
    entry = ZOO["pixart"]

    @torch.no_grad()
    def run(model, x, prompts):
        sig = torch.linspace(1.0, 1.0 / STEPS, STEPS).tolist() + [0.0]
        for k in range(STEPS):
            ts = [1000.0 * sig[k]] * (2 * x.shape[0])
            out = model(**rows_inputs(entry, ts, [1] * len(prompts) + prompts, torch.cat([x, x])))[0]
            uncond, cond = out[:, : x.shape[1]].chunk(2)
            x = x + (sig[k + 1] - sig[k]) * (uncond + GUIDANCE * (cond - uncond))
        return x

    x = latents(entry, [1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        together = run(compiled(entry, name), x, [0, 2])
        for r, p in enumerate([0, 2]):
            torch._dynamo.reset()
            alone = run(compiled(entry, name), x[r:r + 1], [p])
            torch.testing.assert_close(together[r:r + 1], alone, rtol=1e-4, atol=1e-5)
