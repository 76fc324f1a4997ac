"""DynamicCache (FinegrainDynamicCache, liufeng 2024): a reconstruction, not a port. The paper's text is only its
result tables (shared/seeds/000); no code or description of the rule exists (ALGORITHMS.md section 7).

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
  pipeline calls them separately; the accumulator adds the mean of the streams' estimates. The paper's models batch
  CFG, so one decision there covers both halves, measured over both. Branches skipping on different steps leave
  one of them stale while the other is fresh, and guidance multiplies that difference (guidance 5: 4-5x).

Thresholds. The rule counts change, so a threshold buys as many computed steps as the trajectory's total change
divides into: roughly N-independent, hence the paper's larger speed-ups at 150 steps. The published thresholds are
those of the paper's models and transfer only between models whose per-step change is alike:

| preset | paper model (steps) | threshold | paper speed-up |
|---|---|---|---|
| (not a preset) | Open-Sora 1.2 (30) | 0.2 / 0.25 | 1.75x / 2.03x |
| "open-sora-plan" | Open-Sora-Plan (150) | 0.05 | 3.29x |
| (not a preset) | Open-Sora-Plan (150) | 0.1 | 4.62x |
| "latte" | Latte (50) | 0.03 | 1.70x |
| "latte-fast" | Latte (50) | 0.05 | 2.32x |

On the reference model (bench/reference, a Wan-architecture DiT, flow matching) the model output changes by
0.005-0.01 per step through the middle 80% of a 50-step trajectory and by 0.2-0.7 in the last two steps; the
timestep embedding by 0.015-0.03, rising to 0.1. At Open-Sora's 0.2 the output rule skips 20-30 steps in a row
(9-15 dB PSNR); such thresholds are kept out of the defaults and presets. Defaults: 0.05 for "timestep" and 0.02
for "output" (about 2x at 50 steps on the reference model, >= 30 dB mean PSNR).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import option_error
from .base import Param, non_negative
from .teacache import TeaCache, TeaState

# preset -> threshold, the paper's settings that stay usable on the reference model (table above)
PRESETS = {"latte": 0.03, "latte-fast": 0.05, "open-sora-plan": 0.05}
DEFAULT_THRESHOLD = {"timestep": 0.05, "output": 0.02}
INDICATORS = ("timestep", "output")


@dataclass
class DynamicShared:
    """One generation's decision state, shared by its streams (executor.Call.shared) under `joint`."""

    step: int = 0  # the step the current decision is for
    compute: bool = True
    acc: float = 0.0
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
            f"{k}={v}" for k, v in PRESETS.items()) + ")", lambda v: v in PRESETS, " | ".join(PRESETS),
            optional=True),
        "joint": Param(True, bool, "one decision per step for all streams (both CFG branches)"),
    }

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if self.preset is not None:
            if options.get("threshold") is not None:
                raise option_error(f"fxcache: option 'preset'={self.preset!r} of policy 'dynamiccache' sets the "
                                   f"threshold; it cannot be combined with 'threshold'")
            self.threshold = PRESETS[self.preset]
        elif self.threshold is None:
            self.threshold = DEFAULT_THRESHOLD[self.indicator]

    def _shared(self, call) -> DynamicShared:
        return call.shared.setdefault(self.name, DynamicShared())

    def plan(self, call, state: TeaState):
        if self.indicator != "output" or not self.joint:
            return super().plan(call, state)
        sh = self._shared(call)
        if sh.step != call.step:  # the first stream of this step decides for all of them
            sh.step = call.step
            if self._forced(call) or not sh.estimates:
                sh.acc, sh.compute = 0.0, True
            else:
                sh.acc += sum(sh.estimates.values()) / len(sh.estimates)
                sh.compute = not sh.acc < self.threshold  # NaN computes
                if sh.compute:
                    sh.acc = 0.0
        if self._forced(call) or not state.has_ref:  # also a stream whose cache the runtime cleared
            first, state.has_ref = not state.has_ref, True
            return self._computed(call, state, first=first)
        if sh.compute or state.estimate is None:
            return self._computed(call, state)
        return self.skipped(call, state, frozenset({self.stack}), label="skip")

    def observe(self, call, state: TeaState, measured: dict, plan) -> None:
        super().observe(call, state, measured, plan)
        if (self.indicator == "output" and self.joint and plan.label == "full"
                and (self.site, "rel_l1") in measured and state.estimate is not None
                and math.isfinite(state.estimate)):
            self._shared(call).estimates[call.stream] = state.estimate
