"""What the demo and the quality benchmark share: methods as (provider, name, setting) that wrap the reference
transformer, warm-up then interleaved timed repeats of whole generations, fidelity against the uncached output,
and the speed/quality plot."""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from fxcache.metrics import psnr, rel_l1, ssim

from .pipeline import generate

# Every compiled method is a separate torch.compile of the same module: Dynamo keeps one cache entry per backend
# on the module's forward, and past its default limit (8) it would silently run the rest eagerly.
torch._dynamo.config.recompile_limit = 64
torch._dynamo.config.accumulated_recompile_limit = 4096
# The benchmark calls the same module at batch 8 (separate CFG) and 16 (batched CFG); by default Dynamo would then
# make the batch dimension symbolic for every later compile. A user's pipeline uses one layout: keep graphs static.
torch._dynamo.config.automatic_dynamic_shapes = False


@dataclass
class Method:
    name: str  # e.g. "fbcache"
    provider: str  # "none" | "fxcache" | "diffusers" | "cache-dit"
    setting: str  # human label, e.g. "threshold=0.05"
    enter: Callable  # (transformer) -> context manager yielding the callable to pass to the pipeline
    cfg: str = "separate"
    stats: Callable | None = None  # (model) -> fxcache Stats-like object with full_steps/steps, or None
    persistent: bool = True  # entered once for the whole run; False: hooks on the shared transformer, entered
    # around each generation so that only one such method is active at a time

    @property
    def label(self) -> str:
        return f"{self.provider}:{self.name}" + (f" ({self.setting})" if self.setting else "")


def fxcache_method(name: str, setting: str = "", compiler: str = "inductor", **options) -> Method:
    import fxcache

    @contextlib.contextmanager
    def enter(transformer):
        yield torch.compile(transformer, fullgraph=True,
                            backend=fxcache.backend(policy=options.get("policy", name), compiler=compiler,
                                                    **{k: v for k, v in options.items() if k != "policy"}))

    return Method(name, "fxcache", setting, enter, stats=fxcache.stats)


def uncached_method(compiler: str = "inductor") -> Method:
    @contextlib.contextmanager
    def enter(transformer):
        yield transformer if compiler == "eager" else torch.compile(transformer, fullgraph=True)

    return Method("uncached", "none", f"torch.compile ({compiler})" if compiler != "eager" else "eager", enter)


@dataclass
class Result:
    method: Method
    times: list = field(default_factory=list)
    compile_s: float = 0.0
    outputs: dict = field(default_factory=dict)  # seed -> clips
    full_steps: list = field(default_factory=list)


def run_methods(methods: list[Method], transformer, cond, uncond, seeds, *, steps: int, guidance: float,
                repeats: int, progress=None) -> list[Result]:
    """Warm each method up (its first generation compiles; that time is reported apart), then time `repeats`
    rounds, each round running every method once over all seeds, so that machine noise hits all alike."""
    results = [Result(m) for m in methods]
    stacks = []
    models = []
    for r in results:  # enter every method once; the contexts stay open for the whole run
        stack = contextlib.ExitStack()
        models.append(stack.enter_context(r.method.enter(transformer)))
        stacks.append(stack)
    try:
        for r, model in zip(results, models):
            t0 = time.perf_counter()
            for seed in seeds:
                r.outputs[seed] = generate(model, cond, uncond, num_inference_steps=steps, guidance_scale=guidance,
                                           seed=seed, cfg=r.method.cfg)
            r.compile_s = time.perf_counter() - t0
            if progress:
                progress(f"warm-up {r.method.label}: {r.compile_s:.1f} s")
        for rep in range(repeats):
            for r, model in zip(results, models):
                before = _full_steps(r, model)
                t0 = time.perf_counter()
                for seed in seeds:
                    out = generate(model, cond, uncond, num_inference_steps=steps, guidance_scale=guidance,
                                   seed=seed, cfg=r.method.cfg)
                    if not torch.equal(out, r.outputs[seed]):
                        raise RuntimeError(f"{r.method.label}: generation is not deterministic")
                r.times.append(time.perf_counter() - t0)
                after = _full_steps(r, model)
                if before is not None:
                    r.full_steps.append((after[0] - before[0]) / len(seeds) / max(1, after[2]))
                if progress:
                    progress(f"repeat {rep + 1}/{repeats} {r.method.label}: {r.times[-1]:.2f} s")
    finally:
        for stack in stacks:
            stack.close()
    return results


