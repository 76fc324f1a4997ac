"""What the demo and the quality benchmark share: methods as (provider, name, setting) that wrap the reference
transformer, warm-up then interleaved timed repeats of whole generations, fidelity against the uncached output,
and the speed/quality plot."""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from fxcache.backend import _RUNTIMES
from fxcache.runtime.requests import tables_of

from .fidelity import psnr, rel_l1, ssim
from .models import Reference

# Every compiled method is a separate torch.compile of the same module: Dynamo keeps one cache entry per backend
# on the module's forward, and past its default limit (8) it would silently run the rest eagerly.
torch._dynamo.config.recompile_limit = 128  # one cache entry per compiled method: above the full run's count
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
    counted: bool = False  # persistent, not fxcache: `enter(transformer, counter)` hooks `counter` where the
    # shared transformer's probe module would be, so that its full steps are counted too

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


def default_method(compiler: str = "inductor") -> Method:
    """fxcache with no policy named: the default policy and settings (fxcache.DEFAULT_OPTIONS)."""
    import fxcache

    @contextlib.contextmanager
    def enter(transformer):
        yield torch.compile(transformer, fullgraph=True, backend=fxcache.backend(compiler=compiler))

    settings = " ".join(f"{k}={v}" for k, v in fxcache.DEFAULT_OPTIONS.items())
    return Method(fxcache.DEFAULT_POLICY, "fxcache", f"default: {settings}", enter, stats=fxcache.stats)


def uncached_method(compiler: str = "inductor") -> Method:
    @contextlib.contextmanager
    def enter(transformer):
        yield transformer if compiler == "eager" else torch.compile(transformer, fullgraph=True)

    return Method("uncached", "none", f"torch.compile ({compiler})" if compiler != "eager" else "eager", enter)


def module_attributes(model: torch.nn.Module) -> dict[str, set]:
    """The instance attribute names of every module of `model`, by module path (what a cache library adds to a
    module shows up against these)."""
    return {name: set(vars(m)) for name, m in model.named_modules(remove_duplicate=False)}


