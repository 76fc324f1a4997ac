"""How a variant's inputs are gathered, precomputed once per variant from its input keys."""

from __future__ import annotations


class Wiring:
    """specialize orders a variant's inputs (graph inputs, probe values, cached values, weights), so that a call
    builds its input list with a few comprehensions."""

    __slots__ = ("args", "vals", "cached", "constants")

    def __init__(self, keys: list[tuple]) -> None:
        self.args = [k[1] for k in keys if k[0] == "arg"]
        self.vals = [k[1] for k in keys if k[0] == "val"]
        self.cached = [k for k in keys if k[0] in ("cache", "peer")]
        self.constants = [k[0] for k in keys if k[0] in ("coef", "scales")]
        if list(keys) != ([("arg", i) for i in self.args] + [("val", v) for v in self.vals] + self.cached
                          + [(c,) for c in self.constants]):
            raise RuntimeError("fxcache: variant inputs are not in gathering order (passes/specialize.py)")
