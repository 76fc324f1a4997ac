"""Counters of what the runtime did, as `fxcache.stats(model)` returns them."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

DECISION_LOG = 256  # decision records kept per model instance (engine option `decision_log`)


@dataclass
class Stats:
    calls: int = 0  # compiled variants run (a probe whose guess was wrong and its continuation: two)
    steps: int = 0  # calls of a graph that holds the blocks (one per denoising step and stream)
    full_steps: int = 0  # ... that ran every block
    skipped_steps: int = 0  # ... that reused cached work for some blocks
    blocks_computed: int = 0
    blocks_skipped: int = 0
    sites_reused: int = 0  # in-block values (attention / MLP outputs) reused from the cache instead of computed
    sites_forecast: int = 0  # cached values extrapolated (linear, Taylor) instead of computed
    cfg_reused: int = 0  # calls whose unconditional branch was rebuilt from cache
    generations: int = 0  # generations started (a clean state each), summed over threads
    not_cached: int = 0  # computed values not cached because they were not finite (NaN / inf)
    guesses_right: int = 0  # probing calls whose guessed continuation ran with the probe (one variant call)
    guesses_wrong: int = 0  # ... whose decision was another continuation (run after; the guess was thrown away)
    reductions: int = 0  # all-reduces run to agree on a decision's values across ranks (context parallelism)
    compiles: int = 0  # variants compiled
    compile_time_s: float = 0.0
    cache_bytes: int = 0  # bytes held in cache buffers now (a gauge, filled in by fxcache.stats)
    requests_live: int = 0  # requests holding cache state now (fxcache.context(requests=...), batch rows)
    request_cache_bytes: int = 0  # ... and their bytes (part of cache_bytes)
    decision_counts: dict = field(default_factory=dict)  # plan label -> calls, over the model's lifetime
    # The most recent decisions (a bounded log; a list in fxcache.stats' snapshot): step, stream, decision,
    # distance, blocks computed, sites (in-block values reused or forecast, and forecast residuals); request (its
    # id) where the call held several.
    decisions: deque | list = field(default_factory=lambda: deque(maxlen=DECISION_LOG))

    def count(self, call, plan, computed: int, units: int, runs: int, right: bool | None,
              new_generation: bool, request=None) -> None:
        """Count one call: its final `plan`, the block units it `computed` of `units`, the variants it ran, whether
        its speculative guess was right (None: no guess)."""
        reused = sum(1 for x in plan.reuse if x.kind == "module") if plan.reuse else 0
        if right is not None:
            self.guesses_right += right
            self.guesses_wrong += not right
        self.calls += runs
        self.steps += 1
        self.generations += new_generation
        self.blocks_computed += computed
        self.blocks_skipped += units - computed
        self.sites_reused += reused
        self.sites_forecast += len(plan.forecast)
        self.cfg_reused += plan.rebuilds
        if computed >= units:
            self.full_steps += 1
        else:
            self.skipped_steps += 1
        entry = {"step": call.step, "stream": call.stream, "decision": plan.label,
                 "distance": next(iter(call.measured.values()), None), "blocks": computed,
                 "sites": reused + len(plan.forecast)}
        if request is not None:
            entry["request"] = request
        self.record(entry)

    def record(self, entry: dict) -> None:
        self.decisions.append(entry)
        label = entry["decision"]
        self.decision_counts[label] = self.decision_counts.get(label, 0) + 1

    def __add__(self, other: "Stats") -> "Stats":
        out = Stats()
        for f in self.__dataclass_fields__:
            a, b = getattr(self, f), getattr(other, f)
            if isinstance(a, dict):
                setattr(out, f, {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}})
            elif isinstance(a, (deque, list)):  # a snapshot: the logs of both, as a list
                setattr(out, f, [*a, *b])
            else:
                setattr(out, f, a + b)
        return out

    def summary(self) -> str:
        return (f"{self.steps} steps: {self.full_steps} full, {self.skipped_steps} cached; "
                f"blocks {self.blocks_computed} computed / {self.blocks_skipped} skipped; "
                f"sites {self.sites_reused} reused / {self.sites_forecast} forecast; "
                f"cfg reused {self.cfg_reused}; {self.compiles} variants compiled in {self.compile_time_s:.1f} s; "
                f"cache {self.cache_bytes / 2**20:.1f} MiB")
