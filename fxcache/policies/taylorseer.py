"""TaylorSeer (Shenyi-Z/TaylorSeer; diffusers `TaylorSeerCacheConfig`): forecast every block's attention and MLP
outputs with a Taylor expansion built from divided differences over the computed steps (policies/forecast.py).

Schedule (diffusers, 0-based step i = call index within the stream): computed while i < warmup_steps, and when
(i - warmup_steps - 1) % interval == 0; forecast otherwise. Defaults are diffusers': interval 5, order 1,
warmup_steps 3 (`disable_cache_before_step`). The paper's per-model settings (FLUX interval 6 / order 1 / first 3;
HunyuanVideo 5 / 1 / 1; DiT 4 / 4 / 2) are options away. The expansion's weights are an input of the compiled
variant, so the changing step offset compiles nothing new.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..passes.modules import sites_with
from ..plan import Plan
from . import forecast
from .base import Param, Policy, Unsupported, positive
from .budget import warmup_param
from .schedule import Schedule


@dataclass
class TaylorState:
    computed: list = field(default_factory=list)  # 0-based steps of the kept computed values, newest first


class TaylorSeer(Policy):
    name = "taylorseer"
    block_level = True
    params = {
        "interval": Param(5, int, "a computed step every this many steps after warm-up", positive, ">= 1"),
        "order": Param(1, int, "order of the Taylor expansion", lambda v: 0 <= v <= 4, "0..4"),
        "warmup_steps": warmup_param(3),
    }

    def bind(self, d) -> None:
        sites = frozenset(sites_with(d))
        if not sites:
            raise Unsupported("no attention or MLP module found inside the blocks")
        self.sites = sites
        self.any_site = min(sites, key=str)  # all are written together
        self.schedule = Schedule(self.interval, offset=self.warmup_steps + 1, warmup=self.warmup_steps)
        self.compute = Plan(write=sites, label="full")

    def new_state(self) -> TaylorState:
        return TaylorState()

    def depth(self, site) -> int:
        return self.order + 1

    def plan(self, call, state: TaylorState) -> Plan:
        i = call.index
        if not call.cached(self.any_site) or self.schedule.due(i):
            state.computed = [i, *state.computed][: self.order + 1]
            return self.compute
        weights = forecast.taylor(state.computed, i, self.order)
        return Plan(forecast=self.sites, coeffs=weights, label="forecast")
