"""Fidelity of a cached generation against the uncached one from the same seed: PSNR, SSIM, relative L1 (the
benchmark's measures, not the engine's: those are fxcache/metrics.py). Clips are (B, C, F, H, W) or (B, C, H, W)
tensors in [-1, 1]."""

from __future__ import annotations

import numpy as np
import torch


def rel_l1(x: torch.Tensor, ref: torch.Tensor) -> float:
    """mean|x - ref| / mean|ref|, over all elements."""
    return float((x.float() - ref.float()).abs().mean() / ref.float().abs().mean().clamp_min(1e-12))


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB of clamped clips (data range 2 for [-1, 1]); inf when equal."""
    mse = float(((x.float().clamp(-1, 1) - ref.float().clamp(-1, 1)) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range ** 2 / mse)


def ssim(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean SSIM over every frame (scikit-image, RGB channels, Gaussian window as in Wang et al.)."""
    from skimage.metrics import structural_similarity

    a = _frames(x)
    b = _frames(ref)
    vals = [structural_similarity(p, q, channel_axis=-1, data_range=2.0, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False) for p, q in zip(a, b)]
    return float(np.mean(vals))


def _frames(x: torch.Tensor) -> np.ndarray:
    x = x.detach().float().clamp(-1, 1).cpu()
    if x.ndim == 5:  # (B, C, F, H, W) -> (B*F, H, W, C)
        x = x.permute(0, 2, 3, 4, 1).reshape(-1, x.shape[3], x.shape[4], x.shape[1])
    else:
        x = x.permute(0, 2, 3, 1)
    return x.numpy()
