"""Tables and plots of bench.serve's results."""

from __future__ import annotations

from pathlib import Path

MODES = {"batch": ("whole-batch decisions (peers)", "tab:red", "s"),
         "request": ("per-request decisions (fxcache)", "tab:blue", "o"),
         "uncached": ("no cache", "black", "x")}


def _machine(meta: dict) -> str:
    m = meta["machine"]
    return (f"{m['cpu']}, {m['cores']} cores, {m['threads']} threads, torch {m['torch']}"
            f"{', ' + m['gpu'] if m.get('gpu') else ', no GPU'}; compiler {meta['compiler']}; {meta['date']}")


def table(meta: dict, serving: list[dict], static: list[dict]) -> str:
    lines = [f"# Serving with per-request caching (bench/serve.py)", "",
             f"Machine: {_machine(meta)}. {meta['requests']} requests (step counts {meta['steps']} cycled, one "
             f"arriving every {meta['gap']} iterations), at most {meta['max_batch']} per batch; median of "
             f"{meta['repeats']} interleaved timed rounds. PSNR: each request against itself generated alone "
             f"without caching.", "",
             "## Continuous batching (requests at different steps in one forward)", "",
             "| setting | decisions | requests/min [min-max] | vs no cache | worst PSNR | mean PSNR | cached "
             "request-steps |", "|---|---|---|---|---|---|---|"]
    for r in serving:
        lo, hi = r["throughput_range"]
        lines.append(f"| {r['setting']} | {r['mode']} | {r['throughput']:.1f} [{lo:.1f}-{hi:.1f}] | "
                     f"{r['speedup']:.2f}x | {r['psnr_worst']:.1f} | {r['psnr_mean']:.1f} | "
                     f"{100 * r['skipped_fraction']:.0f}% |")
    lines += ["", "At equal worst-request PSNR: the highest throughput of each way of deciding among the settings whose "
              "worst request is at or above the floor (the setting in brackets).", "",
              "| worst PSNR >= | whole-batch decisions | per-request decisions | per-request / whole-batch |",
              "|---|---|---|---|"]
    for floor, best in frontier(serving):
        b, r = best.get("batch"), best.get("request")
        cell = lambda x: f"{x['throughput']:.1f} ({x['setting']})" if x else "-"  # noqa: E731
        ratio = f"{r['throughput'] / b['throughput']:.2f}x" if b and r else "-"
        lines.append(f"| {floor} dB | {cell(b)} | {cell(r)} | {ratio} |")
    lines += ["", "## Static batches (B prompts at once, WanPipeline)", "",
              "| B | setting | decisions | speedup vs uncached B | worst PSNR | mean PSNR |", "|---|---|---|---|---|---|"]
    for r in static:
        lines.append(f"| {r['batch']} | {r['setting']} | {r['mode']} | {r['speedup']:.2f}x | {r['psnr_worst']:.1f} | "
                     f"{r['psnr_mean']:.1f} |")
    return "\n".join(lines) + "\n"


FLOORS = (15, 17, 20, 22, 24, 25, 30, 35)


def frontier(serving: list[dict], floors=FLOORS) -> list[tuple]:
    """Per worst-PSNR floor: {mode: the fastest run of that mode (cached settings only) at or above it}."""
    out = []
    for floor in floors:
        best = {}
        for mode in ("batch", "request"):
            ok = [r for r in serving if r["mode"] == mode and r["psnr_worst"] >= floor]
            best[mode] = max(ok, key=lambda r: r["throughput"]) if ok else None
        out.append((floor, best))
    return out


def plot(serving: list[dict], static: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in static})
    fig, axes = plt.subplots(1, 1 + len(batches), figsize=(5.5 + 4 * len(batches), 4.5))
    ax = axes[0]
    for mode, (name, color, marker) in MODES.items():
        pts = [r for r in serving if r["mode"] == mode]
        ax.scatter([min(r["psnr_worst"], 60) for r in pts], [r["throughput"] for r in pts], c=color, marker=marker,
                   label=name)
        for r in pts:
            ax.annotate(r["setting"], (min(r["psnr_worst"], 60), r["throughput"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points", color=color)
    for mode in ("batch", "request"):  # the frontier: the best throughput at or above each worst-PSNR floor
        pts = sorted((r for r in serving if r["mode"] == mode), key=lambda r: -r["psnr_worst"])
        xs, ys, best = [], [], 0.0
        for r in pts:
            best = max(best, r["throughput"])
            xs.append(min(r["psnr_worst"], 60))
            ys.append(best)
        ax.step(xs, ys, where="post", color=MODES[mode][1], alpha=0.5)
    ax.set_xlabel("worst request's PSNR vs. alone, uncached (dB)")
    ax.set_ylabel("throughput (requests / min)")
    ax.set_title("continuous batching: up and to the right is better")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for ax, b in zip(axes[1:], batches):
        for mode, (name, color, marker) in MODES.items():
            pts = [r for r in static if r["batch"] == b and r["mode"] == mode]
            ax.scatter([min(r["psnr_mean"], 60) for r in pts], [r["speedup"] for r in pts], c=color, marker=marker,
                       label=name)
        ax.set_xlabel("mean PSNR vs. uncached (dB)")
        ax.set_ylabel("speedup vs. uncached")
        ax.set_title(f"static batch of {b}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def soak_report(meta: dict, soak: dict, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = soak["points"]
    lines = [f"# Serving soak (bench/serve.py --soak {soak['requests']})", "",
             f"Machine: {_machine(meta)}. fbcache 0.1, per-request decisions, at most {soak['max_batch']} per "
             f"batch; finished requests released.", "",
             "| iteration | requests finished | live requests | their cache bytes | all cache bytes | RSS MiB |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {p['iteration']} | {p['requests']} | {p['requests_live']} | {p['request_cache_bytes']} | "
              f"{p['cache_bytes']} | {p['rss_mib']:.1f} |" for p in pts[::max(1, len(pts) // 25)]]
    lines += ["", f"After the last request: {soak['after']['requests_live']} live requests, "
              f"{soak['after']['request_cache_bytes']} bytes."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([p["requests"] for p in pts], [p["rss_mib"] for p in pts], label="resident memory (MiB)")
    ax.set_xlabel("requests finished")
    ax.set_ylabel("MiB")
    ax2 = ax.twinx()
    ax2.plot([p["requests"] for p in pts], [p["request_cache_bytes"] / 2**20 for p in pts], color="tab:orange",
             label="live requests' cache (MiB)")
    ax2.set_ylabel("cache MiB")
    fig.legend(loc="upper right", fontsize=8)
    ax.set_title("serving soak: memory stays flat")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)
    plt.close(fig)
