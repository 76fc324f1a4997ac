"""Indicators computed from the model's inputs inside the compiled variant: a registry of functions, like metrics.py.

A policy asks for one with `site(name, **params)`: an indicator `Site` whose value, in any variant that writes or
measures it, is `fn(latent, timestep, **params)` on the graph's latent input and timestep input (passes/specialize.py
calls the registered function; it knows no method). The value has the latent's shape and dtype, so that it is
cached, split per request and measured like any other indicator; a probe that stops at it computes nothing of the
model. Registered functions:

- "latent": a copy of the latent input (EasyCache's x_t; `tag` keeps two cache sites of one value apart);
- "sea": the SEA filter of the latent (SeaCache; see `sea_filter`).
"""

from __future__ import annotations

import inspect
import re
import typing
from typing import Callable

import torch

from .plan import Site

_REGISTRY: dict[str, tuple[Callable, dict]] = {}  # name -> (fn, {keyword parameter: type})
_SITES: dict[str, tuple[Callable, dict]] = {}  # a derived site's name -> (fn, its parameters)


def register(name: str) -> Callable:
    """Register `fn(latent, timestep, **params)`: keyword-only parameters annotated int / float / bool / str."""

    def add(fn: Callable) -> Callable:
        hints = typing.get_type_hints(fn)
        params = {p.name: hints.get(p.name) for p in inspect.signature(fn).parameters.values()
                  if p.kind == p.KEYWORD_ONLY}
        if any(t not in (int, float, bool, str) for t in params.values()):
            raise ValueError(f"derived indicator {name!r}: keyword parameters must be annotated int, float, bool "
                             f"or str")
        _REGISTRY[name] = (fn, params)
        return fn

    return add


def site(name: str, **params) -> Site:
    """The indicator site of registered function `name` with `params` (all of its keyword parameters)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown derived indicator {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    fn, types = _REGISTRY[name]
    if set(params) != set(types):
        raise ValueError(f"derived indicator {name!r} takes parameters {sorted(types)}, got {sorted(params)}")
    params = {k: types[k](v) for k, v in params.items()}
    # An identifier (variants name their placeholders after sites), e.g. "sea__power_exp_3_0".
    key = re.sub(r"\W", "_", "__".join([name, *(f"{k}_{params[k]}" for k in sorted(params))]))
    _SITES[key] = (fn, params)
    return Site("indicator", name=key)


def lookup(site_name: str) -> tuple[Callable, dict] | None:
    """(fn, params) of a derived indicator site's name, or None for an indicator found in the graph."""
    return _SITES.get(site_name)


@register("latent")
def latent(x: torch.Tensor, t: torch.Tensor | None, *, tag: str) -> torch.Tensor:
    return torch.clone(x)  # a fresh tensor: the caller may modify its latent in place


def sigmas(t: torch.Tensor, batch) -> torch.Tensor:
    """The noise level of each sample from the timestep input: t / 1000 for models that take t on the 0-1000 scale,
    t itself for those that take it in [0, 1] (Flux, SD3: t <= 1); one value per sample ([batch], float32)."""
    t = t.float()
    t = t.reshape(t.shape[0], -1)[:, 0] if t.dim() >= 1 else t.reshape(1)
    return torch.where(t <= 1.0, t, t / 1000.0).expand(batch)


@register("sea")
def sea_filter(x: torch.Tensor, t: torch.Tensor, *, power_exp: float) -> torch.Tensor:
    """SeaCache's SEA filter (Chung et al., "SeaCache: Spectral-Evolution-Aware Cache for Accelerating Diffusion
    Models", CVPR 2026; as diffusers 0.42.1 `hooks/sea_cache.py` `_apply_sea_filter` computes it): per sample, Z = FFT of the latent over its frames and spatial axes (every axis after the channel
    axis 1) in float32; per axis of length L with f = fftfreq(L), S(f) = 1 / (|f|^p + 1e-16) (the clean signal's
    power prior) and the Wiener gain g(f) = a S / (a^2 S + b^2 + 1e-16), a = 1 - sigma, b = sigma (sigma clamped
    to [1e-6, 1 - 1e-6]); G = the outer product of the axes' gains, divided by its mean where that is finite and
    > 0; the indicator is Re(IFFT(Z G)) in the latent's dtype. Each sample has its own sigma (its timestep)."""
    b = x.shape[0]
    dims = tuple(range(2, x.dim()))
    sigma = sigmas(t, b).clamp(1e-6, 1.0 - 1e-6)
    a, n = (1.0 - sigma).reshape(b, 1), sigma.reshape(b, 1)
    gain = None
    for axis in dims:
        f = torch.fft.fftfreq(x.shape[axis], device=x.device, dtype=torch.float32)
        s = 1.0 / (f.abs().pow(power_exp) + 1e-16)
        g = a * s / (a * a * s + n * n + 1e-16)  # [b, L]
        shape = [b] + [1] * (x.dim() - 1)
        shape[axis] = x.shape[axis]
        gain = g.reshape(shape) if gain is None else gain * g.reshape(shape)
    mean = gain.mean(dim=dims, keepdim=True)
    gain = torch.where(torch.isfinite(mean) & (mean > 0), gain / mean, gain)
    spectrum = torch.fft.fftn(x.float(), dim=dims)
    return torch.fft.ifftn(spectrum * gain, dim=dims).real.to(x.dtype)
