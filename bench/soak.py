"""Soak: many generations back to back on two reference models, to show that nothing grows with use.

    python -m bench.soak                      # 1000 generations; writes bench/results/soak.{json,md,png}
    python -m bench.soak --generations 40 --quick

Two instances of the reference transformer (the committed weights, and a copy with perturbed weights) are compiled
with fxcache (the default policy, and TeaCache at 0.3) and driven through diffusers' `WanPipeline` in turn. Generation g changes, by a fixed pattern, the seed, the prompt, the resolution
(three latent sizes, so Dynamo recompiles with symbolic sizes), whether CFG is on (two streams, or one), and the
number of steps (including 1-step generations), and every 7th generation is interrupted inside its first step.
Every `--every` generations it records the process's resident memory, the bytes in fxcache's cache buffers, the
compiled variants alive, the graphs Dynamo compiled (recompiles), the size of the decision logs and the number of
model instances the runtimes hold. Flat lines after warm-up are the result.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
SIZES = ((3, 8, 32, 32), (3, 8, 24, 24), (3, 4, 32, 32))  # latent (C, F, H, W) per generation, in turn
STEPS = (10, 6, 1, 12, 3)  # steps per generation, in turn (1-step generations included)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Interrupt(Exception):
    pass


def _models():
    from .reference.model import load

    a, encoder = load()
    b, _ = load()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.01 * p.abs().mean() * torch.randn(p.shape, generator=g))
    return a, b, encoder


class interrupted_after_first_call:
    """Within this block the compiled model raises after its first call: a run interrupted inside its first step
    (as a user's Ctrl-C or a serving timeout would)."""

    def __init__(self, compiled) -> None:
        self.compiled = compiled

    def __enter__(self):
        forward = self.forward = self.compiled.forward  # OptimizedModule's own compiled forward

        def once(*args, **kwargs):
            forward(*args, **kwargs)
            raise Interrupt

        self.compiled.forward = once
        return self

    def __exit__(self, *exc) -> bool:
        self.compiled.forward = self.forward
        return exc[0] is Interrupt


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generations", type=int, default=1000)
    ap.add_argument("--every", type=int, default=100, help="record every this many generations")
    ap.add_argument("--policy", default=None,
                    help="fxcache policy of both models (default: fxcache's default for the first model, "
                         "teacache 0.3 for the second, so that step skipping is exercised)")
    ap.add_argument("--compiler", default="inductor", choices=("inductor", "eager"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--quick", action="store_true", help="eager inner compiler, nothing written (tests)")
    args = ap.parse_args(argv)
    if args.quick:
        args.compiler = "eager"
    from tqdm.auto import tqdm

    import fxcache
    from fxcache.backend import _RUNTIMES

    from .overhead import machine
    from .pipeline import generate, initial_latents
    from .reference.data import all_prompts

    torch._dynamo.config.recompile_limit = 64
    a, b, encoder = _models()
    # TeaCache at its "fast" threshold skips steps even in short generations
    policies = [{"policy": args.policy}] * 2 if args.policy else [{"policy": fxcache.DEFAULT_POLICY},
                                                                  {"policy": "teacache", "threshold": 0.3}]
    models = [torch.compile(m, backend="fxcache", options={"compiler": args.compiler, **p})
              for m, p in zip((a, b), policies)]
    prompts = all_prompts()
    with torch.no_grad():
        embeds = [encoder.encode([p]) for p in prompts]
    records, t0 = [], time.perf_counter()
    counts = {"interrupted": 0, "cfg_off": 0, "one_step": 0}

    def record(g: int) -> None:
        gc.collect()
        stats = [fxcache.stats(m) for m in models]
        runtimes = list(_RUNTIMES)
        records.append({
            "generation": g, "seconds": round(time.perf_counter() - t0, 1), "rss_mib": round(rss_mib(), 1),
            "cache_bytes": sum(s.cache_bytes for s in stats),
            "variants": sum(len(r.variants) for r in runtimes),
            "graphs_compiled": len(runtimes),
            "dynamo_unique_graphs": int(torch._dynamo.utils.counters["stats"]["unique_graphs"]),
            "decision_log": sum(len(s.decisions) for s in stats),
            "instances": sum(len(r.instances.all()) for r in runtimes),
            "steps": sum(s.steps for s in stats), "skipped_steps": sum(s.skipped_steps for s in stats),
            "generations_seen": [s.generations for s in stats],
        })

    with torch.no_grad():
        for g in tqdm(range(args.generations), desc="soak", unit="gen"):
            model = models[g % 2]
            cond, uncond = embeds[(g // 2) % len(embeds)]
            cfg_on = g % 5 != 4
            steps = STEPS[(g // 2) % len(STEPS)]
            latents = initial_latents(1, seed=g, shape=SIZES[(g // 4) % len(SIZES)])
            interrupt = g % 7 == 6
            with interrupted_after_first_call(model) if interrupt else contextlib.nullcontext():
                generate(model, cond, uncond if cfg_on else None, num_inference_steps=steps,
                         guidance_scale=5.0 if cfg_on else 1.0, latents=latents)
            counts["interrupted"] += interrupt
            counts["cfg_off"] += not cfg_on
            counts["one_step"] += steps == 1
            if (g + 1) % args.every == 0 or g == 0:
                record(g + 1)
    result = {"machine": machine(), "generations": args.generations, "compiler": args.compiler,
              "policies": policies, "sizes": SIZES, "steps_cycle": STEPS,
              "counts": counts, "records": records, "date": time.strftime("%Y-%m-%d")}
    table = render(result)
    print(table)
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "soak.md").write_text(table + "\n")
        plot(result, args.out / "soak.png")
    return result


def render(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Soak (bench/soak.py): {result['generations']} generations, two models interleaved",
             "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads, "
             f"{'GPU ' + m['gpu'] if m['gpu'] else 'no GPU'}; {result['date']}. Options {result['policies']}, "
             f"compiler {result['compiler']}. Latent sizes {[list(s) for s in result['sizes']]}, steps cycling "
             f"{list(result['steps_cycle'])}; {result['counts']['interrupted']} runs interrupted in their first "
             f"step, {result['counts']['cfg_off']} without CFG, {result['counts']['one_step']} of 1 step.",
             "",
             "| generation | s | RSS MiB | cache bytes | variants | graphs compiled | decision log | instances |"
             " steps | skipped |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["records"]:
        lines.append(f"| {r['generation']} | {r['seconds']} | {r['rss_mib']} | {r['cache_bytes']} | {r['variants']} |"
                     f" {r['graphs_compiled']} | {r['decision_log']} | {r['instances']} | {r['steps']} |"
                     f" {r['skipped_steps']} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = result["records"]
    gens = [r["generation"] for r in rec]
    panels = [("rss_mib", "resident memory (MiB)"), ("cache_bytes", "fxcache cache buffers (bytes)"),
              ("variants", "compiled variants alive"), ("graphs_compiled", "graphs compiled (recompiles)"),
              ("decision_log", "decision-log records"), ("instances", "model instances held")]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    for ax, (key, title) in zip(axes.flat, panels):
        ax.plot(gens, [r[key] for r in rec], marker="o")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("generation")
        ax.set_ylim(bottom=0)
    m = result["machine"]
    fig.suptitle(f"fxcache soak: {result['generations']} generations, two models ({' / '.join(p['policy'] for p in result['policies'])}, "
                 f"{result['compiler']}; {m['cpu']}, {m['cores']} cores, torch {m['torch']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
