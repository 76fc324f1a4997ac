"""DBCache (cache-dit's Dual Block Cache, "FnBn"): the first Fn blocks always run and probe, the last Bn blocks
always run and correct, the middle is skipped while the probe moves little. FBCache is its F1B0 (fbcache.py).

Each call runs blocks [0, Fn) and takes the relative L1 distance of their residual to the one of the last
*computed* step. Below `threshold` (after `warmup_steps` computed steps, and within the limits on cached steps)
the middle blocks [Fn, L - Bn) are replaced by their cached residual; otherwise they run and both residuals are
cached. Blocks [L - Bn, L) run on every step. Nothing accumulates: the reference moves only on computed steps.
cache-dit's defaults: F8B0, threshold 0.08, 8 warm-up steps, no limit on cached steps. Fn is clamped so that at
least one block is left to skip (the reference model has 6 blocks: F8 becomes F5). `forecast="taylor"` forecasts
the middle residual instead of reusing it: cache-dit's DBCache with its TaylorSeer calibrator. Where block Fn or
L - Bn is not a valid cut (Latte's blocks come in spatial+temporal pairs), the nearest valid cut is used.

The probe's likely continuation (`Plan.then`, run with it as one variant by the runtime) is "skip", unless the
limits forbid it: a wrong "skip" guess wastes only the middle, a wrong "full" guess the whole stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..metrics import REL_L1
from ..plan import Plan, Stop, residual
from .base import Param, Policy, Unsupported, non_negative, positive
from .budget import LIMITS, BudgetState, ErrorBudget, warmup_param
from .forecast import StepForecast


@dataclass
class ProbeState:
    budget: BudgetState = field(default_factory=ErrorBudget.new)
    computed: list = field(default_factory=list)  # steps whose middle residual was written, newest first


class DBCache(StepForecast, Policy):
    name = "dbcache"
    params = {
        **StepForecast.PARAMS,
        "Fn": Param(8, int, "front blocks that always run; their residual is the probe", positive, ">= 1"),
        "Bn": Param(0, int, "back blocks that always run", non_negative, ">= 0"),
        "threshold": Param(0.08, float, "relative L1 of the front residual below which the middle is reused",
                           non_negative, ">= 0", aliases=("residual_diff_threshold",)),
        "warmup_steps": warmup_param(8),
        **LIMITS,
        "joint": Param(False, bool, "one decision per step for every stream (both CFG branches): the first call "
                       "of the step decides, the others follow"),
    }

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.budget = ErrorBudget(self.threshold, accumulate=False, warmup_steps=self.warmup_steps,
                                  max_consecutive_skips=self.max_consecutive_skips,
                                  max_cached_steps=self.max_cached_steps)

    def cuts(self, d) -> tuple[int | None, int | None]:
        """(front, back): the probe's end and the start of the back blocks."""
        n = d.num_units
        back = d.snap(n - min(self.Bn, n - 1), lo=2)
        front = d.snap(min(self.Fn, n - 1), lo=1, hi=back - 1) if back is not None else None
        return front, back

    def bind(self, d) -> None:
        front, back = self.cuts(d)
        if front is None or front < 1 or not (d.residual_ok(0, front) and d.residual_ok(front, back)):
            raise Unsupported(f"no valid cut between front and back blocks (F{self.Fn}B{self.Bn}, "
                              f"{d.num_units} blocks)")
        self.head, self.middle = residual(0, front), residual(front, back)
        self.forecastable = frozenset({self.middle})
        self.cut = Stop("cut", front)
        both = frozenset({self.head, self.middle})
        self.write_all = Plan(write=both, label="full")
        self.full_continuation = Plan(write=both, start=self.cut, label="full")

    def new_state(self) -> ProbeState:
        return ProbeState()

    def plan(self, call, state: ProbeState) -> Plan:
        if self.budget.forced(call) or not call.cached(self.middle):
            self.budget.computed(state.budget)
            return self.computed(call, state, self.write_all)
        skips = self.budget.can_skip_one(state.budget)
        guess = (self._skip(call, state) if skips else self.computed_plan(self.full_continuation))
        return Plan(measure=frozenset({(self.head, REL_L1)}), stop=self.cut, label="probe", then=guess)

    def decide(self, call, state: ProbeState) -> Plan:
        d = call.measured[(self.head, REL_L1)]
        if self.joint and call.agreed is not None:  # the step's first call decided for every stream
            d = 0.0 if call.agreed == "skip" else float("inf")
        if self.budget.decide(state.budget, d)[0]:
            return self._skip(call, state)
        return self.computed(call, state, self.full_continuation)

    def _skip(self, call, state: ProbeState) -> Plan:
        return self.skipped(call, state, self.forecastable, start=self.cut, label="skip")
