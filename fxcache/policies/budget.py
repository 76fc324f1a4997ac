"""The error budget: the rule every step-skipping policy shares (TeaCache, DynamicCache, MagCache, FBCache,
DBCache). Each step brings an error estimate e (a distance, a rescaled distance, a magnitude error); the budget
adds it to an accumulator (or, without accumulation, takes it alone) and the step is cached while the result
stays below `threshold` and the limits on cached steps allow it; a computed step clears the accumulator. Steps up
to `warmup_steps` (1-based) are always computed, and the last one where the policy forces it.

Everything is held per sample (numpy arrays over the batch dimension) so that a batch can decide per sample; a
policy that decides for the whole batch passes one value and reads element 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Param, non_negative, positive

# One name per meaning across the budget policies; the names papers and peers use are accepted as aliases.
LIMITS = {
    "max_consecutive_skips": Param(None, int, "at most this many cached steps in a row (None: unlimited)", positive,
                                   ">= 1 or None", aliases=("max_continuous_cached_steps", "max_skips")),
    "max_cached_steps": Param(None, int, "at most this many cached steps per generation (None: unlimited)",
                              positive, ">= 1 or None"),
}


def warmup_param(default: int, doc: str = "steps always computed at the start of each stream") -> Param:
    return Param(default, int, doc, non_negative, ">= 0", aliases=("warm_up",))


@dataclass
class BudgetState:
    acc: np.ndarray  # the accumulated error since the last computed step
    consecutive: np.ndarray  # cached steps in a row
    cached: np.ndarray  # cached steps in this generation


class ErrorBudget:
    def __init__(self, threshold: float, *, accumulate: bool = True, warmup_steps: int = 0,
                 max_consecutive_skips: int | None = None, max_cached_steps: int | None = None,
                 force_last: bool = False) -> None:
        self.threshold, self.accumulate, self.warmup_steps = threshold, accumulate, warmup_steps
        self.max_consecutive, self.max_cached, self.force_last = max_consecutive_skips, max_cached_steps, force_last

    @staticmethod
    def new(batch: int = 1) -> BudgetState:
        return BudgetState(np.zeros(batch), np.zeros(batch, dtype=np.int64), np.zeros(batch, dtype=np.int64))

    def forced(self, call) -> bool:
        """This step is computed whatever the error: warm-up, or the last step where that is forced."""
        return call.step <= self.warmup_steps or (self.force_last and call.is_last)

    def can_skip_one(self, s: BudgetState, i: int = 0) -> bool:
        """`can_skip` for sample `i` alone, in plain Python (the per-call path of a batch that decides as one)."""
        return (self.threshold > 0 and (self.max_consecutive is None or int(s.consecutive[i]) < self.max_consecutive)
                and (self.max_cached is None or int(s.cached[i]) < self.max_cached))

    def can_skip(self, s: BudgetState) -> np.ndarray:
        """The limits allow one more cached step (the error aside); a threshold of 0 caches nothing."""
        ok = np.full(s.acc.shape, self.threshold > 0)
        if self.max_consecutive is not None:
            ok &= s.consecutive < self.max_consecutive
        if self.max_cached is not None:
            ok &= s.cached < self.max_cached
        return ok

    def decide(self, s: BudgetState, error) -> np.ndarray:
        """Whether each sample caches this step, given its error; updates the state. NaN computes."""
        if s.acc.shape[0] == 1 and isinstance(error, float):  # one sample, one error: the same rule in plain Python
            acc = float(s.acc[0]) + error if self.accumulate else error
            skip = acc < self.threshold and self.can_skip_one(s)
            s.acc = np.array([acc if skip else 0.0])
            s.consecutive = np.array([int(s.consecutive[0]) + 1 if skip else 0], dtype=np.int64)
            s.cached = np.array([int(s.cached[0]) + skip], dtype=np.int64)
            return np.array([skip])
        e = np.broadcast_to(np.asarray(error, dtype=np.float64), s.acc.shape)
        acc = s.acc + e if self.accumulate else e
        skip = (acc < self.threshold) & self.can_skip(s)
        s.acc = np.where(skip, acc, 0.0)
        s.consecutive = np.where(skip, s.consecutive + 1, 0)
        s.cached = s.cached + skip
        return skip

    def computed(self, s: BudgetState) -> None:
        """A step computed without asking (warm-up, nothing cached yet): the accumulator starts over."""
        s.acc = np.zeros_like(s.acc)
        s.consecutive = np.zeros_like(s.consecutive)
