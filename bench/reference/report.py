"""Pictures of the reference model: loss curve and a grid of sampled clips (one prompt per row, frames across)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data import all_prompts


def plot_loss(history: list[tuple[int, float]], path: Path, title: str = "reference Wan DiT training") -> None:
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
    ax.set(xlabel="training step", ylabel="flow-matching MSE", yscale="log", title=title)
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


def images_to_grid(images: torch.Tensor, cols: int, scale: int = 3) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> uint8 image, `cols` images a row with white borders."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    b, c, h, w = x.shape
    rows = -(-b // cols)
    x = torch.cat([x, torch.full((rows * cols - b, c, h, w), 255, dtype=torch.uint8)])
    x = torch.nn.functional.pad(x, (1, 1, 1, 1), value=255)
    x = x.view(rows, cols, c, h + 2, w + 2).permute(0, 3, 1, 4, 2).reshape(rows * (h + 2), cols * (w + 2), c)
    return x.repeat_interleave(scale, 0).repeat_interleave(scale, 1).numpy()


@torch.no_grad()
def sample_image_grid(model, encoder, path: Path, title: str = "", steps: int = 30, guidance: float = 4.0) -> None:
    """The Flux model's samples: 12 prompts (every shape, color, position and size appears) x 4 seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..pipeline_flux import generate_images
    from .flux_data import all_image_prompts

    every = all_image_prompts()  # index 32 shape + 8 color + 2 position + size
    prompts = [every[8 * i + 2 * ((i + i // 4) % 4) + i % 2] for i in range(12)]
    seeds = range(4)
    images = torch.stack([generate_images(model, encoder.encode(prompts), num_inference_steps=steps,
                                          guidance_scale=guidance, seed=s, cfg="batched") for s in seeds], dim=1)
    img = images_to_grid(images.flatten(0, 1), cols=len(seeds))
    fig, ax = plt.subplots(figsize=(6.0, 0.5 * len(prompts) + 0.6))
    ax.imshow(img)
    row = img.shape[0] / len(prompts)
    ax.set_yticks([row * (i + 0.5) for i in range(len(prompts))], [str(p) for p in prompts], fontsize=7)
    ax.set_xticks([img.shape[1] / len(seeds) * (i + 0.5) for i in seeds], [f"seed {s}" for s in seeds], fontsize=7)
    ax.set_title(title or "samples", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
