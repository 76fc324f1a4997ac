"""Offline profiling: run a model uncached over a few prompts and seeds and write ONE calibration file
(fxcache/calibration.py) that every policy reads through `options={"calibration": path}`.

    python -m fxcache.profile --target bench.profiling:reference --prompts 4 --seeds 1234 --steps 50 \\
        --out bench/reference/weights/calibration.json          # + calibration.png next to it

A target is `module:callable`; the callable takes no arguments and returns a `Target` (or a tuple
`(model, generate[, cfg])`): the transformer and a function `generate(model, prompt, seed, steps, guidance)` that
runs one whole generation of prompt index `prompt` from `seed`, calling `model` the way its pipeline does.
`cfg` says how: "separate" (two calls per step, cond first, then uncond) or "batched" (one call on
`[uncond; cond]`). Every generation is uncached; `generate` is called with the compiled model (pass 1) or with the
plain model carrying forward hooks (passes 2 and 3):

1. measure (fxcache's own engine, a recording policy, compiler "eager"): every call computes everything and
   writes and measures every site the policies read, so the numbers are the distances they see online:
   relative L1 vs the previous step of the model output (D_step, per stream), of the indicators TeaCache reads
   ("modulated_input", "timestep"), of the streams leaving units [0, i) for MixCache's block candidates i
   (`fxcache.policies.mixcache.candidate_blocks`), of every block's self-attention output (AdaCache's probe); the
   uncond output vs the cond output of the same step (D_cfg); MagCache's magnitude ratio of the stack residual.
2. statistics (forward hooks): the "distance tensor between the real output and the cached output" of each
   MixCache granularity, per step: step O_t - O_{t-1} (both streams pooled); cfg uncond_t - (cond_t + Delta_{t-1})
   with Delta = uncond - cond of the previous step; block i the streams leaving units [0, i) at t minus at t-1
   (cond pass). Per step its mean mu_t and std sigma_t.
3. impact (forward hooks): at every step t the granularity's value is perturbed with Gaussian noise
   N(mu-hat, sigma-hat), and I_t is the relative L1 between the perturbed and the unperturbed *guided*
   prediction uncond + g (cond - uncond) of that step: step, noise on both outputs; cfg, on the uncond output;
   block i, on the streams entering unit i in an extra cond forward (the uncond output then being the perturbed
   cond + this step's true Delta, as MixCache's block mode rebuilds it). The generation itself goes on unperturbed.

What is derived (prompts, seeds and, where a stream is named, streams pooled; "steps after warm-up" are the last
80 % of the steps, the paper's last 40 of 50):
- teacache[indicator]: TeaCache's own fit, np.polyfit(deg=4) of the per-step D_step (y) against the per-step
  relative L1 of the indicator (x), pooled over steps 2..N-1 of every generation and stream; "output" is the
  identity [1, 0]. The last step is left out: TeaCache always computes it, and a flow-matching sampler's jump to
  sigma = 0 there (D_step ~ 0.6 on the reference model, ten times any other step) would bend the whole fit.
- magcache[stream]: gamma_k averaged over generations, gamma_1 = 1.
- mixcache.theta / delta1 / delta2, the paper's section 3.5 as read here: per generation and stream, D_step
  (steps 2..N-1: the last step's jump is left out as above) is *stable* from the first step k whose value differs
  by at most `stable_tol` * D_step_k from each of the previous five (the steps after warm-up if that never
  happens); theta = the mean of D_step from k on; the deviations from theta from k on give a = theta - min and b = max - theta; delta1 = min(a, b),
  delta2 = max(a, b) (delta1 <= delta2, as the N-scaling rule needs). Each is averaged over generations/streams.
- mixcache.mu / sigma per granularity ("step", "cfg", "block:i"): mu-hat = the mean over steps of mu_t,
  sigma-hat = the mean of sigma_t over the steps after warm-up (averaged over generations first).
- mixcache.impact: "step" and "cfg" constants (the mean of I_t over the steps after warm-up), "block" one list
  per candidate cut i (one value per step, averaged over generations).
  The paper does not say whether the perturbed and the original outputs are compared at the perturbed step or at
  the end of the generation; this is the cheap, per-step reading (no generation is re-run from the perturbed
  step), and it measures how much a granularity's error moves the guided prediction of that step.
- adacache: per step the mean / 10th / 50th / 90th percentile / max of the self-attention probe distance over
  blocks, streams and generations, and the mean per block, to place AdaCache's codebook thresholds.
- curves: the per-step series the plot shows (null where a step has no value, e.g. step 1's distances).

The plot (matplotlib, PNG next to the JSON unless --plot says otherwise): distances per step (D_step, D_cfg, the
candidate blocks, the indicators, theta), MagCache ratios, the impact per granularity, and TeaCache's fits.
Numbers in the file are rounded to 6 significant digits, so that a rerun reproduces the file.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .calibration import FORMAT, VERSION, save

INDICATORS = ("modulated_input", "timestep")
WARMUP_FRACTION = 0.2  # steps before the last 80 %: excluded from sigma-hat and I_step / I_cfg
STABLE_WINDOW = 5


def save_mag_ratios(path: str | Path, streams: dict[str, list[float]]) -> None:
    """Write {stream: [gamma_1..gamma_N]} as MagCache's calibration file (gamma_1 = 1: no previous step); what
    `MagCache(calibrate=path)` records from one uncached generation."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"method": "magcache", "num_steps": max((len(v) for v in streams.values()), default=0),
            "streams": streams}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json_dumps(data) + "\n")
    tmp.replace(path)


