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
    "stream": the streams leaving units [start, stop) themselves (reused: those units are skipped);
    "module": the output of submodule `name` (e.g. "attn1", "ff") of unit `start` (passes/modules.py);
    "indicator": a probe value such as TeaCache's modulated input (`name`); "output": the model output;
    "cfg": the low and high band images of (this stream's output - the peer stream's output of the same step),
    from which a reused call rebuilds its output without running the model (passes/cfg.py); "delta": the model
    output minus its latent input (EasyCache's transformation vector; reused, the call returns the latent input plus
    the cached delta and runs nothing of the model). An indicator may also be computed from the model's inputs
    (derived.py: SeaCache's filtered latent)."""

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
    measure: frozenset = frozenset()  # (site, Metric) pairs read by the policy (fxcache/metrics.py: a registry of
    # distances computed inside the variant, e.g. REL_L1 against the site's cached value)
    start: Stop | None = None  # continue from a probe that stopped here
    stop: Stop | None = None  # stop here (a probe) and ask the policy again
    label: str = "full"  # what stats record: "full", "skip", "probe", ...
    # The forecast's weights, one per cached value (slot 0: the newest). Not part of the variant's identity
    # (`key`): they are an input of the compiled variant, so a weight that changes every step compiles nothing new.
    coeffs: tuple = ()
    # The stream whose cached values the variant reads as ("peer", ...) inputs (the CFG branch: the cond stream
    # of the same step). Not part of the variant's identity either.
    peer: str | None = None
    # Batched CFG ([uncond; cond] in one call): run only the cond half of the batch through the model's
    # half-batch graph and rebuild the uncond half from CFG_BATCH (runtime/halfbatch.py).
    half: bool = False
    # FasterCache's (s_L, s_H) band scales of a rebuilt uncond output (Site "cfg"). Not part of the variant's
    # identity.
    scales: tuple = ()
    # A forecast that also weighs the site's *window* (the last values of the site, forecast or computed, kept
    # under `window_of(site)`; FoCa): the last `window` of `coeffs` are their weights.
    window: int = 0
    # A probe's likely continuation (the policy's guess). The runtime runs probe and guess as ONE compiled variant
    # (runtime/speculation.py), and, where the decision is the guess, that was the whole call: one graph call per
    # step instead of two.
    then: "Plan | None" = None
    # A fused plan: the probe stopped here; the values a continuation from here needs are emitted too.
    emit_at: Stop | None = None
    # Set by the runtime, not the policy: the distances come back per batch row (additive sums, [2, rows] per
    # (site, metric)), so that each request of the batch decides alone (runtime/persample.py).
    rows: bool = False

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
        """The identity of the compiled variant (the number of forecast weights matters, not their values). Two
        plans are the same decision when they are equal (`==`, every field); they share a variant when their keys
        are equal."""
        return (self.reuse, self.forecast, self.slots, self.window, self.write, self.measure, self.start, self.stop,
                self.half, self.emit_at, self.rows)


FULL = Plan()
OUTPUT = Site("output")
CFG = Site("cfg")
DELTA = Site("delta")
CFG_BATCH = Site("cfg", name="batch")  # the same band images, of (uncond half - cond half) of one batched output


def residual(start: int, stop: int) -> Site:
    return Site("residual", start, stop)


def window_of(site: Site) -> Site:
    """The site whose slots hold `site`'s last values whether computed or forecast (written by the plans that
    compute or forecast `site`: the forecast itself is stored there)."""
    return Site(site.kind, site.start, site.stop, "window")


class Call:
    """Everything a policy sees of one call, filled in by the runtime from its own state.

    - `step`: 1-based call index of this stream in its generation (`index`: the same, 0-based: the one step
      convention of schedules); `t`: the timestep on the 0-1000 scale of the published timestep windows (models
      that pass t in [0, 1], like Flux and SD3, are rescaled; None when no timestep reaches the graph);
      `num_steps`: the engine option, or None.
    - `role`: "cond" or "uncond" (a pipeline that calls the model twice per step: the first call of a step, or a
      stream named "cond", is the conditional one), "batched" (one call on [uncond; cond]: its cond half can run
      alone, Plan.half), "only" (the one stream of a pipeline without a second call, known from its second step)
      or "other" (a third stream, or a name of the user's own); `stream`: its name; `peer`: for "uncond", the
      stream of the same step's cond call; `generation`: counts generations of this model instance and thread.
    - `measured`: what the plan's `measure` asked for, {(site, metric): value}, filled before `decide`/`observe`;
      NaN where the value was not finite (every policy computes then).
    - `cached(site)`: how many values of `site` this stream holds (0: none; the runtime drops values that were not
      finite, so the policy never keeps its own "is my cache written?").
    - joint policies (`Policy.joint`: one decision per step for every stream of a generation): `agreed` is the
      label of the decision the step's first call took (None on that first call) and `shared` the policy's
      per-generation state (`Policy.new_shared`)."""

    __slots__ = ("step", "t", "role", "stream", "peer", "generation", "num_steps", "measured", "agreed", "shared",
                 "_cache")

    def __init__(self, step: int, t: float | None = None, role: str = "only", stream: str = "stream0",
                 num_steps: int | None = None, *, peer: str | None = None, generation: int = 0,
                 cache: dict | None = None, agreed: str | None = None, shared=None) -> None:
        self.step, self.t, self.role, self.stream, self.peer = step, t, role, stream, peer
        self.generation, self.num_steps = generation, num_steps
        self.measured: dict = {}
        self.agreed, self.shared = agreed, shared
        self._cache = {} if cache is None else cache

    @property
    def index(self) -> int:
        return self.step - 1

    @property
    def is_last(self) -> bool:
        return self.num_steps is not None and self.step >= self.num_steps

    def cached(self, site: Site) -> int:
        return len(self._cache.get(site, ()))
