"""Pictures of the reference model: loss curve and a grid of sampled clips (one prompt per row, frames across)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data import all_prompts


def plot_loss(history: list[tuple[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([s for s, _ in history])
    loss = np.array([l for _, l in history])
    k = min(100, len(loss))
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, lw=0.3, alpha=0.4, label="per step")
    ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"mean of {k}")
    ax.set(xlabel="training step", ylabel="flow-matching MSE", yscale="log", title="reference Wan DiT training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def clips_to_rows(clips: torch.Tensor, scale: int = 2) -> np.ndarray:
    """(B, 3, F, H, W) in [-1, 1] -> uint8 image with one clip per row, frames left to right."""
    x = ((clips.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    b, c, f, h, w = x.shape
    x = torch.nn.functional.pad(x, (1, 1, 1, 1), value=255)  # white frame borders
    x = x.permute(0, 3, 2, 4, 1).reshape(b * (h + 2), f * (w + 2), c)
    return x.repeat_interleave(scale, 0).repeat_interleave(scale, 1).numpy()


@torch.no_grad()
def sample_grid(model, encoder, path: Path, title: str = "", steps: int = 30, guidance: float = 5.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..pipeline import generate

    prompts = all_prompts()[::5]  # ten prompts: every shape, color and direction appears
    cond, uncond = encoder.encode(prompts)
    clips = generate(model, cond, uncond, num_inference_steps=steps, guidance_scale=guidance, seed=0, cfg="batched")
    img = clips_to_rows(clips)
    fig, ax = plt.subplots(figsize=(7, 0.42 * len(prompts) + 0.6))
    ax.imshow(img)
    row = img.shape[0] / len(prompts)
    ax.set_yticks([row * (i + 0.5) for i in range(len(prompts))], [str(p) for p in prompts], fontsize=7)
    ax.set_xticks([])
    ax.set_title(title or "samples", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
