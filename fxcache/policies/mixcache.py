"""MixCache (Wei et al., arXiv 2508.12691; no public code: the paper's sections 3.3-3.5 and Algorithm 1 are the
spec): one step-level, CFG-level or block-level reuse per cache-enabled step, chosen greedily.

Granularities (what a cache-enabled step does):
- "step": O_t <- O_{t-1}: both CFG branches return their previous output; nothing runs.
- "cfg": the cond branch is computed, the uncond output is rebuilt as cond + Δ_cfg, Δ_cfg = uncond - cond of the
  last full step (FasterCache's CFG site at band scales (1, 1), which is exactly that sum).
- "block@i": the streams leaving units [0, i) are the ones cached at the previous step, units i.. run (the cond
  branch), and the uncond output is rebuilt as for "cfg" (Algorithm 1, lines 18-22). Candidates i: 1/4, 1/2, 3/4
  of the depth (the paper's 10, 20, 30 of 40), snapped to valid cuts.
Distances (eq. 5, relative L1): D_step of the cond output against the previous step's, D_cfg of the uncond
output against the cond output of a full step, D_block_i of the streams entering unit i against the previous
step's. Each is measured whenever the step computes it (D_cfg on full steps, D_block_i where unit i's input is
computed), and the newest value is used.

Algorithm 1, per step (decided at the first call of the step, the cond one; the uncond call follows it):
- warm-up: a full step while D_step >= theta (line 5, checked at every step, as Algorithm 1 writes it: where the
  steps' outputs start changing fast again, near the end of a flow-matching schedule, the steps are full again).
  D_t^step needs step t's output, so the newest measured D_step (of the last step that computed the cond output)
  decides step t + 1.
- cache-enabled: cnt <- (cnt + 1) % N; cnt == 0 is a full step, whose output against the previous full step's
  (D_full) sets N: `interval="acc"` 4 / 3 / 2 and `"eff"` (default, the paper's headline MixCache_eff) 5 / 4 / 3 for
  D_full < delta1, < delta2, >= delta2. Other steps take the granularity with the least P = D * I (eq. 7) among those
  not used by the step before (the penalty; "block" is one granularity for it; with one granularity allowed
  there is nothing to alternate with, so no penalty: the paper's "step only" etc. ablations).
- the first cache-enabled interval uses the middle N (4 for eff, 3 for acc): the paper leaves N's start open.
Impacts I (section 3.4) come from the calibration file (`python -m fxcache.profile`): I_step, I_cfg constants,
I_block per step and candidate; theta, delta1, delta2 too. Without one: the paper's profiled theta = 0.1 and
(delta1, delta2) = (0.05, 0.1) (Wan, HunyuanVideo; (0.3, 0.4) for CogVideoX), and I = 1 for every granularity
(P = D), a deviation: the paper always profiles.

Deviations: the last step is not forced full (Algorithm 1 does not); under batched CFG (`[uncond; cond]` calls) a
"cfg" or "block" step runs the cond half only (runtime/halfbatch.py) and D_block is measured on full steps only;
a model with one call per step and no batched CFG has no "cfg" granularity and its "block" steps run units i.. of
its only branch. Ablations: `granularities=("step",)`, `("cfg",)`, `("block",)`, `penalty=False`, `interval=4`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..families import family
from ..passes.variant import rebuildable
from ..metrics import CFG_REL_L1, PEER_REL_L1, REL_L1, Metric
from ..plan import CFG, CFG_BATCH, OUTPUT, Plan, Site
from .base import Param, Policy, Unsupported, fraction, positive

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


def _granularities_ok(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(g in GRANULARITIES for g in v) and len(set(v)) == len(v)


def _interval_ok(v) -> bool:
    return v in INTERVALS if isinstance(v, str) else v >= 1


def _delta_ok(v) -> bool:
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


class MixCache(Policy):
    name = "mixcache"
    block_level = True
    batched_cfg = True
    joint = True  # Algorithm 1 decides per step; the uncond call follows the cond call's decision
    params = {
        "interval": Param("eff", (str, int), "cache interval N: 'eff' (5/4/3), 'acc' (4/3/2) or a fixed int",
                          _interval_ok, "'eff', 'acc' or an int >= 1"),
        "theta": Param(None, float, "D_step below which the warm-up ends (None: calibration, else 0.1)",
                       fraction, "in [0, 1] or None"),
        "delta": Param(None, (list, tuple), "(delta1, delta2) for N (None: calibration, else the paper's)",
                       _delta_ok, "(delta1, delta2) with 0 <= delta1 <= delta2, or None", optional=True),
        "granularities": Param(GRANULARITIES, (list, tuple), "which reuses may be chosen", _granularities_ok,
                               "a non-empty subset of " + ", ".join(GRANULARITIES)),
        "blocks": Param(None, (list, tuple), "block candidates as unit indices i (None: 1/4, 1/2, 3/4 of depth)",
                        lambda v: len(v) > 0 and all(isinstance(i, int) and not isinstance(i, bool) and i > 0
                                                     for i in v), "a non-empty list of ints >= 1", optional=True),
        "penalty": Param(True, bool, "a granularity used at one step is barred at the next (with two or more "
                         "granularities allowed)"),
        "warmup_steps": Param(1, int, "steps always computed at the start (the first has no D_step)", positive,
                              ">= 1"),
    }

    def bind(self, d) -> None:
        why = rebuildable(d)  # "step" and "cfg" need the output to be one latent tensor
        u = d.num_units
        if self.blocks is None:
            self.cuts = candidate_blocks(d)
        else:
            bad = [i for i in self.blocks if not 0 < i < u or d.pairs(0, i) is None]
            if bad:
                from ..errors import option_error

                raise option_error(f"fxcache: option 'blocks' of policy 'mixcache': {bad} are not cuts of this "
                                   f"graph's {u} blocks (accepted: ints 1..{u - 1})")
            self.cuts = sorted(set(self.blocks))
        self.streams = {i: stream_site(i) for i in self.cuts if d.pairs(0, i) is not None}
        allowed = set(self.granularities)
        if why is not None:
            allowed -= {"step", "cfg"}
        if not self.streams:
            allowed.discard("block")
        if not allowed:
            raise Unsupported(f"no MixCache granularity applies ({why or 'no block cut'})")
        self.allowed, self.why_not_output = allowed, why
        cal = self.calibration.section("mixcache") if self.calibration is not None else {}
        self.th = self.theta if self.theta is not None else float(cal.get("theta", 0.1))
        if self.delta is not None:
            self.d1, self.d2 = map(float, self.delta)
        elif "delta1" in cal and "delta2" in cal:
            self.d1, self.d2 = float(cal["delta1"]), float(cal["delta2"])
        else:
            self.d1, self.d2 = DELTAS.get(family(d), (0.05, 0.1))
        impact = cal.get("impact", {})
        self.i_step = float(impact.get("step", 1.0))
        self.i_cfg = float(impact.get("cfg", 1.0))
        self.i_block = {int(k): [float(x) for x in v] for k, v in impact.get("block", {}).items()}

    def new_shared(self) -> MixShared:
        return MixShared()

    # -- the decision (Algorithm 1), once per step ------------------------------------------------------------

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

    # -- plans per call ------------------------------------------------------------------------------------------

    def plan(self, call, state) -> Plan:
        shared: MixShared = call.shared
        if call.role == "uncond":
            return self._uncond_plan(call.agreed or "full", call)
        if call.role == "other":  # a third stream: not a CFG branch MixCache knows
            return self._full_plan(call, batch=False)
        batched = call.role == "batched"
        mode = self._decide(call, shared, batched or shared.cfg_seen)
        if mode != "full" and not self._has(call, mode):
            mode = "full"
        shared.previous = mode
        if mode == "full":
            return self._full_plan(call, batch=batched)
        if mode == "step":
            return Plan(reuse=frozenset({OUTPUT}), label="step")
        if mode == "cfg":
            if batched:
                return Plan(write=frozenset({OUTPUT}), measure=self._measure(call, (OUTPUT,)), scales=(1.0, 1.0),
                            half=True, label="cfg")
            return self._computed_plan(call, frozenset(), "cfg")
        i = int(mode.split("@")[1])
        reuse = frozenset({self.streams[i]})
        if batched:
            return Plan(reuse=reuse, write=frozenset({OUTPUT}), measure=self._measure(call, (OUTPUT,)),
                        scales=(1.0, 1.0), half=True, label=mode)
        return self._computed_plan(call, reuse, mode, after=i)

    def _has(self, call, mode: str) -> bool:
        """This stream holds what `mode` reads (a stream that started over after non-finite values may not)."""
        if mode == "step":
            return call.cached(OUTPUT) > 0
        if call.role == "batched" and not call.cached(CFG_BATCH):
            return False
        return mode == "cfg" or call.cached(self.streams[int(mode.split("@")[1])]) > 0

    @staticmethod
    def _measure(call, sites, metric: Metric = REL_L1) -> frozenset:
        return frozenset((s, metric) for s in sites if call.cached(s))

    def _computed_plan(self, call, reuse: frozenset, label: str, after: int = 0) -> Plan:
        """The cond branch computed (from unit `after` on when a block prefix is reused)."""
        streams = [s for i, s in self.streams.items() if i > after]
        write = frozenset({OUTPUT, *streams})
        return Plan(reuse=reuse, write=write, measure=self._measure(call, (OUTPUT, *streams)), label=label)

    def _full_plan(self, call, batch: bool) -> Plan:
        streams = list(self.streams.values())
        write = {OUTPUT, FULL_OUTPUT, *streams}
        measure = set(self._measure(call, (OUTPUT, FULL_OUTPUT, *streams)))
        if batch and self.allowed & {"cfg", "block"}:
            write.add(CFG_BATCH)
            measure.add((OUTPUT, CFG_REL_L1))
        return Plan(write=frozenset(write), measure=frozenset(measure), label="full")

    def _uncond_plan(self, mode: str, call) -> Plan:
        peer = call.peer
        if mode == "step" and call.cached(OUTPUT):
            return Plan(reuse=frozenset({OUTPUT}), label="step")
        if mode not in ("full", "step") and call.cached(CFG):
            return Plan(reuse=frozenset({CFG}), write=frozenset({OUTPUT}), scales=(1.0, 1.0), peer=peer, label=mode)
        if "cfg" in self.allowed or "block" in self.allowed:
            return Plan(write=frozenset({OUTPUT, CFG}), measure=frozenset({(OUTPUT, PEER_REL_L1)}), peer=peer,
                        label="full")
        return Plan(write=frozenset({OUTPUT}), label="full")

    def observe(self, call, state, plan: Plan) -> None:
        shared: MixShared = call.shared
        measured = call.measured
        if (OUTPUT, PEER_REL_L1) in measured or (OUTPUT, CFG_REL_L1) in measured:
            shared.cfg_seen = True
            shared.d["cfg"] = measured.get((OUTPUT, PEER_REL_L1), measured.get((OUTPUT, CFG_REL_L1)))
        if call.role == "uncond":
            return
        if (OUTPUT, REL_L1) in measured:
            shared.d["step"] = measured[(OUTPUT, REL_L1)]
        for i, s in self.streams.items():
            if (s, REL_L1) in measured:
                shared.d[f"block@{i}"] = measured[(s, REL_L1)]
        if plan.label != "full":
            return
        if (FULL_OUTPUT, REL_L1) in measured and shared.rescale == call.step:
            d_full = measured[(FULL_OUTPUT, REL_L1)]
            shared.n = self._n(d_full if d_full == d_full else self.d2)  # NaN: the shortest interval
