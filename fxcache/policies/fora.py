"""FORA (Fast-Forward Caching, prathebaselva/FORA).

Every block's attention and MLP outputs (before their gates) are computed and cached on the first step and then
every `interval` steps; on the steps between, the cached outputs are reused while the norms, the timestep
modulation and the gates are recomputed with the current step. Default interval 3 (the paper's DiT-XL setting).
FORA's DiT has no cross-attention; where a block has one, it is cached with the same schedule (a choice).
"""

from __future__ import annotations

from ..passes.modules import sites_with
from ..plan import Plan
from .base import Param, Policy, Unsupported, positive
from .schedule import Schedule


class FORA(Policy):
    name = "fora"
    block_level = True
    params = {"interval": Param(3, int, "compute (and cache) every this many steps, reuse in between", positive,
                                ">= 1")}

    def bind(self, d) -> None:
        sites = frozenset(sites_with(d))
        if not sites:
            raise Unsupported("no attention or MLP module found inside the blocks")
        self.any_site = min(sites, key=str)  # all are written together: one tells whether they are cached
        self.schedule = Schedule(self.interval)
        self.compute = Plan(write=sites, label="full")
        self.reuse = Plan(reuse=sites, label="reuse")

    def plan(self, call, state) -> Plan:
        if not call.cached(self.any_site) or self.schedule.due(call.index):
            return self.compute
        return self.reuse
