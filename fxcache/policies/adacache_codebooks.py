"""AdaCache's codebooks (distance thresholds -> rates), MoReg's step window, and their rescaling to a run's step
count (policies/adacache.py; the rules in docs/methods.md, "AdaCache")."""

from __future__ import annotations

import math

from .base import real

CODEBOOKS = {  # name -> (step count the preset was tuned for, {threshold: rate})
    "100": (100, {0.03: 12, 0.05: 10, 0.07: 8, 0.09: 6, 0.11: 4, 1.00: 3}),
    "30-fast": (30, {0.08: 6, 0.16: 5, 0.24: 4, 0.32: 3, 0.40: 2, 1.00: 1}),
    "30-slow": (30, {0.08: 3, 0.16: 2, 0.24: 1, 0.32: 1, 0.40: 1, 1.00: 1}),
}
MOREG_STEPS = {30: (4, 26), 100: (10, 90)}
PROBE_SITES = ("t-attn", "s-attn", "ca-mlp")
AUTO_100_FROM = 55  # N from which "auto" takes the 100-step preset (about sqrt(30 * 100))
OFFICIAL_BLOCK, OFFICIAL_DEPTH = 13, 28  # cache_loc=[13] among Open-Sora STDiT3's 28 temporal blocks


def half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def codebook_ok(v) -> bool:
    if isinstance(v, str):
        return v == "auto" or v in CODEBOOKS
    return (isinstance(v, dict) and len(v) > 0
            and all(real(t) and math.isfinite(t) and t > 0 for t in v)
            and all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in v.values()))


def index_ok(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def block_ok(v) -> bool:
    if isinstance(v, str):
        return v == "auto"
    if isinstance(v, (list, tuple)):
        return len(v) > 0 and all(index_ok(x) for x in v)
    return index_ok(v)


def steps_ok(v) -> bool:
    if isinstance(v, str):
        return v == "auto"
    return len(v) == 2 and all(index_ok(x) and x >= 1 for x in v) and v[0] <= v[1]


def strides_ok(v) -> bool:
    return len(v) > 0 and all(index_ok(x) and x >= 1 for x in v)


def hyp_ok(v) -> bool:
    return (len(v) in (3, 4) and all(real(x) and math.isfinite(x) for x in v) and v[0] > 0 and v[2] > 0)


def lookup(codebook: list[tuple[float, int]], d: float) -> int:
    """The rate of the first threshold (ascending) with d < threshold, else the last rate; NaN: 1."""
    if not math.isfinite(d):
        return 1
    for threshold, rate in codebook:
        if d < threshold:
            return rate
    return codebook[-1][1]


def codebook_for(codebook, n: int | None) -> list[tuple[float, int]]:
    """The codebook as ascending (threshold, rate) pairs for a run of `n` steps (None: unknown): an explicit mapping
    as given, a preset rescaled from its step count P to n (thresholds times P / n, rates times n / P rounded
    down, at least 1)."""
    if isinstance(codebook, dict):
        return sorted((float(t), int(r)) for t, r in codebook.items())
    name = codebook
    if name == "auto":
        name = "100" if n is not None and n >= AUTO_100_FROM else "30-slow"
    p, preset = CODEBOOKS[name]
    if n is None or n == p:
        return sorted(preset.items())
    return sorted((t * p / n, max(1, r * n // p)) for t, r in preset.items())


def moreg_window(codebook, moreg_steps, n: int | None) -> tuple[int, int]:
    """MoReg's (first, last) 1-based steps: explicit, or the official window of the preset's step count rescaled."""
    if moreg_steps != "auto":
        return int(moreg_steps[0]), int(moreg_steps[1])
    if isinstance(codebook, dict) or codebook == "auto":
        p = 100 if n is not None and n >= AUTO_100_FROM else 30
    else:
        p = CODEBOOKS[codebook][0]
    lo, hi = MOREG_STEPS[p]
    return (lo, hi) if n is None else (max(1, half_up(lo * n / p)), half_up(hi * n / p))
