"""Δ-DiT (Chen et al. 2024; no official code): a Δ-Cache of a contiguous block range, stage-adaptive.

On a computed step, every block runs and the residual Δ = h_b - h_a of the front range and of the rear range is
cached. On a cached step, the blocks of one range are skipped and their Δ is added to h_a: the **rear** range in
the early (outline) stage, the **front** range after the boundary. Steps are computed when k == 1 or k % interval
== 0 (1-based), else cached.

The paper leaves b, N and the ranges open; the values here follow FasterCache's Vchitect re-implementation
(`my_delta_forward`, 30 blocks: front blocks 2-8, rear from 16 on, boundary at half of the steps, interval 3),
scaled to the model's depth: front = [round(2L/30), round(9L/30)), rear = [round(16L/30), L), at least one block
each, each end moved to the nearest valid cut (Latte's blocks come in spatial+temporal pairs). The boundary is `boundary` on the 0-1000 timestep scale (500: the middle of a 1000 -> 0 schedule).
"""

from __future__ import annotations

from ..plan import Plan, residual
from .base import Param, Policy, Unsupported, positive
from .schedule import Schedule


class DeltaDiT(Policy):
    name = "deltadit"
    block_level = True
    params = {
        "interval": Param(3, int, "compute when k == 1 or k % interval == 0 (1-based step k)", positive, ">= 1"),
        "boundary": Param(500.0, float, "timestep (0-1000 scale) where the cached range moves from rear to front",
                          lambda v: 0 <= v <= 1000, "0..1000"),
        "front": Param(None, (list, tuple), "front block range (a, b) (None: scaled from Vchitect's 2-8 of 30)",
                       lambda v: len(v) == 2, "(a, b) or None"),
        "rear": Param(None, (list, tuple), "rear block range (a, b) (None: scaled from Vchitect's 16-30 of 30)",
                      lambda v: len(v) == 2, "(a, b) or None"),
    }

    def bind(self, d) -> None:
        n = d.num_units
        a = d.snap(round(2 * n / 30), hi=n - 1) or 0
        front = tuple(self.front) if self.front is not None else (a, d.snap(round(9 * n / 30), lo=a + 1))
        rear = tuple(self.rear) if self.rear is not None else (d.snap(round(16 * n / 30), hi=n - 1), n)
        for name, (a, b) in (("front", front), ("rear", rear)):
            if not (isinstance(a, int) and isinstance(b, int) and d.residual_ok(a, b)):
                raise Unsupported(f"the {name} range [{a}, {b}) is not a valid residual of this model's "
                                  f"{n} blocks")
        self.front_site, self.rear_site = residual(*front), residual(*rear)
        # k == 1 or k % interval == 0 for the 1-based k = i + 1
        self.schedule = Schedule(self.interval, offset=self.interval - 1, warmup=1)
        self.compute = Plan(write=frozenset({self.front_site, self.rear_site}), label="full")
        self.skip_rear = Plan(reuse=frozenset({self.rear_site}), label="skip rear")
        self.skip_front = Plan(reuse=frozenset({self.front_site}), label="skip front")

    def plan(self, call, state) -> Plan:
        if not call.cached(self.rear_site) or self.schedule.due(call.index):
            return self.compute
        early = call.t is None or call.t > self.boundary
        return self.skip_rear if early else self.skip_front
