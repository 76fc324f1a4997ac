"""SeaCache and EasyCache against their sources, on the tiny Wan model of the zoo (CPU, "eager" inner compiler).

- SeaCache: the decisions (which steps run the blocks) and the output equal diffusers' own `SeaCacheConfig` (0.42.1,
  `hooks/sea_cache.py`) through a loop that enters `cache_context(name, step_index=i, sigma=..., num_inference_steps=N)`
  as diffusers' `WanPipeline` does; its SEA filter equals diffusers' `_apply_sea_filter`.
- EasyCache: the decisions and the output equal `EasyReference` below, the official rule written out.
- Bad option values raise ValueError naming the option.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import fxcache
from fxcache.derived import sea_filter
from tests.zoo import ZOO

N = 10
GUIDANCE = 4.0
ENTRY = ZOO["wan"]
SIGMAS = torch.linspace(1.0, 0.05, N).tolist() + [0.0]  # flow matching; t = 1000 sigma, as FlowMatchEuler passes it


@torch.no_grad()
def denoise(call) -> torch.Tensor:
    """Separate-CFG Euler sampling; `call(i, name, kwargs)` runs the model for step i's cond / uncond call."""
    x = ENTRY.inputs(torch.tensor(1000.0), 1)["hidden_states"].clone()
    for i in range(N):
        t = torch.tensor(1000.0 * SIGMAS[i])
        c = call(i, "cond", {**ENTRY.inputs(t, 1, prompt=0), "hidden_states": x})
        u = call(i, "uncond", {**ENTRY.inputs(t, 1, prompt=1), "hidden_states": x})
        x = x + (SIGMAS[i + 1] - SIGMAS[i]) * (u + GUIDANCE * (c - u))
    return x


def plain_run() -> torch.Tensor:
    model = ENTRY.build()
    return denoise(lambda i, name, kw: model(**kw)[0])


def fxcache_run(policy: str, **options) -> tuple[torch.Tensor, list]:
    torch._dynamo.reset()
    model = torch.compile(ENTRY.build(), backend="fxcache",
                          options={"policy": policy, "compiler": "eager", "num_steps": N, **options})
    out = denoise(lambda i, name, kw: model(**kw)[0])
    names = {"stream0": "cond", "stream1": "uncond"}  # the first call of a step is the cond one
    return out, [(d["step"] - 1, names[d["stream"]], d["decision"]) for d in fxcache.stats(model).decisions]


# ------------------------------------------------------------------------------------------------------ SeaCache


def diffusers_seacache(**config) -> tuple[torch.Tensor, list]:
    """diffusers' SeaCache on the same model and loop; a step is "full" where block 0's feed-forward ran."""
    from diffusers import SeaCacheConfig

    model = ENTRY.build()
    model.enable_cache(SeaCacheConfig(**config))
    ran = []
    model.blocks[0].ffn.register_forward_hook(lambda *_: ran.append(True))
    decisions = []

    def call(i, name, kw):
        ran.clear()
        with model.cache_context(name, step_index=i, sigma=float(SIGMAS[i]), num_inference_steps=N):
            out = model(**kw)[0]
        decisions.append((i, name, "full" if ran else "skip"))
        return out

    return denoise(call), decisions


