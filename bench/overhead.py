"""What the engine costs: one model call under eager, plain Inductor, fxcache "none", an fxcache full step and
an fxcache skipped step, measured side by side in one run (interleaved repeats), as ratios to plain Inductor.

    python -m bench.overhead              # writes bench/results/overhead.json and overhead.md
    python -m bench.overhead --repeats 3 --calls 10 --quick

The model is the reference Wan architecture (bench/reference) with its committed weights when present, random
weights otherwise: timing does not depend on the weights. FBCache is used for the cached steps: threshold 0 makes
every step a full one (probe + continuation), a huge threshold makes every step after the first a skipped one
(probe + cached residual + suffix). Compile time is reported separately.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    import os

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def build(batch: int):
    from .reference.model import WEIGHTS, build_transformer, load

    if (WEIGHTS / "transformer.safetensors").exists():
        model, _ = load()
    else:
        model = build_transformer(0).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 8, 32, 32, generator=g)
    emb = torch.randn(batch, 3, 32, generator=g)
    return model, x, emb


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--calls", type=int, default=20, help="calls per timed repeat")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--quick", action="store_true", help="2 repeats of 3 calls, eager inner compiler (tests)")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.calls = 2, 3

    import fxcache

    model, x, emb = build(args.batch)
    compiler = "eager" if args.quick else "inductor"
    methods = {
        "eager": model,
        "inductor": torch.compile(model, fullgraph=True, backend="eager" if args.quick else "inductor"),
        "fxcache none": torch.compile(model, fullgraph=True, backend=fxcache.backend(policy="none", compiler=compiler)),
        "fxcache full step": torch.compile(model, fullgraph=True, backend=fxcache.backend(
            policy="fbcache", threshold=0.0, compiler=compiler)),
        "fxcache skipped step": torch.compile(model, fullgraph=True, backend=fxcache.backend(
            policy="fbcache", threshold=1e9, compiler=compiler)),
    }
    clock = [999.0]

    def run(fn, n):
        for _ in range(n):
            clock[0] -= 1e-3  # timesteps keep falling: one long generation, no resets
            t = torch.full((args.batch,), clock[0])
            fn(hidden_states=x, timestep=t, encoder_hidden_states=emb, return_dict=False)

    compile_s = {}
    with torch.no_grad():
        for name, fn in methods.items():  # first calls: compile every variant the timed calls will use
            t0 = time.perf_counter()
            run(fn, 2)
            compile_s[name] = time.perf_counter() - t0
        times = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                t0 = time.perf_counter()
                run(fn, args.calls)
                times[name].append((time.perf_counter() - t0) / args.calls)
    base = statistics.median(times["inductor"])
    rows = []
    for name, ts in times.items():
        rows.append({"method": name, "ms_median": 1e3 * statistics.median(ts), "ms_min": 1e3 * min(ts),
                     "ms_max": 1e3 * max(ts), "ratio_to_inductor": statistics.median(ts) / base,
                     "first_calls_s": compile_s[name]})
    skipped = fxcache.stats(methods["fxcache skipped step"])
    result = {"machine": machine(), "batch": args.batch, "repeats": args.repeats, "calls": args.calls,
              "compiler": compiler, "rows": rows,
              "skipped_step_blocks": {"computed": skipped.blocks_computed, "skipped": skipped.blocks_skipped},
              "date": time.strftime("%Y-%m-%d")}
    table = ["| method | ms/call (median) | min-max | vs Inductor | first 2 calls (compile) s |",
             "|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['method']} | {r['ms_median']:.2f} | {r['ms_min']:.2f}-{r['ms_max']:.2f} | "
                     f"{r['ratio_to_inductor']:.2f}x | {r['first_calls_s']:.1f} |")
    print("\n".join(table))
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
        m = result["machine"]
        (args.out / "overhead.md").write_text(
            f"# Engine overhead (bench/overhead.py)\n\nMachine: {m['cpu']}, {m['cores']} cores, torch "
            f"{m['torch']}, {m['threads']} threads, no GPU. Batch {args.batch}, reference Wan architecture, "
            f"{args.repeats} interleaved repeats of {args.calls} calls.\n\n" + "\n".join(table) + "\n")
    return result


if __name__ == "__main__":
    main()
