"""SeaCache (Chung et al., "SeaCache: Spectral-Evolution-Aware Cache for Accelerating Diffusion Models", CVPR 2026),
as diffusers 0.42.1 implements it (`hooks/sea_cache.py`, `SeaCacheConfig`; the paper's code repository
jiwoogit/SeaCache held only a README when this was written).

Each step the latent input is passed through the SEA filter (derived.py: an FFT over its frames and spatial axes,
a Wiener gain from the noise level sigma and a power-law prior |f|^-p, normalised to unit mean, the inverse FFT)
inside the probe variant; the distance to the previous step's filtered latent, mean|I - P| / mean|P| per sample,
is added to an accumulator; while it stays below `threshold` the block stack is skipped and its residual predicted
(order 1: linear in the step index from the last two computed residuals; order 0: the last one); otherwise the
step is computed and the accumulator cleared. The first `warmup_steps` and the last `cache_end_steps` steps are
computed, and at most `max_consecutive_skips` steps in a row are skipped (a forced step measures nothing: no
probe runs). Defaults are diffusers': threshold 0.25, residual order 1, 1 / 1 forced steps, 2 skips in a row,
p = 3.

Where the engine differs from diffusers:
- sigma is read from the timestep the model receives, t / 1000 (t itself where t <= 1: models that take t in
  [0, 1]); diffusers takes `scheduler.sigmas[i]` from the pipeline's cache context. Equal for flow-matching
  schedulers that pass t = 1000 sigma unrounded (FlowMatchEuler); UniPC rounds t to an integer, which moves
  sigma by < 1e-3. The flow-matching relation is assumed: on DDPM-style models (PixArt, DiT) and models whose t
  counts up from noise (Mochi, Lumina2, Z-Image) the gain uses a noise level that is not theirs.
- The step index is this stream's call count and N the `num_steps` option: without it the last steps are not
  forced (diffusers gets N from the pipeline).
- Each request of a batch decides alone (per_sample, the engine default; diffusers decides once per call, from
  the mean of the samples' distances). With per_sample=False a batch decides from sum|I - P| / sum|P| over
  the batch, equal to diffusers' mean of ratios for a batch of one. A batched-CFG request's distance is pooled
  over its uncond and cond rows; diffusers' Wan pipeline calls them apart, each its own context (as fxcache's
  separate streams).
- Any model with a latent input of rank >= 4 (channels at dim 1, spatial axes after it) and a timestep input;
  diffusers has adapters for Wan text-to-video and Cosmos3 only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import derived
from ..metrics import REL_L1
from ..plan import Plan, Stop, residual
from .base import Param, Policy, Unsupported, non_negative, positive
from .budget import LIMITS, BudgetState, ErrorBudget
from .forecast import StepForecast


def _limit(v) -> bool:
    return v >= 0


@dataclass
class SeaState:
    budget: BudgetState = field(default_factory=ErrorBudget.new)
    computed: list = field(default_factory=list)  # steps whose stack residual was written, newest first


class SeaCache(StepForecast, Policy):
    name = "seacache"
    params = {
        "threshold": Param(0.25, float, "accumulated SEA-filtered relative L1 that triggers a computed step",
                           non_negative, ">= 0"),
        "residual_order": Param(1, int, "0: reuse the last computed residual; 1: extrapolate it linearly in the "
                                "step index from the last two", lambda v: v in (0, 1), "0 or 1"),
        "warmup_steps": Param(1, int, "steps always computed at the start", non_negative, ">= 0",
                              aliases=("retention_steps", "warm_up")),
        "cache_end_steps": Param(1, int, "steps always computed at the end (needs the num_steps option)",
                                 non_negative, ">= 0"),
        "max_consecutive_skips": Param(2, int, "at most this many skipped steps in a row (0 or None: unlimited)",
                                       _limit, ">= 0 or None", optional=True,
                                       aliases=("max_consecutive_cached", "max_continuous_cached_steps",
                                                "max_skips")),
        "max_cached_steps": LIMITS["max_cached_steps"],
        "power_exp": Param(3.0, float, "exponent p of the clean signal's power prior |f|^-p", positive, "> 0"),
    }

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.forecast, self.order = ("taylor" if self.residual_order == 1 else "reuse"), 1
        self.budget = ErrorBudget(self.threshold, warmup_steps=self.warmup_steps,
                                  max_consecutive_skips=self.max_consecutive_skips or None,
                                  max_cached_steps=self.max_cached_steps)

    def bind(self, d) -> None:
        if d.hidden is None or d.timestep is None:
            raise Unsupported("SeaCache needs the model's latent and timestep inputs")
        latent, _ = d.latent_io()
        if latent is None or len(latent) < 4:
            raise Unsupported("the latent input is not an image or video latent (rank >= 4, channels at dim 1)")
        if not d.residual_ok(0, d.num_units):
            raise Unsupported("the block stack's output does not match its input")
        self.stack = residual(0, d.num_units)
        self.forecastable = frozenset({self.stack})
        self.site = derived.site("sea", power_exp=self.power_exp)
        self.stop = Stop("indicator", name=self.site.name)
        self.compute = Plan(write=frozenset({self.stack, self.site}), label="full")
        self.full_continuation = Plan(write=frozenset({self.stack}), start=self.stop, label="full")

    def new_state(self) -> SeaState:
        return SeaState()

    def forced(self, call) -> bool:
        """Computed without measuring: warm-up, the last steps, nothing to compare or reuse yet."""
        end = call.num_steps is not None and call.index >= call.num_steps - self.cache_end_steps
        return self.budget.forced(call) or end or not call.cached(self.stack) or not call.cached(self.site)

    def plan(self, call, state: SeaState) -> Plan:
        if self.forced(call) or not self.budget.can_skip_one(state.budget):
            self.budget.computed(state.budget)
            return self.computed(call, state, self.compute)
        # The probe is the filter alone; its guess is the skip (a wrong one wastes only the embedders and head).
        return Plan(write=frozenset({self.site}), measure=frozenset({(self.site, REL_L1)}), stop=self.stop,
                    label="probe", then=self._skip(call, state))

    def decide(self, call, state: SeaState) -> Plan:
        if self.budget.decide(state.budget, float(call.measured[(self.site, REL_L1)]))[0]:
            return self._skip(call, state)
        return self.computed(call, state, self.full_continuation)

    def _skip(self, call, state: SeaState) -> Plan:
        return self.skipped(call, state, self.forecastable, start=self.stop, label="skip")