@pytest.mark.parametrize("threshold,order", [(0.25, 1), (0.6, 0)])
def test_seacache_equals_diffusers(threshold, order):
    ref, ref_decisions = diffusers_seacache(threshold=threshold, residual_order=order)
    out, decisions = fxcache_run("seacache", threshold=threshold, residual_order=order)
    assert decisions == ref_decisions
    assert sum(d == "skip" for *_, d in decisions) >= 4  # the comparison covers skipped steps
    assert (out - plain_run()).abs().max() > 1e-3  # and they changed the output
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_sea_filter_equals_diffusers():
    from diffusers.hooks.sea_cache import _apply_sea_filter

    x = torch.randn(2, 4, 3, 8, 6, generator=torch.Generator().manual_seed(0))
    for t in ([900.0, 900.0], [420.0, 37.5], [0.42, 0.0375]):  # 0-1000 scale; per-sample sigmas; a 0-1 scale
        got = sea_filter(x, torch.tensor(t), power_exp=3.0)
        for b, s in enumerate(t):
            ref = _apply_sea_filter(x[b].movedim(0, -1), sigma=s / 1000 if s > 1 else s, power_exp=3.0)
            torch.testing.assert_close(got[b], ref.movedim(-1, 0), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------- EasyCache


class EasyReference:
    """The official rule (H-EmbodVis/EasyCache @5127804, EasyCache4Wan2.1/easycache_generate.py, `easycache_forward`
    L451-644; setup L961-975): only the cond call (even call count) decides (L489-532): the first `warmup` steps
    and the last are computed (L491-494); otherwise, once k is known, eps = k * mean|x - x_prev| / mean|v_full| is
    accumulated and the pair is skipped while the sum stays below tau (L497-525); x_prev is stored either way
    (L532). A skipped call returns x + its branch's Delta (L533-553). A computed cond call sets k = mean|v - v_full|
    / mean|x - x_full| against the previous computed step (L612-627), then x_full, v_full and Delta = v - x
    (L628-631); the uncond call keeps its own Delta (L632-635)."""

    def __init__(self, model, tau: float, warmup: int) -> None:
        self.model, self.tau, self.warmup = model, tau, warmup
        self.k = self.x_prev = self.x_full = self.v_full = None
        self.error, self.calc, self.delta = 0.0, True, {}
        self.decisions = []

    def __call__(self, i, name, kw):
        x = kw["hidden_states"]
        if name == "cond":
            if i < self.warmup or i >= N - 1:
                self.calc, self.error = True, 0.0
            elif self.x_prev is not None and self.v_full is not None and self.k is not None:
                self.error += self.k * (x - self.x_prev).abs().mean() / self.v_full.abs().mean()
                self.calc = not self.error < self.tau
                self.error = 0.0 if self.calc else self.error
            else:
                self.calc = True
            self.x_prev = x.clone()
        if not self.calc and name in self.delta:
            self.decisions.append((i, name, "skip"))
            return x + self.delta[name]
        self.decisions.append((i, name, "full"))
        v = self.model(**kw)[0]
        if name == "cond":
            if self.v_full is not None:
                self.k = (v - self.v_full).abs().mean() / (x - self.x_full).abs().mean()
            self.x_full, self.v_full = x.clone(), v.clone()
        self.delta[name] = v - x
        return v


@pytest.mark.parametrize("tau,warmup", [(0.2, 2), (0.4, 3)])  # the tiny model moves fast: tau 0.05 skips nothing
def test_easycache_equals_official_rule(tau, warmup):
    ref_model = EasyReference(ENTRY.build(), tau, warmup)
    ref = denoise(ref_model)
    out, decisions = fxcache_run("easycache", tau=tau, ret_steps=warmup)
    assert decisions == ref_model.decisions
    assert sum(d == "skip" for *_, d in decisions) >= 2
    assert (out - plain_run()).abs().max() > 1e-3
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("policy,option,value", [
    ("seacache", "threshold", -0.1), ("seacache", "residual_order", 2), ("seacache", "power_exp", 0.0),
    ("seacache", "max_consecutive_skips", -1), ("seacache", "cache_end_steps", -1),
    ("seacache", "warmup_steps", -1), ("seacache", "power_exp", "3"),
    ("easycache", "threshold", -1.0), ("easycache", "warmup_steps", -2), ("easycache", "joint", "yes"),
])
def test_bad_options(policy, option, value):
    with pytest.raises(ValueError, match=repr(option)):
        fxcache.backend(policy=policy, **{option: value})


def test_aliases():
    sea = fxcache.POLICIES["seacache"](retention_steps=2, max_consecutive_cached=0, power_exp=2)
    assert (sea.warmup_steps, sea.budget.max_consecutive, sea.power_exp) == (2, None, 2.0)
    easy = fxcache.POLICIES["easycache"](thresh=0.1, ret_steps=5)
    assert (easy.threshold, easy.warmup_steps) == (0.1, 5)
    with pytest.raises(ValueError, match="'threshold' and 'tau'"):
        fxcache.POLICIES["easycache"](threshold=0.1, tau=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="max_consecutive_skips"):
            fxcache.POLICIES["seacache"](max_consecutive_cached=1.5)
