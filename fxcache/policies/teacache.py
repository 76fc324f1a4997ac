"""TeaCache (ali-vilab/TeaCache); DynamicCache (FinegrainDynamicCache, reconstructed) builds on it (dynamiccache.py).

Accumulate-and-refresh: each step the relative L1 change of an indicator since the previous step is rescaled by
a polynomial and added to an accumulator; while it stays below `threshold` the whole block stack is skipped and the
last computed residual is added instead; when it crosses, the step is computed and the accumulator cleared. The
first step is always computed, and the last one when `num_steps` is known.

Indicators: "modulated_input" (default; block 0's norm(h)*(1+scale)+shift), "timestep" (the timestep embedding
block 0 reads; what TeaCache uses for CogVideoX and Wan), "output" (DynamicCache-output, a reconstruction: the
per-step relative change between the two latest computed outputs, accumulated until the threshold).
Coefficients "auto", in order of precedence: the polynomial fitted for the chosen indicator in the `calibration`
file (`python -m fxcache.profile`, fitted on this model), else the published polynomial of the model family when it
was fitted for the chosen indicator, else the identity (the published ones were fitted on the papers' models and
indicators only). An explicit list (or "identity") always wins over both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..families import family
from ..metrics import REL_L1
from ..plan import Plan, Site, Stop, residual
from .base import Param, Policy, Unsupported, finite_reals, non_negative
from .budget import LIMITS, BudgetState, ErrorBudget, warmup_param
from .forecast import StepForecast

# (coefficients c4..c0, indicator they were fitted for), from TeaCache's repository.
COEFFICIENTS = {
    "latte": ([-2.46434137e3, 3.08044764e2, 8.07447667e1, -4.11385132, 1.11001402e-1], "modulated_input"),
    "cogvideox-2b": ([-3.10658903e1, 2.54732368e1, -5.92380459, 1.75769064, -3.61568434e-3], "timestep"),
    "cogvideox-5b": ([-1.53880483e3, 8.43202495e2, -1.34363087e2, 7.97131516, -5.23162339e-2], "timestep"),
    "hunyuanvideo": ([7.33226126e2, -4.01131952e2, 6.75869174e1, -3.14987800, 9.61237896e-2], "modulated_input"),
    "flux": ([4.98651651e2, -2.83781631e2, 5.58554382e1, -3.82021401, 2.64230861e-1], "modulated_input"),
    "mochi": ([-3.51241319e3, 8.11675948e2, -6.09400215e1, 2.42429681, 3.05291719e-3], "modulated_input"),
    "ltx": ([2.14700694e1, -1.28016453e1, 2.31279151, 7.92487521e-1, 9.69274326e-3], "modulated_input"),
    "wan": ([2.39676752e3, -1.31110545e3, 2.01331979e2, -8.29855975, 1.37887774e-1], "timestep"),
}
INDICATORS = ("modulated_input", "timestep", "output")


def _coefficients_ok(v) -> bool:
    return v in ("auto", "identity") if isinstance(v, str) else finite_reals(v)


@dataclass
class TeaState:
    budget: BudgetState = field(default_factory=ErrorBudget.new)
    estimate: float | None = None  # "output" indicator: last measured per-step change
    previous_computed: int = 0
    computed: list = field(default_factory=list)  # steps whose stack residual was written, newest first


class TeaCache(StepForecast, Policy):
    name = "teacache"
    params = {
        **StepForecast.PARAMS,
        "threshold": Param(0.1, float, "accumulated rescaled change that triggers a computed step (paper: 0.1 "
                           "slow, 0.2 fast)", non_negative, ">= 0", aliases=("rel_l1_thresh",)),
        "indicator": Param("modulated_input", str, "what to measure", lambda v: v in INDICATORS,
                           " | ".join(INDICATORS)),
        "coefficients": Param("auto", (str, list, tuple), "rescaling polynomial, highest degree first",
                              _coefficients_ok, "'auto', 'identity' or a non-empty list of finite floats"),
        "warmup_steps": warmup_param(1, "steps always computed at the start (at least the first)"),
        **LIMITS,
    }

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.make_budget()

    def make_budget(self) -> None:
        self.budget = ErrorBudget(self.threshold, warmup_steps=max(1, self.warmup_steps), force_last=True,
                                  max_consecutive_skips=self.max_consecutive_skips,
                                  max_cached_steps=self.max_cached_steps)

    def bind(self, d) -> None:
        self.stack = residual(0, d.num_units)
        self.forecastable = frozenset({self.stack})
        if not d.residual_ok(0, d.num_units):
            raise Unsupported("the block stack's output does not match its input")
        if self.indicator != "output":
            if self.indicator not in d.indicators:
                raise Unsupported(f"no {self.indicator} indicator found in block 0")
            self.site = Site("indicator", name=self.indicator)
            self.stop = Stop("indicator", name=self.indicator)
        else:
            self.site = Site("output")
        fam = family(d)
        fitted = self.calibration.section("teacache").get(self.indicator) if self.calibration is not None else None
        if self.coefficients == "auto" and fitted:
            self.poly = np.poly1d(list(fitted))
        elif self.coefficients == "auto":
            coeffs, fitted_for = COEFFICIENTS.get(fam, ([1.0, 0.0], None))
            self.poly = np.poly1d(coeffs if fitted_for == self.indicator else [1.0, 0.0])
        elif self.coefficients == "identity":
            self.poly = np.poly1d([1.0, 0.0])
        else:
            self.poly = np.poly1d(list(self.coefficients))
        self.family = fam
        self.compute = Plan(write=frozenset({self.stack, self.site}), label="full")
        self.compute_measured = Plan(write=self.compute.write, measure=frozenset({(self.site, REL_L1)}),
                                     label="full")
        if self.indicator != "output":
            self.full_continuation = Plan(write=frozenset({self.stack}), start=self.stop, label="full")

    def new_state(self) -> TeaState:
        return TeaState()

    def plan(self, call, state: TeaState) -> Plan:
        if self.budget.forced(call) or not call.cached(self.stack):  # also after the runtime dropped a cache
            self.budget.computed(state.budget)
            return self._computed(call, state)
        if self.indicator == "output":
            estimate = self.estimate(call, state)
            if estimate is None:  # no two computed outputs yet: nothing to extrapolate the change from
                return self._computed(call, state)
            if self._skips(call, state, estimate):
                return self.skipped(call, state, self.forecastable, label="skip")
            return self._computed(call, state)
        guess = (self._skip(call, state) if self.budget.can_skip_one(state.budget)
                 else self.computed_plan(self.full_continuation))
        return Plan(write=frozenset({self.site}), measure=frozenset({(self.site, REL_L1)}), stop=self.stop,
                    label="probe", then=guess)

    def estimate(self, call, state: TeaState) -> float | None:
        """The "output" indicator's change estimate for this step."""
        return state.estimate

    def budget_of(self, call, state: TeaState) -> BudgetState:
        return state.budget

    def _skips(self, call, state: TeaState, error: float) -> bool:
        """Whether this step is cached: the budget's decision, or the step's first call's under `joint`."""
        if self.joint and call.agreed is not None:
            return call.agreed == "skip"
        return bool(self.budget.decide(self.budget_of(call, state), error)[0])

    def _computed(self, call, state: TeaState) -> Plan:
        plan = self.compute_measured if self.indicator == "output" and call.cached(self.site) else self.compute
        return self.computed(call, state, plan)

    def _skip(self, call, state: TeaState) -> Plan:
        return self.skipped(call, state, self.forecastable, start=self.stop, label="skip")

    def decide(self, call, state: TeaState) -> Plan:
        if self._skips(call, state, float(self.poly(call.measured[(self.site, REL_L1)]))):
            return self._skip(call, state)
        return self.computed(call, state, self.full_continuation)

    def observe(self, call, state: TeaState, plan: Plan) -> None:
        if plan.label != "full":
            return
        if self.indicator == "output" and (self.site, REL_L1) in call.measured:
            gap = max(1, call.step - state.previous_computed)
            state.estimate = float(self.poly(call.measured[(self.site, REL_L1)] / gap))
        state.previous_computed = call.step
