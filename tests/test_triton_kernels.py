"""Triton kernels against their torch references: run by Triton's interpreter on the CPU (one subprocess, with
TRITON_INTERPRET=1 set before triton is imported), plus dispatch, argument checks, the accumulators against the
policies' own rules, an import without triton, the kernel benchmark's quick run, and (skipped without one) a GPU."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fxcache.triton_kernels as tk
from fxcache.metrics import REL_L1
from fxcache.triton_kernels import (accumulators, blend, forecasting, magcache_state, magcache_step_reference, rel_l1,
                                    residual, teacache_state, teacache_step_reference)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ------------------------------------------------------------------------------------- scripted decisions
# TeaCache, poly(r) = 4 r^2 + r, threshold 0.1, distances r = num.sum() / den.sum():
#   0.05 -> acc 0.06 skip | 0.02 -> 0.0816 skip | 0.05 -> 0.1416 compute, 0 | 0.1 -> 0.14 compute | NaN -> compute |
#   0.01 -> 0.0104 skip | inf -> compute, 0 | 0.02 -> 0.0216 skip | 0 (0/0) -> 0.0216 skip
TEA_COEFFS = [4.0, 1.0, 0.0]
TEA_DIST = [0.05, 0.02, 0.05, 0.1, math.nan, 0.01, math.inf, 0.02, 0.0]
TEA_SKIP = [True, True, False, False, False, True, False, True, True]
# MagCache, threshold 0.12, K = 2:
#   0.98 -> R .98 E .02 s1 skip | 0.97 -> R .9506 E .0694 s2 skip | 0.99 -> R .941094 E .128306 compute |
#   1.0 -> E 0 s1 skip | 1.01 -> E .01 s2 skip | 1.0 -> s3 > K compute | 0.5 -> E .5 compute | NaN -> compute |
#   0.995 -> E .005 skip
MAG_GAMMA = [0.98, 0.97, 0.99, 1.0, 1.01, 1.0, 0.5, math.nan, 0.995]
MAG_SKIP = [True, True, False, True, True, False, False, False, True]


def tea_sums(r: float):
    """Per-sample (num, den) whose batch distance num.sum() / den.sum().clamp_min(1e-12) is r."""
    if r == 0.0:
        return torch.zeros(2), torch.zeros(2)
    return torch.tensor([0.25 * r, 0.75 * r]), torch.tensor([0.5, 0.5])


CODE = r"""
import math, os, torch
assert os.environ["TRITON_INTERPRET"] == "1"
torch.set_num_threads(1)
import fxcache.triton_kernels as tk
from fxcache.triton_kernels import accumulators, blend, forecasting, rel_l1, residual
from fxcache.passes.cfg import rebuild
from tests.test_triton_kernels import TEA_COEFFS, TEA_DIST, TEA_SKIP, MAG_GAMMA, MAG_SKIP, tea_sums

# Poisoned allocations: every tensor the kernels allocate starts as NaN (floats), 0 (integers: an unwritten
# finiteness partial reads "not finite") or byte 2 (bools: neither True nor False as written), so that an element a
# kernel does not write fails the comparison.
real_empty, real_like = torch.empty, torch.empty_like
def poison(t):
    if t.is_floating_point(): t.fill_(float("nan"))
    elif t.dtype == torch.bool: t.view(torch.uint8).fill_(2)
    else: t.fill_(0)
    return t
torch.empty = lambda *a, **k: poison(real_empty(*a, **k))
torch.empty_like = lambda *a, **k: poison(real_like(*a, **k))

g = torch.Generator().manual_seed(0)
def randn(shape, dt=torch.float32):
    return torch.randn(shape, generator=g).to(dt)
def strided(shape, dt=torch.float32):  # a non-contiguous view of `shape`: a transpose, or every other column
    if len(shape) > 2:
        t = randn(shape[:-2] + (shape[-1], shape[-2]), dt).transpose(-1, -2)
    else:
        t = randn(shape[:-1] + (2 * shape[-1],), dt)[..., ::2]
    assert not t.is_contiguous()
    return t
def make(shape, dt, contiguous):
    return randn(shape, dt) if contiguous else strided(shape, dt)
