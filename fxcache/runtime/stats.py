"""Counters of what the runtime did, as `fxcache.stats(model)` returns them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Stats:
    calls: int = 0  # calls of the compiled graphs (all graphs of the model)
    steps: int = 0  # calls of a graph that holds the blocks (one per denoising step and stream)
    full_steps: int = 0  # ... that ran every block
    skipped_steps: int = 0  # ... that reused cached work for some blocks
    blocks_computed: int = 0
    blocks_skipped: int = 0
    cfg_reused: int = 0  # calls whose unconditional branch was rebuilt from cache
    compiles: int = 0  # variants compiled
    compile_time_s: float = 0.0
    decisions: list = field(default_factory=list)  # one dict per step: step, stream, decision, distance

    def __add__(self, other: "Stats") -> "Stats":
        out = Stats()
        for f in self.__dataclass_fields__:
            setattr(out, f, getattr(self, f) + getattr(other, f))
        return out

    def summary(self) -> str:
        return (f"{self.steps} steps: {self.full_steps} full, {self.skipped_steps} cached; "
                f"blocks {self.blocks_computed} computed / {self.blocks_skipped} skipped; "
                f"cfg reused {self.cfg_reused}; {self.compiles} variants compiled in {self.compile_time_s:.1f} s")
