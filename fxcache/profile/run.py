"""One profile: the three passes over every (prompt, seed) generation, the rules, the curves the plot shows, and
the calibration file (rounded to 6 significant digits, so that a rerun reproduces the file)."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..calibration import FORMAT, VERSION, save
from ..families import family
from ..policies.base import Unsupported
from . import rules
from .perturbation import Tap, granularities, impact, statistics
from .plot import save_plot
from .recording import INDICATORS, Target, load_target, measure


def profile(target: Target | str, *, prompts: int = 4, seeds=(1234,), steps: int = 50, guidance: float = 5.0,
            out: str | Path | None = None, plot: str | Path | None = None, stable_tol: float = 0.1,
            progress: bool = True) -> dict:
    """Profile `target` (a Target or 'module:callable') and return the calibration; write it to `out` (and the
    plot to `plot`) when given. Calls `torch._dynamo.reset()` before and after its compiled pass."""
    if isinstance(target, str):
        target = load_target(target)
    if target.cfg not in ("separate", "batched"):
        raise ValueError(f"fxcache.profile: Target.cfg must be 'separate' or 'batched', got {target.cfg!r}")
    if prompts < 1 or steps < 2 or not seeds:
        raise ValueError("fxcache.profile: needs prompts >= 1, steps >= 2 and at least one seed")
    if target.prompts is not None and prompts > target.prompts:
        raise ValueError(f"fxcache.profile: the target has {target.prompts} prompts, asked for {prompts}")
    generations = [(p, int(s)) for p in range(prompts) for s in seeds]
    bar = tqdm(total=3 * len(generations), desc="profile", disable=not progress, unit="gen")
    with torch.no_grad():
        bar.set_postfix_str("measure")
        try:
            rec, measured = measure(target, generations, steps, guidance, bar)
        except Unsupported as e:
            raise RuntimeError(f"fxcache.profile: {e}") from None
        cuts = list(rec.blocks)
        with Tap(target, rec.discovery, cuts) as tap:
            bar.set_postfix_str("statistics")
            stats = statistics(target, tap, generations, steps, guidance, bar)
            mu, sigma, mu_curves, sigma_curves = rules.noise(stats, cuts, steps)
            bar.set_postfix_str("impact")
            impacts = impact(target, tap, generations, steps, guidance, mu, sigma, bar)
    bar.close()

    p = rules.Profiled(steps=steps, measured=measured, discovery=rec.discovery, cuts=cuts, attn=rec.attn,
                       stats=stats, impacts=impacts, stable_tol=stable_tol, mu=mu, sigma=sigma, mu_curves=mu_curves,
                       sigma_curves=sigma_curves)
    sections = {name: rule(p) for name, rule in rules.RULES.items()}
    model, d = target.model, rec.discovery
    data = {
        "format": FORMAT, "version": VERSION,
        "model": {"class": type(model).__name__,
                  "block": d.units[0].module_type.rsplit(".", 1)[-1].strip("'>"),
                  "family": family(d), "num_units": d.num_units, "fingerprint": fingerprint(model)},
        "run": {"target": target.name, "num_steps": steps, "prompts": prompts, "seeds": [int(s) for s in seeds],
                "guidance_scale": float(guidance), "cfg": target.cfg, "streams": p.streams,
                "stable_tol": stable_tol, "warmup_fraction": rules.WARMUP_FRACTION,
                "torch": torch.__version__.split("+")[0]},
        **sections, "curves": curves(p, sections["teacache"]),
    }
    data = _round(data)
    if out is not None:
        save(out, data)
    if plot is not None:
        save_plot(data, plot)
    return data


def curves(p: rules.Profiled, teacache: dict) -> dict[str, list]:
    """The per-step series the plot shows (None where a step has no value, e.g. step 1's distances), and
    TeaCache's fit points."""
    out = {"d_step": rules.nanmean(p.series("d_step")), "d_cfg": rules.nanmean(p.series("d_cfg"))}
    for i in p.cuts:
        out[f"block:{i}"] = rules.nanmean(p.series(f"block:{i}"))
    for name in INDICATORS:
        if p.series(f"indicator:{name}"):
            out[f"indicator:{name}"] = rules.nanmean(p.series(f"indicator:{name}"))
    for g in granularities(p.cuts):
        out[f"mu:{g}"], out[f"sigma:{g}"], out[f"impact:{g}"] = p.mu_curves[g], p.sigma_curves[g], \
            p.impact_curves[g]
    for name in INDICATORS:
        if name in teacache:
            out[f"teacache_x:{name}"], out[f"teacache_y:{name}"] = p.fit_points(name)
    return out


def _round(v):
    if isinstance(v, float):
        return float(f"{v:.6g}") if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_round(x) for x in v]
    return v


def fingerprint(model: torch.nn.Module) -> str:
    """The model's structure (class, parameter and buffer names, shapes, dtypes): which model, not which weights."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in sorted(list(model.named_parameters()) + list(model.named_buffers())):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    return "sha256:" + h.hexdigest()[:16]
