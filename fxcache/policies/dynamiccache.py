"""DynamicCache (FinegrainDynamicCache, liufeng 2024): a reconstruction, not a port. The paper's text is only its
result tables; no code or description of the rule exists.

The rule read here is TeaCache's accumulate-and-refresh (same author, same baselines, same VideoSys models, a
threshold in the name) driven by one of the paper's two indicators:

- "output" (DynamicCache-output, the paper's headline rows): the relative L1 change of the model output between
  consecutive steps. This step's output is unknown before it runs, so the change is estimated online: after each
  computed step, relL1 between the two latest computed outputs divided by the number of steps between them; that
  per-step estimate is added to the accumulator at every following step until it reaches `threshold`.
- "timestep" (DynamicCache-timestep): the relative L1 change of the timestep embedding block 0 reads, measured at
  every step as TeaCache does for CogVideoX and Wan.

Where this differs from `teacache` with the same indicator:

- The indicators are accumulated raw (`coefficients="identity"`). The paper's thresholds differ eightfold between
  its models at similar speed-ups (0.2-0.25 Open-Sora, 0.05-0.1 Open-Sora-Plan, 0.03-0.05 Latte), which fits a raw
  indicator tuned per model, not a rescaled one with shared thresholds as TeaCache's 0.1 / 0.2. "auto" still picks
  a polynomial fitted for the indicator (the `calibration` file, else a published one).
- `joint` (default on): one decision per step for all the streams of a generation, i.e. both CFG branches when the
  pipeline calls them separately (the runtime's joint decisions, `Policy.joint`): with "output", the accumulator
  adds the mean of the streams' estimates; with "timestep", the step's first call decides from its measurement. The paper's models batch
  CFG, so one decision there covers both halves, measured over both. Branches skipping on different steps leave
  one of them stale while the other is fresh, and guidance multiplies that difference (guidance 5: 4-5x).

Thresholds. The rule counts change, so a threshold buys about as many computed steps as it divides the
trajectory's total change into, whatever N: hence the paper's larger speed-ups at 150 steps. The published
thresholds are those of the paper's models and carry over only to models whose per-step change is alike. On the
reference model (bench/reference: a Wan-architecture DiT, flow matching, CFG 5) the model output changes by
0.005-0.01 per step through the middle of a 50-step trajectory and by 0.2-0.8 in its last two steps; the timestep
embedding by 0.015-0.03, rising to 0.1 at the end. Measured there (8 prompts x 2 seeds, PSNR mean / worst against
the uncached clips, computed steps per branch):

| preset | paper model (steps): threshold, speed-up | output, 50 / 30 steps | timestep, 50 / 30 steps |
|---|---|---|---|
| (default) | - | 0.02: 24.5/50, 35.2 dB; 18.5/30, 36.2 dB | 0.05: 23/50, 32.2 dB; 19/30, 33.6 dB |
| "latte" | Latte (50): 0.03, 1.70x | 19/50, 31.0 dB; 15.5/30, 31.9 dB | 32/50, 36.0 dB; 25/30, 38.6 dB |
| "latte-fast" (timestep) | Latte (50): 0.05, 2.32x | 12.5/50, 25.2 dB; 10.5/30, 25.0 dB | as the default |
| "open-sora-plan" (timestep) | Open-Sora-Plan (150): 0.05, 3.29x | as "latte-fast" | as the default |
| (none) | Open-Sora-Plan (150): 0.1, 4.62x | 7/50, 18.4 dB; 6/30, 17.7 dB | 13/50, 25.0 dB; 12/30, 26.7 dB |
| (none) | Open-Sora (30): 0.2 / 0.25, 1.75x / 2.03x | 30 steps: 4.5 / 4, 16.7 / 15.4 dB | 7 / 6, 21.4 / 20.8 dB |

Thresholds that leave the output unusable on the reference model are no default or preset; the 0.05 presets are
refused with the "output" indicator. Worst clips stay near 17-20 dB at 50 steps for every setting: one clip of the
reference set (seed 0) diverges from its uncached trajectory under any caching method (bench/results/quality.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import option_error
from .base import Param, non_negative
from ..metrics import REL_L1
from .budget import BudgetState, ErrorBudget
from .teacache import TeaCache, TeaState

# preset -> (threshold, indicators it is usable with on the reference model): the paper's settings (table above)
PRESETS = {"latte": (0.03, ("output", "timestep")), "latte-fast": (0.05, ("timestep",)),
           "open-sora-plan": (0.05, ("timestep",))}
DEFAULT_THRESHOLD = {"timestep": 0.05, "output": 0.02}
INDICATORS = ("timestep", "output")


@dataclass
class DynamicShared:
    """One generation's decision state, shared by its streams under `joint`."""

    budget: BudgetState = field(default_factory=ErrorBudget.new)
    estimates: dict = field(default_factory=dict)  # stream -> its latest per-step output change estimate


class DynamicCache(TeaCache):
    name = "dynamiccache"
    params = {
        **TeaCache.params,
        "indicator": Param("output", str, "what to measure: the model output's change (estimated from the last "
                           "two computed steps) or the timestep embedding's", lambda v: v in INDICATORS,
                           " | ".join(INDICATORS)),
        "threshold": Param(None, float, "accumulated change that triggers a computed step (None: 0.05 for "
                           "'timestep', 0.02 for 'output')", non_negative, ">= 0 or None", optional=True),
        "coefficients": Param("identity", (str, list, tuple), TeaCache.params["coefficients"].doc,
                              TeaCache.params["coefficients"].check, TeaCache.params["coefficients"].accepted),
        "preset": Param(None, str, "a published threshold by the paper's model (" + ", ".join(
            f"{k}={v[0]}" for k, v in PRESETS.items()) + ")", lambda v: v in PRESETS, " | ".join(PRESETS),
            optional=True),
        "joint": Param(True, bool, "one decision per step for all streams (both CFG branches)"),
    }

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if self.preset is not None:
            if options.get("threshold") is not None:
                raise option_error(f"fxcache: option 'preset'={self.preset!r} of policy 'dynamiccache' sets the "
                                   f"threshold; it cannot be combined with 'threshold'")
            threshold, usable = PRESETS[self.preset]
            if self.indicator not in usable:
                raise option_error(f"fxcache: option 'preset'={self.preset!r} (threshold {threshold}) of policy "
                                   f"'dynamiccache' is not offered with indicator={self.indicator!r}: it leaves "
                                   f"about 25 dB PSNR on the reference model; use preset 'latte' or a threshold")
            self.threshold = threshold
        elif self.threshold is None:
            self.threshold = DEFAULT_THRESHOLD[self.indicator]
        self.make_budget()

    def new_shared(self) -> DynamicShared:
        return DynamicShared()

    def estimate(self, call, state: TeaState) -> float | None:
        if not self.joint:
            return state.estimate
        if call.agreed is None and not call.shared.estimates:
            return None
        # The first call of the step decides from every stream's estimate; the others follow (`_skips`), where
        # they have an estimate of their own to skip with.
        if call.agreed is None:
            return sum(call.shared.estimates.values()) / len(call.shared.estimates)
        return state.estimate

    def budget_of(self, call, state: TeaState) -> BudgetState:
        return call.shared.budget if self.joint and self.indicator == "output" else state.budget

    def observe(self, call, state: TeaState, plan) -> None:
        super().observe(call, state, plan)
        if (self.indicator == "output" and self.joint and plan.label == "full"
                and (self.site, REL_L1) in call.measured and state.estimate is not None
                and math.isfinite(state.estimate)):
            call.shared.estimates[call.stream] = state.estimate
