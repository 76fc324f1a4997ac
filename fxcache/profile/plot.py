"""The calibration plot (matplotlib, a PNG): distances per step (D_step, D_cfg, the candidate blocks, the
indicators, theta), MagCache's ratios, the impact per granularity, and TeaCache's fits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .recording import INDICATORS


def save_plot(data: dict, path: str | Path) -> Path:
    """Four panels: distances per step, MagCache ratios, impact per granularity, TeaCache's fits."""
    import matplotlib  # optional and slow to import: only when a plot is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def arr(v):
        return np.array([np.nan if x is None else x for x in v], dtype=float)

    c, mix = data["curves"], data["mixcache"]
    n = data["run"]["num_steps"]
    steps = np.arange(1, n + 1)
    fig, ax = plt.subplots(2, 2, figsize=(13, 9))
    a = ax[0, 0]
    a.plot(steps, arr(c["d_step"]), "k-", lw=2, label="D_step (output)")
    if any(x is not None for x in c.get("d_cfg", [])):
        a.plot(steps, arr(c["d_cfg"]), "r-", lw=2, label="D_cfg (uncond vs cond)")
    for i in mix["blocks"]:
        a.plot(steps, arr(c[f"block:{i}"]), "--", label=f"D_block {i} (streams after unit {i - 1})")
    for name in INDICATORS:
        if f"indicator:{name}" in c:
            a.plot(steps, arr(c[f"indicator:{name}"]), ":", lw=2, label=f"indicator {name}")
    ada = data["adacache"]["per_step"]
    if any(x is not None for x in ada["mean"]):
        a.fill_between(steps, arr(ada["p10"]), arr(ada["p90"]), color="0.8", alpha=0.6,
                       label="self-attn p10-p90 (AdaCache)")
    a.axhline(mix["theta"], color="k", lw=0.8, ls="-.", label=f"theta = {mix['theta']:.3g}")
    a.set_yscale("log")
    a.set(title="relative L1 vs the previous step", xlabel="step")
    a.legend(fontsize=7)
    a = ax[0, 1]
    for s, r in data["magcache"].items():
        a.plot(np.arange(1, len(r) + 1), r, label=s)
    a.axhline(1.0, color="0.5", lw=0.8)
    a.set(title="MagCache ratios gamma_k", xlabel="step")
    a.legend(fontsize=8)
    a = ax[1, 0]
    imp = mix["impact"]
    a.axhline(imp["step"], color="k", lw=2, label=f"I_step = {imp['step']:.3g}")
    a.axhline(imp["cfg"], color="r", lw=2, label=f"I_cfg = {imp['cfg']:.3g}")
    a.plot(steps, arr(c["impact:step"]), "k:", lw=0.8)
    a.plot(steps, arr(c["impact:cfg"]), "r:", lw=0.8)
    for i, v in imp["block"].items():
        a.plot(steps, arr(v), "--", label=f"I_block {i}")
    a.set_yscale("log")
    a.set(title="impact: relL1 of the guided prediction under N(mu, sigma) noise", xlabel="step")
    a.legend(fontsize=8)
    a = ax[1, 1]
    for name in INDICATORS:
        if f"teacache_x:{name}" in c:
            x, y = arr(c[f"teacache_x:{name}"]), arr(c[f"teacache_y:{name}"])
            pts = a.scatter(x, y, s=6, alpha=0.5, label=f"{name}")
            ok = np.isfinite(x)
            if ok.any():
                xs = np.linspace(np.nanmin(x), np.nanmax(x), 100)
                a.plot(xs, np.poly1d(data["teacache"][name])(xs), color=pts.get_facecolor()[0])
    a.set(title="TeaCache: output change vs indicator change (+ fit)", xlabel="relL1 indicator",
          ylabel="relL1 output")
    a.legend(fontsize=8)
    m = data["model"]
    fig.suptitle(f"{m['class']} ({m['num_units']} units), {n} steps, {data['run']['prompts']} prompts x "
                 f"{len(data['run']['seeds'])} seeds, g = {data['run']['guidance_scale']}, cfg {data['run']['cfg']}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
