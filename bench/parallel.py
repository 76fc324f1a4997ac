"""fxcache under context parallelism: the reference model sharded over N ranks with diffusers' Ulysses attention.

    python -m bench.parallel                      # 2 gloo processes on this machine -> bench/results/parallel.*
    python -m bench.parallel --backend nccl       # N GPUs (one rank per GPU; one GPU: world size 1)

Per policy, each method runs once in this process (one rank: the decisions and clips to match) and on N ranks
(`enable_parallelism(ContextParallelConfig(ulysses_degree=N))`, then `torch.compile(backend="fxcache")`), and the
table gives:
- whether every rank took the decisions of the single process, call for call;
- fidelity: PSNR against the uncached clips, on one rank and on N (it should not change), and of the N-rank clips
  against the one-rank clips of the same method (float rounding: high);
- speed: the step time on N ranks against uncached context parallelism (and the same ratio on one rank), median of
  interleaved timed repeats with the min-max;
- the reduction that makes the ranks agree: all-reduces per step (a decision's distances and finiteness flags,
  summed inside the variant) and their measured cost, next to the same reduction done on the host.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fxcache.backend import _RUNTIMES

from .fidelity import psnr
from .harness import default_method, fxcache_method, uncached_method
from .overhead import machine
from .pipeline import generate
from .profiling import CALIBRATION
from .quality import PROMPTS, RESULTS
from .ranks import enable_ulysses, run_ranks

GUIDANCE = 5.0


def methods(compiler: str):
    calibration = str(CALIBRATION)
    return [
        uncached_method(compiler),
        default_method(compiler),
        fxcache_method("fbcache", "threshold=0.1", compiler, threshold=0.1),
        fxcache_method("teacache", "threshold=0.1", compiler, threshold=0.1),
        fxcache_method("magcache", "calibrated", compiler, calibration=calibration),
        fxcache_method("taylorseer", "paper defaults", compiler),
        fxcache_method("fastercache", "paper defaults", compiler),
        fxcache_method("mixcache", "calibrated", compiler, calibration=calibration),
    ]


def _decisions(runtimes) -> list:
    """The decisions logged by `runtimes` (those one method's generation created: every method is compiled on the
    same transformer, whose `fxcache.stats` would mix them), in call order."""
    ordered = sorted(runtimes, key=lambda r: len(r.gm.graph.nodes))
    log = [d for r in ordered for inst in r.instances.all() for d in inst.stats.decisions]
    return [(d["step"], d["stream"], d["decision"]) for d in log]


def run_methods(world: int, args) -> dict:
    """Every method on this rank: a warm-up generation (compiles; its clips and decisions are the results), then
    interleaved timed repeats. With world > 1 the transformer is sharded first."""
    import contextlib

    import fxcache

    from .reference.model import load

    torch._dynamo.config.recompile_limit = 128
    model, encoder = load()
    if world > 1:
        enable_ulysses(model, world)
    cond, uncond = encoder.encode(PROMPTS[: args.prompts])
    gen_kw = dict(num_inference_steps=args.steps, guidance_scale=GUIDANCE, seed=args.seed)
    generate(model, cond, uncond, **{**gen_kw, "num_inference_steps": 2})  # the eager call the hooks need first
    ms = [m for m in methods(args.compiler) if not args.only or m.name in args.only or m.provider == "none"]
    out = {"labels": [m.label for m in ms], "clips": [], "decisions": [], "warmup_s": [], "times": [[] for _ in ms],
           "reductions": [], "steps": []}
    with contextlib.ExitStack() as stack:
        compiled = [stack.enter_context(m.enter(model)) for m in ms]
        for m, c in zip(ms, compiled):
            before = m.stats(c).steps if m.stats else 0
            red0 = m.stats(c).reductions if m.stats else 0
            runtimes = set(_RUNTIMES)
            t0 = time.perf_counter()
            clip = generate(c, cond, uncond, **gen_kw)
            out["warmup_s"].append(time.perf_counter() - t0)
            out["clips"].append(clip.numpy())
            out["decisions"].append(_decisions(set(_RUNTIMES) - runtimes))
            s = m.stats(c) if m.stats else None
            out["reductions"].append((s.reductions - red0) if s else 0)
            out["steps"].append((s.steps - before) if s else 0)
        for _ in range(args.repeats):
            for i, c in enumerate(compiled):
                t0 = time.perf_counter()
                generate(c, cond, uncond, **gen_kw)
                out["times"][i].append(time.perf_counter() - t0)
    if world > 1:
        out["reduction_us"] = reduction_cost(args.reps)
    fxcache.reset(model)
    return out


def reduction_cost(reps: int) -> dict:
    """Microseconds per decision on this process group: the host read fxcache does anyway (`tolist` of the packed
    vector), the same after an in-variant functional all-reduce (what fxcache runs), and after a host-side
    `dist.all_reduce` (the alternative)."""
    import torch.distributed as dist

    from fxcache.passes.collectives import all_reduce_sum

    group = (dist.group.WORLD.group_name,)
    x = torch.rand(8)

    def timed(fn) -> float:
        for _ in range(20):
            fn()
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps * 1e6

    def host():
        y = x.clone()
        dist.all_reduce(y)
        return y.tolist()

    return {"read_only": timed(lambda: x.tolist()), "in_variant": timed(lambda: all_reduce_sum(x, group).tolist()),
            "host": timed(host)}


def _ranks_main(rank: int, world: int, args) -> dict:
    out = run_methods(world, args)
    if rank != 0:  # every rank's decisions; clips and times from rank 0
        out = {"labels": out["labels"], "decisions": out["decisions"]}
    return out


def _mean(xs: list) -> float | None:
    return None if None in xs else statistics.mean(xs)


def _db(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def table(meta: dict, rows: list[dict]) -> str:
    w = meta["world"]
    lines = [f"# fxcache under context parallelism (Ulysses degree {w}, {meta['backend']})", "",
             f"Reference model, {meta['prompts']} prompts x seed {meta['seed']}, {meta['steps']} steps, CFG "
             f"{GUIDANCE} (WanPipeline, separate calls), compiler {meta['compiler']}, {meta['repeats']} timed "
             f"repeats. Machine: {meta['machine']}. Command: `{meta['command']}`.", "",
             f"| method | decisions = 1 rank (all {w} ranks) | PSNR vs uncached, 1 rank | ... {w} ranks | "
             f"PSNR {w} ranks vs 1 | step ms, {w} ranks | speedup vs uncached CP | speedup 1 rank | "
             f"all-reduces / step | reduction us / step |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['label']} | {r['same_decisions']} | {_db(r['psnr_1'])} | {_db(r['psnr_n'])} | "
                     f"{r['psnr_n_vs_1']:.1f} | {r['step_ms']:.1f} [{r['step_ms_min']:.1f}-{r['step_ms_max']:.1f}] | "
                     f"{r['speedup_n']:.2f}x | {r['speedup_1']:.2f}x | {r['reductions_per_step']:.2f} | "
                     f"{r['reduction_us_per_step']:.0f} |")
    c = meta["reduction_us"]
    lines += ["", f"One decision's reduction on this group (median of {meta['reps']}): the host read alone "
              f"{c['read_only']:.0f} us, with fxcache's in-variant all-reduce {c['in_variant']:.0f} us, with a "
              f"host-side `dist.all_reduce` {c['host']:.0f} us. `reduction us / step` = all-reduces per step x "
              f"(in-variant - read alone). PSNR is the mean over clips; the worst clip is in the JSON."]
    return "\n".join(lines) + "\n"


def _short(label: str) -> str:
    if label.startswith("none:"):
        return "uncached"
    return label.replace("fxcache:", "").replace("(default: ", "(default ").split(" forecast=")[0].rstrip(")") + (
        ")" if "(" in label else "")


def plot(rows: list[dict], world: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["speedup_1"] for r in rows], 0.4, label="1 rank")
    ax.bar([x + 0.2 for x in xs], [r["speedup_n"] for r in rows], 0.4, label=f"{world} ranks (Ulysses)")
    for x, r in zip(xs, rows):
        mark = "=" if r["same_decisions"].startswith("yes") else "!"
        ax.text(x + 0.2, r["speedup_n"], mark, ha="center", va="bottom")
    ax.set_xticks(list(xs), [_short(r["label"]) for r in rows], rotation=25, ha="right", fontsize=7)
    ax.axhline(1.0, color="gray", lw=0.5)
    ax.set_ylabel("speedup vs uncached, same ranks")
    ax.set_title("'=' over a bar: every rank took the single process's decisions", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--backend", choices=("gloo", "nccl"), default="gloo")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reps", type=int, default=300, help="repetitions of the reduction micro-benchmark")
    ap.add_argument("--compiler", choices=("inductor", "eager"), default="inductor")
    ap.add_argument("--only", nargs="*", default=[], help="policy names to run (the uncached run always runs)")
    ap.add_argument("--out", type=Path, default=RESULTS / "parallel")
    args = ap.parse_args(argv)
    if args.backend == "nccl":
        raise SystemExit("bench.parallel: --backend nccl needs one GPU per rank; bench/ranks.py starts gloo ranks "
                         "only (this machine has no GPU to test an NCCL launch on)")
    if not CALIBRATION.exists():
        from .profiling import calibrate

        calibrate()
    t0 = time.time()
    print(f"1 rank: {args.prompts} prompts, {args.steps} steps, compiler {args.compiler}")
    one = run_methods(1, args)
    print(f"{args.world} ranks (Ulysses, gloo) ...")
    ranks = run_ranks(_ranks_main, world=args.world, args=(args,), timeout_s=7200, pg_timeout_s=1800)
    n = ranks[0].value
    rows = []
    base_1, base_n = statistics.median(one["times"][0]), statistics.median(n["times"][0])
    ref = torch.from_numpy(one["clips"][0])
    cost = n["reduction_us"]
    for i, label in enumerate(one["labels"]):
        same = all(r.value["decisions"][i] == one["decisions"][i] for r in ranks)
        c1, cn = torch.from_numpy(one["clips"][i]), torch.from_numpy(n["clips"][i])
        p1 = [psnr(c1[k], ref[k]) for k in range(len(ref))] if i else [None]
        pn = [psnr(cn[k], ref[k]) for k in range(len(ref))] if i else [None]
        rows.append({
            "label": label, "same_decisions": (("yes" if same else "NO") + f" ({len(one['decisions'][i])} calls)"
                                               if one["decisions"][i] else "- (not fxcache)"),
            "psnr_1": _mean(p1), "psnr_1_worst": min(p1) if i else None, "psnr_n": _mean(pn),
            "psnr_n_worst": min(pn) if i else None, "psnr_n_vs_1": min(psnr(cn[k], c1[k]) for k in range(len(c1))),
            "step_ms": statistics.median(n["times"][i]) / args.steps * 1e3,
            "step_ms_min": min(n["times"][i]) / args.steps * 1e3,
            "step_ms_max": max(n["times"][i]) / args.steps * 1e3,
            "speedup_n": base_n / statistics.median(n["times"][i]),
            "speedup_1": base_1 / statistics.median(one["times"][i]),
            "times_n": n["times"][i], "times_1": one["times"][i], "warmup_s_n": n["warmup_s"][i],
            "reductions_per_step": n["reductions"][i] / args.steps,
            "reduction_us_per_step": n["reductions"][i] / args.steps * max(cost["in_variant"] - cost["read_only"], 0),
            "decisions_1": one["decisions"][i],
        })
    meta = {"world": args.world, "backend": args.backend, "steps": args.steps, "prompts": args.prompts,
            "seed": args.seed, "repeats": args.repeats, "reps": args.reps, "compiler": args.compiler,
            "machine": machine(), "reduction_us": cost, "wall_s": time.time() - t0,
            "command": "python -m bench.parallel " + " ".join(argv if argv is not None else __import__("sys").argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    md = table(meta, rows)
    args.out.with_suffix(".md").write_text(md)
    plot(rows, args.world, args.out.with_suffix(".png"))
    print(md)
    return rows


if __name__ == "__main__":
    main()
