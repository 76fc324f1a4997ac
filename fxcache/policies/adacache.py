"""AdaCache (Kahatapitiya et al., ICCV 2025; AdaCache-DiT/AdaCache, Open-Sora 1.2's STDiT3): a content-dependent
schedule of computed steps, decided at a probe (the paper's Section 3 and the official code's `adacache` module).
A skipped step adds the whole stack's cached residual; a computed step measures the probe's relative L1 change
(with MoReg's motion term where asked) and a codebook turns it into the number of steps until the next one.

The full rules, options and defaults: docs/methods.md, "AdaCache".

Deviations from the official code (all documented choices, none changes the method's rule):
- The probe is the attention / MLP module's output, before the block's gate: the official A_res is gate_msa *
  attn(...) (the gate lives outside the module site, so measuring after it would need a new site kind). For
  "ca-mlp" the official measures the sum cross + gate_mlp * mlp; here the cross and MLP distances are two probes,
  averaged by step 3's rule, and MoReg reads the MLP. On models whose first output of a module is the text part
  (CogVideoX's joint attention), "rel_l1" reads that first output (the engine's convention); MoReg reads the
  longest output whose shape fits the video layout.
- Steps 2 and 5 divide by the steps since the previous computed step, the official by the current rate: they
  differ only on a forced step N - 1 before prev + rate, which cannot change the schedule (N is forced anyway).
- Separate CFG calls (Wan) keep one schedule per stream; batched CFG decides once for both halves (the official).
- A non-finite distance (the runtime found NaN / inf) sets the rate to 1: the next step computes.
- State starts over with every generation (the official blocks reset their counters at step N); the probe block
  is rescaled to the model's depth, the codebook presets to its step count (docs/methods.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import option_error
from ..metrics import REL_L1, Metric, metric
from ..plan import Plan, Site, residual
from .adacache_codebooks import (OFFICIAL_BLOCK, OFFICIAL_DEPTH, PROBE_SITES, block_ok, codebook_for,
                                 codebook_ok, half_up, hyp_ok, lookup, moreg_window, steps_ok, strides_ok)
from .base import Param, Policy, Unsupported, non_negative
from .forecast import StepForecast


@dataclass
class AdaState:
    rate: int = 1
    prev: int = 0  # prev_compute_step
    prev_moreg: float = 1.0
    last: dict | None = None  # the latest decision: distance, moreg, new rate (for inspection)
    computed: list = field(default_factory=list)  # StepForecast: steps whose residual was written, newest first


class AdaCache(StepForecast, Policy):
    name = "adacache"
    params = {
        **StepForecast.PARAMS,
        "codebook": Param("auto", (str, dict), "distance thresholds -> rates", codebook_ok,
                          "'auto', '100', '30-fast', '30-slow' or a non-empty {threshold: rate} mapping with "
                          "finite thresholds > 0 and int rates >= 1"),
        "probe_site": Param("t-attn", str, "which residual the distance is measured on",
                            lambda v: v in PROBE_SITES, " | ".join(PROBE_SITES)),
        "probe_block": Param("auto", (str, int, list, tuple), "the probe block(s): unit indices",
                             block_ok, "'auto', a unit index >= 0 or a non-empty list of them"),
        "moreg": Param(False, bool, "motion regularisation of the distance"),
        "moreg_steps": Param("auto", (str, list, tuple), "1-based steps (first, last) where MoReg applies",
                             steps_ok, "'auto' or (first, last) with 1 <= first <= last"),
        "moreg_strides": Param((1,), (list, tuple), "frame strides of the motion term", strides_ok,
                               "a non-empty list of ints >= 1"),
        "moreg_hyp": Param((0.385, 8.0, 1.0), (list, tuple), "(h0, h1, h2): m = ((m / h0) ** h1) / h2", hyp_ok,
                           "(h0 > 0, h1, h2 > 0), finite (a 4th entry is ignored)"),
        "mograd_mul": Param(10.0, float, "weight of the motion gradient", non_negative, ">= 0"),
        "tokens_per_frame": Param(None, int, "MoReg: tokens per latent frame (None: from the graph)",
                                  lambda v: v >= 1, ">= 1 or None"),
    }

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if isinstance(self.codebook, dict):
            thresholds = sorted(float(t) for t in self.codebook)
            if len(set(thresholds)) != len(thresholds):
                raise option_error(f"fxcache: option 'codebook' of policy 'adacache' has equal thresholds: "
                                   f"{self.codebook!r}")
        self._tables: dict = {}
        self.probes: list[Site] = []
        self.motion: list[tuple[Site, Metric]] = []  # MoReg's (site, metric) pairs


    def bind(self, d) -> None:
        n = d.num_units
        if not d.residual_ok(0, n):
            raise Unsupported("the block stack's output does not match its input")
        self.stack = residual(0, n)
        self.forecastable = frozenset({self.stack})
        self.probes = self._probes(d)
        self.motion = self._motion(d) if self.moreg else []

    def _probes(self, d) -> list[Site]:
        mods = d.modules
        temporal_attn = any(m.role == "attn" and m.temporal for m in mods.values())
        if self.probe_site == "t-attn":
            groups = [("attn",)]
            keep = (lambda m: m.temporal) if temporal_attn else (lambda m: True)  # fallback: the self-attention
        elif self.probe_site == "s-attn":
            groups = [("attn",)]
            keep = lambda m: not m.temporal  # noqa: E731
        else:  # "ca-mlp": the cross-attention and the MLP of the block, as two probes
            groups = [("cross",), ("mlp",)]
            keep = lambda m: True  # noqa: E731

        def sites_of(unit: int) -> list[Site]:
            """The first module site of each role group in `unit` (graph order: the image stream's first)."""
            found = []
            for roles in groups:
                s = next((s for s, m in mods.items() if s.start == unit and m.role in roles and keep(m)), None)
                if s is not None:
                    found.append(s)
            if self.probe_site == "ca-mlp" and not any(mods[s].role == "mlp" for s in found):
                return []  # "ca-mlp" needs the MLP at least
            return found

        what = {"t-attn": "temporal self-attention" if temporal_attn else "self-attention",
                "s-attn": "spatial self-attention", "ca-mlp": "cross-attention / MLP"}[self.probe_site]
        if self.probe_block == "auto":
            units = [u for u in range(d.num_units) if sites_of(u)]
            if not units:
                raise Unsupported(f"adacache: no {what} module site (probe_site={self.probe_site!r}) in any block")
            chosen = [units[min(len(units) - 1, half_up(OFFICIAL_BLOCK * len(units) / OFFICIAL_DEPTH))]]
        else:
            chosen = [self.probe_block] if isinstance(self.probe_block, int) else list(self.probe_block)
        probes: list[Site] = []
        for u in chosen:
            if not 0 <= u < d.num_units:
                raise Unsupported(f"adacache: option 'probe_block' {u} is outside this model's {d.num_units} "
                                  f"blocks (0..{d.num_units - 1})")
            sites = sites_of(u)
            if not sites:
                raise Unsupported(f"adacache: option 'probe_block' {u}: that block has no {what} module site "
                                  f"(probe_site={self.probe_site!r})")
            probes.extend(s for s in sites if s not in probes)
        return probes

    def _motion(self, d) -> list[tuple[Site, Metric]]:
        """MoReg's metrics: one "motion" (S tokens per frame, a stride, an output) per stride, on the last probe."""
        site = self.probes[-1]
        strides = [int(s) for s in self.moreg_strides]
        found = d.frame_layout(site, max(strides), self.tokens_per_frame)
        if isinstance(found, str):
            raise option_error(f"fxcache: option 'moreg' of policy 'adacache' cannot be used here: {found}")
        j, per_frame = found
        return [(site, metric("motion", per_frame=per_frame, stride=s, output=j)) for s in strides]


    def table(self, n: int | None) -> tuple[list[tuple[float, int]], tuple[int, int]]:
        """(codebook as ascending (threshold, rate) pairs, MoReg window) for a run of `n` steps (None: unknown)."""
        if n not in self._tables:
            self._tables[n] = (codebook_for(self.codebook, n), moreg_window(self.codebook, self.moreg_steps, n))
        return self._tables[n]

    def new_state(self) -> AdaState:
        return AdaState()

    def _forced(self, call) -> bool:
        n = call.num_steps
        return call.step <= 1 or (n is not None and call.step >= n - 1)

    def plan(self, call, state: AdaState) -> Plan:
        has_ref = call.cached(self.stack) > 0
        if has_ref and not self._forced(call) and call.step < state.prev + state.rate:
            return self.skipped(call, state, frozenset({self.stack}), label="skip")
        measure: set = set()
        if has_ref:
            measure.update((p, REL_L1) for p in self.probes)
            lo, hi = self.table(call.num_steps)[1]
            if self.motion and lo <= call.step <= hi:
                measure.update(self.motion)
        return self.computed(call, state, Plan(write=frozenset({self.stack, *self.probes}),
                                               measure=frozenset(measure), label="full"))

    def observe(self, call, state: AdaState, plan: Plan) -> None:
        if plan.label != "full":
            return
        k, measured = call.step, call.measured
        if all((p, REL_L1) in measured for p in self.probes):
            gap = max(1, k - state.prev)
            d = sum(measured[(p, REL_L1)] for p in self.probes) / len(self.probes) / gap
            m = 1.0
            if self.moreg:
                lo, hi = self.table(call.num_steps)[1]
                if lo <= k <= hi and all(key in measured for key in self.motion):
                    motion = sum(measured[key] for key in self.motion) / len(self.motion)
                    h0, h1, h2 = (float(x) for x in self.moreg_hyp[:3])
                    m = ((motion / h0) ** h1) / h2 if math.isfinite(motion) else math.nan
                grad = self.mograd_mul * (m - state.prev_moreg) / gap
                if math.isfinite(m):  # a non-finite term sets the rate to 1 below and is not remembered
                    state.prev_moreg = m
                m = m + abs(grad)
            score = d * m
            state.rate = lookup(self.table(call.num_steps)[0], score)
            state.last = {"step": k, "distance": d, "moreg": m, "score": score, "rate": state.rate}
        state.prev = k

    def describe(self) -> str:
        probes = f"; probes {', '.join(map(str, self.probes))}" if self.probes else ""
        motion = f"; motion {', '.join(str(m) for _, m in self.motion)}" if self.motion else ""
        return super().describe() + probes + motion