def json_dumps(data) -> str:
    import json

    return json.dumps(data, indent=1)


# ----------------------------------------------------------------------------------------------------- targets


@dataclass
class Target:
    model: torch.nn.Module
    generate: Callable[..., Any]  # generate(model, prompt: int, seed: int, steps: int, guidance: float)
    cfg: str = "separate"  # "separate": cond call, then uncond call, per step | "batched": one call on [uncond; cond]
    prompts: int | None = None  # how many prompts `generate` knows (None: any index)
    name: str = ""


def load_target(spec: str) -> Target:
    """`module:callable` -> the Target that callable returns."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"fxcache.profile: --target must be 'module:callable', got {spec!r}")
    mod, _, attr = spec.partition(":")
    fn: Any = importlib.import_module(mod)
    for part in attr.split("."):
        fn = getattr(fn, part)
    got = fn()
    if isinstance(got, tuple):
        got = Target(*got)
    if not isinstance(got, Target):
        raise ValueError(f"fxcache.profile: {spec} returned {type(got).__name__}, not a Target or a tuple "
                         f"(model, generate[, cfg])")
    got.name = got.name or spec
    return got


def _first(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    raise TypeError(f"fxcache.profile: cannot find the output tensor in a {type(out).__name__}")


# ---------------------------------------------------------------------------------------------- pass 1: engine


def _recorder(cfg: str):
    from .plan import OUTPUT, Plan, Site, residual
    from .policies.base import Policy, Unsupported
    from .policies.mixcache import candidate_blocks

    class Recorder(Policy):
        """Every call full; writes and measures every site the calibration needs (not a user policy)."""

        name = "profile"

        def __init__(self) -> None:
            super().__init__()
            self.discovery = None
            self.records: dict[str, dict[str, dict[int, float]]] = {}  # stream -> key -> step -> value

        def bind(self, d) -> None:
            if self.discovery is not None and self.discovery.num_units != d.num_units:
                raise Unsupported("fxcache.profile records one block graph per model")
            self.discovery = d
            u = d.num_units
            self.stack = residual(0, u) if d.residual_ok(0, u) else None
            self.blocks = candidate_blocks(d)
            self.attn = sorted((s for s, m in d.modules.items() if m.role == "attn"), key=lambda s: (s.start, s.name))
            names = {OUTPUT: "d_step"}
            names.update({Site("indicator", name=n): f"indicator:{n}" for n in INDICATORS if n in d.indicators})
            names.update({Site("stream", 0, i): f"block:{i}" for i in self.blocks})
            names.update({s: f"attn:{s.start}:{s.name}" for s in self.attn})
            self.keys = {(s, "rel_l1"): k for s, k in names.items()}
            write = set(names)
            if self.stack is not None:
                write.add(self.stack)
                self.keys[(self.stack, "mag_ratio")] = "mag_ratio"
            if cfg == "batched":
                self.keys[(OUTPUT, "cfg_rel_l1")] = "d_cfg"
            self.first = Plan(write=frozenset(write),
                              measure=frozenset({(OUTPUT, "cfg_rel_l1")} if cfg == "batched" else ()))
            self.later = Plan(write=frozenset(write), measure=frozenset(self.keys))
            self.peer_key = (OUTPUT, "peer_rel_l1")
            self.keys[self.peer_key] = "d_cfg"

        def plan(self, call, state) -> Plan:
            plan = self.later if call.cached(OUTPUT) else self.first
            if cfg == "separate" and call.role == "uncond":  # the uncond call: its output vs this step's cond
                plan = replace(plan, measure=plan.measure | {self.peer_key}, peer=call.peer)
            return plan

        def observe(self, call, state, plan: Plan) -> None:
            rec = self.records.setdefault(call.stream, {})
            for key, value in call.measured.items():
                if key in self.keys:
                    rec.setdefault(self.keys[key], {})[call.step] = float(value)

    return Recorder()


def _measure(target: Target, generations, steps: int, guidance: float, bar):
    import fxcache

    from .backend import _compile

    rec = _recorder(target.cfg)
    engine = {"compiler": "eager", "num_steps": None, "max_variants": 64, "decision_log": 0}

    def backend(gm, example_inputs, **_):
        return _compile(gm, example_inputs, rec, engine)

    torch._dynamo.reset()
    cm = torch.compile(target.model, backend=backend)
    runs = []
    try:
        for prompt, seed in generations:
            rec.records = {}
            fxcache.reset(cm)
            target.generate(cm, prompt, seed, steps, guidance)
            if rec.discovery is None:
                raise RuntimeError("fxcache.profile: no list of transformer blocks found in the model's graph")
            runs.append({s: {k: [v.get(t) for t in range(1, steps + 1)] for k, v in r.items()}
                         for s, r in rec.records.items()})
            bar.update(1)
    finally:
        torch._dynamo.reset()
    return rec, runs


# ------------------------------------------------------------------------------------ passes 2 and 3: hooks


class _Tap:
    """Forward hooks on the plain model: the model output of each call (cond / uncond), and the streams leaving
    units [0, i) on the cond pass for each candidate cut i; optionally a perturbation added to them."""

    def __init__(self, target: Target, discovery, cuts: list[int]) -> None:
        self.model, self.cfg, self.cuts = target.model, target.cfg, cuts
        units = discovery.units
        self.blocks = {i: self.model.get_submodule(f"{units[i - 1].list_name}.{units[i - 1].index}") for i in cuts}
        self.calls = 0
        self.busy = False
        self.role = None
        self.captured: dict[int, list[torch.Tensor]] = {}
        self.capture = False
        self.perturb: tuple[int, Callable] | None = None  # (cut, tensor -> noise like it)
        self.on_output: Callable | None = None
        self.handles: list = []

    def __enter__(self):
        self.handles.append(self.model.register_forward_pre_hook(self._before))
        self.handles.append(self.model.register_forward_hook(self._after, with_kwargs=True))
        for i, m in self.blocks.items():
            self.handles.append(m.register_forward_hook(lambda mod, a, out, i=i: self._block(i, out)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def start(self) -> None:
        self.calls = 0

    def _before(self, module, args) -> None:
        if self.busy:
            return
        self.role = "batched" if self.cfg == "batched" else ("cond" if self.calls % 2 == 0 else "uncond")
        self.captured = {}

    def _after(self, module, args, kwargs, output) -> None:
        if self.busy:
            return
        step = self.calls if self.cfg == "batched" else self.calls // 2
        self.calls += 1
        out = _first(output).detach()
        self.on_output(step, self.role, out, args, kwargs)

    def _cond_part(self, t: torch.Tensor) -> torch.Tensor:
        return t.chunk(2)[1] if self.cfg == "batched" else t

    def _block(self, cut: int, out):
        tensors = [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)] \
            if isinstance(out, (tuple, list)) else []
        floats = [t for t in tensors if t.is_floating_point()]
        if self.perturb is not None and self.perturb[0] == cut:
            noise = self.perturb[1]

            def add(t):
                if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
                    return t
                if self.cfg == "batched":
                    u, c = t.chunk(2)
                    return torch.cat([u, c + noise(c)])
                return t + noise(t)

            return add(out) if isinstance(out, torch.Tensor) else type(out)(add(t) for t in out)
        if self.capture and not self.busy and self.role in ("cond", "batched"):
            self.captured[cut] = [self._cond_part(t).detach().clone() for t in floats]
        return None

    def rerun(self, args, kwargs, cut: int, noise: Callable) -> torch.Tensor:
        """The model output of this call again, with `noise` added to the streams entering unit `cut`."""
        self.busy, self.perturb = True, (cut, noise)
        try:
            return _first(self.model(*args, **kwargs)).detach()
        finally:
            self.busy, self.perturb = False, None


def _mean_std(parts: list[torch.Tensor]) -> tuple[float, float]:
    flat = torch.cat([p.reshape(-1).double() for p in parts])
    return float(flat.mean()), float(flat.std(unbiased=False))


def _rel(diff: torch.Tensor, ref: torch.Tensor) -> float:
    return float(diff.double().abs().mean() / ref.double().abs().mean().clamp_min(1e-12))


def _statistics(target: Target, tap: _Tap, generations, steps: int, guidance: float, bar):
    """Per generation: {granularity: {"mu": [per step], "sigma": [per step]}}."""
    runs = []
    for prompt, seed in generations:
        st: dict = {"prev": None}
        series = {g: {"mu": [None] * steps, "sigma": [None] * steps} for g in _granularities(tap.cuts)}

        def record(g, t, parts):
            if t < steps:
                series[g]["mu"][t], series[g]["sigma"][t] = _mean_std(parts)

        def on_output(t, role, out, args, kwargs):
            if role == "cond":
                st["cond"], st["streams"] = out, dict(tap.captured)
                return
            if role == "batched":
                u, c = out.chunk(2)
                streams = dict(tap.captured)
            else:
                u, c, streams = out, st["cond"], st["streams"]
            prev = st["prev"]
            if prev is not None:
                record("step", t, [c - prev["c"], u - prev["u"]])
                record("cfg", t, [u - (c + (prev["u"] - prev["c"]))])
                for i in tap.cuts:
                    record(f"block:{i}", t, [a - b for a, b in zip(streams[i], prev["streams"][i])])
            st["prev"] = {"c": c, "u": u, "streams": streams}

        tap.on_output, tap.capture = on_output, True
        tap.start()
        target.generate(target.model, prompt, seed, steps, guidance)
        tap.capture = False
        runs.append(series)
        bar.update(1)
    return runs


def _granularities(cuts) -> list[str]:
    return ["step", "cfg", *(f"block:{i}" for i in cuts)]


def _noise_fn(seed: int, mu: float, sigma: float) -> Callable:
    def noise(like: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        n = torch.randn(like.shape, generator=g, dtype=torch.float32) * sigma + mu
        return n.to(device=like.device, dtype=like.dtype)

    return noise


def _impact(target: Target, tap: _Tap, generations, steps: int, guidance: float, mu: dict, sigma: dict, bar):
    """Per generation: {granularity: [I_t per step]}."""
    runs = []
    for n, (prompt, seed) in enumerate(generations):
        series = {g: [None] * steps for g in _granularities(tap.cuts)}
        st: dict = {}

        def noise(t, tag, g):
            return _noise_fn((int(seed) * 1_000_003 + n * 10_007 + t * 101 + tag) % (2 ** 62), mu[g], sigma[g])

        def perturbed_cond(t, c, args, kwargs):
            nums = {}
            for k, i in enumerate(tap.cuts):
                out = tap.rerun(args, kwargs, i, noise(t, 3 + k, f"block:{i}"))
                cp = out.chunk(2)[1] if tap.cfg == "batched" else out
                nums[i] = (cp - c).double().abs().mean()
            return nums

        def on_output(t, role, out, args, kwargs):
            if role == "cond":
                st["cond"], st["nums"] = out, perturbed_cond(t, out, args, kwargs)
                return
            if role == "batched":
                u, c = out.chunk(2)
                nums = perturbed_cond(t, c, args, kwargs)
            else:
                u, c, nums = out, st["cond"], st["nums"]
            if t >= steps:
                return
            guided = u + guidance * (c - u)
            den = guided.double().abs().mean().clamp_min(1e-12)
            nc, nu = noise(t, 0, "step")(c), noise(t, 1, "step")(u)
            series["step"][t] = _rel(nu + guidance * (nc - nu), guided)
            series["cfg"][t] = _rel((1.0 - guidance) * noise(t, 2, "cfg")(u), guided)
            for i in tap.cuts:
                series[f"block:{i}"][t] = float(nums[i] / den)

        tap.on_output = on_output
        tap.start()
        target.generate(target.model, prompt, seed, steps, guidance)
        runs.append(series)
        bar.update(1)
    return runs


# ------------------------------------------------------------------------------------------------- derivation


def _nanmean(rows) -> list[float | None]:
    """Element-wise mean of equal-length lists with None for missing values."""
    a = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        m = np.nanmean(a, axis=0) if len(a) else np.array([])
    return [None if not np.isfinite(x) else float(x) for x in m]


def _mean(values) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def _warm(steps: int) -> int:
    return int(math.ceil(WARMUP_FRACTION * steps))


def _stability(d: list[float | None], tol: float) -> tuple[float, float, float, int] | None:
    """(theta, delta1, delta2, 1-based stable step) of one D_step series, or None if it is too short."""
    idx = [k for k, v in enumerate(d) if v is not None and math.isfinite(v)]
    if len(idx) < 2:
        return None
    vals = {k: d[k] for k in idx}
    stable = None
    for k in idx:
        prev = [k - j for j in range(1, STABLE_WINDOW + 1)]
        if all(p in vals for p in prev) and all(abs(vals[k] - vals[p]) <= tol * vals[k] for p in prev):
            stable = k
            break
    if stable is None:
        stable = max(idx[0], min(idx[-1], _warm(len(d))))
    after = [vals[k] for k in idx if k >= stable]
    theta = float(np.mean(after))
    a, b = theta - min(after), max(after) - theta
    return theta, min(a, b), max(a, b), stable + 1


def _fit(xs, ys, deg: int = 4) -> list[float] | None:
    pts = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    if len(pts) < 2:
        return None
    x, y = np.array(pts, dtype=float).T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [float(c) for c in np.polyfit(x, y, min(deg, len(pts) - 1))]


def _round(v):
    if isinstance(v, float):
        return float(f"{v:.6g}") if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_round(x) for x in v]
    return v


def fingerprint(model: torch.nn.Module) -> str:
    """The model's structure (class, parameter and buffer names, shapes, dtypes): which model, not which weights."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in sorted(list(model.named_parameters()) + list(model.named_buffers())):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    return "sha256:" + h.hexdigest()[:16]


