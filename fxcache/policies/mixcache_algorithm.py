"""MixCache's decision, Algorithm 1 of the paper (Wei et al., arXiv 2508.12691), taken once per step by the cond
call (policies/mixcache.py builds the plans; the rules in docs/methods.md, "MixCache")."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..plan import Site

DEPTH_FRACTIONS = (0.25, 0.5, 0.75)  # the paper's block candidates 10, 20, 30 of Wan's 40 blocks
GRANULARITIES = ("step", "cfg", "block")
INTERVALS = {"acc": (4, 3, 2), "eff": (5, 4, 3)}  # N for D_full < delta1, < delta2, >= delta2 (eq. 6)
DELTAS = {"cogvideox-2b": (0.3, 0.4), "cogvideox-5b": (0.3, 0.4)}  # else the paper's Wan / HunyuanVideo (0.05, 0.1)
FULL_OUTPUT = Site("output", name="full")  # the output of the last full step (for D_full)


def candidate_blocks(d) -> list[int]:
    """Block-level candidates as cuts i (0 < i < U): a block-level step reuses the streams leaving units [0, i)
    (Site("stream", 0, i)) and runs units i.. . The paper's 1/4, 1/2, 3/4 of the depth, snapped to valid cuts."""
    u = d.num_units
    cuts = {d.snap(round(u * f)) for f in DEPTH_FRACTIONS}
    return sorted(c for c in cuts if c is not None and 0 < c < u)


def stream_site(i: int) -> Site:
    return Site("stream", 0, i)


def granularities_ok(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(g in GRANULARITIES for g in v) and len(set(v)) == len(v)


def interval_ok(v) -> bool:
    return v in INTERVALS if isinstance(v, str) else v >= 1


def delta_ok(v) -> bool:
    return (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                                 and x >= 0 for x in v) and v[0] <= v[1])


@dataclass
class MixShared:
    """The decision state of one generation, shared by its CFG branches (Call.shared: MixCache is joint)."""

    n: int = 0  # the cache interval N
    cnt: int = 0
    rescale: int = 0  # the step whose full output's D_full sets N
    previous: str = "full"  # the granularity of the previous step (the penalty bars it)
    d: dict = field(default_factory=dict)  # granularity -> its newest distance D
    cfg_seen: bool = False  # a D_cfg was measured: the generation has two CFG branches


class Algorithm1:
    """The greedy choice of a granularity per cache-enabled step (a mixin of MixCache, which sets `interval`,
    `penalty`, `warmup_steps`, `allowed`, `streams`, `th`, `d1`, `d2`, `i_step`, `i_cfg`, `i_block`)."""

    def _n(self, d_full: float | None) -> int:
        if isinstance(self.interval, int):
            return self.interval
        table = INTERVALS[self.interval]
        if d_full is None:
            return table[1]
        return table[0] if d_full < self.d1 else table[1] if d_full < self.d2 else table[2]

    def _impact(self, mode: str, call) -> float:
        if mode == "step":
            return self.i_step
        if mode == "cfg":
            return self.i_cfg
        curve = self.i_block.get(int(mode.split("@")[1]))
        if not curve:
            return 1.0
        n = call.num_steps or len(curve)
        k = min(len(curve) - 1, round((call.step - 1) * (len(curve) - 1) / max(1, n - 1)))
        return curve[k]

    def _candidates(self, cfg_available: bool) -> list[str]:
        out = []
        if "step" in self.allowed:
            out.append("step")
        if "cfg" in self.allowed and cfg_available:
            out.append("cfg")
        if "block" in self.allowed:
            out += [f"block@{i}" for i in self.streams]
        return out

    def _decide(self, call, shared: MixShared, cfg_available: bool) -> str:
        d_step = shared.d.get("step")
        # Line 5 of Algorithm 1, at every step: full while D_step >= theta (NaN too: a non-finite step)
        if call.step <= self.warmup_steps or d_step is None or not d_step < self.th:
            return "full"
        if not shared.n:
            shared.n = self._n(None)
        shared.cnt = (shared.cnt + 1) % shared.n
        if shared.cnt == 0:
            shared.rescale = call.step  # this full step's D_full sets N (line 11)
            return "full"
        best, best_p = "full", None
        for mode in self._candidates(cfg_available):
            g = mode.split("@")[0]
            if self.penalty and len(self.allowed) > 1 and g == shared.previous.split("@")[0]:
                continue
            dist = shared.d.get(mode)
            if dist is None:  # never measured (e.g. D_cfg before the first full uncond call)
                continue
            p = dist * self._impact(mode, call)
            if best_p is None or p < best_p:
                best, best_p = mode, p
        return best