def _full_steps(r: Result, model):
    """(full steps, steps, streams) so far, from fxcache's stats or a method's own counter."""
    if r.method.stats is None:
        return None
    s = r.method.stats(model)
    streams = len({d["stream"] for d in s.decisions}) or 1
    return s.full_steps, s.steps, streams


def summarize(results: list[Result], reference: Result) -> list[dict]:
    base = statistics.median(reference.times)
    rows = []
    for r in results:
        # One value per generated clip (prompt x seed), against the uncached clip of the same prompt and seed.
        pairs = [(a, b) for s in sorted(r.outputs) for a, b in zip(r.outputs[s], reference.outputs[s])]
        ps = [psnr(a, b) for a, b in pairs]
        ss = [ssim(a[None], b[None]) for a, b in pairs]
        rl = [rel_l1(a, b) for a, b in pairs]
        finite = [p for p in ps if p != float("inf")]
        rows.append({
            "method": r.method.name, "provider": r.method.provider, "setting": r.method.setting,
            "cfg": r.method.cfg,
            "time_median_s": statistics.median(r.times), "time_min_s": min(r.times), "time_max_s": max(r.times),
            "speedup": base / statistics.median(r.times),
            "speedup_min": base / max(r.times), "speedup_max": base / min(r.times),
            "psnr_mean": statistics.mean(finite) if finite else float("inf"),
            "psnr_min": min(ps), "ssim_mean": statistics.mean(ss), "rel_l1_mean": statistics.mean(rl),
            "full_steps_mean": statistics.mean(r.full_steps) if r.full_steps else None,
            "warmup_s": r.compile_s,
        })
    return rows


def plot_pareto(rows: list[dict], path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"fxcache": ("o", "tab:red"), "diffusers": ("s", "tab:blue"), "cache-dit": ("^", "tab:green"),
               "none": ("*", "black")}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cap = 60.0
    for provider, (marker, color) in markers.items():
        pts = [r for r in rows if r["provider"] == provider]
        if not pts:
            continue
        xs = [r["speedup"] for r in pts]
        ys = [min(cap, r["psnr_mean"]) for r in pts]
        ax.scatter(xs, ys, marker=marker, color=color, s=60, label=provider, zorder=3)
        for r, x, y in zip(pts, xs, ys):
            if provider != "none":
                ax.annotate(f"{r['method']} {r['setting']}", (x, y), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
            ax.plot([r["speedup_min"], r["speedup_max"]], [y, y], color=color, lw=0.8, alpha=0.6)
    ax.axhline(30, color="gray", ls=":", lw=1)
    ax.axvline(2, color="gray", ls=":", lw=1)
    ax.set(xlabel="speedup over uncached (median; bar = min-max of repeats)",
           ylabel=f"PSNR vs uncached, dB (uncached = {cap:.0f})", title=title)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| provider | method | setting | CFG | time (s) median [min-max] | speedup | PSNR mean / min (dB) "
             "| SSIM | rel L1 | full steps |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["provider"] != "none", r["provider"], -r["speedup"])):
        fs = "-" if r["full_steps_mean"] is None else f"{r['full_steps_mean']:.1f}"
        p = "inf" if r["psnr_mean"] == float("inf") else f"{r['psnr_mean']:.1f}"
        pm = "inf" if r["psnr_min"] == float("inf") else f"{r['psnr_min']:.1f}"
        lines.append(f"| {r['provider']} | {r['method']} | {r['setting']} | {r['cfg']} | {r['time_median_s']:.2f} "
                     f"[{r['time_min_s']:.2f}-{r['time_max_s']:.2f}] | {r['speedup']:.2f}x | {p} / {pm} "
                     f"| {r['ssim_mean']:.3f} | {r['rel_l1_mean']:.4f} | {fs} |")
    return "\n".join(lines)