def profile(target: Target | str, *, prompts: int = 4, seeds=(1234,), steps: int = 50, guidance: float = 5.0,
            out: str | Path | None = None, plot: str | Path | None = None, stable_tol: float = 0.1,
            progress: bool = True) -> dict:
    """Profile `target` (a Target or 'module:callable') and return the calibration; write it to `out` (and the
    plot to `plot`) when given. Calls `torch._dynamo.reset()` before and after its compiled pass."""
    from tqdm.auto import tqdm

    from .families import family
    from .policies.base import Unsupported

    if isinstance(target, str):
        target = load_target(target)
    if target.cfg not in ("separate", "batched"):
        raise ValueError(f"fxcache.profile: Target.cfg must be 'separate' or 'batched', got {target.cfg!r}")
    if prompts < 1 or steps < 2 or not seeds:
        raise ValueError("fxcache.profile: needs prompts >= 1, steps >= 2 and at least one seed")
    if target.prompts is not None and prompts > target.prompts:
        raise ValueError(f"fxcache.profile: the target has {target.prompts} prompts, asked for {prompts}")
    generations = [(p, int(s)) for p in range(prompts) for s in seeds]
    bar = tqdm(total=3 * len(generations), desc="profile", disable=not progress, unit="gen")
    with torch.no_grad():
        bar.set_postfix_str("measure")
        try:
            rec, measured = _measure(target, generations, steps, guidance, bar)
        except Unsupported as e:
            raise RuntimeError(f"fxcache.profile: {e}") from None
        d = rec.discovery
        cuts = list(rec.blocks)
        with _Tap(target, d, cuts) as tap:
            bar.set_postfix_str("statistics")
            stats = _statistics(target, tap, generations, steps, guidance, bar)
            mu, sigma, mu_curves, sigma_curves = {}, {}, {}, {}
            for g in _granularities(cuts):
                mu_curves[g] = _nanmean([r[g]["mu"] for r in stats])
                sigma_curves[g] = _nanmean([r[g]["sigma"] for r in stats])
                mu[g] = _mean(mu_curves[g]) or 0.0
                sigma[g] = _mean(sigma_curves[g][_warm(steps):]) or _mean(sigma_curves[g]) or 0.0
            bar.set_postfix_str("impact")
            impacts = _impact(target, tap, generations, steps, guidance, mu, sigma, bar)
    bar.close()

    streams = sorted({s for r in measured for s in r})
    def series(key):  # every (generation, stream) series of `key`
        return [r[s][key] for r in measured for s in r if key in r[s]]

    teacache = {"output": [1.0, 0.0]}
    fit_steps = slice(0, steps - 1)  # the last step is left out: TeaCache always computes it (see the docstring)
    for name in INDICATORS:
        xs = [x for s in series(f"indicator:{name}") for x in s[fit_steps]]
        if xs:
            ys = [y for r in measured for s in r if f"indicator:{name}" in r[s] for y in r[s]["d_step"][fit_steps]]
            fitted = _fit(xs, ys)
            if fitted is not None:
                teacache[name] = fitted
    magcache = {}
    for s in streams:
        rows = [r[s]["mag_ratio"] for r in measured if s in r and "mag_ratio" in r[s]]
        if rows:
            magcache[s] = [1.0] + [v if v is not None else 1.0 for v in _nanmean(rows)[1:]]
    stab = [x for x in (_stability(d_[fit_steps], stable_tol) for d_ in series("d_step")) if x is not None]
    impact_curves = {g: _nanmean([r[g] for r in impacts]) for g in _granularities(cuts)}
    w = _warm(steps)
    mixcache = {
        "theta": float(np.mean([x[0] for x in stab])) if stab else 0.0,
        "delta1": float(np.mean([x[1] for x in stab])) if stab else 0.0,
        "delta2": float(np.mean([x[2] for x in stab])) if stab else 0.0,
        "stable_step": [x[3] for x in stab],
        "blocks": cuts,
        "mu": mu,
        "sigma": sigma,
        "impact": {"step": _mean(impact_curves["step"][w:]) or 0.0,
                   "cfg": _mean(impact_curves["cfg"][w:]) or 0.0,
                   "block": {str(i): [v or 0.0 for v in impact_curves[f"block:{i}"]] for i in cuts}},
    }
    attn_keys = sorted({k for r in measured for s in r for k in r[s] if k.startswith("attn:")},
                       key=lambda k: (int(k.split(":")[1]), k))
    per_step = {"mean": [], "p10": [], "p50": [], "p90": [], "max": []}
    for t in range(steps):
        v = [x for k in attn_keys for s in series(k) for x in [s[t]] if x is not None and math.isfinite(x)]
        for name, f in (("mean", np.mean), ("p10", lambda a: np.percentile(a, 10)),
                        ("p50", lambda a: np.percentile(a, 50)), ("p90", lambda a: np.percentile(a, 90)),
                        ("max", np.max)):
            per_step[name].append(float(f(v)) if v else None)
    adacache = {
        "metric": "relative L1 of each block's self-attention output vs the previous step",
        "sites": [{"block": int(k.split(":")[1]), "module": d.modules[s].path, "temporal": d.modules[s].temporal}
                  for k in attn_keys for s in rec.attn if f"attn:{s.start}:{s.name}" == k],
        "per_step": per_step,
        "per_block": {k.split(":", 1)[1]: _mean([x for s in series(k) for x in s]) for k in attn_keys},
    }
    curves = {"d_step": _nanmean(series("d_step")), "d_cfg": _nanmean(series("d_cfg"))}
    for i in cuts:
        curves[f"block:{i}"] = _nanmean(series(f"block:{i}"))
    for name in INDICATORS:
        if series(f"indicator:{name}"):
            curves[f"indicator:{name}"] = _nanmean(series(f"indicator:{name}"))
    for g in _granularities(cuts):
        curves[f"mu:{g}"], curves[f"sigma:{g}"], curves[f"impact:{g}"] = mu_curves[g], sigma_curves[g], \
            impact_curves[g]
    # TeaCache fit points, for the plot: (indicator change, output change) pairs
    for name in INDICATORS:
        if name in teacache:
            curves[f"teacache_x:{name}"] = [x for s in series(f"indicator:{name}") for x in s[fit_steps]]
            curves[f"teacache_y:{name}"] = [y for r in measured for s in r if f"indicator:{name}" in r[s]
                                            for y in r[s]["d_step"][fit_steps]]
    model = target.model
    data = {
        "format": FORMAT, "version": VERSION,
        "model": {"class": type(model).__name__,
                  "block": d.units[0].module_type.rsplit(".", 1)[-1].strip("'>"),
                  "family": family(d), "num_units": d.num_units, "fingerprint": fingerprint(model)},
        "run": {"target": target.name, "num_steps": steps, "prompts": prompts, "seeds": [int(s) for s in seeds],
                "guidance_scale": float(guidance), "cfg": target.cfg, "streams": streams,
                "stable_tol": stable_tol, "warmup_fraction": WARMUP_FRACTION, "torch": torch.__version__.split("+")[0]},
        "teacache": teacache, "magcache": magcache, "mixcache": mixcache, "adacache": adacache, "curves": curves,
    }
    data = _round(data)
    if out is not None:
        save(out, data)
    if plot is not None:
        save_plot(data, plot)
    return data


