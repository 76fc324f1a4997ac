"""BlockDance (Zhang et al., CVPR 2025; no code found): reuse the structure blocks' output in the late stage.

A cache step runs every block and stores the hidden state after the first `blocks` blocks (the "structure"
blocks); a reuse step starts from that stored state and runs only the blocks after it. Only in the later
denoising stage (timestep below `stage`, 0-1000 scale), with a cache step every `interval` steps; before it every
step is computed. The stored value is the hidden state itself, not a residual: that is the method.

The paper's i, N and stage boundary are not given in a form we could confirm; the defaults are choices: the first
half of the blocks (i = L // 2, or the nearest valid cut), N = 2, and the stage from t = 600 (the last ~60% of a 1000 -> 0 schedule).
BlockDance-Ada's learned policy is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..plan import Plan, Site
from .base import Param, Policy, Unsupported, positive


@dataclass
class DanceState:
    since: int = 0  # reuse steps since the last cache step in the late stage


class BlockDance(Policy):
    name = "blockdance"
    block_level = True
    params = {
        "blocks": Param(None, int, "structure blocks whose output is reused (None: half of the blocks)", positive,
                        ">= 1 or None"),
        "interval": Param(2, int, "a cache step every this many steps in the late stage", positive, ">= 1"),
        "stage": Param(600.0, float, "timestep (0-1000 scale) below which reuse is allowed",
                       lambda v: 0 <= v <= 1000, "0..1000"),
    }

    def bind(self, d) -> None:
        i = self.blocks if self.blocks is not None else d.snap(d.num_units // 2, lo=1, hi=d.num_units - 1)
        if i is None or not 1 <= i < d.num_units or not d.residual_ok(0, i):
            raise Unsupported(f"the output of the first {i} blocks is not a stream the rest of the blocks reads "
                              f"as a whole (model has {d.num_units} blocks)")
        self.site = Site("stream", 0, i)
        self.compute = Plan(label="full")
        self.cache_step = Plan(write=frozenset({self.site}), label="full")
        self.reuse = Plan(reuse=frozenset({self.site}), label="reuse")

    def new_state(self) -> DanceState:
        return DanceState()

    def plan(self, call, state: DanceState) -> Plan:
        if call.t is None or call.t >= self.stage:
            return self.compute
        # The period counts from the first call of the late stage (its first cache step), not from step 0.
        if not call.cached(self.site) or state.since + 1 >= self.interval:
            state.since = 0
            return self.cache_step
        state.since += 1
        return self.reuse