def nan_like(t, dt=None):
    return real_empty(t.shape, dtype=dt or t.dtype).fill_(float("nan"))

EPS32 = torch.finfo(torch.float32).eps
def check(what, got, want, scale, dt):
    # float64 truth from the same inputs; bound: the output's rounding (eps of its dtype times the magnitude: the
    # interpreter converts float32 to bfloat16 by truncation, up to 1 ulp, where a GPU rounds to nearest) plus
    # float32 arithmetic on the terms.
    assert got.dtype == dt and tuple(got.shape) == tuple(want.shape), (what, got.dtype, got.shape, want.shape)
    bound = torch.finfo(dt).eps * want.abs() + 8 * EPS32 * scale
    err = (got.double() - want).abs()
    assert bool(torch.isfinite(got).all()), f"{what}: non-finite output (an unwritten element?)"
    assert bool((err <= bound).all()), f"{what}: max err {err.max().item():.3g}, bound {bound.min().item():.3g}"

SHAPES = [(3, 517), (2, 37, 65), (1, 2100)]  # odd; (1, 2100) spans two 2048-element blocks, with a tail
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
count = 0
for dt in DTYPES:
    for shape in SHAPES:
        for contiguous in (True, False):
            tag = f"{dt} {shape} {'contiguous' if contiguous else 'strided'}"
            x, y = make(shape, dt, contiguous), make(shape, dt, contiguous)
            x64, y64 = x.double(), y.double()
            b = shape[0]

            # rel_l1: per-sample float32 sums; deterministic (no atomics); small blocks: many chunks and a tail
            for block in (4096, 128):
                num, den = rel_l1.rel_l1_sums_triton(x, y, block=block)
                want_num = (x64 - y64).reshape(b, -1).abs().sum(1)
                want_den = y64.reshape(b, -1).abs().sum(1)
                assert num.dtype == den.dtype == torch.float32
                torch.testing.assert_close(num.double(), want_num, rtol=1e-5, atol=1e-6, msg=f"rel_l1 num {tag}")
                torch.testing.assert_close(den.double(), want_den, rtol=1e-5, atol=1e-6, msg=f"rel_l1 den {tag}")
                again = rel_l1.rel_l1_sums_triton(x, y, block=block)
                assert torch.equal(again[0], num) and torch.equal(again[1], den), "rel_l1 not deterministic"

            # residual store: in place (the buffer keeps its address), finite flag
            for block in (2048, 128):
                buf = nan_like(y)
                ptr = buf.data_ptr()
                fin = residual.residual_store_triton(y, x, buf, block=block)
                assert buf.data_ptr() == ptr, "residual_store moved the cache buffer"
                assert fin.dtype == torch.bool and fin.ndim == 0 and bool(fin), f"store flag {tag}"
                check(f"store {tag}", buf, y64 - x64, y64.abs() + x64.abs(), dt)

            # residual apply: allocated output and out=
            cached = make(shape, dt, contiguous)
            want = x64 + cached.double()
            scale = x64.abs() + cached.double().abs()
            check(f"apply {tag}", tk.residual_apply(x, cached), want, scale, dt)
            out = nan_like(x)
            assert residual.residual_apply_triton(x, cached, out=out, block=128) is out
            check(f"apply out= {tag}", out, want, scale, dt)

            # forecast, K = 1..4 and 8 (linear extrapolation is K = 2 with (2, -1))
            for weights in ([1.5], [2.0, -1.0], [3.0, -3.0, 1.0], [4.0, -6.0, 4.0, -1.0],
                            torch.randn(8, generator=g).tolist()):
                slots = [make(shape, dt, contiguous) for _ in weights]
                coeffs = torch.tensor(weights, dtype=torch.float32)
                terms = [c * s.double() for c, s in zip(coeffs.double().tolist(), slots)]
                check(f"forecast K={len(weights)} {tag}", tk.forecast(slots, coeffs), sum(terms),
                      sum(t.abs() for t in terms), dt)
                out = nan_like(x)
                forecasting.forecast_triton(slots, coeffs, out=out, block=128)
                check(f"forecast out= K={len(weights)} {tag}", out, sum(terms), sum(t.abs() for t in terms), dt)

            # CFG blend: cond in dt, bands float32, output in cond's dtype; what passes.cfg.rebuild computes
            low, high = make(shape, torch.float32, contiguous), make(shape, torch.float32, contiguous)
            scales = torch.tensor([0.8, 1.15])
            terms = (x64, 0.8 * low.double(), 1.15 * high.double())
            got = tk.cfg_blend(x, low, high, scales)
            check(f"blend {tag}", got, sum(terms), sum(t.abs() for t in terms), dt)
            torch.testing.assert_close(got, rebuild(x, low, high, scales), msg=f"blend vs rebuild {tag}")
            out = nan_like(x)
            blend.cfg_blend_triton(x, low, high, scales, out=out, block=128)
            check(f"blend out= {tag}", out, sum(terms), sum(t.abs() for t in terms), dt)
            count += 1

    # the finiteness flag finds a planted inf / NaN anywhere (the tail of the last block, a middle block)
    for plant, where in ((float("inf"), -1), (float("-inf"), 700), (float("nan"), 1000)):
        for block in (2048, 128):
            y, x = randn((3, 517), dt), randn((3, 517), dt)
            y.view(-1)[where] = plant
            buf = nan_like(y)
            assert not bool(residual.residual_store_triton(y, x, buf, block=block)), (dt, plant, where, block)
            x2 = randn((3, 517), dt)
            x2.view(-1)[where] = plant
            assert not bool(residual.residual_store_triton(randn((3, 517), dt), x2, buf, block=block))
    if dt is torch.float16:  # the float32 difference overflows float16 when stored: not finite as stored
        y, x = torch.full((5, 7), 60000.0, dtype=dt), torch.full((5, 7), -60000.0, dtype=dt)
        assert not bool(tk.residual_store(y, x, nan_like(y)))

