"""FasterCache (Vchitect/FasterCache; diffusers `FasterCacheConfig`): dynamic feature reuse of self-attention and
CFG-Cache of the unconditional branch. Defaults are diffusers' generic ones (timestep windows), with the
per-model schedules of the official code as presets.

Per stream, i counts the calls (0-based, diffusers' `iteration`); t is on the 0-1000 scale.
- CFG-Cache (the unconditional stream): computed when i == 0, outside `uncond_window`, or when i % uncond_range
  == 0; there it caches the low / high band images of (uncond - cond) of the same step (passes/cfg.py). Otherwise
  it is rebuilt from this step's cond output: cond + s_L·low + s_H·high, where s_L (s_H) is multiplied by
  `alpha_low` (`alpha_high`) on every rebuilt step inside `low_window` (`high_window`) and reset to 1 by a
  computed step (the compounding of the official code and of diffusers). The model does not run.
- Feature reuse (the conditional stream, diffusers' choice): on steps whose uncond call is rebuilt, inside
  `attention_window` and with i % attention_range != 0, every block's self-attention output is extrapolated as
  F + w·(F - F_old) from the last two *computed* outputs (the official code; diffusers' two-slot cache also
  takes in the extrapolated ones, so its F_old can be an approximation); the gates, norms, cross-attention and
  MLP are computed.

Presets (`preset="latte" | "cogvideox" | "mochi"`): the official code's per-family step schedules (its sample
scripts) instead of diffusers' timestep windows, on the call index k of the stream; there self-attention is
extrapolated on the preset's steps whatever the uncond schedule (the official code), except under batched CFG,
where the cond-half cache (diffusers') allows it only on calls whose uncond half is rebuilt. A preset for another
family than the graph's is an error. Open-Sora, Open-Sora-Plan and Vchitect are not diffusers models, so they
have no preset.

Which call is which: the streams named "cond" / "uncond" with `fxcache.context`, else the first call of a step
is the conditional one and the second the unconditional one (the order of diffusers' Wan and Flux pipelines).
A pipeline that calls uncond first without naming the streams gets its *cond* call rebuilt from the uncond one:
the same approximation mirrored, which FasterCache does not do; name the streams there.

Batched CFG (`[uncond; cond]` in one call: CogVideoX, Latte, PixArt, SD3), recognised from the second call of a
generation on (one call per step, both halves of the latent equal): a computed call caches the bands of (uncond
half - cond half) and the cond half's self-attention; on an uncond-skip step only the cond half runs, through a
half-batch graph the runtime traces itself (runtime/halfbatch.py), its self-attention extrapolated by the
attention schedule, and the uncond half is rebuilt from it, as diffusers' FasterCache does. Deviation: the first
call of a generation is a plain computed call, so an uncond window that includes the second call's timestep skips
it one call later than diffusers (the default windows start far later). Where the half-batch graph cannot be
traced (a graph break before the blocks, say), batched CFG gets feature reuse only, with one warning.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import option_error
from ..families import family
from ..passes.modules import sites_with
from ..plan import CFG, CFG_BATCH, OUTPUT, Plan
from .base import Param, Policy, Unsupported, positive
from .fastercache_presets import PRESETS
from .forecast import linear
from .schedule import Schedule, window_param as _window


# The options a preset replaces.
SCHEDULE = ("attention_range", "attention_window", "attention_weight", "uncond_range", "uncond_window", "alpha_low",
            "low_window", "alpha_high", "high_window")


@dataclass
class FasterState:
    s_low: float = 1.0  # the band scales, compounded over rebuilt calls, reset by a computed one
    s_high: float = 1.0


class FasterCache(Policy):
    name = "fastercache"
    block_level = True
    batched_cfg = True
    params = {
        "attention_range": Param(2, int, "self-attention computed every this many calls inside its window",
                                 positive, ">= 1"),
        "attention_window": _window("where self-attention may be extrapolated", (-1.0, 681.0)),
        "attention_weight": Param(0.5, float, "w of F + w (F - F_old)", lambda v: 0 <= v <= 2, "0..2"),
        "uncond_range": Param(5, int, "uncond computed every this many calls inside its window", positive,
                              ">= 1"),
        "uncond_window": _window("where the uncond output may be rebuilt", (-1.0, 641.0)),
        "alpha_low": Param(1.1, float, "low-band scale per rebuilt step inside low_window", positive, "> 0"),
        "low_window": _window("where the low band is scaled", (99.0, 901.0)),
        "alpha_high": Param(1.1, float, "high-band scale per rebuilt step inside high_window", positive, "> 0"),
        "high_window": _window("where the high band is scaled", (-1.0, 301.0)),
        "preset": Param(None, str, "the official per-family step schedule instead of the timestep windows",
                        lambda v: v in PRESETS, " | ".join(PRESETS), optional=True),
    }

    def __init__(self, **options) -> None:
        super().__init__(**options)
        both = [k for k in SCHEDULE if k in options]
        if self.preset is not None and both:
            raise option_error(f"fxcache: option 'preset'={self.preset!r} sets FasterCache's schedule; it cannot be "
                               f"combined with {', '.join(repr(k) for k in both)}")

    def bind(self, d) -> None:
        if self.preset is not None and family(d) not in PRESETS[self.preset].families:
            raise option_error(f"fxcache: option 'preset'={self.preset!r} is for {self.preset} models; this graph "
                               f"is {family(d) or 'not of a known family'}; accepted presets: "
                               f"{', '.join(PRESETS)} (or none: diffusers' timestep windows)")
        self.attention = frozenset(sites_with(d, ("attn",)))
        self.why_not_cfg = d.why_not_rebuildable()
        if not self.attention and self.why_not_cfg:
            raise Unsupported(f"no self-attention module inside the blocks and {self.why_not_cfg}")
        self.any_attention = min(self.attention, key=str) if self.attention else None
        self.uncond_schedule = Schedule(self.uncond_range, warmup=1, window=tuple(self.uncond_window))
        self.attention_schedule = Schedule(self.attention_range, window=tuple(self.attention_window))
        self.low_schedule = Schedule(window=tuple(self.low_window))
        self.high_schedule = Schedule(window=tuple(self.high_window))
        self.cond_full = Plan(write=frozenset({OUTPUT}) | self.attention, label="full")
        self.batch_full = Plan(write=frozenset({CFG_BATCH}) | self.attention, label="full")

    def new_state(self) -> FasterState:
        return FasterState()

    def depth(self, site) -> int:
        return 2 if site in self.attention else 1

    def _k(self, i: int) -> int:
        return i if PRESETS[self.preset].zero_based else i + 1

    def _uncond_skipped(self, i: int, t) -> bool:
        """The uncond schedule: call i (0-based) at t is one whose uncond branch FasterCache rebuilds."""
        if self.preset is not None:
            return i > 0 and PRESETS[self.preset].uncond(self._k(i))
        return not self.uncond_schedule.due(i, t)

    def _scales(self, i: int, t) -> tuple[float, float]:
        """The factors of s_L and s_H on rebuilt call i."""
        if self.preset is not None:
            p, k = PRESETS[self.preset], self._k(i)
            return p.low(k), p.high(k)
        return (self.alpha_low if self.low_schedule.inside(i, t) else 1.0,
                self.alpha_high if self.high_schedule.inside(i, t) else 1.0)

    def _attention_due(self, i: int, t, rebuilt: bool) -> bool:
        """Self-attention may be extrapolated at call i: by diffusers' rule on calls whose uncond branch is
        rebuilt, inside the window, off the range; by a preset's rule on its steps (the official code's, whose
        feature reuse does not depend on the uncond schedule)."""
        if self.preset is not None:
            return PRESETS[self.preset].attention(self._k(i))
        return rebuilt and not self.attention_schedule.due(i, t)

    def _weight(self, i: int) -> float:
        return PRESETS[self.preset].weight(self._k(i)) if self.preset is not None else self.attention_weight

    def _extrapolation(self, call) -> tuple:
        """The weights of F + w (F - F_old) over the computed attention outputs held (one: reused as it is)."""
        return linear(self._weight(call.index)) if call.cached(self.any_attention) >= 2 else (1.0,)

    def plan(self, call, state: FasterState) -> Plan:
        i, t = call.index, call.t
        branch = call.role in ("uncond", "batched") and self.why_not_cfg is None
        bands = CFG if call.role == "uncond" else CFG_BATCH
        rebuild = branch and call.cached(bands) and self._uncond_skipped(i, t)
        if rebuild:
            f_low, f_high = self._scales(i, t)
            state.s_low *= f_low
            state.s_high *= f_high
        elif branch:
            state.s_low = state.s_high = 1.0
        if call.role == "uncond":
            if rebuild:
                return Plan(reuse=frozenset({CFG}), scales=(state.s_low, state.s_high), peer=call.peer, label="cfg")
            if self.why_not_cfg is None:
                return Plan(write=frozenset({CFG}), peer=call.peer, label="full")
            return self.cond_full
        if call.role == "batched" and self.why_not_cfg is None:
            return self._batched(call, state, rebuild)
        # The cond stream (or the only one, under batched CFG): attention is approximated only on steps that
        # pass the uncond schedule (whose uncond call is rebuilt, where it can be), as in diffusers.
        if not (self.attention and call.cached(self.any_attention)
                and self._attention_due(i, t, self._uncond_skipped(i, t))):
            return self.cond_full
        return Plan(forecast=self.attention, write=frozenset({OUTPUT}), coeffs=self._extrapolation(call),
                    label="forecast")

    def _batched(self, call, state: FasterState, rebuild: bool) -> Plan:
        """Batched CFG: a full call caches the bands of (uncond half - cond half) and the cond half's attention;
        on an uncond-skip step only the cond half runs (its attention extrapolated or computed by the attention
        schedule) and the uncond half is rebuilt from it. (The runtime keeps the cond half's attention values;
        values of the whole batch from an earlier call are dropped by their shape.)"""
        if not rebuild:
            return self.batch_full
        scales = (state.s_low, state.s_high)
        if self.attention and call.cached(self.any_attention) and self._attention_due(call.index, call.t, True):
            return Plan(forecast=self.attention, coeffs=self._extrapolation(call), scales=scales, half=True,
                        label="cfg+forecast")
        return Plan(write=self.attention, scales=scales, half=True, label="cfg")
