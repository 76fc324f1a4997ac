"""DBCache (cache-dit's Dual Block Cache, "FnBn"): the first Fn blocks always run and probe, the last Bn blocks
always run and correct, the middle is skipped while the probe moves little.

Each call runs blocks [0, Fn) and takes the relative L1 distance of their residual to the one of the last
*computed* step. Below `threshold` (and after `warmup_steps` computed steps) the middle blocks [Fn, L - Bn) are
replaced by their cached residual; otherwise they run and both residuals are cached. Blocks [L - Bn, L) run on
every step. cache-dit's defaults: F8B0, threshold 0.08, 8 warm-up steps, no limit on cached steps. Fn is clamped
so that at least one block is left to skip (the reference model has 6 blocks: F8 becomes F5). FBCache is F1B0
with no warm-up. `forecast="taylor"` forecasts the middle residual instead of reusing it: cache-dit's DBCache with
its TaylorSeer calibrator. Where block Fn or L - Bn is not a valid cut (Latte's blocks come in spatial+temporal pairs),
the nearest valid cut is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..metrics import REL_L1
from ..plan import Plan, Stop, residual
from .base import Param, Policy, Unsupported, non_negative, positive
from .forecast import StepForecast


@dataclass
class DBState:
    warm: int = 0  # computed steps so far (warm-up)
    skips: int = 0
    cached: int = 0
    computed: list = field(default_factory=list)  # steps whose middle residual was written, newest first


class DBCache(StepForecast, Policy):
    name = "dbcache"
    params = {
        **StepForecast.PARAMS,
        "Fn": Param(8, int, "front blocks that always run; their residual is the probe", positive, ">= 1"),
        "Bn": Param(0, int, "back blocks that always run", non_negative, ">= 0"),
        "threshold": Param(0.08, float, "relative L1 of the front residual below which the middle is reused",
                           non_negative, ">= 0"),
        "warmup_steps": Param(8, int, "computed steps before caching starts", non_negative, ">= 0"),
        "max_cached_steps": Param(None, int, "at most this many cached steps per generation (None: unlimited)",
                                  positive, ">= 1 or None"),
        "max_continuous_cached_steps": Param(None, int, "at most this many cached steps in a row (None: unlimited)",
                                             positive, ">= 1 or None"),
    }

    def bind(self, d) -> None:
        n = d.num_units
        back = d.snap(n - min(self.Bn, n - 1), lo=2)
        front = d.snap(min(self.Fn, n - 1), lo=1, hi=back - 1) if back is not None else None
        if front is None or front < 1 or not (d.residual_ok(0, front) and d.residual_ok(front, back)):
            raise Unsupported(f"no valid cut between front and back blocks (F{self.Fn}B{self.Bn}, {n} blocks)")
        self.front, self.back = front, back
        self.head, self.middle = residual(0, front), residual(front, back)
        self.forecastable = frozenset({self.middle})
        self.cut = Stop("cut", front)
        self.write_all = Plan(write=frozenset({self.head, self.middle}), label="full")

    def new_state(self) -> DBState:
        return DBState()

    def plan(self, call, state: DBState) -> Plan:
        if state.warm < max(1, self.warmup_steps):
            state.warm += 1
            return self.computed(call, state, self.write_all)
        # The guess: "skip" (a wrong one wastes only the back blocks), unless the step cannot skip.
        certain = self.threshold <= 0 or not (
            (self.max_continuous_cached_steps is None or state.skips < self.max_continuous_cached_steps)
            and (self.max_cached_steps is None or state.cached < self.max_cached_steps))
        guess = (self.computed_plan(Plan(write=frozenset({self.head, self.middle}), start=self.cut, label="full"))
                 if certain else self.skipped(call, state, frozenset({self.middle}), start=self.cut, label="skip"))
        return Plan(measure=frozenset({(self.head, REL_L1)}), stop=self.cut, label="probe", then=guess)

    def decide(self, call, state: DBState, measured: dict) -> Plan:
        d = measured[(self.head, REL_L1)]
        ok = ((self.max_continuous_cached_steps is None or state.skips < self.max_continuous_cached_steps)
              and (self.max_cached_steps is None or state.cached < self.max_cached_steps))
        if d < self.threshold and ok:
            state.skips += 1
            state.cached += 1
            return self.skipped(call, state, frozenset({self.middle}), start=self.cut, label="skip")
        state.skips = 0
        state.warm += 1
        return self.computed(call, state, Plan(write=frozenset({self.head, self.middle}), start=self.cut,
                                               label="full"))