# accumulators: the scripted sequences, kernel vs hand-worked decisions and vs the float32 reference
for on_device_gamma in (False, True):
    state, ref = tk.magcache_state(), tk.magcache_state()
    for gamma, want in zip(MAG_GAMMA, MAG_SKIP):
        flag = torch.ones((), dtype=torch.bool)
        flag.view(torch.uint8).fill_(2)  # poisoned: the kernel must write 0 or 1
        arg = torch.tensor([gamma]) if on_device_gamma else gamma
        assert tk.magcache_step(state, arg, 0.12, 2, out=flag) is flag
        assert flag.view(torch.uint8).item() in (0, 1) and bool(flag) == want, (gamma, flag, state)
        assert bool(tk.magcache_step_reference(ref, arg, 0.12, 2)) == want
        torch.testing.assert_close(state, ref, rtol=1e-6, atol=1e-7)
state, ref = tk.teacache_state(), tk.teacache_state()
coeffs = torch.tensor(TEA_COEFFS)
for r, want in zip(TEA_DIST, TEA_SKIP):
    num, den = tea_sums(r)
    flag = torch.ones((), dtype=torch.bool)
    flag.view(torch.uint8).fill_(2)
    tk.teacache_step(state, num, den, coeffs, 0.1, out=flag)
    assert flag.view(torch.uint8).item() in (0, 1) and bool(flag) == want, (r, flag, state)
    assert bool(tk.teacache_step_reference(ref, num, den, coeffs, 0.1)) == want
    torch.testing.assert_close(state, ref, rtol=1e-6, atol=1e-7)

# dispatch: every dispatch function runs its kernel under the interpreter, and the reference while traced
from torch.fx.experimental.proxy_tensor import make_fx
calls = []
def counting(mod, name):
    real = getattr(mod, name)
    setattr(mod, name, lambda *a, **k: calls.append(name) or real(*a, **k))
for mod, name in ((rel_l1, "rel_l1_sums_triton"), (residual, "residual_store_triton"),
                  (residual, "residual_apply_triton"), (forecasting, "forecast_triton"), (blend, "cfg_blend_triton"),
                  (accumulators, "teacache_step_triton"), (accumulators, "magcache_step_triton")):
    counting(mod, name)
