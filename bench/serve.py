"""Per-request caching in a serving engine: continuous (step) batching through the reference model.

    python -m bench.serve                 # -> bench/results/serve.{json,md,png}   (~45 min on 2 CPU cores)
    python -m bench.serve --quick         # a smoke run: 3 requests, eager, one setting
    python -m bench.serve --soak 300      # -> bench/results/serve-soak.{json,md,png}: memory over 300 requests

Serving (bench/serving.py): N requests (prompts, step counts and seeds cycled; one arriving every `gap` loop
iterations) go through one model with at most `max_batch` in a batch; requests join and leave every step. Per
cache setting, two ways of deciding:
- "batch": one decision for the whole batch (`per_sample=False`): what diffusers' hooks, cache-dit, xDiT and
  sglang's TeaCache do (vllm-omni switches caching off in step mode instead);
- "request": each request decides alone (fxcache's `context(requests=...)`).
Throughput (requests per minute, median of interleaved timed repeats, with the min-max) and each request's PSNR
against that request generated alone without caching (same loop, batch of 1, uncompiled), worst and mean.

Static batches: B = 1, 4, 8 prompts generated at once (WanPipeline, separate CFG calls), per-sample vs whole-batch
decisions, the time against uncached compiled generation of the same batch and each prompt's PSNR against its
uncached clip.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import fxcache

from . import harness  # noqa: F401 - raises Dynamo's recompile limit (one cache entry per compiled setting)
from .fidelity import psnr
from .overhead import machine
from .pipeline import generate, initial_latents
from .profiling import CALIBRATION
from .quality import PROMPTS, RESULTS
from .reference.model import load
from .serve_report import plot, soak_report, table
from .serving import serve, workload

# (label, options): the cache settings compared; each runs with per_sample False ("batch") and True ("request").
SETTINGS = [
    ("fbcache 0.1", {"policy": "fbcache", "threshold": 0.1}),
    ("fbcache 0.2", {"policy": "fbcache", "threshold": 0.2}),
    ("teacache 0.2", {"policy": "teacache", "threshold": 0.2, "calibration": str(CALIBRATION)}),
    ("magcache (Wan)", {"policy": "magcache", "calibration": str(CALIBRATION)}),
    ("taylorseer", {"policy": "taylorseer"}),
    ("default", {}),
]
STATIC = [("fbcache 0.1", {"policy": "fbcache", "threshold": 0.1}),
          ("fbcache 0.2", {"policy": "fbcache", "threshold": 0.2})]


def _compiled(transformer, options: dict, compiler: str, per_sample: bool):
    return torch.compile(transformer, backend="fxcache",
                         options={**options, "compiler": compiler, "per_sample": per_sample})


def run_serving(args, transformer, encoder) -> list[dict]:
    reqs = workload(encoder, PROMPTS, args.requests, tuple(args.steps), args.gap)
    reference = {}
    for r in tqdm(reqs, desc="references (alone, uncached)", leave=False):
        reference.update(serve(transformer, [r], 1))
    settings = [("none", "uncached", {"policy": "none"}, False)]
    for label, opts in (SETTINGS[:1] if args.quick else SETTINGS):
        settings += [(label, mode, opts, mode == "request") for mode in ("batch", "request")]
    runs = []
    for label, mode, opts, per_sample in tqdm(settings, desc="warm-up (compiles)", leave=False):
        torch.manual_seed(0)
        model = _compiled(transformer, opts, args.compiler, per_sample)
        t0 = time.perf_counter()
        out = serve(model, reqs, args.max_batch)
        warm = time.perf_counter() - t0
        ps = [psnr(out[r.rid], reference[r.rid]) for r in reqs]
        st = fxcache.stats(model)
        runs.append({"setting": label, "mode": mode, "options": opts, "model": model, "warmup_s": warm,
                     "psnr_worst": min(ps), "psnr_mean": statistics.mean(ps), "psnr": ps,
                     "steps": st.steps, "skipped": st.skipped_steps, "times": []})
    for _ in tqdm(range(args.repeats), desc="timed rounds", leave=False):
        for run in runs:  # interleaved: machine noise hits every setting alike
            t0 = time.perf_counter()
            serve(run["model"], reqs, args.max_batch)
            run["times"].append(time.perf_counter() - t0)
    base = statistics.median(runs[0]["times"])
    for run in runs:
        model = run.pop("model")
        st = fxcache.stats(model)
        t = statistics.median(run["times"])
        run.update(seconds=t, throughput=60 * len(reqs) / t, throughput_range=[60 * len(reqs) / max(run["times"]),
                                                                               60 * len(reqs) / min(run["times"])],
                   speedup=base / t, requests_live_after=st.requests_live, request_bytes_after=st.request_cache_bytes,
                   skipped_fraction=run["skipped"] / max(run["steps"], 1))
        del model
    return runs


def run_static(args, transformer, encoder) -> list[dict]:
    out = []
    for batch in ((2,) if args.quick else (1, 4, 8)):
        prompts = (PROMPTS * 2)[:batch]
        cond, uncond = encoder.encode(prompts)
        lat = torch.cat([initial_latents(1, 100 + i) for i in range(batch)])
        gen = lambda m: generate(m, cond, uncond, num_inference_steps=args.static_steps, latents=lat)  # noqa: E731
        ref = gen(transformer)
        settings = [("none", "uncached", {"policy": "none"}, False)]
        for label, opts in (STATIC[:1] if args.quick else STATIC):
            settings += [(label, mode, opts, mode == "request") for mode in ("batch", "request")]
        models = []
        for label, mode, opts, per_sample in settings:
            model = _compiled(transformer, opts, args.compiler, per_sample)
            clips = gen(model)
            ps = [psnr(clips[i:i + 1], ref[i:i + 1]) for i in range(batch)]
            models.append((model, {"batch": batch, "setting": label, "mode": mode, "psnr_worst": min(ps),
                                   "psnr_mean": statistics.mean(ps), "times": []}))
        for _ in range(args.repeats):
            for model, rec in models:
                t0 = time.perf_counter()
                gen(model)
                rec["times"].append(time.perf_counter() - t0)
        base = statistics.median(models[0][1]["times"])
        for model, rec in models:
            rec["seconds"] = statistics.median(rec["times"])
            rec["speedup"] = base / rec["seconds"]
            out.append(rec)
        print(f"static B={batch}: " + "; ".join(f"{r['setting']} {r['mode']} {r['speedup']:.2f}x "
                                                f"{r['psnr_mean']:.1f}/{r['psnr_worst']:.1f} dB"
                                                for _, r in models), flush=True)
    return out


def _rss_mib() -> float:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_soak(args, transformer, encoder) -> dict:
    """Hundreds of requests through one model with per-request caching, arriving one per iteration: live requests,
    their cache bytes and the process's resident memory, every 10 iterations."""
    reqs = workload(encoder, PROMPTS, args.soak, (6, 4, 8, 5), 1)
    model = _compiled(transformer, {"policy": "fbcache", "threshold": 0.1}, args.compiler, True)
    points = []
    bar = tqdm(total=len(reqs), desc="soak", leave=False)

    def record(it: int, finished: int) -> None:
        bar.n = finished
        bar.refresh()
        if it % 10 == 0:
            st = fxcache.stats(model)
            points.append({"iteration": it, "requests": finished, "requests_live": st.requests_live,
                           "request_cache_bytes": st.request_cache_bytes, "cache_bytes": st.cache_bytes,
                           "rss_mib": _rss_mib()})

    serve(model, reqs, args.max_batch, on_step=record)
    bar.close()
    st = fxcache.stats(model)
    return {"points": points, "requests": len(reqs), "max_batch": args.max_batch,
            "after": {"requests_live": st.requests_live, "request_cache_bytes": st.request_cache_bytes}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--steps", type=int, nargs="+", default=[30, 20, 40, 25], help="step counts, cycled")
    p.add_argument("--gap", type=int, default=3, help="loop iterations between arrivals")
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--static-steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compiler", default="inductor", choices=("inductor", "eager"))
    p.add_argument("--quick", action="store_true", help="3 requests of 4-6 steps, eager, one setting, static batch 2")
    p.add_argument("--soak", type=int, default=0, help="instead: a memory soak over this many requests")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--render", action="store_true", help="only rewrite the table and plot from the JSON")
    args = p.parse_args(argv)
    if args.render:
        stem = args.out / ("serve-quick" if args.quick else "serve")
        data = json.loads(stem.with_suffix(".json").read_text())
        stem.with_suffix(".md").write_text(table(data["meta"], data["serving"], data["static"]))
        plot(data["serving"], data["static"], stem.with_suffix(".png"))
        print(stem.with_suffix(".md").read_text())
        return
    if args.quick:
        args.requests, args.steps, args.gap, args.static_steps, args.repeats = 3, [6, 4], 2, 6, 1
        args.compiler = "eager"
    torch.set_num_threads(min(2, torch.get_num_threads()))
    transformer, encoder = load()
    meta = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "compiler": args.compiler,
            "requests": args.requests, "steps": args.steps, "gap": args.gap, "max_batch": args.max_batch,
            "repeats": args.repeats, "quick": args.quick}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "serve-quick" if args.quick else "serve"
    if args.soak:
        soak = run_soak(args, transformer, encoder)
        (args.out / "serve-soak.json").write_text(json.dumps({"meta": meta, **soak}, indent=1))
        soak_report(meta, soak, args.out / "serve-soak")
        return
    serving = run_serving(args, transformer, encoder)
    static = run_static(args, transformer, encoder)
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "serving": serving, "static": static},
                                                      indent=1, default=str))
    text = table(meta, serving, static)
    (args.out / f"{stem}.md").write_text(text)
    plot(serving, static, args.out / f"{stem}.png")
    print(text)


if __name__ == "__main__":
    main()
