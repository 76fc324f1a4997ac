"""What each method's calibration section is derived from the three passes (one rule per policy, `RULES`).
Prompts, seeds and, where a stream is named, streams are pooled; "steps after warm-up" are the last 80 % of the
steps (MixCache's last 40 of 50). The last step is left out of TeaCache's fit and of MixCache's stability: the
policies always compute it, and a flow-matching sampler's jump to sigma = 0 there (D_step ~ 0.6 on the reference
model, ten times any other step) would bend the whole fit."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .perturbation import granularities
from .recording import INDICATORS

WARMUP_FRACTION = 0.2  # steps before the last 80 %: excluded from sigma-hat and I_step / I_cfg
STABLE_WINDOW = 5


@dataclass
class Profiled:
    """What the passes measured: `measured` per generation {stream: {key: [value or None per step]}} (pass 1,
    recording.Recorder), `stats` and `impacts` per generation (passes 2 and 3, perturbation.py), and the noise of
    pass 3 (`noise`)."""

    steps: int
    measured: list[dict]
    discovery: object
    cuts: list[int]  # MixCache's candidate blocks
    attn: list  # the self-attention module sites probed (AdaCache)
    stats: list[dict]
    impacts: list[dict]
    stable_tol: float
    mu: dict  # granularity -> mu-hat
    sigma: dict  # granularity -> sigma-hat
    mu_curves: dict  # granularity -> mu_t per step
    sigma_curves: dict

    @property
    def streams(self) -> list[str]:
        return sorted({s for r in self.measured for s in r})

    @property
    def fit_steps(self) -> slice:
        return slice(0, self.steps - 1)  # the last step is left out (the module docstring)

    def series(self, key: str) -> list[list]:
        """Every (generation, stream) series of `key`."""
        return [r[s][key] for r in self.measured for s in r if key in r[s]]

    def fit_points(self, indicator: str) -> tuple[list, list]:
        """TeaCache's fit points: (indicator change, output change) pairs over the fitted steps."""
        key, fit = f"indicator:{indicator}", self.fit_steps
        xs = [x for s in self.series(key) for x in s[fit]]
        ys = [y for r in self.measured for s in r if key in r[s] for y in r[s]["d_step"][fit]]
        return xs, ys

    @cached_property
    def impact_curves(self) -> dict[str, list]:
        return {g: nanmean([r[g] for r in self.impacts]) for g in granularities(self.cuts)}


def nanmean(rows) -> list[float | None]:
    """Element-wise mean of equal-length lists with None for missing values."""
    a = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        m = np.nanmean(a, axis=0) if len(a) else np.array([])
    return [None if not np.isfinite(x) else float(x) for x in m]


def mean(values) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def warm(steps: int) -> int:
    return int(math.ceil(WARMUP_FRACTION * steps))


def noise(stats: list[dict], cuts: list[int], steps: int) -> tuple[dict, dict, dict, dict]:
    """MixCache's noise per granularity, between passes 2 and 3: (mu-hat, sigma-hat, mu_t curves, sigma_t curves);
    mu-hat is the mean over steps of mu_t, sigma-hat the mean of sigma_t over the steps after warm-up (averaged
    over generations first)."""
    mu, sigma, mu_curves, sigma_curves = {}, {}, {}, {}
    for g in granularities(cuts):
        mu_curves[g] = nanmean([r[g]["mu"] for r in stats])
        sigma_curves[g] = nanmean([r[g]["sigma"] for r in stats])
        mu[g] = mean(mu_curves[g]) or 0.0
        sigma[g] = mean(sigma_curves[g][warm(steps):]) or mean(sigma_curves[g]) or 0.0
    return mu, sigma, mu_curves, sigma_curves


def stability(d: list[float | None], tol: float) -> tuple[float, float, float, int] | None:
    """(theta, delta1, delta2, 1-based stable step) of one D_step series, or None if it is too short."""
    idx = [k for k, v in enumerate(d) if v is not None and math.isfinite(v)]
    if len(idx) < 2:
        return None
    vals = {k: d[k] for k in idx}
    stable = None
    for k in idx:
        prev = [k - j for j in range(1, STABLE_WINDOW + 1)]
        if all(p in vals for p in prev) and all(abs(vals[k] - vals[p]) <= tol * vals[k] for p in prev):
            stable = k
            break
    if stable is None:
        stable = max(idx[0], min(idx[-1], warm(len(d))))
    after = [vals[k] for k in idx if k >= stable]
    theta = float(np.mean(after))
    a, b = theta - min(after), max(after) - theta
    return theta, min(a, b), max(a, b), stable + 1