x, y = randn((2, 33)), randn((2, 33))
tk.rel_l1_sums(x, y); tk.residual_store(y, x, nan_like(x)); tk.residual_apply(x, y)
tk.forecast([x, y], torch.tensor([2.0, -1.0])); tk.cfg_blend(x, y, x, torch.tensor([1.0, 2.0]))
tk.teacache_step(tk.teacache_state(), torch.ones(2), torch.ones(2), torch.tensor([1.0, 0.0]), 0.1)
tk.magcache_step(tk.magcache_state(), 0.9, 0.1, 2)
assert sorted(calls) == sorted(["rel_l1_sums_triton", "residual_store_triton", "residual_apply_triton",
                                "forecast_triton", "cfg_blend_triton", "teacache_step_triton",
                                "magcache_step_triton"]), calls
calls.clear()
make_fx(lambda a, b: tk.rel_l1_sums(a, b))(x, y)
make_fx(lambda a, b: tk.residual_apply(a, b))(x, y)
make_fx(lambda a, b, c: tk.forecast([a, b], c))(x, y, torch.tensor([2.0, -1.0]))
assert calls == [], f"traced calls reached the Triton kernel: {calls}"
# float64 is not a kernel dtype: the reference
tk.residual_apply(x.double(), y.double())
assert calls == []

# the benchmark's kernel column (what a GPU run times), here through the interpreter at its quick shapes
torch.empty, torch.empty_like = real_empty, real_like
from bench import kernels
rows = kernels.measure(kernels._specs(), ["float32"], "cpu", True, None, ["eager", "triton"], 1, None,
                       log=lambda *a: None)
assert len(rows) == 16 and all(r["ms_triton"] > 0 for r in rows)
assert len(calls) >= 16, calls
print("ok", count)
"""


def test_kernels_match_float64_truth_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "ok 18" in out.stdout, out.stdout[-2000:]


# -------------------------------------------------------------------------------- dispatch without a kernel

def _all_calls(x, y):
    low, high = torch.randn_like(x, dtype=torch.float32), torch.randn_like(x, dtype=torch.float32)
    buf = torch.empty_like(x)
    return {
        "rel_l1_sums": (tk.rel_l1_sums(x, y), tk.rel_l1_sums_reference(x, y)),
        "residual_store": ((tk.residual_store(y, x, buf), buf.clone()),
                           (tk.residual_store_reference(y, x, b2 := torch.empty_like(x)), b2)),
        "residual_apply": (tk.residual_apply(x, y), tk.residual_apply_reference(x, y)),
        "forecast": (tk.forecast([x, y], torch.tensor([2.0, -1.0])),
                     tk.forecast_reference([x, y], torch.tensor([2.0, -1.0]))),
        "cfg_blend": (tk.cfg_blend(x, low, high, torch.tensor([0.5, 2.0])),
                      tk.cfg_blend_reference(x, low, high, torch.tensor([0.5, 2.0]))),
    }


def test_reference_is_used_without_interpreter_on_cpu(monkeypatch):
    """On the CPU without TRITON_INTERPRET the dispatch functions run the references, and touch no CUDA API."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)

    def boom(*a, **k):
        raise AssertionError("touched a Triton kernel / CUDA API on the CPU path")

    for mod, name in ((rel_l1, "rel_l1_sums_triton"), (residual, "residual_store_triton"),
                      (residual, "residual_apply_triton"), (forecasting, "forecast_triton"),
                      (blend, "cfg_blend_triton"), (accumulators, "teacache_step_triton"),
                      (accumulators, "magcache_step_triton")):
        monkeypatch.setattr(mod, name, boom)
    for name in ("is_available", "current_device", "device", "synchronize", "_lazy_init", "device_count"):
        monkeypatch.setattr(torch.cuda, name, boom)
    g = torch.Generator().manual_seed(3)
    for dt in (torch.float32, torch.bfloat16):
        x, y = torch.randn(2, 5, 7, generator=g).to(dt), torch.randn(2, 5, 7, generator=g).to(dt)
        assert not tk.use_kernel(x, y)
        for name, (got, want) in _all_calls(x, y).items():
            for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
                assert torch.equal(a, b), name
    s1, s2 = teacache_state(), teacache_state()
    assert bool(tk.teacache_step(s1, torch.ones(2), torch.ones(2), torch.tensor([0.01]), 0.1)) is True
    assert bool(teacache_step_reference(s2, torch.ones(2), torch.ones(2), torch.tensor([0.01]), 0.1)) is True
    assert torch.equal(s1, s2)
    m1 = magcache_state()
    assert bool(tk.magcache_step(m1, 0.99, 0.1, 2)) is True and torch.allclose(m1, torch.tensor([0.99, 0.01, 1.0]))


