"""The Pareto plot of a tuning run: every searched setting (speedup against mean PSNR on the tuning split, a bar
down to its worst clip), the floor, and the chosen setting with its held-out figures."""

from __future__ import annotations

from pathlib import Path


def save_plot(section: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cap = 60.0  # identical outputs (inf dB) drawn at the cap
    clip = lambda v: cap if v is None else min(cap, v)  # noqa: E731
    fig, ax = plt.subplots(figsize=(10.5, 5))
    colors = {}
    for r in section["searched"]:
        policy = r["options"]["policy"] + (" + " + r["options"]["forecast"] if "forecast" in r["options"] else "")
        color = colors.setdefault(policy, f"C{len(colors) % 10}")
        x, y, lo = r["speedup"], clip(r["psnr_mean"]), clip(r["psnr_worst"])
        ax.plot([x, x], [lo, y], color=color, lw=0.8, alpha=0.5)
        ax.scatter([x], [y], color=color, s=28, marker="o" if r["holds"] else "x",
                   label=policy if policy not in ax.get_legend_handles_labels()[1] else None)
        ax.annotate(r["label"].split(" ", 1)[-1], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points",
                    color=color)
    floor = section["floor"]
    ax.axhline(floor["psnr_mean"], color="gray", ls="--", lw=1, label=f"floor: mean {floor['psnr_mean']:g} dB")
    ax.axhline(floor["psnr_worst"], color="gray", ls=":", lw=1, label=f"floor: worst clip {floor['psnr_worst']:g} dB")
    chosen = section.get("chosen")
    if chosen:
        for split, marker in (("tuning", "*"), ("heldout", "P")):
            r = chosen[split]
            ax.scatter([r["speedup"]], [clip(r["psnr_mean"])], marker=marker, s=220, color="black", zorder=5,
                       facecolors="none" if split == "heldout" else "gold",
                       label=f"chosen ({split}): {r['label']}, {r['speedup']:.2f}x")
    ax.set(xlabel=f"speedup over uncached ({section['compiler']} inner compiler, tuning clips)",
           ylabel=f"PSNR vs uncached, dB (mean; bar to the worst clip; inf at {cap:g})",
           title=f"fxcache.tune: {section['num_steps']} steps, {len(section['searched'])} settings searched "
                 f"({section['seconds']:.0f} s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
