"""What a policy is: a small class that sees one `Call` (plan.py) and returns one `Plan`. It reads the call and
its own per-stream decision state, never the graph, tensors, files or the runtime's bookkeeping; the runtime says
what is cached (`Call.cached`), runs probes and speculation, and takes one decision per step for joint policies.
Parameters are declared once, with their published defaults, so that options are validated (and documented) in
one place."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import option_error
from ..plan import FULL, Plan


class Unsupported(Exception):
    """The graph lacks what this policy needs (e.g. no valid residual site); the backend falls back."""


@dataclass(frozen=True)
class Param:
    default: Any
    kind: type | tuple
    doc: str
    check: Callable[[Any], bool] | None = None
    accepted: str = ""  # shown in errors: what values are allowed
    optional: bool = False  # None is accepted too (it means "off")
    aliases: tuple = ()  # other names of the option (a paper's or a peer's), accepted as it

    def validate(self, policy: str, name: str, value: Any) -> Any:
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if float in kinds and real(value):  # ints and numpy scalars too
            value = float(value)
        elif int in kinds and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            value = int(value)
        if value is None and (self.default is None or self.optional):
            return None
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise option_error(f"fxcache: option {name!r} of policy {policy!r} must be {names}"
                               f"{' (' + self.accepted + ')' if self.accepted else ''}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise option_error(f"fxcache: option {name!r} of policy {policy!r} must be a finite float"
                               f"{' (' + self.accepted + ')' if self.accepted else ''}, got {value!r}")
        if self.check is not None and not self.check(value):
            raise option_error(f"fxcache: option {name!r} of policy {policy!r} must be {self.accepted}, "
                               f"got {value!r}")
        return value


def real(v) -> bool:
    """A real number (int, float, numpy scalar), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def finite_reals(v, minimum: float | None = None) -> bool:
    """A non-empty list or tuple of finite real numbers (bools are not numbers here), each >= `minimum`."""
    return (isinstance(v, (list, tuple)) and len(v) > 0
            and all(real(x) and math.isfinite(x) and (minimum is None or x >= minimum) for x in v))


def positive(v) -> bool:
    return v > 0


def non_negative(v) -> bool:
    return v >= 0


def fraction(v) -> bool:
    return 0 <= v <= 1


class Policy:
    name = "none"
    params: dict[str, Param] = {}
    batched_cfg = False  # plans may run only the cond half of a batched-CFG call (Plan.half): role "batched" is set
    # One decision per step for every stream of a generation (both CFG branches): the step's first call decides,
    # the others read its decision's label in `Call.agreed`; `new_shared` makes the generation's shared state
    # (`Call.shared`). May be set per instance from an option.
    joint = False
    # Plans skip or keep parts of blocks (module sites, block ranges): many variants, each compiled per block so that
    # they share compiled blocks (option piecewise="auto"). Step-level policies (the whole stack computed or
    # skipped) have a few variants, each compiled whole.
    block_level = False
    calibration = None  # the loaded `calibration` option (fxcache.calibration.Calibration), set before bind

    def __init__(self, **options) -> None:
        options = self._canonical(options)
        for key, value in options.items():
            if key not in self.params:
                accepted = ", ".join(sorted(self.params)) or "none"
                raise option_error(f"fxcache: unknown option {key!r} for policy {self.name!r}; "
                                   f"its options are: {accepted} (plus policy, compiler, num_steps, max_variants, "
                                   f"decision_log, piecewise, speculate, cudagraphs, check_ranks, calibration)")
        for key, p in self.params.items():
            setattr(self, key, p.validate(self.name, key, options.get(key, p.default)))

    @classmethod
    def _canonical(cls, options: dict) -> dict:
        """`options` with every alias replaced by its option's name (an option given under two names is an error)."""
        out = dict(options)
        for key, p in cls.params.items():
            for alias in p.aliases:
                if alias in out:
                    if key in options:
                        raise option_error(f"fxcache: options {key!r} and {alias!r} of policy {cls.name!r} are one "
                                           f"option under two names; give one")
                    out[key] = out.pop(alias)
        return out

    def configure(self, calibration) -> None:
        """Receive the `calibration` option's loaded file (or None), right after the options are validated and
        before `bind`. Policies with no use for it ignore it."""
        self.calibration = calibration

    def bind(self, discovery) -> None:
        """Learn the graph's sites (unit count, probe cut, indicators); raise Unsupported if unusable."""

    def new_state(self) -> Any:
        """This policy's decision state for one stream of one generation (made again when the stream starts over)."""
        return None

    def new_shared(self) -> Any:
        """A joint policy's decision state for one generation, shared by its streams."""
        return None

    def plan(self, call, state) -> Plan:
        return FULL

    def decide(self, call, state) -> Plan:
        """After a probe (a plan with `stop`): the continuation, from what the probe measured (`call.measured`)."""
        raise NotImplementedError(f"policy {self.name} asked for a probe but cannot decide")

    def depth(self, site) -> int:
        """How many computed values of `site` to keep (slot 0 the newest): 1, or more for forecasts."""
        return 1

    def observe(self, call, state, plan: Plan) -> None:
        """Told the call's final plan and what it measured (`call.measured`), for policies that learn from it."""

    def describe(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in self.params) or "-"


class NoCache(Policy):
    """Compile only: every call runs the whole graph. Output equals eager up to float rounding."""

    name = "none"
