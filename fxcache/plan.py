"""The vocabulary between policies (which decide), passes (which rewrite graphs) and the runtime (which runs them).

A policy answers every call with a `Plan`: which cache sites to reuse, which to write, and, for decisions that need
this step's data, where to stop (a probe) and what to measure there. Plans are hashable: each distinct plan is one
compiled variant of the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Site:
    """A cacheable value. kind "residual": output minus input streams of block units [start, stop);
    "stream": the streams leaving units [start, stop) themselves (reused: those units are skipped);
    "module": the output of submodule `name` (e.g. "attn1", "ff") of unit `start` (passes/modules.py);
    "indicator": a probe value such as TeaCache's modulated input (`name`); "output": the model output;
    "cfg": the low and high band images of (this stream's output - the peer stream's output of the same step),
    from which a reused call rebuilds its output without running the model (passes/cfg.py)."""

    kind: str
    start: int = 0
    stop: int = 0
    name: str = ""

    def __str__(self) -> str:
        if self.kind in ("residual", "stream"):
            return f"{self.kind}[{self.start}:{self.stop}]"
        if self.kind == "module":
            return f"{self.name}[{self.start}]"
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
    reuse: frozenset = frozenset()  # sites replaced by their last cached value (a residual: input + cached residual)
    forecast: frozenset = frozenset()  # sites replaced by sum_i coeffs[i] * (cached value i computed steps ago)
    write: frozenset = frozenset()  # sites whose value this call stores into the stream's cache
    measure: frozenset = frozenset()  # (site, metric) pairs read by the policy; metric "rel_l1" or "mag_ratio",
    # both against the site's cached value
    start: Stop | None = None  # continue from a probe that stopped here
    stop: Stop | None = None  # stop here (a probe) and ask the policy again
    label: str = "full"  # what stats record: "full", "skip", "probe", ...
    # The forecast's weights, one per cached value (slot 0: the newest). Not part of the plan's identity: they are
    # an input of the compiled variant, so a weight that changes every step compiles nothing new.
    coeffs: tuple = field(default=(), compare=False)
    # The stream whose cached values the variant reads as ("peer", ...) inputs (the CFG branch: the cond stream
    # of the same step). Not part of the plan's identity either.
    peer: str | None = field(default=None, compare=False)
    # Batched CFG ([uncond; cond] in one call): run only the cond half of the batch through the model's
    # half-batch graph and rebuild the uncond half from CFG_BATCH (runtime/halfbatch.py).
    half: bool = False
    # FasterCache's (s_L, s_H) band scales of a rebuilt uncond output (Site "cfg"). Not part of the identity.
    scales: tuple = field(default=(), compare=False)
    # A forecast that also weighs the site's *window* (the last values of the site, forecast or computed, kept
    # under `window_of(site)`; FoCa): the last `window` of `coeffs` are their weights.
    window: int = 0
    # A probe's likely continuation (the policy's guess, usually its previous decision). The runtime runs probe and
    # guess as ONE compiled variant (`fused`), and, where the decision is the guess, that was the whole call: one
    # graph call per step instead of two. Not part of the probe's identity (its fused plan's is).
    then: "Plan | None" = field(default=None, compare=False)
    # A fused plan: the probe stopped here; the values a continuation from here needs are emitted too.
    emit_at: Stop | None = None

    @property
    def rebuilds(self) -> bool:
        """The uncond output is rebuilt (FasterCache's CFG-Cache): from the peer stream's output without running
        the model (separate calls), or from the cond half of the batch (batched CFG, `half`)."""
        return CFG in self.reuse or self.half

    @property
    def slots(self) -> int:
        """How many computed values of each forecast site its weights cover (the window's come after)."""
        return len(self.coeffs) - self.window if self.forecast else 0

    def key(self) -> tuple:
        """The identity of the compiled variant (the number of forecast weights matters, not their values)."""
        return (self.reuse, self.forecast, self.slots, self.window, self.write, self.measure, self.start, self.stop,
                self.half, self.emit_at)

    def fusable(self) -> bool:
        """A probe whose guessed continuation can run in the same variant: the guess measures nothing (what it
        would measure is read after the decision), runs on the whole batch and skips whole blocks only."""
        t = self.then
        return (self.stop is not None and t is not None and not t.measure and not t.half and not self.half
                and t.start == self.stop and t.stop is None
                and all(s.kind in ("residual", "stream") for s in t.reuse | t.forecast))

    def fused(self) -> "Plan":
        """The probe and its guessed continuation as one plan. Written sites of the guess are speculative: kept
        apart by the runtime until the decision confirms the guess."""
        t = self.then
        return Plan(reuse=t.reuse, forecast=t.forecast, write=self.write | t.write, measure=self.measure,
                    start=self.start, emit_at=self.stop, label=self.label, coeffs=t.coeffs, peer=t.peer,
                    scales=t.scales, window=t.window)

    def same_as(self, other: "Plan") -> bool:
        """Equal, weights and peer included (what `==` leaves out)."""
        return self is other or (self == other and self.coeffs == other.coeffs and self.scales == other.scales
                                 and self.peer == other.peer)


FULL = Plan()
OUTPUT = Site("output")
CFG = Site("cfg")
CFG_BATCH = Site("cfg", name="batch")  # the same band images, of (uncond half - cond half) of one batched output


def residual(start: int, stop: int) -> Site:
    return Site("residual", start, stop)


def window_of(site: Site) -> Site:
    """The site whose slots hold `site`'s last values whether computed or forecast (written by the plans that
    compute or forecast `site`: the forecast itself is stored there)."""
    return Site(site.kind, site.start, site.stop, "window")
