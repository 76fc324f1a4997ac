"""MixCache (Wei et al., arXiv 2508.12691; no public code: the paper's sections 3.3-3.5 and Algorithm 1 are the
spec): one step-level, CFG-level or block-level reuse per cache-enabled step, chosen greedily by the least
distance x impact, with warm-up while the output still changes fast and an adaptive cache interval.

The full rules, options and defaults: docs/methods.md, "MixCache".

Deviations: the last step is not forced full (Algorithm 1 does not); under batched CFG (`[uncond; cond]` calls) a
"cfg" or "block" step runs the cond half only (runtime/halfbatch.py) and D_block is measured on full steps only;
a model with one call per step and no batched CFG has no "cfg" granularity and its "block" steps run units i.. of
its only branch. Ablations: `granularities=("step",)`, `("cfg",)`, `("block",)`, `penalty=False`, `interval=4`.
"""

from __future__ import annotations

from ..errors import option_error
from ..families import family
from ..metrics import CFG_REL_L1, PEER_REL_L1, REL_L1, Metric
from ..plan import CFG, CFG_BATCH, OUTPUT, Plan
from .base import Param, Policy, Unsupported, fraction, positive
from .mixcache_algorithm import (DELTAS, FULL_OUTPUT, GRANULARITIES, Algorithm1, MixShared, candidate_blocks,
                                 delta_ok, granularities_ok, interval_ok, stream_site)

class MixCache(Algorithm1, Policy):
    name = "mixcache"
    block_level = True
    batched_cfg = True
    joint = True  # Algorithm 1 decides per step; the uncond call follows the cond call's decision
    params = {
        "interval": Param("eff", (str, int), "cache interval N: 'eff' (5/4/3), 'acc' (4/3/2) or a fixed int",
                          interval_ok, "'eff', 'acc' or an int >= 1"),
        "theta": Param(None, float, "D_step below which the warm-up ends (None: calibration, else 0.1)",
                       fraction, "in [0, 1] or None"),
        "delta": Param(None, (list, tuple), "(delta1, delta2) for N (None: calibration, else the paper's)",
                       delta_ok, "(delta1, delta2) with 0 <= delta1 <= delta2, or None", optional=True),
        "granularities": Param(GRANULARITIES, (list, tuple), "which reuses may be chosen", granularities_ok,
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
        why = d.why_not_rebuildable()  # "step" and "cfg" need the output to be one latent tensor
        u = d.num_units
        if self.blocks is None:
            self.cuts = candidate_blocks(d)
        else:
            bad = [i for i in self.blocks if not 0 < i < u or d.pairs(0, i) is None]
            if bad:
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
