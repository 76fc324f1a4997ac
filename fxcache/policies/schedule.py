"""The schedule: the rule every policy that decides from the step alone shares (FORA, Δ-DiT, TaylorSeer, T-GATE,
PAB, BlockDance, FasterCache). One step convention: `i`, the 0-based call index of the stream (`Call.index`).

A schedule says at which calls a cached value is *refreshed* (computed and stored): every call before `warmup`,
every call outside the timestep window (open interval, 0-1000 scale) or outside the step range [first, last), and
inside them the calls with (i - offset) % period == 0 (no period: never). The other calls may reuse. `due` works on
ints and on numpy arrays of per-sample indices alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .base import Param


@dataclass(frozen=True)
class Schedule:
    period: int | None = None
    offset: int = 0
    warmup: int = 0
    window: tuple | None = None  # (lo, hi) on the 0-1000 timestep scale: reuse only strictly inside
    steps: tuple = (0, math.inf)  # [first, last) of i: reuse only there

    def inside(self, i, t):
        """Whether call i at timestep t may reuse at all (warm-up done, inside the window and the step range)."""
        i = np.asarray(i)
        ok = (i >= max(self.warmup, self.steps[0])) & (i < self.steps[1])
        if self.window is not None:
            if t is None:
                ok = ok & False
            else:
                t = np.asarray(t)
                ok = ok & (self.window[0] < t) & (t < self.window[1])
        return ok if np.ndim(ok) else bool(ok)

    def due(self, i, t=None):
        """Whether call i at timestep t refreshes (computes); the others may reuse."""
        hit = False if self.period is None else (np.asarray(i) - self.offset) % self.period == 0
        out = ~np.asarray(self.inside(i, t)) | hit
        return out if np.ndim(out) else bool(out)


def window_ok(v) -> bool:
    return (isinstance(v, (list, tuple)) and len(v) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v) and v[0] < v[1])


def window_param(doc: str, default, optional: bool = False) -> Param:
    return Param(default, (list, tuple), doc + " (open interval on the 0-1000 timestep scale)", window_ok,
                 "(lo, hi) with lo < hi" + (", or None" if optional else ""), optional=optional)
