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
    lines += ["", "## Static batches (B prompts at once, WanPipeline)", "",
              "| B | setting | decisions | speedup vs uncached B | worst PSNR | mean PSNR |", "|---|---|---|---|---|---|"]
    for r in static:
        lines.append(f"| {r['batch']} | {r['setting']} | {r['mode']} | {r['speedup']:.2f}x | {r['psnr_worst']:.1f} | "
                     f"{r['psnr_mean']:.1f} |")
    return "\n".join(lines) + "\n"


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