def test_import_and_references_without_triton():
    code = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None  # import triton -> ImportError
        import torch
        import fxcache.triton_kernels as tk
        from fxcache.triton_kernels import residual
        x, y = torch.randn(2, 9), torch.randn(2, 9)
        assert torch.equal(tk.residual_apply(x, y), x + y)
        assert bool(tk.residual_store(y, x, torch.empty_like(x)))
        tk.rel_l1_sums(x, y); tk.forecast([x], torch.ones(1)); tk.cfg_blend(x, y, x, torch.ones(2))
        tk.teacache_step(tk.teacache_state(), torch.ones(2), torch.ones(2), torch.ones(1), 0.1)
        tk.magcache_step(tk.magcache_state(), 1.0, 0.1, 1)
        try:
            residual.residual_apply_triton(x, y)
        except RuntimeError as e:
            assert "triton is not installed" in str(e)
        else:
            raise AssertionError("no error")
        assert not torch.cuda.is_initialized()
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


# --------------------------------------------------------------------------------------------- argument checks

def test_mismatches_and_non_contiguous_outputs_are_refused():
    x, y = torch.randn(3, 5), torch.randn(3, 5)
    meta = torch.empty(3, 5, device="meta")
    with pytest.raises(ValueError, match="'ref' has shape"):
        tk.rel_l1_sums(x, torch.randn(3, 6))
    with pytest.raises(TypeError, match="'ref' has dtype bfloat16"):
        tk.rel_l1_sums(x, y.bfloat16())
    with pytest.raises(ValueError, match="'ref' is on meta"):
        tk.rel_l1_sums(x, meta)
    with pytest.raises(TypeError, match="'x' has dtype int64"):
        tk.rel_l1_sums(torch.ones(3, 5, dtype=torch.long), torch.ones(3, 5, dtype=torch.long))

    buf = torch.empty(5, 3).t()  # a non-contiguous cache buffer: written in place, refused
    with pytest.raises(ValueError, match="'buf' must be contiguous"):
        tk.residual_store(y, x, buf)
    with pytest.raises(ValueError, match="'buf' must be contiguous"):
        residual.residual_store_triton(y, x, buf)
    with pytest.raises(ValueError, match="'x' has shape"):
        tk.residual_store(y, torch.randn(3, 4), torch.empty(3, 5))
    with pytest.raises(TypeError, match="'buf' has dtype float16"):
        tk.residual_store(y, x, torch.empty(3, 5, dtype=torch.float16))
    with pytest.raises(ValueError, match="'cached' is on meta"):
        tk.residual_apply(x, meta)
    with pytest.raises(ValueError, match="'out' must be contiguous"):
        tk.residual_apply(x, y, out=torch.empty(5, 3).t())
    with pytest.raises(TypeError, match="'cached' has dtype"):
        residual.residual_apply_triton(x, y.half())

    with pytest.raises(ValueError, match="'coeffs' must be a 1-D tensor of 2 elements"):
        tk.forecast([x, y], torch.ones(3))
    with pytest.raises(TypeError, match="'coeffs' has dtype float64"):
        tk.forecast([x, y], torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"'slots\[1\]' has shape"):
        tk.forecast([x, torch.randn(5, 3)], torch.ones(2))
    with pytest.raises(TypeError, match="non-empty sequence"):
        tk.forecast([], torch.ones(0))
    with pytest.raises(ValueError, match="at most 8"):
        forecasting.forecast_triton([x] * 9, torch.ones(9))

    with pytest.raises(TypeError, match="'low' has dtype bfloat16"):
        tk.cfg_blend(x, y.bfloat16(), y, torch.ones(2))
    with pytest.raises(ValueError, match="'scales' must be a 1-D tensor of 2 elements"):
        tk.cfg_blend(x, y, y, torch.ones(3))
    with pytest.raises(ValueError, match="'high' has shape"):
        blend.cfg_blend_triton(x, y, torch.randn(3, 4), torch.ones(2))

    with pytest.raises(ValueError, match="'state' must be a 1-D tensor of 1 elements"):
        tk.teacache_step(torch.zeros(2), torch.ones(2), torch.ones(2), torch.ones(2), 0.1)
    with pytest.raises(ValueError, match="'den' must be a 1-D tensor of 2 elements"):
        tk.teacache_step(teacache_state(), torch.ones(2), torch.ones(3), torch.ones(2), 0.1)
    with pytest.raises(TypeError, match="'coeffs' has dtype float64"):
        accumulators.teacache_step_triton(teacache_state(), torch.ones(2), torch.ones(2),
                                          torch.ones(2, dtype=torch.float64), 0.1)
    with pytest.raises(ValueError, match="'max_skips' must be an int >= 0"):
        tk.magcache_step(magcache_state(), 0.9, 0.1, -1)
    with pytest.raises(ValueError, match="'gamma' must be a one-element tensor"):
        tk.magcache_step(magcache_state(), torch.ones(2), 0.1, 2)
    with pytest.raises(ValueError, match="'state' must be a 1-D tensor of 3 elements"):
        accumulators.magcache_step_triton(teacache_state(), 0.9, 0.1, 2)