def polyfit(xs, ys, deg: int = 4) -> list[float] | None:
    pts = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    if len(pts) < 2:
        return None
    x, y = np.array(pts, dtype=float).T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [float(c) for c in np.polyfit(x, y, min(deg, len(pts) - 1))]


def teacache(p: Profiled) -> dict:
    """TeaCache's own fit (Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model",
    section 3.4): np.polyfit(deg=4) of the per-step D_step (y) against the per-step relative L1 of each indicator
    (x), steps 2..N-1 of every generation and stream; "output" is the identity [1, 0]."""
    out = {"output": [1.0, 0.0]}
    for name in INDICATORS:
        xs, ys = p.fit_points(name)
        if xs:
            fitted = polyfit(xs, ys)
            if fitted is not None:
                out[name] = fitted
    return out


def magcache(p: Profiled) -> dict:
    """MagCache's ratios gamma_k per stream (Ma et al., "MagCache: Fast Video Generation with Magnitude-Aware
    Cache", section 3.2), averaged over generations; gamma_1 = 1."""
    out = {}
    for s in p.streams:
        rows = [r[s]["mag_ratio"] for r in p.measured if s in r and "mag_ratio" in r[s]]
        if rows:
            out[s] = [1.0] + [v if v is not None else 1.0 for v in nanmean(rows)[1:]]
    return out


def mixcache(p: Profiled) -> dict:
    """MixCache (Wei et al., "MixCache: Mixture-of-Cache for Video Diffusion Transformer Acceleration"), section
    3.5 as read here: per generation and stream D_step (steps 2..N-1) is *stable* from the first step k whose value
    differs by at most `stable_tol` * D_step_k from each of the previous five (the steps after warm-up if that
    never happens); theta = the mean of D_step from k on; with a = theta - min and b = max - theta of the values
    from k on, delta1 = min(a, b) and delta2 = max(a, b); each averaged over generations and streams. Section 3.4:
    the impact I of each granularity, "step" and "cfg" the mean of I_t over the steps after warm-up, "block" one
    list per candidate cut (one value per step). The paper does not say whether the perturbed and the original
    outputs are compared at the perturbed step or at the end of the generation; this is the cheap, per-step reading
    (no generation is re-run from the perturbed step)."""
    stab = [x for x in (stability(d[p.fit_steps], p.stable_tol) for d in p.series("d_step")) if x is not None]
    curves, w = p.impact_curves, warm(p.steps)
    return {
        "theta": float(np.mean([x[0] for x in stab])) if stab else 0.0,
        "delta1": float(np.mean([x[1] for x in stab])) if stab else 0.0,
        "delta2": float(np.mean([x[2] for x in stab])) if stab else 0.0,
        "stable_step": [x[3] for x in stab],
        "blocks": p.cuts,
        "mu": p.mu,
        "sigma": p.sigma,
        "impact": {"step": mean(curves["step"][w:]) or 0.0,
                   "cfg": mean(curves["cfg"][w:]) or 0.0,
                   "block": {str(i): [v or 0.0 for v in curves[f"block:{i}"]] for i in p.cuts}},
    }


def adacache(p: Profiled) -> dict:
    """The self-attention probe distance (Kahatapitiya et al., "Adaptive Caching for Faster Video Generation with
    Diffusion Transformers", section 3.1) per step (mean / 10th / 50th / 90th percentile / max over blocks,
    streams and generations) and its mean per block, to place AdaCache's codebook thresholds."""
    attn_keys = sorted({k for r in p.measured for s in r for k in r[s] if k.startswith("attn:")},
                       key=lambda k: (int(k.split(":")[1]), k))
    per_step = {"mean": [], "p10": [], "p50": [], "p90": [], "max": []}
    for t in range(p.steps):
        v = [x for k in attn_keys for s in p.series(k) for x in [s[t]] if x is not None and math.isfinite(x)]
        for name, f in (("mean", np.mean), ("p10", lambda a: np.percentile(a, 10)),
                        ("p50", lambda a: np.percentile(a, 50)), ("p90", lambda a: np.percentile(a, 90)),
                        ("max", np.max)):
            per_step[name].append(float(f(v)) if v else None)
    modules = p.discovery.modules
    return {
        "metric": "relative L1 of each block's self-attention output vs the previous step",
        "sites": [{"block": int(k.split(":")[1]), "module": modules[s].path, "temporal": modules[s].temporal}
                  for k in attn_keys for s in p.attn if f"attn:{s.start}:{s.name}" == k],
        "per_step": per_step,
        "per_block": {k.split(":", 1)[1]: mean([x for s in p.series(k) for x in s]) for k in attn_keys},
    }


# policy name -> the rule deriving its section of the calibration file, in the file's order
RULES = {"teacache": teacache, "magcache": magcache, "mixcache": mixcache, "adacache": adacache}
