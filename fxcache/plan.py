"""The vocabulary between policies (which decide), passes (which rewrite graphs) and the runtime (which runs them).

A policy answers every call with a `Plan`: which cache sites to reuse, which to write, and, for decisions that need
this step's data, where to stop (a probe) and what to measure there. Plans are hashable: each distinct plan is one
compiled variant of the graph.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Site:
    """A cacheable value. kind "residual": output minus input streams of block units [start, stop);
    "indicator": a probe value such as TeaCache's modulated input (`name`); "output": the model output."""

    kind: str
    start: int = 0
    stop: int = 0
    name: str = ""

    def __str__(self) -> str:
        if self.kind == "residual":
            return f"residual[{self.start}:{self.stop}]"
        return f"{self.kind}:{self.name}" if self.name else self.kind


@dataclass(frozen=True)
class Stop:
    """A boundary in the graph: the start of block unit `index` ("cut"; index U is the end of the blocks), or
    just after indicator `name` ("indicator")."""

    kind: str
    index: int = 0
    name: str = ""


@dataclass(frozen=True)
class Plan:
    reuse: frozenset = frozenset()  # residual sites replaced by "input + cached residual"
    write: frozenset = frozenset()  # sites whose value this call stores into the stream's cache
    measure: frozenset = frozenset()  # (site, metric) pairs read by the policy; metric "rel_l1" or "mag_ratio",
    # both against the site's cached value
    start: Stop | None = None  # continue from a probe that stopped here
    stop: Stop | None = None  # stop here (a probe) and ask the policy again
    label: str = "full"  # what stats record: "full", "skip", "probe", ...


FULL = Plan()


def residual(start: int, stop: int) -> Site:
    return Site("residual", start, stop)