def test_blend_reference_is_the_cfg_rebuild():
    from fxcache.passes.cfg import rebuild

    g = torch.Generator().manual_seed(5)
    cond = torch.randn(2, 3, 4, 9, 11, generator=g).bfloat16()
    low, high = torch.randn(2, 3, 4, 9, 11, generator=g), torch.randn(2, 3, 4, 9, 11, generator=g)
    scales = torch.tensor([0.7, 1.3])
    assert torch.equal(tk.cfg_blend(cond, low, high, scales), rebuild(cond, low, high, scales))


# ------------------------------------------------------------------ accumulators against the policies' rules

def _call(step, num_steps=None):
    from fxcache.runtime.executor import Call

    return Call(step, "s", None, num_steps)


class _Discovery:
    """What TeaCache.bind / MagCache.bind read of a discovered graph: a 4-unit stack with a residual and a
    timestep indicator, of no known family."""
    num_units = 4
    indicators = {"timestep": None}
    units = []

    def residual_ok(self, start, stop):
        return True


def test_teacache_accumulator_follows_the_policy():
    """The real TeaCache.decide, fed the runtime's distance (non-finite -> NaN), gives the hand-worked decisions; the
    float64 reference matches its accumulator exactly and the float32 one decides the same."""
    from fxcache.policies.teacache import TeaCache

    policy = TeaCache(threshold=0.1, indicator="timestep", coefficients=TEA_COEFFS)
    policy.bind(_Discovery())
    st = policy.new_state()
    s64 = teacache_state(dtype=torch.float64)
    s32 = teacache_state()
    c64, c32 = torch.tensor(TEA_COEFFS, dtype=torch.float64), torch.tensor(TEA_COEFFS)
    got_policy, got64, got32 = [], [], []
    for step, r in enumerate(TEA_DIST, 2):
        num, den = tea_sums(r)
        rel = (num.sum() / den.sum().clamp_min(1e-12)).item()  # the distance the runtime hands the policy
        rel = rel if math.isfinite(rel) else math.nan
        got_policy.append(policy.decide(_call(step), st, {(policy.site, REL_L1): rel}).label == "skip")
        got64.append(bool(tk.teacache_step(s64, num, den, c64, 0.1)))
        assert s64.item() == st.acc  # bit for bit: the policy's host math
        got32.append(bool(tk.teacache_step(s32, num, den, c32, 0.1)))
        assert s32.item() == pytest.approx(st.acc, rel=1e-6, abs=1e-7)
    assert got_policy == got64 == got32 == TEA_SKIP


