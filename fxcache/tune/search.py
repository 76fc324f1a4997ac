"""The search of `python -m fxcache.tune` (see the package docstring): candidates, their measurement against
uncached references, and the choice."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import calibration as calibration_file
from .. import stats
from ..backend import backend
from ..policies import POLICIES
from ..profile import Target, load_target, profile
from .plot import save_plot

# Thresholds per policy, most cautious first (the pruning in `search` relies on that order); the options of each
# are the policy's own names. A forecast is tried off and on for the step-level policies that take one.
GRID = {
    "fbcache": [{"threshold": t} for t in (0.02, 0.03, 0.05, 0.08, 0.12, 0.2)],
    "teacache": [{"threshold": t} for t in (0.02, 0.03, 0.05, 0.1, 0.15, 0.2, 0.3)],
    "magcache": [{"threshold": t, "max_skips": k} for t, k in ((0.02, 2), (0.04, 2), (0.06, 3), (0.12, 4),
                                                                (0.24, 6))],
    "seacache": [{"threshold": t} for t in (0.05, 0.1, 0.15, 0.25, 0.4)],
    "easycache": [{"threshold": t} for t in (0.01, 0.025, 0.05, 0.1)],
    "taylorseer": [{"interval": n} for n in (2, 3, 4, 5, 6)],
}
FORECASTS = {"fbcache": (None, "taylor"), "teacache": (None, "taylor"), "magcache": (None, "taylor")}
CALIBRATED = {"magcache"}  # needs the calibration file's constants


@dataclass(frozen=True)
class Candidate:
    policy: str
    settings: tuple  # (name, value) pairs
    forecast: str | None = None

    @property
    def options(self) -> dict:
        out = {"policy": self.policy, **dict(self.settings)}
        return out | ({"forecast": self.forecast} if self.forecast else {})

    @property
    def family(self) -> tuple:
        return self.policy, self.forecast

    @property
    def label(self) -> str:
        return " ".join([self.policy, *(f"{k}={v}" for k, v in self.settings), *([self.forecast] if self.forecast
                                                                                  else [])])


def candidates(calibration: dict | None = None, policies=None) -> list[Candidate]:
    """Every candidate, grouped by (policy, forecast), each group from its most cautious setting up."""
    out = []
    for policy, grid in GRID.items():
        if policy not in POLICIES or (policies is not None and policy not in policies):
            continue
        if policy in CALIBRATED and not (calibration or {}).get(policy):
            continue
        for forecast in FORECASTS.get(policy, (None,)):
            out += [Candidate(policy, tuple(sorted(g.items())), forecast) for g in grid]
    return out


@dataclass
class Point:
    """One candidate measured on one split."""
    label: str
    options: dict
    psnr: list = field(default_factory=list)  # per clip
    seconds: float = 0.0  # the timed clips, summed
    speedup: float = 0.0  # uncached seconds / seconds
    compute: float = 1.0  # block units computed / block units called
    holds: bool = False

    @property
    def psnr_mean(self) -> float:
        finite = [p for p in self.psnr if math.isfinite(p)]
        return statistics.mean(finite) if finite else math.inf

    @property
    def psnr_worst(self) -> float:
        return min(self.psnr) if self.psnr else -math.inf

    def record(self) -> dict:
        r = lambda v: None if not math.isfinite(v) else round(v, 3)  # noqa: E731 - JSON has no inf
        return {"label": self.label, "options": self.options, "psnr_mean": r(self.psnr_mean),
                "psnr_worst": r(self.psnr_worst), "speedup": round(self.speedup, 4), "compute": round(self.compute, 4),
                "seconds": round(self.seconds, 3), "holds": self.holds}


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float | None) -> float:
    span = float(ref.max() - ref.min()) if data_range is None else data_range
    mse = float(((x.float() - ref.float()) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(max(span, 1e-12) ** 2 / mse)


class Split:
    """A list of (prompt, seed) clips with their uncached outputs and the uncached time of the timed clips."""

    def __init__(self, target: Target, clips, steps: int, guidance: float, compiler: str) -> None:
        self.clips, self.steps, self.guidance = list(clips), steps, guidance
        torch._dynamo.reset()
        model = _compiled(target.model, compiler, {"policy": "none"})
        target.generate(model, *self.clips[0], steps, guidance)  # warm-up (tracing), as for every candidate
        self.refs, self.seconds = [], 0.0
        for prompt, seed in self.clips:
            t0 = time.perf_counter()
            self.refs.append(target.generate(model, prompt, seed, steps, guidance).detach().clone())
            self.seconds += time.perf_counter() - t0


def _compiled(model, compiler: str, options: dict, calibration: str | None = None):
    extra = {"calibration": calibration} if calibration and options["policy"] != "none" else {}
    return torch.compile(model, backend=backend(compiler=compiler, **options, **extra))


def measure(target: Target, split: Split, cand: Candidate, compiler: str, calibration: str | None,
            floor: tuple[float, float]) -> Point:
    torch._dynamo.reset()
    model = _compiled(target.model, compiler, cand.options, calibration)
    target.generate(model, *split.clips[0], split.steps, split.guidance)  # warm-up: tracing, compiling
    before = stats(model)
    point = Point(cand.label, cand.options)
    for (prompt, seed), ref in zip(split.clips, split.refs):
        t0 = time.perf_counter()
        out = target.generate(model, prompt, seed, split.steps, split.guidance)
        point.seconds += time.perf_counter() - t0
        point.psnr.append(psnr(out, ref, target.data_range))
    after = stats(model)
    called = (after.blocks_computed + after.blocks_skipped) - (before.blocks_computed + before.blocks_skipped)
    point.compute = (after.blocks_computed - before.blocks_computed) / max(1, called)
    point.speedup = split.seconds / max(point.seconds, 1e-9)
    point.holds = point.psnr_mean >= floor[0] and point.psnr_worst >= floor[1]
    return point


def tune(target: Target | str, *, floor=(35.0, 30.0), steps: int = 50, guidance: float = 5.0,
         tune_clips=None, heldout_clips=None, budget_s: float = 900.0, calibration: str | Path,
         compiler: str = "eager", policies=None, plot: str | Path | None = None, progress: bool = True) -> dict:
    """Search, choose, check and write (see the package docstring). Returns the file's "tuned" section."""
    target = load_target(target) if isinstance(target, str) else target
    n = target.prompts or 4
    tune_clips = list(tune_clips or [(p, 0) for p in range(0, n, 2)])
    heldout_clips = list(heldout_clips or [(p, 1) for p in range(1, n, 2)])
    if not tune_clips or not heldout_clips or set(tune_clips) & set(heldout_clips):
        raise ValueError("fxcache.tune: the tuning and held-out splits must be non-empty and share no clip")
    path = Path(calibration)
    start = time.perf_counter()
    with torch.no_grad():
        if not path.exists():  # the calibrated candidates need the model's constants: profile it first
            profile(target, prompts=max(p for p, _ in tune_clips) + 1, seeds=sorted({s for _, s in tune_clips}),
                    steps=steps, guidance=guidance, out=path, plot=path.with_suffix(".png"), progress=progress)
        data = dict(calibration_file.load(path))
        tuning = Split(target, tune_clips, steps, guidance, compiler)
        heldout = Split(target, heldout_clips, steps, guidance, compiler)
        searched, failed_families = [], set()
        cands = candidates(data, policies)
        bar = tqdm(cands, desc="tune", unit="setting", disable=not progress)
        for cand in bar:
            if time.perf_counter() - start > budget_s:
                bar.set_postfix_str("budget spent")
                break
            if cand.family in failed_families:
                continue  # a more cautious setting of this policy already missed the floor
            bar.set_postfix_str(cand.label)
            point = measure(target, tuning, cand, compiler, str(path), floor)
            searched.append(point)
            if not point.holds:
                failed_families.add(cand.family)
        bar.close()
        chosen, checked = None, []
        for point in sorted((p for p in searched if p.holds), key=lambda p: -p.speedup):
            cand = next(c for c in cands if c.label == point.label)
            check = measure(target, heldout, cand, compiler, str(path), floor)
            checked.append(check)
            if check.holds:
                chosen = (point, check)
                break
    torch._dynamo.reset()
    section = {
        "options": chosen[0].options if chosen else None,
        "floor": {"psnr_mean": floor[0], "psnr_worst": floor[1]}, "num_steps": steps, "guidance_scale": guidance,
        "compiler": compiler, "tuning_clips": [list(c) for c in tune_clips],
        "heldout_clips": [list(c) for c in heldout_clips],
        "uncached_seconds": {"tuning": round(tuning.seconds, 3), "heldout": round(heldout.seconds, 3)},
        "searched": [p.record() for p in searched], "heldout": [p.record() for p in checked],
        "chosen": {"tuning": chosen[0].record(), "heldout": chosen[1].record()} if chosen else None,
        "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__.split("+")[0],
    }
    data["tuned"] = section
    calibration_file.save(path, data)
    if plot is not None:
        save_plot(section, plot)
    return section
