"""The fused Triton kernels of fxcache.triton_kernels against torch eager and torch.compile (Inductor) of their
torch references, at the activation shapes of real diffusion transformers.

    python -m bench.kernels                  # writes bench/results/kernels.json and kernels.md
    python -m bench.kernels --quick --out /tmp/k   # tiny shapes (tests)
    python -m bench.kernels --kernels residual_apply,forecast2 --dtypes bfloat16

Shapes: tokens x hidden of the block stack's activations (batch 1, and 2 for batched CFG), from the models'
configs:
  - Wan2.1 1.3B (dim 1536) and 14B (dim 5120). VAE stride (4, 8, 8), 16 latent channels, patch (1, 2, 2).
    480p: 832x480, 81 frames -> latent 21 x 60 x 104 -> 21 * 30 * 52 = 32760 tokens;
    720p: 1280x720, 81 frames -> latent 21 x 90 x 160 -> 21 * 45 * 80 = 75600 tokens.
    (The 512 umT5 text tokens enter by cross-attention: they are not in the stream.)
  - CogVideoX 5B: hidden 3072 (48 heads x 64). 720x480, 49 frames -> latent 13 x 60 x 90 (VAE 4x temporal,
    8x spatial), patch 2 -> 13 * 30 * 45 = 17550 video tokens, plus 226 text tokens: 17776 tokens in the two
    streams together (the cache stores both).
  - Flux.1 at 1024x1024: hidden 3072 (24 heads x 128). Latent 128 x 128 x 16, packed 2x2 -> 64 * 64 = 4096
    image tokens, plus 512 T5 text tokens: 4608 tokens.
The CFG blend runs on the model's output latent: Wan (B, 16, 21, 60, 104) at 480p and (B, 16, 21, 90, 160) at
720p (both sizes of Wan have 16 output channels), CogVideoX (B, 13, 16, 60, 90). Flux has no entry: its output is
packed tokens (B, 4096, 64), not a latent with the spatial dimensions last, and Flux.1-dev is guidance-distilled
(no CFG pass to rebuild).

Kernels: rel_l1_sums (reads 2, writes B floats), residual_apply (reads 2, writes 1), forecast2 / forecast4 (K = 2
linear extrapolation / K = 4 Taylor order 3: reads K, writes 1), cfg_blend (reads cond and two float32 bands,
writes 1). Dtypes float32 and bfloat16.

On a GPU: median time of each implementation (triton.testing.do_bench), GB/s (bytes read + written / time) and
the fraction of the device's peak memory bandwidth (from its memory clock and bus width, or a table of known
devices). On the CPU: the Triton kernels' correctness under the interpreter (a subprocess with TRITON_INTERPRET=1,
at reduced odd shapes: the interpreter is slow), and the references' Inductor-vs-eager times at the real shapes,
capped at --max-elements elements per tensor (default 2**24 on the CPU: the largest shapes, 774M elements, do not
fit 24 GiB in float32 with their temporaries, and would take minutes per row on two cores); a capped row keeps
its real shape in the table and says how many tokens it measured. Rows whose measured shape coincides are
measured once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent

# (name, tokens, hidden): see the module docstring.
ACTIVATIONS = [
    ("wan2.1-1.3b-480p", 32760, 1536),
    ("wan2.1-1.3b-720p", 75600, 1536),
    ("wan2.1-14b-480p", 32760, 5120),
    ("wan2.1-14b-720p", 75600, 5120),
    ("cogvideox-5b", 17550 + 226, 3072),
    ("flux.1-1024", 4096 + 512, 3072),
]
# (name, latent shape without the batch): the model output the CFG blend rebuilds.
LATENTS = [
    ("wan2.1-480p", (16, 21, 60, 104)),
    ("wan2.1-720p", (16, 21, 90, 160)),
    ("cogvideox-5b", (13, 16, 60, 90)),
]
QUICK_ACTIVATIONS = [("tiny", 37, 65)]
QUICK_LATENTS = [("tiny", (4, 3, 9, 11))]
BATCHES = (1, 2)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Peak memory bandwidth (bytes/s) of known devices, when the device properties do not give clock and bus width.
KNOWN_PEAK = [("H200", 4.8e12), ("H100 SXM", 3.35e12), ("H100 80GB HBM3", 3.35e12), ("A100-SXM4-80GB", 2.04e12),
              ("A100 80GB", 2.04e12)]



# ----------------------------------------------------------------------------------------------- the kernels

@dataclass
class Spec:
    """One kernel: how to make its inputs for a shape, its reference, its Triton launcher, a float64 truth for the
    interpreter check, and the bytes one call moves."""
    name: str
    kind: str  # "activation" | "latent"
    make: Callable  # (shape, dtype, device, generator) -> args tuple
    reference: Callable
    triton: Callable
    truth: Callable | None  # args -> (float64 result, float64 scale of the terms) for the tolerance
    nbytes: Callable  # (numel, element size, batch) -> bytes read + written
    result: Callable = lambda out, args: out  # what to compare from a call's return value (and args)


def _randn(shape, dtype, device, g):
    # Drawn on the device itself (g is a generator there): the largest shapes have 774M elements.
    return torch.randn(shape, generator=g, dtype=torch.float32, device=device).to(dtype)


def _specs() -> dict[str, Spec]:
    from fxcache.triton_kernels import (blend, cfg_blend_reference, forecast_reference, forecasting, rel_l1,
                                        rel_l1_sums_reference, residual, residual_apply_reference)

    def forecast_spec(k: int, weights: list[float]) -> Spec:
        def make(shape, dt, dev, g):
            return [_randn(shape, dt, dev, g) for _ in range(k)], torch.tensor(weights, device=dev)

        def truth(slots, coeffs):
            terms = [c * s.double() for c, s in zip(coeffs.double().tolist(), slots)]
            return sum(terms), sum(t.abs() for t in terms)

        return Spec(f"forecast{k}", "activation", make, forecast_reference, forecasting.forecast_triton, truth,
                    lambda n, es, b: (k + 1) * n * es)

    def blend_make(shape, dt, dev, g):
        return (_randn(shape, dt, dev, g), _randn(shape, torch.float32, dev, g), _randn(shape, torch.float32, dev, g),
                torch.tensor([0.8, 1.15], device=dev))

    def blend_truth(c, lo, hi, s):
        s0, s1 = s.double().tolist()
        terms = (c.double(), s0 * lo.double(), s1 * hi.double())
        return sum(terms), sum(t.abs() for t in terms)

    def two(shape, dt, dev, g):
        return _randn(shape, dt, dev, g), _randn(shape, dt, dev, g)

    return {s.name: s for s in [
        Spec("rel_l1_sums", "activation", two,
             rel_l1_sums_reference, rel_l1.rel_l1_sums_triton,
             lambda x, r: (torch.stack([(x.double() - r.double()).reshape(x.shape[0], -1).abs().sum(1),
                                        r.double().reshape(x.shape[0], -1).abs().sum(1)]),
                           torch.stack([(x.double().abs() + r.double().abs()).reshape(x.shape[0], -1).sum(1),
                                        r.double().reshape(x.shape[0], -1).abs().sum(1)])),
             lambda n, es, b: 2 * n * es + 8 * b, result=lambda out, args: torch.stack(out)),
        Spec("residual_apply", "activation", two,
             residual_apply_reference, residual.residual_apply_triton,
             lambda x, c: (x.double() + c.double(), x.double().abs() + c.double().abs()),
             lambda n, es, b: 3 * n * es),
        forecast_spec(2, [2.0, -1.0]),
        forecast_spec(4, [4.0, -6.0, 4.0, -1.0]),
        Spec("cfg_blend", "latent", blend_make, cfg_blend_reference, blend.cfg_blend_triton, blend_truth,
             lambda n, es, b: 2 * n * es + 8 * n),
    ]}


# ------------------------------------------------------------------------------------------------- the cases

def cases(spec: Spec, quick: bool, max_elements: int | None) -> list[dict]:
    """(model, batch, real shape, measured shape, note) of a kernel."""
    out = []
    if spec.kind == "activation":
        for name, tokens, hidden in (QUICK_ACTIVATIONS if quick else ACTIVATIONS):
            for b in BATCHES:
                shape = (b, tokens, hidden)
                run, note = shape, ""
                if max_elements and math.prod(shape) > max_elements:
                    t = max(1, max_elements // (b * hidden))
                    run, note = (b, t, hidden), f"capped: {t} of {tokens} tokens"
                out.append({"model": name, "batch": b, "shape": shape, "run_shape": run, "note": note})
    else:
        for name, latent in (QUICK_LATENTS if quick else LATENTS):
            for b in BATCHES:
                shape = (b, *latent)
                run, note = shape, ""
                if max_elements and math.prod(shape) > max_elements:
                    f = max(1, max_elements // math.prod((b, *latent[:-3], *latent[-2:])))  # cap the frames
                    run, note = (b, *latent[:-3], f, *latent[-2:]), f"capped: {f} of {latent[-3]} along dim -3"
                out.append({"model": name, "batch": b, "shape": shape, "run_shape": run, "note": note})
    return out


# -------------------------------------------------------------------------------------------------- machine

def peak_bandwidth(device: int = 0) -> tuple[float | None, str]:
    """(bytes/s, where the figure comes from) of a CUDA device."""
    props = torch.cuda.get_device_properties(device)
    clock, width = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock and width:  # kHz, bits; double data rate
        return 2 * clock * 1e3 * width / 8, f"device properties ({clock / 1e3:.0f} MHz x {width} bit)"
    for key, peak in KNOWN_PEAK:
        if key.lower() in props.name.lower():
            return peak, f"known device table ({key})"
    return None, "unknown"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "triton": triton_version, "python": platform.python_version(), "gpu": gpu,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


# --------------------------------------------------------------------------------------------------- timing

def cpu_time_ms(fn, repeats: int, min_repeat_s: float = 0.05) -> float:
    """Median over `repeats` of the mean time of a call; each repeat runs enough calls to last `min_repeat_s`
    (this machine's scheduler hands out time in slices of a few ms, which a single short call would measure)."""
    fn()  # warm-up (and compile)
    t0 = time.perf_counter()
    fn()
    calls = max(1, min(100, int(min_repeat_s / max(time.perf_counter() - t0, 1e-6))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    return 1e3 * statistics.median(times)


def gpu_time_ms(fn, repeats: int) -> float:
    import triton.testing

    fn()
    torch.cuda.synchronize()
    return float(triton.testing.do_bench(fn, return_mode="median"))


def _compile_limits() -> None:
    # Every (shape, dtype) is a recompile under dynamic=False: keep them all compiled, not fall back to eager.
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 4096)


def measure(specs: dict[str, Spec], dtypes: list[str], device: str, quick: bool, max_elements: int | None,
            impls: list[str], repeats: int, dynamic: bool | None, log=print) -> list[dict]:
    """One row per (kernel, case, dtype): the median ms of each implementation, GB/s and (on a GPU) the fraction of
    the peak bandwidth."""
    _compile_limits()
    timer = gpu_time_ms if device == "cuda" else cpu_time_ms
    peak = peak_bandwidth()[0] if device == "cuda" else None
    compiled = {name: torch.compile(s.reference, dynamic=dynamic) for name, s in specs.items()} \
        if "inductor" in impls else {}
    rows, seen = [], {}
    g = torch.Generator(device=device).manual_seed(0)
    for name, spec in specs.items():
        for dname in dtypes:
            dt = DTYPES[dname]
            for case in cases(spec, quick, max_elements):
                key = (name, dname, case["run_shape"])
                row = {"kernel": name, "dtype": dname, **case, "shape": list(case["shape"]),
                       "run_shape": list(case["run_shape"])}
                if key in seen:  # the same measured shape as an earlier row (a capped shape)
                    row.update({k: v for k, v in seen[key].items() if k.startswith(("ms_", "gbps_", "peak_"))})
                    row["note"] = (row["note"] + "; " if row["note"] else "") + "same measurement as " + \
                        f"{seen[key]['model']} B={seen[key]['batch']}"
                    rows.append(row)
                    continue
                args = spec.make(case["run_shape"], dt, device, g)
                numel = math.prod(case["run_shape"])
                nbytes = spec.nbytes(numel, dt.itemsize, case["batch"])
                fns = {"eager": spec.reference, "inductor": compiled.get(name), "triton": spec.triton}
                for impl in impls:
                    fn = fns[impl]
                    t0 = time.perf_counter()
                    ms = timer(lambda fn=fn, a=args: fn(*a), repeats)
                    row[f"ms_{impl}"] = ms
                    if nbytes:
                        row[f"gbps_{impl}"] = nbytes / (ms * 1e-3) / 1e9
                        if peak:
                            row[f"peak_{impl}"] = nbytes / (ms * 1e-3) / peak
                    log(f"  {name:15s} {case['model']:18s} B={case['batch']} {dname:8s} "
                        f"{'x'.join(map(str, case['run_shape'])):>18s} {impl:8s} {ms:9.3f} ms"
                        + (f" {row[f'gbps_{impl}']:7.1f} GB/s" if nbytes else "")
                        + f"   ({time.perf_counter() - t0:.1f} s)")
                del args
                seen[key] = row
                rows.append(row)
    return rows


# ------------------------------------------------------------------------------------ interpreter check

REDUCE_TOKENS, REDUCE_HIDDEN = 512, 64


def reduced(shape: tuple, kind: str) -> tuple:
    """An odd, interpreter-sized version of a real shape."""
    if kind == "activation":
        b, t, h = shape
        return b, max(3, t // REDUCE_TOKENS) | 1, max(3, h // REDUCE_HIDDEN) | 1
    b, *lead, f, hh, ww = shape
    return (b, *[max(1, c // 4) | 1 for c in lead], max(1, f // 7) | 1, max(3, hh // 8) | 1, max(3, ww // 8) | 1)


def poison_allocations() -> None:
    """Make torch.empty / empty_like return poisoned memory (NaN floats, zero integers, bool byte 2), so that an
    element a kernel fails to write fails the check. For the interpreter-check subprocess only: it is global."""
    real_empty, real_like = torch.empty, torch.empty_like

    def poison(t):
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.dtype == torch.bool:
            t.view(torch.uint8).fill_(2)
        else:
            t.fill_(0)
        return t

    torch.empty = lambda *a, **k: poison(real_empty(*a, **k))
    torch.empty_like = lambda *a, **k: poison(real_like(*a, **k))


def interpreter_check(quick: bool, dtypes: list[str], kernels: list[str] | None = None) -> list[dict]:
    """Each kernel (run by the interpreter: call it with TRITON_INTERPRET=1 set before triton is imported) against
    a float64 truth at reduced odd shapes, its outputs poisoned with NaN first."""
    from fxcache.triton_kernels import _common

    if not _common.interpreting():
        raise RuntimeError("interpreter_check needs TRITON_INTERPRET=1 set before triton is imported")
    specs = {k: s for k, s in _specs().items() if kernels is None or k in kernels}
    g = torch.Generator().manual_seed(1)
    out = []
    poison_allocations()
    for name, spec in specs.items():
        for dname in dtypes:
            dt = DTYPES[dname]
            shapes = sorted({reduced(c["shape"], spec.kind) for c in cases(spec, quick, None)})
            for shape in shapes:
                args = spec.make(shape, dt, "cpu", g)
                res = spec.result(spec.triton(*args), args)
                want, scale = spec.truth(*args)
                if name == "rel_l1_sums":  # float32 sums over many terms
                    bound = 1e-5 * scale + 1e-6
                else:
                    bound = torch.finfo(dt).eps * want.abs() + 8 * torch.finfo(torch.float32).eps * scale + 1e-30
                err = (res.double() - want).abs()
                ok = bool(torch.isfinite(res).all() and (err <= bound).all())
                out.append({"kernel": name, "dtype": dname, "shape": list(shape), "max_abs_err": err.max().item(),
                            "max_err_over_bound": (err / bound).max().item(), "ok": ok})
    return out


def run_interpreter_check(quick: bool, dtypes: list[str], kernels: list[str] | None = None,
                          log=print) -> list[dict] | str:
    """The interpreter check in a subprocess (TRITON_INTERPRET=1 must be set before triton is imported)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "skipped: triton is not installed"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "check.json"
        cmd = [sys.executable, "-m", "bench.kernels", "--_interpreter-check", str(path), "--dtypes", ",".join(dtypes)]
        if quick:
            cmd.append("--quick")
        if kernels:
            cmd += ["--kernels", ",".join(kernels)]
        env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"the interpreter check failed:\n{proc.stderr[-4000:]}")
        log(f"interpreter check: {time.perf_counter() - t0:.1f} s")
        return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ rendering

def _f(v, fmt="{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def render(result: dict) -> str:
    m = result["machine"]
    lines = ["# Kernel benchmark (bench/kernels.py)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores ({m['threads']} torch threads), GPU: {m['gpu'] or 'none'}; "
             f"torch {m['torch']}, triton {m['triton']}; {m['date']}.", ""]
    impls = result["impls"]
    if result["device"] == "cuda":
        peak = result.get("peak_bandwidth")
        lines.append(f"Peak memory bandwidth: {_f(peak and peak / 1e12, '{:.2f}')} TB/s "
                     f"({result.get('peak_source')}). Median of triton.testing.do_bench.")
    else:
        lines.append(f"No GPU: the Triton kernels' speed is not measured here. Times are the torch references, "
                     f"eager vs torch.compile (Inductor, dynamic={result['dynamic']}), median of {result['repeats']} "
                     f"repeats after a warm-up; shapes above {result['max_elements']} elements per tensor are "
                     f"capped (the note says how many tokens / frames were measured). GB/s = bytes read + written "
                     f"by the fused pass / time (the eager reference moves more: its temporaries).")
    lines += ["", "| kernel | model | B | dtype | shape | " + " | ".join(f"{i} ms" for i in impls) + " | "
              + " | ".join(f"{i} GB/s" for i in impls) + (" | triton % peak" if "triton" in impls else "")
              + " | inductor vs eager | note |",
              "|" + "---|" * (5 + 2 * len(impls) + (1 if "triton" in impls else 0) + 2)]
    for r in result["rows"]:
        cells = [r["kernel"], r["model"], str(r["batch"]), r["dtype"], "x".join(map(str, r["shape"]))]
        cells += [_f(r.get(f"ms_{i}")) for i in impls]
        cells += [_f(r.get(f"gbps_{i}"), "{:.1f}") for i in impls]
        if "triton" in impls:
            cells.append(_f(r.get("peak_triton") and 100 * r["peak_triton"], "{:.0f}%"))
        sp = r.get("ms_eager") / r["ms_inductor"] if r.get("ms_inductor") and r.get("ms_eager") else None
        cells += [_f(sp, "{:.2f}x"), r.get("note", "")]
        lines.append("| " + " | ".join(cells) + " |")
    check = result.get("interpreter_check")
    lines += ["", "## Triton interpreter check (CPU, TRITON_INTERPRET=1)", ""]
    if isinstance(check, str) or check is None:
        lines.append(str(check))
    else:
        lines.append("Each kernel run by Triton's interpreter at reduced odd shapes (the interpreter is slow: the "
                     "real shapes would take hours), outputs poisoned with NaN first, against a float64 truth "
                     "(bound: eps(dtype) * |truth| + 8 eps(float32) * sum|terms|; rel_l1 sums 1e-5 relative). "
                     "The interpreter converts float32 to bfloat16 by truncation (up to 1 ulp; a GPU rounds to "
                     "nearest, 1/2 ulp), hence bfloat16 ratios near 1 against a bound of 1 eps.")
        lines += ["", "| kernel | dtype | shapes | ok | max err / bound |", "|---|---|---|---|---|"]
        groups: dict = {}
        for c in check:
            groups.setdefault((c["kernel"], c["dtype"]), []).append(c)
        for (k, d), cs in groups.items():
            worst = max((c.get("max_err_over_bound", 0.0) for c in cs), default=0.0)
            lines.append(f"| {k} | {d} | {', '.join('x'.join(map(str, c['shape'])) for c in cs)} | "
                         f"{sum(c['ok'] for c in cs)}/{len(cs)} | {worst:.3f} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------- main

def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for kernels.json and kernels.md")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, float32, 1 repeat (tests)")
    ap.add_argument("--kernels", default=None, help="comma-separated subset (default: all)")
    ap.add_argument("--dtypes", default=None, help="comma-separated, of float32,bfloat16,float16 (default: "
                    "float32,bfloat16; --quick: float32)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per row on the CPU (default 5)")
    ap.add_argument("--max-elements", type=int, default=None,
                    help="cap on elements per tensor (default: 2**24 on the CPU, none on a GPU; 0: none)")
    ap.add_argument("--no-interpreter-check", action="store_true", help="CPU: skip the interpreter check")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    ap.add_argument("--_interpreter-check", dest="interpreter_check", type=Path, default=None,
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    dtypes = args.dtypes.split(",") if args.dtypes else (["float32"] if args.quick else ["float32", "bfloat16"])
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        ap.error(f"unknown dtype(s) {bad}; choose from {list(DTYPES)}")
    specs = _specs()
    if args.kernels:
        wanted = args.kernels.split(",")
        unknown = [k for k in wanted if k not in specs]
        if unknown:
            ap.error(f"unknown kernel(s) {unknown}; choose from {list(specs)}")
        specs = {k: specs[k] for k in wanted}
    if args.interpreter_check is not None:  # the subprocess
        args.interpreter_check.write_text(json.dumps(interpreter_check(args.quick, dtypes, list(specs))))
        return {}

    from fxcache.triton_kernels._common import triton

    device = "cuda" if torch.cuda.is_available() and triton is not None else "cpu"
    max_elements = args.max_elements if args.max_elements is not None else (2 ** 24 if device == "cpu" else None)
    repeats = args.repeats or (1 if args.quick else 5)
    dynamic = True if device == "cpu" else False  # CPU: one compile per kernel and dtype keeps the run short
    impls = ["eager"] + ([] if args.no_compile else ["inductor"]) + (["triton"] if device == "cuda" else [])

    result = {"machine": machine(), "device": device, "impls": impls, "dtypes": dtypes, "quick": args.quick,
              "repeats": repeats, "max_elements": max_elements, "dynamic": dynamic}
    if device == "cuda":
        result["peak_bandwidth"], result["peak_source"] = peak_bandwidth()
    t0 = time.perf_counter()
    if device == "cpu" and not args.no_interpreter_check:
        print("Triton interpreter check (CPU, reduced odd shapes: the interpreter is slow)")
        result["interpreter_check"] = run_interpreter_check(args.quick, dtypes, list(specs))
        failed = [c for c in result["interpreter_check"] if isinstance(c, dict) and not c["ok"]]
        print(f"  {len(result['interpreter_check']) - len(failed)} ok, {len(failed)} failed")
    else:
        result["interpreter_check"] = "not run" + (" (on a GPU the kernels run for real)" if device == "cuda" else "")
    print(f"Timing on {device}: {', '.join(impls)}" + (f"; tensors capped at {max_elements} elements"
                                                       if max_elements else ""))
    with torch.no_grad():
        result["rows"] = measure(specs, dtypes, device, args.quick, max_elements, impls, repeats, dynamic)
    result["seconds"] = time.perf_counter() - t0
    text = render(result)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "kernels.md").write_text(text)
    return result


if __name__ == "__main__":
    main()
