"""Triton kernels against their torch references: run by Triton's interpreter on the CPU (one subprocess, with
TRITON_INTERPRET=1 set before triton is imported), plus dispatch, argument checks, an import without triton, the
kernel benchmark's quick run, and (skipped without one) a GPU."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fxcache.triton_kernels as tk
from fxcache.triton_kernels import blend, forecasting, rel_l1, residual

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CODE = r"""
import math, os, torch
assert os.environ["TRITON_INTERPRET"] == "1"
torch.set_num_threads(1)
import fxcache.triton_kernels as tk
from fxcache.triton_kernels import blend, forecasting, rel_l1, residual
from fxcache.passes.cfg import rebuild

# Poisoned allocations: every tensor the kernels allocate starts as NaN (floats), 0 (integers) or byte 2 (bools:
# neither True nor False as written), so that an element a kernel does not write fails the comparison.
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

# dispatch: every dispatch function runs its kernel under the interpreter, and the reference while traced
from torch.fx.experimental.proxy_tensor import make_fx
calls = []
def counting(mod, name):
    real = getattr(mod, name)
    setattr(mod, name, lambda *a, **k: calls.append(name) or real(*a, **k))
for mod, name in ((rel_l1, "rel_l1_sums_triton"), (residual, "residual_apply_triton"),
                  (forecasting, "forecast_triton"), (blend, "cfg_blend_triton")):
    counting(mod, name)
x, y = randn((2, 33)), randn((2, 33))
tk.rel_l1_sums(x, y); tk.residual_apply(x, y)
tk.forecast([x, y], torch.tensor([2.0, -1.0])); tk.cfg_blend(x, y, x, torch.tensor([1.0, 2.0]))
assert sorted(calls) == sorted(["rel_l1_sums_triton", "residual_apply_triton", "forecast_triton",
                                "cfg_blend_triton"]), calls
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
assert len(rows) == 10 and all(r["ms_triton"] > 0 for r in rows)  # 5 kernels x batch 1, 2
assert len(calls) >= 10, calls
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
    return {
        "rel_l1_sums": (tk.rel_l1_sums(x, y), tk.rel_l1_sums_reference(x, y)),
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

    for mod, name in ((rel_l1, "rel_l1_sums_triton"), (residual, "residual_apply_triton"),
                      (forecasting, "forecast_triton"), (blend, "cfg_blend_triton")):
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


def test_import_and_references_without_triton():
    code = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None  # import triton -> ImportError
        import torch
        import fxcache.triton_kernels as tk
        from fxcache.triton_kernels import residual
        x, y = torch.randn(2, 9), torch.randn(2, 9)
        assert torch.equal(tk.residual_apply(x, y), x + y)
        tk.rel_l1_sums(x, y); tk.forecast([x], torch.ones(1)); tk.cfg_blend(x, y, x, torch.ones(2))
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


def test_blend_reference_is_the_cfg_rebuild():
    from fxcache.passes.cfg import rebuild

    g = torch.Generator().manual_seed(5)
    cond = torch.randn(2, 3, 4, 9, 11, generator=g).bfloat16()
    low, high = torch.randn(2, 3, 4, 9, 11, generator=g), torch.randn(2, 3, 4, 9, 11, generator=g)
    scales = torch.tensor([0.7, 1.3])
    assert torch.equal(tk.cfg_blend(cond, low, high, scales), rebuild(cond, low, high, scales))


# ----------------------------------------------------------------------------------------------- benchmark

def test_kernel_benchmark_quick(tmp_path):
    from bench import kernels

    result = kernels.main(["--quick", "--out", str(tmp_path), "--kernels", "residual_apply,cfg_blend,forecast2"])
    saved = json.loads((tmp_path / "kernels.json").read_text())
    assert saved["machine"]["torch"] == torch.__version__ and "date" in saved["machine"]
    assert {r["kernel"] for r in saved["rows"]} == {"residual_apply", "cfg_blend", "forecast2"}
    assert all(r["ms_eager"] > 0 and r["ms_inductor"] > 0 for r in result["rows"])
    check = saved["interpreter_check"]
    if not isinstance(check, str):
        assert check and all(c["ok"] for c in check), check
    assert "| residual_apply |" in (tmp_path / "kernels.md").read_text()
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
    torch.testing.assert_close(tk.residual_apply(x, y.transpose(1, 2).contiguous().transpose(1, 2)),
                               tk.residual_apply_reference(x, y))
    for weights in ([2.0, -1.0], [4.0, -6.0, 4.0, -1.0]):
        slots = [randn(2, 1001, 77) for _ in weights]
        c = torch.tensor(weights, device="cuda")
        torch.testing.assert_close(tk.forecast(slots, c), tk.forecast_reference(slots, c))
    low, high = randn(2, 1001, 77, dtype=torch.float32), randn(2, 1001, 77, dtype=torch.float32)
    s = torch.tensor([0.8, 1.15], device="cuda")
    torch.testing.assert_close(tk.cfg_blend(x, low, high, s), tk.cfg_blend_reference(x, low, high, s))


def test_dispatch_traces_the_references_under_dynamo(monkeypatch):
    """Under torch.compile (Dynamo) the dispatch functions trace their references in one graph, even where an eager
    call would pick the kernels: Inductor fuses the references with their producers."""
    from fxcache.triton_kernels import _common

    def step(x, y, cached, low, coeffs, scales):
        num, den = tk.rel_l1_sums(x, y)
        out = tk.cfg_blend(tk.forecast([tk.residual_apply(x, cached), y], coeffs), low, low, scales)
        return out, num, den

    x, y = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    args = (x, y, torch.randn(2, 5, 7), torch.randn(2, 5, 7), torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0]))
    want = step(*[a.clone() for a in args])  # eager, on the CPU: the references
    monkeypatch.setattr(_common, "interpreting", lambda: True)  # an eager call would now pick the kernels
    for mod, name in ((rel_l1, "rel_l1_sums_triton"), (residual, "residual_apply_triton"),
                      (forecasting, "forecast_triton"), (blend, "cfg_blend_triton")):
        monkeypatch.setattr(mod, name, lambda *a, **k: pytest.fail("a kernel was called while traced"))
    assert tk.use_kernel(x, y)
    got = torch.compile(step, fullgraph=True, backend="eager")(*args)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
