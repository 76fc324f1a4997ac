"""What the engine costs: one model call under eager, plain Inductor, fxcache "none", an fxcache full step, an
fxcache skipped step and the *ideal* skipped step, measured side by side in one run (interleaved repeats), as
ratios to plain Inductor.

    python -m bench.overhead                  # reference model: writes bench/results/overhead.{json,md}
    python -m bench.overhead --model tiny     # tiny model, 1 thread: overhead-tiny.{json,md}
    python -m bench.overhead --repeats 3 --calls 10 --quick

Models: "reference" is the reference Wan architecture (bench/reference) with its committed weights when present
(random otherwise: timing does not depend on the weights), where compute hides most of the runtime's cost; "tiny"
is a 3-block Wan (the one of tests/zoo.py) on one thread, where compute is close to nothing, so the figures are
the runtime's own cost per call.

FBCache is used for the cached steps: a threshold just above 0 makes every step a full one the realistic way (the
probe guesses "skip", as it does whenever the step may skip, the guess is wrong, its suffix is thrown away and the
full continuation runs: probe + cached-residual suffix + continuation), threshold 0 the cheapest full step (no step
can skip, so the guess is "full" and right: one variant), a huge threshold makes every step after the first a
skipped one (probe + decision + cached residual + suffix). The
ideal skipped step is the same computation with no runtime at all: prefix, first block, distance and suffix with
the cached residual as an input, compiled as ONE graph and called directly (what a hand-written skipped step would
cost; it makes no decision). Compile time is reported separately.
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


def build_reference(batch: int):
    from .reference.model import WEIGHTS, build_transformer, load

    if (WEIGHTS / "transformer.safetensors").exists():
        model, _ = load()
    else:
        model = build_transformer(0).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 8, 32, 32, generator=g)
    emb = torch.randn(batch, 3, 32, generator=g)
    return model, x, emb


def build_tiny(batch: int):
    """The 3-block Wan of tests/zoo.py (random weights, float32)."""
    import diffusers

    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=3, rope_max_seq_len=32).float().eval()
    g = torch.Generator().manual_seed(0)
    return model, torch.randn(batch, 4, 2, 8, 8, generator=g), torch.randn(batch, 8, 16, generator=g)


def ideal_skipped_backend(compiler: str):
    """A backend whose graph is FBCache's skipped step as one compiled graph, called with no runtime around it:
    the cached residual (and the first block's reference residual) are fixed inputs, taken from one computed step
    at the first call."""
    from fxcache.metrics import REL_L1
    from fxcache.passes.discover import discover
    from fxcache.passes.specialize import specialize
    from fxcache.plan import Plan, residual
    from fxcache.runtime.variants import inner_compile

    def backend(gm, example_inputs, **_):
        d = discover(gm, example_inputs)
        c = d.first_residual_cut()
        head, tail = residual(0, c), residual(c, d.num_units)
        skipped = specialize(gm, d, Plan(reuse=frozenset({tail}), measure=frozenset({(head, REL_L1)})))
        full = specialize(gm, d, Plan(write=frozenset({head, tail})))
        state: dict = {}

        def first_call(args):
            results = full.gm(*[args[k[1]] for k in full.inputs])
            cache = {(k[1], k[2]): r for k, r in zip(full.outputs, results) if k[0] == "site"}
            ins = [(k[1], None) if k[0] == "arg" else (None, cache[(k[1], k[2])]) for k in skipped.inputs]
            state["ins"] = ins
            state["out"] = [i for i, k in enumerate(skipped.outputs) if k[0] == "out"]
            state["fn"] = inner_compile(skipped.gm, [args[i] if i is not None else t for i, t in ins], compiler)

        def run(*args):
            if not state:
                first_call(args)
            results = state["fn"](*[args[i] if i is not None else t for i, t in state["ins"]])
            return tuple(results[i] for i in state["out"])

        return run

    return backend


def methods_for(model, compiler: str, batch: int = 1) -> dict:
    import fxcache

    plain = "eager" if compiler == "eager" else "inductor"
    # A batch of different latents decides per row (option per_sample, the default); the same steps decided for
    # the whole batch show what that costs.
    whole = {} if batch < 2 else {
        "fxcache full step (whole batch)": torch.compile(model, fullgraph=True, backend=fxcache.backend(
            policy="fbcache", threshold=1e-12, compiler=compiler, per_sample=False)),
        "fxcache skipped step (whole batch)": torch.compile(model, fullgraph=True, backend=fxcache.backend(
            policy="fbcache", threshold=1e9, compiler=compiler, per_sample=False)),
    }
    return {
        "eager": model,
        "inductor": torch.compile(model, fullgraph=True, backend=plain),
        "fxcache none": torch.compile(model, fullgraph=True, backend=fxcache.backend(policy="none", compiler=compiler)),
        "fxcache full step": torch.compile(model, fullgraph=True, backend=fxcache.backend(
            policy="fbcache", threshold=1e-12, compiler=compiler)),
        "fxcache full step (threshold 0)": torch.compile(model, fullgraph=True, backend=fxcache.backend(
            policy="fbcache", threshold=0.0, compiler=compiler)),
        "fxcache skipped step": torch.compile(model, fullgraph=True, backend=fxcache.backend(
            policy="fbcache", threshold=1e9, compiler=compiler)),
        **whole,
        "ideal skipped step": torch.compile(model, fullgraph=True, backend=ideal_skipped_backend(compiler)),
    }


# The rows each target compares (docs/results.md, "Engine overhead"): (row, baseline row, bound), the tiny model's.
TARGETS = [("fxcache none", "inductor", 1.05), ("fxcache full step", "inductor", 1.10),
           ("fxcache skipped step", "ideal skipped step", 1.10)]
# With a batch: per-request decisions against the same steps decided for the whole batch (no target).
PER_REQUEST = [("fxcache full step", "fxcache full step (whole batch)"),
               ("fxcache skipped step", "fxcache skipped step (whole batch)")]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("reference", "tiny"), default="reference")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 7; tiny 40)")
    ap.add_argument("--calls", type=int, default=None, help="calls per timed round (default 20; tiny 10)")
    ap.add_argument("--batch", type=int, default=None, help="batch of a call (default 2; tiny 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; tiny 1)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--quick", action="store_true", help="2 repeats of 3 calls, eager inner compiler (tests)")
    args = ap.parse_args(argv)
    tiny = args.model == "tiny"
    args.repeats = args.repeats or (40 if tiny else 7)
    args.batch = args.batch or (1 if tiny else 2)
    args.calls = args.calls or (10 if tiny else 20)
    if args.threads or tiny:
        torch.set_num_threads(args.threads or 1)
    if args.quick:
        args.repeats, args.calls = 2, 3

    import fxcache

    torch._dynamo.reset()  # several compiled versions of one forward below: none left over from earlier runs
    model, x, emb = (build_tiny if tiny else build_reference)(args.batch)
    compiler = "eager" if args.quick else "inductor"
    methods = methods_for(model, compiler, args.batch)
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
            run(fn, 3)
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
    # Each round times every method back to back, so a ratio per round cancels most of the machine's drift.
    targets = []
    for row, ref, bound in TARGETS:
        ratios = [a / b for a, b in zip(times[row], times[ref])]
        targets.append({"row": row, "vs": ref, "bound": bound, "ratio_median": statistics.median(ratios),
                        "ratio_min": min(ratios), "ratio_max": max(ratios),
                        "met": statistics.median(ratios) <= bound})
    per_request = []
    for row, ref in [(row, ref) for row, ref in PER_REQUEST if ref in times]:
        ratios = [a / b for a, b in zip(times[row], times[ref])]
        per_request.append({"row": row, "vs": ref, "ratio_median": statistics.median(ratios),
                            "ratio_min": min(ratios), "ratio_max": max(ratios)})
    # Every method compiles the same module, so fxcache.stats(module) would add them up: each row's own runtime
    by_threshold = {r.policy.threshold: r for r in fxcache.runtimes_of(model)
                    if r.policy.name == "fbcache" and r.per_sample is not None}  # the default's rows
    skipped, full = fxcache.stats(by_threshold[1e9]), fxcache.stats(by_threshold[1e-12])
    if full.skipped_steps or not full.guesses_wrong:  # the row must be what it says: wrong guesses, no skips
        raise RuntimeError(f"bench.overhead: the realistic full step skipped {full.skipped_steps} steps and "
                           f"guessed wrong {full.guesses_wrong} times")
    result = {"machine": machine(), "model": args.model, "batch": args.batch, "repeats": args.repeats,
              "calls": args.calls, "compiler": compiler, "rows": rows, "targets": targets, "per_request": per_request,
              "skipped_step_blocks": {"computed": skipped.blocks_computed, "skipped": skipped.blocks_skipped},
              "full_step_guesses": {"right": full.guesses_right, "wrong": full.guesses_wrong},
              "date": time.strftime("%Y-%m-%d")}
    table = ["| method | ms/call (median) | min-max | vs Inductor | first 3 calls (compile) s |",
             "|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['method']} | {r['ms_median']:.3f} | {r['ms_min']:.3f}-{r['ms_max']:.3f} | "
                     f"{r['ratio_to_inductor']:.2f}x | {r['first_calls_s']:.1f} |")
    table += ["", "| per-round ratio | median | min-max | target | met |", "|---|---|---|---|---|"]
    for t in targets:
        table.append(f"| {t['row']} / {t['vs']} | {t['ratio_median']:.3f} | {t['ratio_min']:.2f}-"
                     f"{t['ratio_max']:.2f} | <= {t['bound']:.2f} | {'yes' if t['met'] else 'no'} |")
    for t in per_request:
        table.append(f"| {t['row']} / {t['vs']} | {t['ratio_median']:.3f} | {t['ratio_min']:.2f}-"
                     f"{t['ratio_max']:.2f} | - | - |")
    print("\n".join(table))
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = "overhead-tiny" if tiny else "overhead"
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        m = result["machine"]
        what = ("the 3-block Wan of tests/zoo.py (compute close to nothing: the runtime's own cost)" if tiny
                else "the reference Wan architecture")
        (args.out / f"{stem}.md").write_text(
            f"# Engine overhead (bench/overhead.py --model {args.model})\n\nMachine: {m['cpu']}, {m['cores']} cores, "
            f"torch {m['torch']}, {m['threads']} threads, no GPU; {result['date']}. Batch {args.batch}, {what}, "
            f"{args.repeats} interleaved rounds of {args.calls} calls. The targets are the tiny model's (issue 10); "
            f"ratios are per round (methods timed back to back), median and range.\n\n" + "\n".join(table) + "\n")
    return result


if __name__ == "__main__":
    main()
