"""First Block Cache (ParaAttention; diffusers `FirstBlockCache`).

Every call runs the first block (probe) and compares its residual with the one from the last *computed* step
(relative L1). Below `threshold`, the remaining blocks are skipped and their cached residual is added instead;
otherwise they run and both residuals are cached. The reference only moves on computed steps, so nothing
accumulates. Default threshold 0.05 (diffusers). Where a model's first block changes the tensor layout (Latte's
spatial block hands a temporal layout to its temporal block), the "first block" is the first run of blocks whose
output matches its input in shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..metrics import REL_L1
from ..plan import Plan, Stop, residual
from .base import Param, Policy, Unsupported, non_negative, positive
from .forecast import StepForecast


@dataclass
class FBState:
    has_ref: bool = False
    skips: int = 0
    computed: list = field(default_factory=list)


class FBCache(StepForecast, Policy):
    name = "fbcache"
    params = {
        **StepForecast.PARAMS,
        "threshold": Param(0.05, float, "relative L1 of the first block's residual below which the rest is reused",
                           non_negative, ">= 0"),
        "warmup_steps": Param(0, int, "steps always computed at the start of each stream", non_negative, ">= 0"),
        "max_consecutive_skips": Param(None, int, "at most this many skipped steps in a row (None: unlimited)",
                                       positive, ">= 1 or None"),
        "joint": Param(False, bool, "one decision per step for every stream (both CFG branches): the first call "
                       "of the step decides, the others follow"),
    }

    def bind(self, d) -> None:
        c = d.first_residual_cut()
        if c is None:
            raise Unsupported("no first block whose residual matches the rest of the stack")
        self.head, self.tail = residual(0, c), residual(c, d.num_units)
        self.forecastable = self.tails = frozenset({self.tail})
        self.cut = Stop("cut", c)
        self.write_all = Plan(write=frozenset({self.head, self.tail}), label="full")
        self.full_continuation = self.computed_plan(Plan(write=frozenset({self.head, self.tail}), start=self.cut,
                                                         label="full"))
        self.probes: dict = {}

    def new_state(self) -> FBState:
        return FBState()

    def plan(self, call, state: FBState) -> Plan:
        if not state.has_ref or call.step <= self.warmup_steps:
            state.has_ref, state.skips = True, 0
            return self.computed(call, state, self.write_all)
        # The guess: "skip" (a wrong one wastes only the suffix), unless the step cannot skip (a wrong "full" guess
        # would waste the whole stack).
        certain = self.threshold <= 0 or (self.max_consecutive_skips is not None
                                          and state.skips >= self.max_consecutive_skips)
        guess = self.full_continuation if certain else self.skipped(call, state, self.tails, start=self.cut,
                                                                    label="skip")
        probe = self.probes.get(id(guess))
        if probe is None or probe.then is not guess:  # one probe object per guess object (the runtime memoises)
            if len(self.probes) > 16:
                self.probes.clear()
            probe = self.probes[id(guess)] = Plan(measure=frozenset({(self.head, REL_L1)}), stop=self.cut,
                                                  label="probe", then=guess)
        return probe

    def decide(self, call, state: FBState, measured: dict) -> Plan:
        d = measured[(self.head, REL_L1)]
        can_skip = self.max_consecutive_skips is None or state.skips < self.max_consecutive_skips
        skip = d < self.threshold
        if self.joint:  # the step's first call decides for all its streams (the same step number in each)
            decided = call.shared.setdefault("fbcache", {})
            skip = decided.setdefault(call.step, skip)
        if skip and can_skip:
            state.skips += 1
            return self.skipped(call, state, self.tails, start=self.cut, label="skip")
        state.skips = 0
        return self.computed(call, state, self.full_continuation)