# ----------------------------------------------------------------------------------------------------------- plot


def save_plot(data: dict, path: str | Path) -> Path:
    """Four panels: distances per step, MagCache ratios, impact per granularity, TeaCache's fits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def arr(v):
        return np.array([np.nan if x is None else x for x in v], dtype=float)

    c, mix = data["curves"], data["mixcache"]
    n = data["run"]["num_steps"]
    steps = np.arange(1, n + 1)
    fig, ax = plt.subplots(2, 2, figsize=(13, 9))
    a = ax[0, 0]
    a.plot(steps, arr(c["d_step"]), "k-", lw=2, label="D_step (output)")
    if any(x is not None for x in c.get("d_cfg", [])):
        a.plot(steps, arr(c["d_cfg"]), "r-", lw=2, label="D_cfg (uncond vs cond)")
    for i in mix["blocks"]:
        a.plot(steps, arr(c[f"block:{i}"]), "--", label=f"D_block {i} (streams after unit {i - 1})")
    for name in INDICATORS:
        if f"indicator:{name}" in c:
            a.plot(steps, arr(c[f"indicator:{name}"]), ":", lw=2, label=f"indicator {name}")
    ada = data["adacache"]["per_step"]
    if any(x is not None for x in ada["mean"]):
        a.fill_between(steps, arr(ada["p10"]), arr(ada["p90"]), color="0.8", alpha=0.6,
                       label="self-attn p10-p90 (AdaCache)")
    a.axhline(mix["theta"], color="k", lw=0.8, ls="-.", label=f"theta = {mix['theta']:.3g}")
    a.set_yscale("log")
    a.set(title="relative L1 vs the previous step", xlabel="step")
    a.legend(fontsize=7)
    a = ax[0, 1]
    for s, r in data["magcache"].items():
        a.plot(np.arange(1, len(r) + 1), r, label=s)
    a.axhline(1.0, color="0.5", lw=0.8)
    a.set(title="MagCache ratios gamma_k", xlabel="step")
    a.legend(fontsize=8)
    a = ax[1, 0]
    imp = mix["impact"]
    a.axhline(imp["step"], color="k", lw=2, label=f"I_step = {imp['step']:.3g}")
    a.axhline(imp["cfg"], color="r", lw=2, label=f"I_cfg = {imp['cfg']:.3g}")
    a.plot(steps, arr(c["impact:step"]), "k:", lw=0.8)
    a.plot(steps, arr(c["impact:cfg"]), "r:", lw=0.8)
    for i, v in imp["block"].items():
        a.plot(steps, arr(v), "--", label=f"I_block {i}")
    a.set_yscale("log")
    a.set(title="impact: relL1 of the guided prediction under N(mu, sigma) noise", xlabel="step")
    a.legend(fontsize=8)
    a = ax[1, 1]
    for name in INDICATORS:
        if f"teacache_x:{name}" in c:
            x, y = arr(c[f"teacache_x:{name}"]), arr(c[f"teacache_y:{name}"])
            pts = a.scatter(x, y, s=6, alpha=0.5, label=f"{name}")
            ok = np.isfinite(x)
            if ok.any():
                xs = np.linspace(np.nanmin(x), np.nanmax(x), 100)
                a.plot(xs, np.poly1d(data["teacache"][name])(xs), color=pts.get_facecolor()[0])
    a.set(title="TeaCache: output change vs indicator change (+ fit)", xlabel="relL1 indicator",
          ylabel="relL1 output")
    a.legend(fontsize=8)
    m = data["model"]
    fig.suptitle(f"{m['class']} ({m['num_units']} units), {n} steps, {data['run']['prompts']} prompts x "
                 f"{len(data['run']['seeds'])} seeds, g = {data['run']['guidance_scale']}, cfg {data['run']['cfg']}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------------ CLI


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fxcache.profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True,
                    help="module:callable returning a Target (e.g. bench.profiling:reference)")
    ap.add_argument("--prompts", type=int, default=4, help="prompt indices 0..N-1 (default 4)")
    ap.add_argument("--seeds", default="1234", help="comma-separated seeds (default 1234)")
    ap.add_argument("--steps", type=int, default=50, help="sampler steps (default 50)")
    ap.add_argument("--guidance", type=float, default=5.0, help="CFG scale g (default 5.0)")
    ap.add_argument("--out", required=True, type=Path, help="calibration JSON to write")
    ap.add_argument("--plot", type=Path, default=None, help="PNG to write (default: --out with .png)")
    ap.add_argument("--no-plot", action="store_true", help="write no plot")
    ap.add_argument("--stable-tol", type=float, default=0.1,
                    help="D_step is stable once it differs by at most this fraction from each of the previous "
                         "five steps (default 0.1)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    plot = None if args.no_plot else (args.plot or args.out.with_suffix(".png"))
    data = profile(args.target, prompts=args.prompts, seeds=seeds, steps=args.steps, guidance=args.guidance,
                   out=args.out, plot=plot, stable_tol=args.stable_tol, progress=not args.quiet)
    mix = data["mixcache"]
    print(f"wrote {args.out}" + (f" and {plot}" if plot else ""))
    print(f"theta {mix['theta']:.4g}  delta1 {mix['delta1']:.4g}  delta2 {mix['delta2']:.4g}  "
          f"I_step {mix['impact']['step']:.4g}  I_cfg {mix['impact']['cfg']:.4g}  blocks {mix['blocks']}")


if __name__ == "__main__":  # run the imported module's main: targets build `fxcache.profile.Target`s, not ours
    from fxcache.profile import main as _main

    _main()
