"""MagCache (Zehong-Ma/MagCache; diffusers `MagCacheConfig`).

Offline, an uncached run records gamma_k: the mean over tokens of |r_k|_2 / |r_{k-1}|_2 (norms over channels) of
the whole stack's residual r, per stream. Online, from step floor(retention * N) on, the policy multiplies the
ratios since the last computed step into R, accumulates the error E += |1 - R|, and reuses the cached residual
while E < threshold and at most `max_skips` steps in a row; otherwise it computes and resets. Ratio lists are
nearest-interpolated when N differs from the calibration.

    options={"policy": "magcache", "calibration": "calibration.json"}  # the ratios `python -m fxcache.profile`
                                                                       # measured (averaged over its prompts)
    options={"policy": "magcache", "calibrate": "ratios.json"}   # or: one uncached generation records the ratios
    options={"policy": "magcache", "ratios": "ratios.json"}      # later generations use them

Precedence: `ratios` (a ratio file, a calibration file, or lists) over the `calibration` file's "magcache" section.

Defaults: the paper's per-family constants (Wan 0.12/2/0.2, Flux 0.24/5/0.1, HunyuanVideo 0.24/6/0.2), else
diffusers' (0.06/3/0.2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..calibration import save_mag_ratios
from ..errors import option_error
from ..families import family
from ..metrics import MAG_RATIO
from ..plan import Plan, residual
from .base import Param, Policy, Unsupported, finite_reals, fraction, non_negative, positive
from .budget import LIMITS, BudgetState, ErrorBudget
from .forecast import StepForecast

DEFAULTS = {"wan": (0.12, 2, 0.2), "flux": (0.24, 5, 0.1), "hunyuanvideo": (0.24, 6, 0.2)}
DIFFUSERS = (0.06, 3, 0.2)


def _ratios_ok(v) -> bool:
    if isinstance(v, str):
        return True
    if isinstance(v, dict):
        return len(v) > 0 and all(isinstance(k, str) and finite_reals(x, 0.0) for k, x in v.items())
    return finite_reals(v, 0.0)


RATIOS_ACCEPTED = "a path, a non-empty list of finite floats >= 0, or {stream name: such a list}"


def load_ratios(source) -> dict[str, list[float]]:
    """{stream: [gamma_1..gamma_N]} from a calibration file, a dict, or one list for every stream."""
    if isinstance(source, str):
        path = Path(source)
        record = (f"record one with options={{'policy': 'magcache', 'calibrate': {source!r}}} or "
                  f"`python -m fxcache.profile`")
        if not path.exists():
            raise option_error(f"fxcache: option 'ratios' of policy 'magcache': no file {source!r}; {record}")
        try:
            data = json.loads(path.read_text())
            source = data["magcache"] if data.get("format") == "fxcache-calibration" else data["streams"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise option_error(f"fxcache: option 'ratios' of policy 'magcache': {str(path)!r} is not a MagCache "
                               f"calibration file ({type(e).__name__}: {e}); {record}") from None
        if isinstance(source, str) or not _ratios_ok(source):
            raise option_error(f"fxcache: option 'ratios' of policy 'magcache': the ratios in {str(path)!r} must "
                               f"be {RATIOS_ACCEPTED}, got {source!r}; {record}")
    if isinstance(source, dict):
        return {k: [float(x) for x in v] for k, v in source.items()}
    return {"*": [float(x) for x in source]}


def nearest(ratios: list[float], n: int) -> list[float]:
    m = len(ratios)
    return [ratios[min(m - 1, round(i * (m - 1) / max(1, n - 1)))] for i in range(n)]


@dataclass
class MagState:
    budget: BudgetState = field(default_factory=ErrorBudget.new)
    computed: list = field(default_factory=list)  # steps whose stack residual was written, newest first


class MagCache(StepForecast, Policy):
    name = "magcache"
    params = {
        **StepForecast.PARAMS,
        "threshold": Param(None, float, "accumulated error |1 - R| allowed (None: family default)",
                           non_negative, ">= 0 or None", aliases=("magcache_thresh",)),
        "max_consecutive_skips": Param(None, int, "K: most consecutive reused steps (None: family default)",
                                       positive, ">= 1 or None", aliases=("max_skips", "magcache_K")),
        "retention": Param(None, float, "rho: fraction of steps always computed at the start (None: family "
                           "default)", fraction, "in [0, 1] or None", aliases=("retention_ratio",)),
        "max_cached_steps": LIMITS["max_cached_steps"],
        "ratios": Param(None, (str, list, tuple, dict), "calibration file or ratio list", _ratios_ok,
                        RATIOS_ACCEPTED),
        "calibrate": Param(None, str, "record ratios from an uncached run into this JSON file", None, "a path"),
    }

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.table = load_ratios(self.ratios) if self.ratios is not None else None
        self.recorded: dict[str, list[float]] = {}

    def configure(self, calibration) -> None:
        super().configure(calibration)
        if self.table is None and calibration is not None and calibration.section("magcache"):
            self.table = load_ratios(calibration.section("magcache"))
        if self.table is None and self.calibrate is None:
            where = (f"; the calibration file {calibration.path!r} has no magcache ratios (the model's block stack "
                     f"has no residual)" if calibration is not None else "")
            raise option_error("fxcache: policy 'magcache' needs option 'ratios' (a ratio file or list), "
                               "'calibration' (a file from `python -m fxcache.profile`) or 'calibrate' (a path to "
                               f"record ratios into){where}")

    def bind(self, d) -> None:
        if self.table is None and self.calibrate is None:
            self.configure(self.calibration)  # raises: constructed without ratios
        if not d.residual_ok(0, d.num_units):
            raise Unsupported("the block stack's output does not match its input")
        self.stack = residual(0, d.num_units)
        self.forecastable = frozenset({self.stack})
        t, k, r = DEFAULTS.get(family(d), DIFFUSERS)
        self.thresh = t if self.threshold is None else self.threshold
        self.k = k if self.max_consecutive_skips is None else self.max_consecutive_skips
        self.rho = r if self.retention is None else self.retention
        self.budget = ErrorBudget(self.thresh, max_consecutive_skips=self.k, max_cached_steps=self.max_cached_steps)
        self.compute = Plan(write=frozenset({self.stack}), label="full")
        self.calibrating = Plan(write=self.compute.write, measure=frozenset({(self.stack, MAG_RATIO)}), label="full")

    def new_state(self) -> MagState:
        return MagState()

    def _gammas(self, call) -> list[float]:
        table = self.table.get(call.stream) or self.table.get("*") or next(iter(self.table.values()))
        return nearest(table, call.num_steps or len(table))

    def plan(self, call, state: MagState) -> Plan:
        if self.calibrate is not None:  # an uncached run that measures the ratios
            return self.calibrating if call.cached(self.stack) else self.compute
        gammas = self._gammas(call)
        n, k = len(gammas), call.index
        if call.cached(self.stack) and int(self.rho * n) <= k < n and state.computed:
            # R: the product of the ratios since the last computed step; the budget accumulates |1 - R|.
            ratio = 1.0
            for j in range(state.computed[0], k + 1):
                ratio *= gammas[j]
            if self.budget.decide(state.budget, abs(1.0 - ratio))[0]:
                return self.skipped(call, state, self.forecastable, label="skip")
        else:
            self.budget.computed(state.budget)
        return self.computed(call, state, self.compute)

    def observe(self, call, state: MagState, plan: Plan) -> None:
        if self.calibrate is None:
            return
        # Calibration mode: the one place a policy writes a file (the option asks for it); `python -m
        # fxcache.profile` is the calibration tool that keeps policies out of it.
        self.recorded.setdefault(call.stream, []).append(call.measured.get((self.stack, MAG_RATIO), 1.0))
        save_mag_ratios(self.calibrate, self.recorded)