def test_magcache_accumulator_follows_the_policy():
    from fxcache.policies.magcache import MagCache

    gammas = [g for g in MAG_GAMMA if math.isfinite(g)]  # calibrated ratios are finite
    want = [w for g, w in zip(MAG_GAMMA, MAG_SKIP) if math.isfinite(g)]
    policy = MagCache(threshold=0.12, max_skips=2, retention=0.0, ratios=[1.0] + gammas)
    policy.bind(_Discovery())
    st = policy.new_state()
    n = len(gammas) + 1
    assert policy.plan(_call(1, n), st).label == "full"  # the first step computes: the accumulators start after it
    s64, s32 = magcache_state(dtype=torch.float64), magcache_state()
    got_policy, got64, got32 = [], [], []
    for step, gamma in enumerate(gammas, 2):
        got_policy.append(policy.plan(_call(step, n), st).label == "skip")
        got64.append(bool(tk.magcache_step(s64, gamma, 0.12, 2)))
        assert s64.tolist() == [st.ratio, st.error, st.skips]  # bit for bit
        got32.append(bool(tk.magcache_step(s32, gamma, 0.12, 2)))
        assert s32.tolist() == pytest.approx([st.ratio, st.error, st.skips], rel=1e-6, abs=1e-6)
    assert got_policy == got64 == got32 == want
    nan_state = magcache_state(dtype=torch.float64)
    assert not bool(magcache_step_reference(nan_state, math.nan, 0.12, 2))
    assert nan_state.tolist() == [1.0, 0.0, 0.0]


# ----------------------------------------------------------------------------------------------- benchmark

def test_kernel_benchmark_quick(tmp_path):
    from bench import kernels

    result = kernels.main(["--quick", "--out", str(tmp_path), "--kernels", "residual_store,cfg_blend,teacache_step"])
    saved = json.loads((tmp_path / "kernels.json").read_text())
    assert saved["machine"]["torch"] == torch.__version__ and "date" in saved["machine"]
    assert {r["kernel"] for r in saved["rows"]} == {"residual_store", "cfg_blend", "teacache_step"}
    assert all(r["ms_eager"] > 0 and r["ms_inductor"] > 0 for r in result["rows"])
    check = saved["interpreter_check"]
    if not isinstance(check, str):
        assert check and all(c["ok"] for c in check), check
    assert "| residual_store |" in (tmp_path / "kernels.md").read_text()
    # how a GPU run renders (its triton column and the fraction of peak bandwidth)
    gpu = {**saved, "device": "cuda", "impls": ["eager", "inductor", "triton"], "peak_bandwidth": 4.8e12,
           "peak_source": "known device table (H200)", "interpreter_check": "not run"}
    gpu["rows"] = [{**r, "ms_triton": 0.5, "gbps_triton": 2400.0, "peak_triton": 0.5} for r in saved["rows"]]
    text = kernels.render(gpu)
    assert "triton % peak" in text and "| 50% |" in text and "4.80 TB/s" in text


