"""A generic flow-matching Euler loop over any zoo model, with classifier-free guidance done the way the family's
pipeline does it (two calls per step, or one call on [uncond; cond])."""

from __future__ import annotations

import torch


def _batched(a: dict, b: dict) -> dict:
    """Concatenate two single-sample input dicts along the batch dimension ([a; b])."""
    out = {}
    for k, v in a.items():
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == 1 and k != "timestep":
            out[k] = torch.cat([v, b[k]])
        elif isinstance(v, torch.Tensor) and k == "timestep":
            out[k] = v.expand(2).contiguous() if v.ndim == 1 else v
        else:
            out[k] = v
    return out


def first(out):
    return out[0] if isinstance(out, (tuple, list)) else out.sample


def denoise(model, entry, steps: int = 20, guidance: float = 3.0, seed: int = 0, cfg: str | None = None,
            names: tuple[str, str] | None = None) -> torch.Tensor:
    """Sample with the family's CFG layout; `names` puts the cond/uncond calls in `fxcache.context`s."""
    x = None
    for x in denoising(model, entry, steps, guidance, seed, cfg, names):
        pass
    return x


@torch.no_grad()
def denoising(model, entry, steps: int = 20, guidance: float = 3.0, seed: int = 0, cfg: str | None = None,
              names: tuple[str, str] | None = None):
    """`denoise` one step at a time: yields the latent after each step (to interleave or interrupt runs)."""
    import fxcache

    cfg = cfg or entry.cfg
    sigmas = torch.linspace(1.0, 1.0 / steps, steps).tolist() + [0.0]
    x = entry.inputs(torch.tensor(1000.0), 1, prompt=0)["hidden_states"]
    x = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    for k in range(steps):
        t = torch.tensor(1000.0 * sigmas[k])
        cond_in = {**entry.inputs(t, 1, prompt=0), "hidden_states": x}
        uncond_in = {**entry.inputs(t, 1, prompt=1), "hidden_states": x}
        if cfg == "batched":
            out = first(model(**_batched(uncond_in, cond_in)))
            uncond, cond = out[:, : x.shape[1]].chunk(2)
        else:
            ctx = fxcache.context if names else (lambda name: _null())
            names_ = names or ("cond", "uncond")
            with ctx(names_[0]):
                cond = first(model(**cond_in))[:, : x.shape[1]]
            with ctx(names_[1]):
                uncond = first(model(**uncond_in))[:, : x.shape[1]]
        v = uncond + guidance * (cond - uncond)
        x = x + (sigmas[k + 1] - sigmas[k]) * v
        yield x


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
