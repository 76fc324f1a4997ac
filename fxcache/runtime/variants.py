"""Compiled variants, one per distinct plan, built lazily on first use and kept in a bounded LRU cache."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable

import torch.fx as fx

from ..passes.specialize import Variant, specialize
from ..plan import Plan
from .piecewise import compile_piecewise


def inner_compile(gm: fx.GraphModule, example_inputs: list, compiler: str) -> Callable:
    """Compile one graph with the inner compiler ("inductor": C++/OpenMP on CPU, Triton on GPU; "eager")."""
    if compiler == "eager":
        return gm
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(gm, example_inputs)


class VariantCache:
    def __init__(self, gm: fx.GraphModule, discovery, compiler: str, max_variants: int, stats) -> None:
        self.gm, self.discovery, self.compiler, self.max_variants, self.stats = (
            gm, discovery, compiler, max_variants, stats)
        self._entries: OrderedDict[Plan, tuple[Variant, Callable | None]] = OrderedDict()

    def get(self, plan: Plan) -> tuple[Variant, Callable | None]:
        entry = self._entries.get(plan)
        if entry is None:
            entry = (specialize(self.gm, self.discovery, plan), None)
            self._entries[plan] = entry
            while len(self._entries) > self.max_variants:
                self._entries.popitem(last=False)
        self._entries.move_to_end(plan)
        return entry

    def compiled(self, plan: Plan, example_inputs: list) -> Callable:
        variant, fn = self.get(plan)
        if fn is None:
            t0 = time.perf_counter()
            if self.compiler == "eager":
                fn = variant.gm
            else:
                fn = compile_piecewise(variant.gm, self._compile_piece)
                fn(*example_inputs)  # compiles the pieces now, so that compile time is counted here
            self.stats.compiles += 1
            self.stats.compile_time_s += time.perf_counter() - t0
            self._entries[plan] = (variant, fn)
        return fn

    def _compile_piece(self, gm: fx.GraphModule, example_inputs: list) -> Callable:
        return inner_compile(gm, example_inputs, self.compiler)

    def __len__(self) -> int:
        return len(self._entries)
