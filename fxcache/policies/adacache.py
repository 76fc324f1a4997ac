"""AdaCache (Kahatapitiya et al., ICCV 2025; AdaCache-DiT/AdaCache, Open-Sora 1.2's STDiT3): a content-dependent
schedule of computed steps, decided at a probe (the paper's Section 3 and the official code's `adacache` module).

What is skipped. On a skipped step every block of the official model adds its cached attention residual A_res and
its cached cross-attention + MLP residual M_res; all blocks skip or compute together. Every diffusers block is
`x + attn residual + cross residual + mlp residual`, so adding each block's cached residuals in turn is the same
as adding the whole stack's cached residual `residual(0, U)`, written on every computed step: a skipped step runs
the prefix and the suffix only (up to float rounding of the sum, this is exactly the official skip).

Schedule (per stream): `rate` starts at 1 and `prev_compute_step` at 0; step k (1-based) is computed iff
k == prev_compute_step + rate, or k is 1, N - 1 or N, with N = the `num_steps` option (Call.num_steps). Without
`num_steps` only step 1 is forced: the last two steps follow the schedule like the others (the rest is unchanged).
The test is `k >= prev + rate`, the same in every schedule this policy makes, and safe when the runtime restarted a
stream.

Decision, on every computed step that has a reference (not the first one):
1. d = ||r - c||_1 / ||c||_1, with r the probe's value and c its value at the previous computed step (sums over all
   elements of the batch: the engine's "rel_l1" metric, one host read);
2. d /= the number of steps since the previous computed step;
3. several probes: the mean of their d;
4. MoReg (`moreg=True`; off by default, as in the official `sample_adacache.py`): inside the window
   moreg_steps[0] <= k <= moreg_steps[1], m = mean over strides s of ||r[f+s] - r[f]||_1 / (||r[f+s]||_1 +
   ||r[f]||_1) (r's tokens shifted by s latent frames), then m = ((m / h0) ** h1) / h2 with moreg_hyp = (h0, h1,
   h2) = (0.385, 8, 1); outside it m = 1;
5. g = mograd_mul * (m - prev_moreg) / (steps since the previous computed step), prev_moreg <- m, m <- m + |g|
   (mograd_mul = 10; prev_moreg starts at 1);
6. d *= m;
7. codebook: the rate of the first threshold (ascending) with d < threshold, else the last rate (the official
   code tests the first five thresholds of its six-entry codebooks, which is the same rule for those);
8. the new rate applies from the next step on.

Options and defaults:
- `codebook`: "100" {0.03: 12, 0.05: 10, 0.07: 8, 0.09: 6, 0.11: 4, 1.0: 3} (official 100-step default),
  "30-fast" {0.08: 6, 0.16: 5, 0.24: 4, 0.32: 3, 0.40: 2, 1.0: 1}, "30-slow" {0.08: 3, 0.16: 2, 0.24: 1, 0.32: 1,
  0.40: 1, 1.0: 1}, an explicit {threshold: rate} mapping (used as given: thresholds finite and > 0, rates ints
  >= 1; sorted by threshold), or "auto" (default): "100" when N >= 55 (about the geometric mean of 30 and 100),
  else "30-slow" (the one that stays closer to the uncached run; "30-fast" trades fidelity for speed); "30-slow"
  when N is unknown. A preset is rescaled to N when N is known and differs from its step count P: thresholds
  times P / N, rates times N / P rounded down (at least 1). Why: d is a per-step distance, which for the same
  trajectory grows about as 1 / N, and a rate is a number of steps, which grows as N; the paper's own presets are
  related that way (the 30-step thresholds 0.08-0.40 are 2.7-3.6 times the 100-step 0.03-0.11, about 100 / 30;
  the fast 30-step rates 6, 5, 4, 3, 2, 1 are the 100-step ones halved and rounded down). Rounding down keeps the
  rescaled schedule no faster than the preset's. With N = 30 or 100 the presets are used exactly.
- `probe_site`: "t-attn" (default, official), "s-attn" or "ca-mlp". They map to the module sites inside blocks
  (passes/modules.py): "t-attn" the self-attention module of a temporal block (role "attn", temporal), "s-attn"
  that of a spatial one (role "attn", not temporal), "ca-mlp" the cross-attention and MLP modules of the block
  (roles "cross" and "mlp"; the MLP alone where the block has no cross-attention). On a model without temporal
  modules (every diffusers video DiT but Latte: Wan, CogVideoX, HunyuanVideo and LTX attend over space and time
  at once) "t-attn" falls back to the self-attention, which is where those models mix frames.
  `describe()` shows the resolved sites.
- `probe_block`: "auto" (default): the official temporal block 13 of Open-Sora's 28, rescaled to this model:
  among the units that hold the probe's site (only the temporal units for "t-attn" where there are some), the one
  at position floor(13 * n / 28 + 0.5), at most n - 1. Or a unit index (the graph's unit numbering,
  `fxcache.explain`), or a list of them: several probes, whose distances are averaged (step 3). A unit without the
  site raises `Unsupported` (the backend falls back with a warning).
- `moreg` (False), `moreg_steps` ("auto": the official (4, 26) of 30 steps, or (10, 90) of 100 when the codebook
  is "100" or N >= 55 with an explicit mapping, each end times N / P rounded half up when N is known; or an explicit
  (first, last) pair of 1-based steps), `moreg_strides` ((1,)), `moreg_hyp` ((0.385, 8, 1); the official tuple's
  unused 4th entry is accepted and ignored), `mograd_mul` (10), `tokens_per_frame` (None: derived from the graph).
- `forecast` / `order` (StepForecast): what a skipped step adds, the cached residual ("reuse", the method) or a
  Taylor / FoCa forecast of it (an fxcache extension, off by default).

MoReg's motion term is computed inside the compiled variant (metric "motion" of
fxcache/metrics.py, output j of the probe site, S tokens per latent frame along its token axis, stride s), as
num / den sums that the runtime reads with the distances in the same host read. S comes from the graph: the latent
input (`Discovery.hidden`) must be a 5-D video, (B, C, F, H, W) or (B, F, C, H, W); the probe output is (B, F' * S,
D) with S = (H / p)(W / p) and F' = F / pt frames for a temporal patch pt dividing F and a square spatial patch p
dividing H and W (on the probe's longest output that matches: the smallest pt, frame axis 2 before 1, then the
smallest p), or, in a temporal block's layout (B * S, F', D), S = 1 (Latte). Image models, layouts that match
nothing, symbolic (dynamic) shapes and latents with at most max(moreg_strides) frames raise an OptionError;
`tokens_per_frame` overrides the derivation for (B, L, D) outputs.

Deviations from the official code (all documented choices, none changes the method's rule):
- The probe is the attention / MLP module's output, before the block's gate: the official A_res is gate_msa *
  attn(...) (the gate lives outside the module site, so measuring after it would need a new site kind). For
  "ca-mlp" the official measures the sum cross + gate_mlp * mlp; here the cross and MLP distances are two probes,
  averaged by step 3's rule, and MoReg reads the MLP. On models whose first output of a module is the text part
  (CogVideoX's joint attention), "rel_l1" reads that first output (the engine's convention); MoReg reads the
  longest output whose shape fits the video layout.
- Steps 2 and 5 divide by the steps since the previous computed step; the official divides by the current rate.
  They differ only on a forced step (N - 1) that comes before prev + rate, whose decision cannot change the
  schedule (step N is forced anyway).
- Models that call the transformer once per CFG branch (Wan) keep one schedule per stream (the
  convention fxcache follows for separate calls); batched-CFG models decide once for both halves, as the official code does.
- A non-finite distance (the runtime found NaN / inf) sets the rate to 1: the next step computes.
- State lives in each stream's `new_state()` and starts over with every generation (the runtime detects them); the
  official blocks reset their counters when the step count reaches N.
- The probe block is rescaled to the model's depth (above); the codebook presets to its step count (above).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import option_error
from ..metrics import REL_L1, Metric, metric
from ..passes.nodes import example
from ..plan import Plan, Site, residual
from .base import Param, Policy, Unsupported, non_negative, real
from .forecast import StepForecast

CODEBOOKS = {  # name -> (step count the preset was tuned for, {threshold: rate})
    "100": (100, {0.03: 12, 0.05: 10, 0.07: 8, 0.09: 6, 0.11: 4, 1.00: 3}),
    "30-fast": (30, {0.08: 6, 0.16: 5, 0.24: 4, 0.32: 3, 0.40: 2, 1.00: 1}),
    "30-slow": (30, {0.08: 3, 0.16: 2, 0.24: 1, 0.32: 1, 0.40: 1, 1.00: 1}),
}
MOREG_STEPS = {30: (4, 26), 100: (10, 90)}
PROBE_SITES = ("t-attn", "s-attn", "ca-mlp")
AUTO_100_FROM = 55  # N from which "auto" takes the 100-step preset (about sqrt(30 * 100))
OFFICIAL_BLOCK, OFFICIAL_DEPTH = 13, 28  # cache_loc=[13] among Open-Sora STDiT3's 28 temporal blocks


def _half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _codebook_ok(v) -> bool:
    if isinstance(v, str):
        return v == "auto" or v in CODEBOOKS
    return (isinstance(v, dict) and len(v) > 0
            and all(real(t) and math.isfinite(t) and t > 0 for t in v)
            and all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in v.values()))


def _index_ok(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _block_ok(v) -> bool:
    if isinstance(v, str):
        return v == "auto"
    if isinstance(v, (list, tuple)):
        return len(v) > 0 and all(_index_ok(x) for x in v)
    return _index_ok(v)


def _steps_ok(v) -> bool:
    if isinstance(v, str):
        return v == "auto"
    return len(v) == 2 and all(_index_ok(x) and x >= 1 for x in v) and v[0] <= v[1]


def _strides_ok(v) -> bool:
    return len(v) > 0 and all(_index_ok(x) and x >= 1 for x in v)


def _hyp_ok(v) -> bool:
    return (len(v) in (3, 4) and all(real(x) and math.isfinite(x) for x in v) and v[0] > 0 and v[2] > 0)


def _shape(node) -> tuple | None:
    shape = getattr(example(node), "shape", None)
    return tuple(shape) if shape is not None else None


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def lookup(codebook: list[tuple[float, int]], d: float) -> int:
    """The rate of the first threshold (ascending) with d < threshold, else the last rate; NaN: 1."""
    if not math.isfinite(d):
        return 1
    for threshold, rate in codebook:
        if d < threshold:
            return rate
    return codebook[-1][1]


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
        "codebook": Param("auto", (str, dict), "distance thresholds -> rates", _codebook_ok,
                          "'auto', '100', '30-fast', '30-slow' or a non-empty {threshold: rate} mapping with "
                          "finite thresholds > 0 and int rates >= 1"),
        "probe_site": Param("t-attn", str, "which residual the distance is measured on",
                            lambda v: v in PROBE_SITES, " | ".join(PROBE_SITES)),
        "probe_block": Param("auto", (str, int, list, tuple), "the probe block(s): unit indices",
                             _block_ok, "'auto', a unit index >= 0 or a non-empty list of them"),
        "moreg": Param(False, bool, "motion regularisation of the distance"),
        "moreg_steps": Param("auto", (str, list, tuple), "1-based steps (first, last) where MoReg applies",
                             _steps_ok, "'auto' or (first, last) with 1 <= first <= last"),
        "moreg_strides": Param((1,), (list, tuple), "frame strides of the motion term", _strides_ok,
                               "a non-empty list of ints >= 1"),
        "moreg_hyp": Param((0.385, 8.0, 1.0), (list, tuple), "(h0, h1, h2): m = ((m / h0) ** h1) / h2", _hyp_ok,
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
        self.motion: list[tuple[Site, Metric]] = []

    # ------------------------------------------------------------------------------------------------ binding

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
            chosen = [units[min(len(units) - 1, _half_up(OFFICIAL_BLOCK * len(units) / OFFICIAL_DEPTH))]]
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

    def _motion(self, d) -> list[tuple[Site, str]]:
        """MoReg's metrics: one "motion" (S tokens per frame, a stride, an output) per stride, on the last probe."""
        def refuse(why: str):
            return option_error(f"fxcache: option 'moreg' of policy 'adacache' cannot be used here: {why}")

        latent = _shape(d.placeholders[d.hidden]) if d.hidden is not None else None
        if latent is None:
            raise refuse("no latent input was found in the graph")
        if len(latent) != 5:
            raise refuse(f"the latent input is {len(latent)}-D; MoReg needs a video model (a 5-D latent, "
                         f"(B, C, F, H, W) or (B, F, C, H, W))")
        site = self.probes[-1]
        outs = [_shape(o) for o in d.modules[site].outputs]
        if not all(isinstance(x, int) for x in latent) or not all(
                s is not None and all(isinstance(x, int) for x in s) for s in outs):
            raise refuse("the graph has symbolic (dynamic) shapes; MoReg's frame layout is fixed at compile time")
        strides = [int(s) for s in self.moreg_strides]
        found = self._layout(latent, outs, max(strides))
        if found is None:
            need = f"more than {max(strides)} latent frames (moreg_strides={tuple(strides)}) and "
            raise refuse(f"the probe {site} (outputs {outs}) does not hold the latent's frames ({latent}) in a "
                         f"layout MoReg knows; it needs {need}tokens in (B, frames * S, D) or (B * S, frames, D) "
                         f"order (option 'tokens_per_frame' sets S for (B, L, D) outputs)")
        j, per_frame = found
        return [(site, metric("motion", per_frame=per_frame, stride=s, output=j)) for s in strides]

    def _layout(self, latent: tuple, outs: list, stride: int) -> tuple[int, int] | None:
        """(output index, tokens per frame along its token axis): the longest output of the probe that holds
        more than `stride` latent frames in a known order; for it, the smallest temporal patch, frame axis 2
        before 1, then the smallest spatial patch."""
        b, h, w = latent[0], latent[-2], latent[-1]
        order = sorted((j for j, shape in enumerate(outs) if shape is not None and len(shape) == 3),
                       key=lambda j: (-outs[j][1], j))
        for j in order:
            n0, length = outs[j][0], outs[j][1]
            if self.tokens_per_frame is not None:
                if n0 == b and length % self.tokens_per_frame == 0 and length // self.tokens_per_frame > stride:
                    return j, self.tokens_per_frame
                continue
            for pt in range(1, max(latent[1], latent[2]) + 1):
                for axis in (2, 1):
                    frames = latent[axis]
                    if frames % pt or frames // pt <= stride:
                        continue
                    f = frames // pt
                    for p in _divisors(math.gcd(h, w)):
                        s = (h // p) * (w // p)
                        if n0 == b and length == f * s:
                            return j, s
                        if n0 == b * s and length == f:  # a temporal block: (B * S, frames, D)
                            return j, 1
        return None

    # ----------------------------------------------------------------------------------------------- schedule

    def table(self, n: int | None) -> tuple[list[tuple[float, int]], tuple[int, int]]:
        """(codebook as ascending (threshold, rate) pairs, MoReg window) for a run of `n` steps (None: unknown)."""
        if n not in self._tables:
            if isinstance(self.codebook, dict):
                book = sorted((float(t), int(r)) for t, r in self.codebook.items())
                p = 100 if n is not None and n >= AUTO_100_FROM else 30
            else:
                name = self.codebook
                if name == "auto":
                    name = "100" if n is not None and n >= AUTO_100_FROM else "30-slow"
                p, preset = CODEBOOKS[name]
                if n is None or n == p:
                    book = sorted(preset.items())
                else:
                    book = sorted((t * p / n, max(1, r * n // p)) for t, r in preset.items())
            if self.moreg_steps != "auto":
                window = (int(self.moreg_steps[0]), int(self.moreg_steps[1]))
            else:
                lo, hi = MOREG_STEPS[p]
                window = (lo, hi) if n is None else (max(1, _half_up(lo * n / p)), _half_up(hi * n / p))
            self._tables[n] = (book, window)
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
        text = super().describe()
        if self.probes:
            text += f"; probes {', '.join(map(str, self.probes))}"
        if self.motion:
            text += f"; motion {', '.join(str(m) for _, m in self.motion)}"
        return text