def test_benchmark_shapes_match_the_configs():
    from bench import kernels

    acts = {name: (t, h) for name, t, h in kernels.ACTIVATIONS}
    assert acts["wan2.1-1.3b-480p"] == (21 * (60 // 2) * (104 // 2), 1536)
    assert acts["wan2.1-14b-720p"] == (21 * (90 // 2) * (160 // 2), 5120)
    assert acts["cogvideox-5b"] == (13 * 30 * 45 + 226, 48 * 64)
    assert acts["flux.1-1024"] == ((1024 // 16) ** 2 + 512, 3072)
    capped = kernels.cases(kernels._specs()["residual_apply"], False, 2 ** 24)
    big = next(c for c in capped if c["model"] == "wan2.1-14b-720p" and c["batch"] == 2)
    assert big["shape"] == (2, 75600, 5120) and big["run_shape"] == (2, 1638, 5120) and "capped" in big["note"]


# ---------------------------------------------------------------------------------------------------- GPU

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the kernels run for real there)")
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16, torch.float16])
def test_kernels_on_gpu_match_references(dt):
    g = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape, dtype=dt):
        return torch.randn(shape, generator=g, device="cuda").to(dtype)

    x, y = randn(2, 1001, 77), randn(2, 1001, 77)
    assert tk.use_kernel(x, y)
    num, den = tk.rel_l1_sums(x, y)
    for a, b in zip((num, den), tk.rel_l1_sums_reference(x, y)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-3)
    assert torch.equal(tk.rel_l1_sums(x, y)[0], num)  # deterministic
    buf = torch.full_like(x, float("nan"))
    ptr = buf.data_ptr()
    assert bool(tk.residual_store(y, x, buf)) and buf.data_ptr() == ptr
    torch.testing.assert_close(buf, (y.float() - x.float()).to(dt))
    y2 = y.clone()
    y2.view(-1)[-1] = float("inf")
    assert not bool(tk.residual_store(y2, x, buf))
    torch.testing.assert_close(tk.residual_apply(x, y.transpose(1, 2).contiguous().transpose(1, 2)),
                               tk.residual_apply_reference(x, y))
    for weights in ([2.0, -1.0], [4.0, -6.0, 4.0, -1.0]):
        slots = [randn(2, 1001, 77) for _ in weights]
        c = torch.tensor(weights, device="cuda")
        torch.testing.assert_close(tk.forecast(slots, c), tk.forecast_reference(slots, c))
    low, high = randn(2, 1001, 77, dtype=torch.float32), randn(2, 1001, 77, dtype=torch.float32)
    s = torch.tensor([0.8, 1.15], device="cuda")
    torch.testing.assert_close(tk.cfg_blend(x, low, high, s), tk.cfg_blend_reference(x, low, high, s))
    st, ref = teacache_state("cuda"), teacache_state("cuda")
    coeffs = torch.tensor(TEA_COEFFS, device="cuda")
    for r, want in zip(TEA_DIST, TEA_SKIP):
        num, den = (t.cuda() for t in tea_sums(r))
        assert bool(tk.teacache_step(st, num, den, coeffs, 0.1)) == want
        teacache_step_reference(ref, num, den, coeffs, 0.1)
        torch.testing.assert_close(st, ref)
    st, ref = magcache_state("cuda"), magcache_state("cuda")
    for gamma, want in zip(MAG_GAMMA, MAG_SKIP):
        assert bool(tk.magcache_step(st, gamma, 0.12, 2)) == want
        magcache_step_reference(ref, gamma, 0.12, 2)
        torch.testing.assert_close(st, ref)


def test_dispatch_traces_the_references_under_dynamo(monkeypatch):
    """Under torch.compile (Dynamo) the dispatch functions trace their references in one graph, even where an eager
    call would pick the kernels: Inductor fuses the references with their producers."""
    from fxcache.triton_kernels import _common

    def step(x, y, buf, low, coeffs, scales, tea, mag):
        num, den = tk.rel_l1_sums(x, y)
        fin = tk.residual_store(y, x, buf)
        out = tk.cfg_blend(tk.forecast([tk.residual_apply(x, buf), y], coeffs), low, low, scales)
        return out, fin, tk.teacache_step(tea, num, den, coeffs, 0.1), tk.magcache_step(mag, 0.97, 0.1, 2)

    x, y = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    args = (x, y, torch.empty(2, 5, 7), torch.randn(2, 5, 7), torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0]),
            teacache_state(), magcache_state())
    want = step(*[a.clone() for a in args])  # eager, on the CPU: the references
    monkeypatch.setattr(_common, "interpreting", lambda: True)  # an eager call would now pick the kernels
    for mod, name in ((rel_l1, "rel_l1_sums_triton"), (residual, "residual_store_triton"),
                      (residual, "residual_apply_triton"), (forecasting, "forecast_triton"),
                      (blend, "cfg_blend_triton"), (accumulators, "teacache_step_triton"),
                      (accumulators, "magcache_step_triton")):
        monkeypatch.setattr(mod, name, lambda *a, **k: pytest.fail("a kernel was called while traced"))
    assert tk.use_kernel(x, y)
    got = torch.compile(step, fullgraph=True, backend="eager")(*args)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
