"""T-GATE (HaozheLiu-ST/T-GATE `tgate_utils.py`): cross-attention converges early; self-attention is cached on a
schedule. Steps are 0-based (i = call index within the stream); g is the gate step.

- Cross-attention: computed for i < g (cached at i = g - 1), reused for i >= g.
- Self-attention before g: computed for i < warm_up; at i = warm_up and whenever i % sp_interval == 0 computed and
  cached, otherwise reused. After g: computed when i % fi_interval == 0, otherwise reused.
Defaults g = 10, sp_interval = 5, fi_interval = 1, warm_up = 2 (generic; PixArt's 25-step setting is g = 15,
sp_interval = 3).

Deviation: T-GATE caches the mean of the uncond and cond cross-attention outputs at g - 1 and drops CFG after g
(one branch, no guidance mix). fxcache keeps each stream's own cross-attention and the pipeline's CFG, since the
pipeline, not the backend, combines the branches.
"""

from __future__ import annotations

from ..passes.modules import sites_with
from ..plan import Plan
from .base import Param, Policy, Unsupported, non_negative, positive
from .fora import ScheduleState


class TGate(Policy):
    name = "tgate"
    block_level = True
    params = {
        "gate_step": Param(10, int, "0-based step from which cross-attention is reused", positive, ">= 1"),
        "sp_interval": Param(5, int, "self-attention refresh interval before the gate step", positive, ">= 1"),
        "fi_interval": Param(1, int, "self-attention refresh interval after the gate step", positive, ">= 1"),
        "warm_up": Param(2, int, "steps whose self-attention is always computed", non_negative, ">= 0"),
    }

    def bind(self, d) -> None:
        self.cross = frozenset(sites_with(d, ("cross",)))
        self.self_ = frozenset(sites_with(d, ("attn",)))
        if not self.cross and not self.self_:
            raise Unsupported("no attention module found inside the blocks")
        self._plans: dict = {}

    def new_state(self) -> ScheduleState:
        return ScheduleState()

    def plan(self, call, state: ScheduleState) -> Plan:
        i = call.step - 1
        reuse = set()
        if not state.written:
            state.written = True
        elif i >= self.gate_step:
            reuse |= self.cross
            if i % self.fi_interval != 0:
                reuse |= self.self_
        elif i > self.warm_up and i % self.sp_interval != 0:
            reuse |= self.self_
        reuse = frozenset(reuse)
        plan = self._plans.get(reuse)
        if plan is None:
            plan = self._plans[reuse] = Plan(reuse=reuse, write=(self.cross | self.self_) - reuse,
                                             label="reuse" if reuse else "full")
        return plan
