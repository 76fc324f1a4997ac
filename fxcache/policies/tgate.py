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

import math

from ..passes.modules import sites_with
from ..plan import Plan
from .base import Param, Policy, Unsupported, non_negative, positive
from .schedule import Schedule


class TGate(Policy):
    name = "tgate"
    block_level = True
    params = {
        "gate_step": Param(10, int, "0-based step from which cross-attention is reused", positive, ">= 1"),
        "sp_interval": Param(5, int, "self-attention refresh interval before the gate step", positive, ">= 1"),
        "fi_interval": Param(1, int, "self-attention refresh interval after the gate step", positive, ">= 1"),
        "warm_up": Param(2, int, "the last 0-based step whose self-attention is always computed (T-GATE's name "
                         "and meaning: steps 0..warm_up)", non_negative, ">= 0"),
    }

    def bind(self, d) -> None:
        self.cross = frozenset(sites_with(d, ("cross",)))
        self.self_ = frozenset(sites_with(d, ("attn",)))
        if not self.cross and not self.self_:
            raise Unsupported("no attention module found inside the blocks")
        self.any_site = min(self.cross | self.self_, key=str)
        g = self.gate_step
        self.cross_schedule = Schedule(None, steps=(g, math.inf))  # reused from the gate step on
        self.self_before = Schedule(self.sp_interval, warmup=self.warm_up + 1, steps=(0, g))
        self.self_after = Schedule(self.fi_interval, steps=(g, math.inf))

    def plan(self, call, state) -> Plan:
        i = call.index
        reuse = frozenset()
        if call.cached(self.any_site):
            if not self.cross_schedule.due(i):
                reuse |= self.cross
            if not (self.self_before.due(i) and self.self_after.due(i)):
                reuse |= self.self_
        return Plan(reuse=reuse, write=(self.cross | self.self_) - reuse, label="reuse" if reuse else "full")
