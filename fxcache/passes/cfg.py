"""The CFG branch: FasterCache's CFG-Cache as graph pieces.

FasterCache rebuilds the unconditional output from the conditional one: per frame, `fft2` over (H, W), a centred
disk of radius min(H, W) // 5 is the low band, the rest the high band, and uncond = ifft(LF(cond) + ΔLF +
HF(cond) + ΔHF) with the deltas ΔLF = LF(uncond) - LF(cond), ΔHF likewise, taken on the last full step and
scaled by α_L / α_H (compounding) on the steps in between. Because the FFT is linear and a centred disk of a real
signal's spectrum is conjugate-symmetric, that equals

    uncond = cond + s_L · low(uncond_full - cond_full) + s_H · high(uncond_full - cond_full)

with low() / high() the real band-pass images of the delta. So a full uncond step caches the two real band
images (`bands`, one FFT pair), and a rebuilt step is one elementwise blend (`rebuild`) with the scales as an
input: no FFT, no transformer. The last two dimensions of the model output are (H, W) (diffusers' latent
layouts (B, C, H, W) and (B, C, F, H, W)); every leading dimension is a separate image.
"""

from __future__ import annotations

import torch

from ..triton_kernels import cfg_blend


def low_mask(height: int, width: int, device) -> torch.Tensor:
    """FasterCache's low band, in unshifted FFT order: frequencies (fy, fx) with fy² + fx² <= (min(H, W) // 5)²
    (the centred disk of the shifted spectrum)."""
    r = min(height, width) // 5
    fy = torch.fft.fftfreq(height, 1.0 / height, device=device)
    fx = torch.fft.fftfreq(width, 1.0 / width, device=device)
    return (fy[:, None] ** 2 + fx[None, :] ** 2) <= r * r


def bands(x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) band images of `x - cond`, in float32."""
    delta = x.float() - cond.float()
    spectrum = torch.fft.fft2(delta)
    low = torch.fft.ifft2(spectrum * low_mask(delta.shape[-2], delta.shape[-1], delta.device)).real
    return low, delta - low


def batch_bands(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) band images of (uncond - cond) of a batched-CFG output `[uncond; cond]`."""
    uncond, cond = out.chunk(2)
    return bands(uncond, cond)


def rebuild(cond: torch.Tensor, low: torch.Tensor, high: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """cond + scales[0]·low + scales[1]·high, in cond's dtype: one fused pass (triton_kernels/blend.py)."""
    return cfg_blend(cond, low, high, scales)


def rebuild_reference(cond: torch.Tensor, uncond_full: torch.Tensor, cond_full: torch.Tensor, s_low: float,
                      s_high: float) -> torch.Tensor:
    """FasterCache's rebuild as diffusers writes it (fftshift, centred disk mask, ifftshift), for tests."""
    def split(x):
        f = torch.fft.fftshift(torch.fft.fft2(x.float()), dim=(-2, -1))
        h, w = x.shape[-2:]
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        mask = (xx - w // 2) ** 2 + (yy - h // 2) ** 2 <= (min(h, w) // 5) ** 2
        return f * mask, f * ~mask

    lu, hu = split(uncond_full)
    lc, hc = split(cond_full)
    lo, hi = split(cond)
    spec = lo + s_low * (lu - lc) + hi + s_high * (hu - hc)
    return torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1))).real.to(cond.dtype)
