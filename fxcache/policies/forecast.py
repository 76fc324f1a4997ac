"""Forecast weights: a forecast value is a weighted sum of a site's last computed values (slot 0 the newest), so
every forecaster is a function from the steps those values were computed at to one weight per slot. The variant
computes the sum inside the compiled graph; the weights are its input, so they change per step without a
recompile.

- FasterCache's linear extrapolation `F + w (F - F_old)`: weights (1 + w, -w).
- TaylorSeer's expansion of order m: the factors F^(j+1) = (F^(j)_new - F^(j)_old) / (s_new - s_old) are built at
  every computed step from the last computed step's factors (divided differences over the computed steps, as
  TaylorSeer's `taylor_utils` and diffusers' `TaylorSeerCacheHook` do), and the value at step s is
  sum_j F^(j) (s - s_last)^j / j!. F^(j) at the newest computed step depends only on the last j + 1 computed
  values, so replaying the recursion over them gives the weights exactly.
- FoCa (Zheng et al. 2025, "Forecast then Calibrate"), as cache-dit's `FoCaCalibrator` computes it: a BDF2
  predictor with a Heun corrector anchored at the last computed step. With A0, A1 the last two computed values
  and F_k, F_km1 the site's last two values *whether computed or forecast* (its window, Plan.window), e steps
  after A0: F = A0 + h ((A0 - A1) + (F_k - F_km1)), h = e / 2 up to e = 3 and 4.5 / e beyond (the Heun step at
  horizon 3 blended towards A0 by 3 / e). The window makes it recursive, so its weights are not a fixed function of
  the computed values: the variant stores each forecast into the window.
"""

from __future__ import annotations

import math
from dataclasses import replace

from ..plan import Plan, window_of
from .base import Param

FORECASTS = ("reuse", "taylor", "foca")


def linear(w: float) -> tuple[float, float]:
    return (1.0 + w, -w)


def taylor(computed: list[int], step: int, order: int) -> tuple[float, ...]:
    """Weights over the values computed at `computed` (newest first, at most order + 1 used) for step `step`."""
    chron = list(reversed(computed[: order + 1]))
    n = len(chron)
    factors: list[list[float]] = []  # factor j as weights over chron positions
    for idx, s in enumerate(chron):
        new = [[1.0 if i == idx else 0.0 for i in range(n)]]
        if idx > 0:
            delta = s - chron[idx - 1]
            for j in range(min(order, len(factors))):
                new.append([(a - b) / delta for a, b in zip(new[j], factors[j])])
        factors = new
    offset = step - chron[-1]
    weights = [sum(f[i] * offset ** j / math.factorial(j) for j, f in enumerate(factors)) for i in range(n)]
    return tuple(reversed(weights))  # slot 0 = newest


def foca(elapsed: int) -> tuple[float, float, float, float]:
    """Weights over (A0, A1, F_k, F_km1) for a step `elapsed` steps after the last computed one."""
    h = elapsed / 2.0 if elapsed <= 3 else 4.5 / elapsed
    return (1.0 + h, -h, h, -h)


def _without_window(site):
    """A site without its window name (the window of a site is forecast data of that site)."""
    return type(site)(site.kind, site.start, site.stop) if site.name == "window" else site


class StepForecast:
    """Mixin for the step-level policies (fbcache, dbcache, teacache, dynamiccache, magcache): option `forecast`
    says what a skipped step adds to its input, the last computed residual ("reuse", the published methods) or its
    Taylor forecast of order `order` over the last computed steps ("taylor": TaylorSeer's expansion applied to the
    skipped blocks' residual, the idea of cache-dit's DBCache + TaylorSeer calibrator), or FoCa's
    predictor-corrector ("foca": cache-dit's FoCa calibrator; `order` does not apply). The policy's state keeps
    `computed`: the steps whose residual it wrote, newest first (the forecast's abscissae); `forecastable` (set in
    bind) are the sites a skipped step may forecast. A computed plan goes through `computed(...)`, which records the
    step (and, for FoCa, stores the site's window too)."""

    PARAMS = {
        "forecast": Param("reuse", str, "what a skipped step adds: the last computed residual or its forecast",
                          lambda v: v in FORECASTS, " | ".join(FORECASTS)),
        "order": Param(1, int, "order of the 'taylor' forecast", lambda v: 1 <= v <= 4, "1..4"),
    }
    forecastable: frozenset = frozenset()

    def depth(self, site) -> int:
        """Slots kept: more only for what a forecast reads (a probe site, e.g. FBCache's first block, needs one)."""
        if _without_window(site) not in self.forecastable:
            return 1
        return {"taylor": self.order + 1, "foca": 2}.get(self.forecast, 1)

    def computed(self, call, state, plan: Plan) -> Plan:
        """`plan`, a computed step's, after recording the step; under FoCa it also writes the window of each
        forecastable site it writes."""
        state.computed = [call.step, *state.computed][: max(self.order + 1, 2 if self.forecast == "foca" else 1)]
        return self.computed_plan(plan)

    def computed_plan(self, plan: Plan) -> Plan:
        """What `computed` returns, without recording anything (a guess of the continuation: Plan.then)."""
        if self.forecast != "foca":
            return plan
        extra = frozenset(window_of(s) for s in plan.write & self.forecastable)
        return replace(plan, write=plan.write | extra) if extra - plan.write else plan

    def skipped(self, call, state, sites: frozenset, **plan) -> Plan:
        if self.forecast == "reuse" or len(state.computed) < 2:
            return Plan(reuse=sites, **plan)
        if self.forecast == "foca":  # the forecast goes into the window: the next one builds on it
            return Plan(forecast=sites, coeffs=foca(call.step - state.computed[0]), window=2,
                        write=frozenset(window_of(s) for s in sites), **plan)
        return Plan(forecast=sites, coeffs=taylor(state.computed, call.step, self.order), **plan)
