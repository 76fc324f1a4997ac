"""EasyCache (Zhou et al., "Less is Enough: Training-Free Video Diffusion Acceleration via Runtime-Adaptive
Caching", arXiv 2507.02860), after its official code (H-EmbodVis/EasyCache, `EasyCache4Wan2.1/easycache_generate.py`,
`easycache_forward`).

A skipped step runs nothing of the model: its output is the latent input plus the transformation vector
Delta = v - x of the last computed step (v the model output, x its latent input). The rate k = mean|v_t - v_f| /
mean|x_t - x_f| is measured at each computed step t against the previous computed step f. At each later step the
probe measures the input's change since the previous step (computed or skipped), and the policy adds
eps = k * mean|x_t - x_prev| / mean|v_f| to an accumulator; the step is skipped while the accumulator stays below
`threshold` (tau), else computed and the accumulator cleared. The first `warmup_steps` (R) steps and the last are
computed. Defaults are the official Wan2.1 script's: tau 0.05, R 10. No limit on skips in a row, no extrapolation.

CFG: with `joint` (default), the first call of a step (cond, in diffusers' and the official order) decides, and
the other branch follows with its own Delta; only the deciding branch measures and updates k, the accumulator and
the stored inputs (the official code's uncond call, too, only follows and keeps its own Delta).

Where the engine differs from the official code:
- The step index is this stream's call count and N the `num_steps` option: without it the last step is not
  forced (the official code knows N).
- Each request of a batch decides alone (per_sample, the engine default): its norms are means over its own rows.
  The official code pools them over the batch, as per_sample=False does. A batched-CFG request's norms pool its
  uncond and cond rows; the official Wan code calls them apart (measured on cond only).
- The probe is a variant of its own (one more graph call per step after the warm-up): a continuation that runs
  nothing of the model cannot be fused with it.
- Only for models whose one output has the latent input's shape (no learned-sigma channels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .. import derived
from ..metrics import ABS_MEAN, L1_MEAN
from ..plan import DELTA, OUTPUT, Plan, Stop
from .base import Param, Policy, Unsupported, non_negative
from .budget import BudgetState, ErrorBudget


@dataclass
class EasyState:
    budget: BudgetState = field(default_factory=ErrorBudget.new)
    k: float | None = None  # the transformation rate of the last two computed steps
    v_norm: float | None = None  # mean|v| of the last computed step


class EasyCache(Policy):
    name = "easycache"
    params = {
        "threshold": Param(0.05, float, "accumulated estimated output change that triggers a computed step "
                           "(tau; the official script's help: 0.1 about 2x, 0.2 about 3x)", non_negative, ">= 0",
                           aliases=("thresh", "tau")),
        "warmup_steps": Param(10, int, "steps always computed at the start (R)", non_negative, ">= 0",
                              aliases=("ret_steps", "warm_up")),
        "joint": Param(True, bool, "one decision per step for every stream: the first call of the step (cond) "
                       "decides, the other CFG branch follows with its own transformation vector"),
    }

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.budget = ErrorBudget(self.threshold, warmup_steps=self.warmup_steps, force_last=True)

    def bind(self, d) -> None:
        latent, out = d.latent_io()
        if latent is None or out is None or latent != out:
            raise Unsupported("the model's one output does not have its latent input's shape")
        self.x_prev = derived.site("latent", tag="previous")  # the input of the previous step
        self.x_full = derived.site("latent", tag="computed")  # the input of the last computed step
        self.stop = Stop("indicator", name=self.x_prev.name)
        writes = frozenset({DELTA, OUTPUT, self.x_full})
        rate = frozenset({(OUTPUT, ABS_MEAN), (OUTPUT, L1_MEAN), (self.x_full, L1_MEAN)})
        self.first = Plan(write=writes | {self.x_prev}, measure=frozenset({(OUTPUT, ABS_MEAN)}), label="full")
        self.full = Plan(write=writes | {self.x_prev}, measure=rate, label="full")
        self.probe = Plan(write=frozenset({self.x_prev}), measure=frozenset({(self.x_prev, L1_MEAN)}),
                          stop=self.stop, label="probe")
        self.continuation = Plan(write=writes, measure=rate, start=self.stop, label="full")
        self.skip = Plan(reuse=frozenset({DELTA}), start=self.stop, label="skip")
        self.follow = Plan(write=frozenset({DELTA}), label="full")
        self.follow_skip = Plan(reuse=frozenset({DELTA}), label="skip")

    def new_state(self) -> EasyState:
        return EasyState()

    def plan(self, call, state: EasyState) -> Plan:
        if self.joint and call.agreed is not None:  # the step's first call decided; this branch follows
            return self.follow_skip if call.agreed == "skip" and call.cached(DELTA) else self.follow
        measured = call.cached(OUTPUT) and call.cached(self.x_full)
        if self.budget.forced(call):
            self.budget.computed(state.budget)
        elif state.k is not None and state.v_norm is not None and measured and call.cached(self.x_prev) \
                and call.cached(DELTA):
            return self.probe
        return self.full if measured else self.first

    def decide(self, call, state: EasyState) -> Plan:
        eps = state.k * float(call.measured[(self.x_prev, L1_MEAN)]) / state.v_norm if state.v_norm else math.inf
        if self.budget.decide(state.budget, eps)[0]:
            return self.skip
        return self.continuation

    def observe(self, call, state: EasyState, plan: Plan) -> None:
        if plan.label != "full" or (OUTPUT, ABS_MEAN) not in call.measured:
            return
        if (OUTPUT, L1_MEAN) in call.measured:
            dv, dx = float(call.measured[(OUTPUT, L1_MEAN)]), float(call.measured[(self.x_full, L1_MEAN)])
            state.k = dv / dx if dx > 0 else math.inf
        state.v_norm = float(call.measured[(OUTPUT, ABS_MEAN)])