def hook_cache_bytes(model: torch.nn.Module, before: dict[str, set]) -> int | None:
    """Bytes of the tensors a cache library keeps on `model`: the distinct tensors reachable from the attributes
    its modules gained since `before` (hook registries, state managers, cached states), the model's own
    parameters and buffers excepted. None when nothing is found (a library that keeps its state elsewhere)."""
    own = {t.data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen_objects: set[int] = set()
    found: dict[int, int] = {}

    def walk(x, depth: int) -> None:
        if depth > 16 or id(x) in seen_objects or isinstance(x, (str, bytes, int, float, bool, type(None))):
            return
        seen_objects.add(id(x))
        if isinstance(x, torch.Tensor):
            if x.data_ptr() not in own:
                found[x.data_ptr()] = max(found.get(x.data_ptr(), 0), x.untyped_storage().nbytes())
            return
        if isinstance(x, torch.nn.Module):  # the modules are walked as roots, not through references
            return
        if isinstance(x, dict):
            for v in x.values():
                walk(v, depth + 1)
        elif isinstance(x, (list, tuple, set, frozenset)):
            for v in x:
                walk(v, depth + 1)
        elif hasattr(x, "__dict__"):  # hook objects, state managers, cached states
            for v in vars(x).values():
                walk(v, depth + 1)

    for name, m in model.named_modules(remove_duplicate=False):
        for key in set(vars(m)) - before.get(name, set()):
            walk(vars(m)[key], 0)
    return sum(found.values()) or None


def measure(methods: list[Method], transformer, ref: Reference, conditioning, *, seeds, steps: int,
            guidance: float, repeats: int, log=print) -> tuple[list, list, list, list, list]:
    """Warm every method up over all seeds (its first generation compiles: `warmup` s, reported apart; these
    clips give the fidelity numbers), then time `repeats` rounds of one generation (seed seeds[0]) per method,
    interleaved so that machine noise hits all alike. `ref` is the reference model (bench/models.py) and
    `conditioning` its encoded prompts. Returns (outputs, times, full_steps, warmup, cache_bytes) per method."""
    contexts = contextlib.ExitStack()
    outputs: list[dict] = []
    warmup: list[float] = []
    cache_bytes: list = []  # bytes the method's caches hold after a generation (fxcache: its runtimes' buffers;
    # peers: the tensors their hooks keep, `hook_cache_bytes`)
    attributes = module_attributes(transformer)
    times = [[] for _ in methods]
    full = [[] for _ in methods]
    probe_module = ref.probe(transformer)
    computed = [0]  # peers: calls in which the last block's self-attention ran (hooked only around them)

    def count(*_):
        computed[0] += 1

    with contexts:
        persistent = {i: contexts.enter_context(m.enter(transformer, count) if m.counted else m.enter(transformer))
                      for i, m in enumerate(methods) if m.persistent}

        @contextlib.contextmanager
        def model_of(i):
            if i in persistent:
                yield persistent[i]
            else:
                with methods[i].enter(transformer) as model:
                    yield model

        def gen(model, m, seed):
            return ref.generate(model, conditioning, num_inference_steps=steps, guidance_scale=guidance,
                                seed=seed, cfg=m.cfg)

        for i, m in enumerate(methods):  # warm-up: compiles, and gives every clip for the fidelity numbers
            t0 = time.perf_counter()
            before = set(_RUNTIMES)
            with model_of(i) as model:
                peak = [None]
                handle = None
                if m.provider not in ("fxcache", "none"):
                    # A peer's caches at their largest: after every call (pipelines may clear them at the end)
                    def held(*_, model=model):
                        b = hook_cache_bytes(model, attributes)
                        peak[0] = b if peak[0] is None or (b or 0) > peak[0] else peak[0]

                    handle = model.register_forward_hook(held)
                outputs.append({s: gen(model, m, s) for s in seeds})
                if handle is not None:
                    handle.remove()
                    cache_bytes.append(peak[0])
            # fxcache's own cache buffers: those of the runtimes its first generation created (fxcache.stats
            # of the shared transformer would also count the other fxcache methods compiled on it).
            if m.provider in ("fxcache", "none"):
                new = set(_RUNTIMES) - before
                configs = {r.per_sample.config for r in new if r.per_sample is not None}  # per-request states
                held = sum(sum(t.live().values()) for t in tables_of(list(transformer.parameters()))
                           if t.config in configs)
                cache_bytes.append(held + sum(inst.nbytes() for r in new for inst in r.instances.all())
                                   if m.provider == "fxcache" else None)
            warmup.append(time.perf_counter() - t0)
            log(f"  warm-up {m.label} [{m.cfg}]: {warmup[-1]:.1f} s")
        for rep in range(repeats):
            for i, m in enumerate(methods):
                with model_of(i) as model:
                    before = m.stats(model) if m.stats else None
                    hook = None if m.persistent else probe_module.register_forward_pre_hook(count)
                    computed[0] = 0
                    t0 = time.perf_counter()
                    out = gen(model, m, seeds[0])
                    times[i].append(time.perf_counter() - t0)
                    if hook is not None:
                        hook.remove()
                    # A counter inside another library's compiled region can be left out of the graph: it then
                    # sees no call at all, which no generation can have (its first step computes), so count
                    # nothing rather than zero full steps.
                    if hook is not None or (m.counted and computed[0] > 0):
                        full[i].append(computed[0] / (2 if m.cfg == "separate" else 1))
                    if not torch.equal(out, outputs[i][seeds[0]]):
                        raise RuntimeError(f"{m.label}: a repeated generation differs from the first")
                    if before is not None:
                        after = m.stats(model)
                        # full steps per stream and prompt (per-request decisions count every prompt's steps)
                        full[i].append(steps * (after.full_steps - before.full_steps)
                                       / max(after.steps - before.steps, 1))
            log(f"  repeat {rep + 1}/{repeats} done")
    return outputs, times, full, warmup, cache_bytes


def rows(methods, outputs, times, full, warmup, baselines, compiler: str, steps: int, seeds,
         cache_bytes=None) -> list[dict]:
    """One record per method: time median/min/max, speedup against the uncached baseline of the same
    execution mode and CFG layout, fidelity per clip against the first baseline's clips."""
    ref = outputs[0]  # the first baseline's clips (the bench's: uncached eager, separate CFG)
    base = {(b.provider, b.setting, b.cfg): statistics.median(times[methods.index(b)]) for b in baselines}
    eager_base = {b.cfg: statistics.median(times[methods.index(b)]) for b in baselines if b.setting == "eager"}
    out = []
    for i, m in enumerate(methods):
        compiled = compiler != "eager" and (m.provider == "fxcache" or (m.provider == "none" and m.setting != "eager"))
        # Peers compile regionally (`counted`) on their own; they are measured against uncached eager, as users
        # of their eager form would compare them.
        mode = "compiled" if compiled else "regional" if m.counted and "compile" in m.setting else "eager"
        key = next((b.provider, b.setting, b.cfg) for b in baselines
                   if b.cfg == m.cfg and (b.setting == "eager") == (mode != "compiled"))
        clips = [(a, b) for s in seeds for a, b in zip(outputs[i][s], ref[s])]
        ps = [psnr(a, b) for a, b in clips]
        finite = [p for p in ps if p != float("inf")]
        t = times[i]
        out.append({
            "method": m.name, "provider": m.provider, "setting": m.setting, "cfg": m.cfg, "mode": mode,
            "time_median_s": statistics.median(t), "time_min_s": min(t), "time_max_s": max(t),
            "speedup": base[key] / statistics.median(t), "speedup_min": base[key] / max(t),
            "speedup_max": base[key] / min(t), "speedup_vs_eager": (eager_base[m.cfg] / statistics.median(t)) if m.cfg in eager_base else None,
            "psnr_mean": statistics.mean(finite) if finite else float("inf"), "psnr_min": min(ps),
            "ssim_mean": statistics.mean(ssim(a[None], b[None]) for a, b in clips),
            "rel_l1_mean": statistics.mean(rel_l1(a, b) for a, b in clips),
            "full_steps_mean": statistics.mean(full[i]) if full[i] else (steps if m.provider == "none" else None),
            "warmup_s": warmup[i],
            "cache_bytes": cache_bytes[i] if cache_bytes else None,
        })
    return out


def frontier(points: list[dict], x: str = "speedup") -> list[dict]:
    """The points no other point beats on both speed and mean PSNR, by speed (the provider's frontier)."""
    best, out = -float("inf"), []
    for r in sorted(points, key=lambda r: (-r[x], -r["psnr_mean"])):
        if r["psnr_mean"] > best:
            out.append(r)
            best = r["psnr_mean"]
    return out[::-1]


def plot_pareto(rows: list[dict], path, title: str) -> None:
    """Every method as a point (bar: min-max speedup of the repeats), each provider's frontier as a line, labels
    on the frontier points only (the full list is in the table), staggered so they do not overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"fxcache": ("o", "tab:red"), "diffusers": ("s", "tab:blue"), "cache-dit": ("^", "tab:green"),
               "none": ("*", "black")}
    fig, ax = plt.subplots(figsize=(9, 5.5))
    cap = 60.0
    labels: list[tuple[float, float, str, str]] = []
    for provider, (marker, color) in markers.items():
        pts = [r for r in rows if r["provider"] == provider]
        if not pts:
            continue
        x = "speedup_vs_eager" if all(r.get("speedup_vs_eager") for r in pts) else "speedup"
        xs = [r[x] for r in pts]
        ys = [min(cap, r["psnr_mean"]) for r in pts]
        ax.scatter(xs, ys, marker=marker, color=color, s=30, alpha=0.5, zorder=3)
        for r, xv, y in zip(pts, xs, ys):
            scale = xv / r["speedup"]
            ax.plot([r["speedup_min"] * scale, r["speedup_max"] * scale], [y, y], color=color, lw=0.7, alpha=0.4)
        if provider == "none":
            continue
        front = frontier(pts, x)
        ax.plot([r[x] for r in front], [min(cap, r["psnr_mean"]) for r in front], color=color, lw=1.5,
                marker=marker, ms=7, label=f"{provider} frontier", zorder=4)
        labels += [(r[x], min(cap, r["psnr_mean"]), f"{r['method']} {r['setting']}", color) for r in front]
    ax.axhline(30, color="gray", ls=":", lw=1)
    ax.axvline(2, color="gray", ls=":", lw=1)
    on_eager = all(r.get("speedup_vs_eager") for r in rows if r["provider"] != "none")
    ax.set(xlabel=f"speedup over uncached {'eager' if on_eager else 'baseline'} (median; bar = min-max of repeats)",
           ylabel=f"mean PSNR vs uncached, dB (uncached = {cap:.0f})", title=title)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    # Labels: each one moved up (in points) until its box overlaps no box placed before it.
    boxes: list[tuple[float, float, float, float]] = []
    to_pt = 72.0 / fig.dpi
    for xv, y, text, color in sorted(labels, key=lambda l: (l[1], l[0])):
        px, py = (v * to_pt for v in ax.transData.transform((xv, y)))
        w, h, dy = 3.4 * len(text), 8.0, 4.0
        right = px + 4 + w > ax.get_window_extent().x1 * to_pt  # would leave the axes: put it on the left
        x0 = px - 4 - w if right else px + 4
        while any(x0 < bx + bw and bx < x0 + w and py + dy < by + bh and by < py + dy + h
                  for bx, by, bw, bh in boxes):
            dy += 3.0
        boxes.append((x0, py + dy, w, h))
        ax.annotate(text, (xv, y), fontsize=6.5, color=color, xytext=(-4 if right else 4, dy),
                    textcoords="offset points", ha="right" if right else "left",
                    arrowprops=dict(arrowstyle="-", lw=0.4, color=color))
    fig.savefig(path, dpi=130)
    plt.close(fig)


def frontier_table(rows: list[dict], floors=((30.0, None), (35.0, None), (32.0, 25.0), (35.0, 30.0))) -> str:
    """For each fidelity floor (mean PSNR, and optionally the worst clip's) and provider, the fastest method at
    or above it: where each provider stands on the speed/fidelity frontier."""
    lines = ["| fidelity floor | provider | fastest method above it | speedup (own baseline) [min-max] "
             "| vs uncached eager | PSNR mean / worst | SSIM |", "|---|---|---|---|---|---|---|"]
    for mean, worst in floors:
        label = f"PSNR >= {mean:g} dB" + (f", worst >= {worst:g} dB" if worst is not None else "")
        for provider in sorted({r["provider"] for r in rows} - {"none"}):
            ok = [r for r in rows if r["provider"] == provider and r["psnr_mean"] >= mean
                  and (worst is None or r["psnr_min"] >= worst)]
            if not ok:
                lines.append(f"| {label} | {provider} | none | - | - | - | - |")
                continue
            r = max(ok, key=lambda r: r["speedup_vs_eager"] or r["speedup"])
            lines.append(f"| {label} | {provider} | {r['method']} ({r['setting']}) | {r['speedup']:.2f}x "
                         f"[{r['speedup_min']:.2f}-{r['speedup_max']:.2f}] | {r['speedup_vs_eager']:.2f}x "
                         f"| {r['psnr_mean']:.1f} / {r['psnr_min']:.1f} | {r['ssim_mean']:.3f} |")
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| provider | method | setting | CFG | time (s) median [min-max] | speedup | PSNR mean / min (dB) "
             "| SSIM | rel L1 | full steps | cache MiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["provider"] != "none", r["provider"], -r["speedup"])):
        fs = "-" if r["full_steps_mean"] is None else f"{r['full_steps_mean']:.1f}"
        p = "inf" if r["psnr_mean"] == float("inf") else f"{r['psnr_mean']:.1f}"
        pm = "inf" if r["psnr_min"] == float("inf") else f"{r['psnr_min']:.1f}"
        mib = "-" if r.get("cache_bytes") is None else f"{r['cache_bytes'] / 2**20:.2f}"
        lines.append(f"| {r['provider']} | {r['method']} | {r['setting']} | {r['cfg']} | {r['time_median_s']:.2f} "
                     f"[{r['time_min_s']:.2f}-{r['time_max_s']:.2f}] | {r['speedup']:.2f}x | {p} / {pm} "
                     f"| {r['ssim_mean']:.3f} | {r['rel_l1_mean']:.4f} | {fs} | "
                     f"{mib} |")
    return "\n".join(lines)
