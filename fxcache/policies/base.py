"""What a policy is: a small class that reads the step, the probes and its own per-stream state, and returns
plans. It never touches graphs or tensors. Parameters are declared once, with their published defaults, so that
options are validated (and documented) in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

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

    def validate(self, policy: str, name: str, value: Any) -> Any:
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if value is None and self.default is None:
            return None
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise ValueError(f"fxcache: option {name!r} of policy {policy!r} must be {names}"
                             f"{' (' + self.accepted + ')' if self.accepted else ''}, got {value!r}")
        if self.check is not None and not self.check(value):
            raise ValueError(f"fxcache: option {name!r} of policy {policy!r} must be {self.accepted}, got {value!r}")
        return value


def positive(v) -> bool:
    return v > 0


def non_negative(v) -> bool:
    return v >= 0


def fraction(v) -> bool:
    return 0 <= v <= 1


class Policy:
    name = "none"
    params: dict[str, Param] = {}

    def __init__(self, **options) -> None:
        for key, value in options.items():
            if key not in self.params:
                accepted = ", ".join(sorted(self.params)) or "none"
                raise ValueError(f"fxcache: unknown option {key!r} for policy {self.name!r}; "
                                 f"its options are: {accepted} (plus policy, compiler, num_steps, max_variants)")
        for key, p in self.params.items():
            setattr(self, key, p.validate(self.name, key, options.get(key, p.default)))

    def bind(self, discovery) -> None:
        """Learn the graph's sites (unit count, probe cut, indicators); raise Unsupported if unusable."""

    def new_state(self) -> Any:
        return None

    def plan(self, call, state) -> Plan:
        return FULL

    def decide(self, call, state, measured: dict) -> Plan:
        raise NotImplementedError(f"policy {self.name} asked for a probe but cannot decide")

    def observe(self, call, state, measured: dict, plan: Plan) -> None:
        """Told what the call's final plan measured (for policies that learn from computed steps)."""

    def describe(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in self.params) or "-"


class NoCache(Policy):
    """Compile only: every call runs the whole graph. Output equals eager up to float rounding."""

    name = "none"
