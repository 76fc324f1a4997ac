"""Compiled variants, one per distinct plan, built lazily on first use and kept in a bounded LRU cache."""

from __future__ import annotations

import threading
import time
import warnings
from collections import OrderedDict
from typing import Callable

import torch.fx as fx

from ..passes.specialize import specialize
from ..passes.variant import Variant
from .cudagraphs import GraphPool, Graphed, input_kinds, wants_graphs
from ..plan import Plan
from .piecewise import _LazyPiece, _PerSize, compile_piecewise


def inner_compile(gm: fx.GraphModule, example_inputs: list, compiler: str) -> Callable:
    """Compile one graph with the inner compiler ("inductor": C++/OpenMP on CPU, Triton on GPU; "eager")."""
    if compiler == "eager":
        return gm
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(gm, example_inputs)


class VariantCache:
    def __init__(self, gm: fx.GraphModule, discovery, compiler: str, max_variants: int,
                 piecewise: bool = False, cudagraphs: "bool | GraphPool | None" = True) -> None:
        self.gm, self.discovery, self.compiler, self.max_variants = gm, discovery, compiler, max_variants
        # Replay variants whose inputs are CUDA tensors as CUDA graphs, in this pool (one per runtime: the half-batch
        # graphs' variant caches are given the runtime's), or not at all (False / None).
        self.graphs = cudagraphs if isinstance(cudagraphs, GraphPool) else GraphPool() if cudagraphs else None
        self.cudagraphs = self.graphs is not None
        # Split each variant per block (compiled blocks shared across variants: less compile time) or compile it
        # whole (one compiled call per variant: the least per-call cost, and Inductor fuses across blocks).
        self.piecewise = piecewise
        # Keyed by Plan.key(): plans that differ only in label or forecast weights share one variant.
        self._entries: OrderedDict[tuple, tuple[Variant, Callable | None]] = OrderedDict()
        self._compiled_plans: set[tuple] = set()  # every plan compiled so far, evicted ones included
        self._warned_thrash = False
        # Compiled code is shared by every model instance and thread that runs this graph: one lock around the
        # table and compilation (Inductor is not re-entrant); running compiled code needs no lock.
        self._lock = threading.RLock()

    def get(self, plan: Plan) -> tuple[Variant, Callable | None]:
        key = plan.key()
        entry = self._entries.get(key)
        if entry is not None:
            try:
                self._entries.move_to_end(key)
            except KeyError:  # evicted by another thread meanwhile
                pass
            return entry
        with self._lock:
            return self._get(plan)

    def _get(self, plan: Plan) -> tuple[Variant, Callable | None]:
        key = plan.key()
        entry = self._entries.get(key)
        if entry is None:
            entry = (specialize(self.gm, self.discovery, plan), None)
            self._entries[key] = entry
            while len(self._entries) > self.max_variants:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return entry

    def compiled(self, plan: Plan, example_inputs: list, stats) -> Callable:
        """The compiled variant of `plan`; a compile is counted in `stats` (the calling instance's)."""
        variant, fn = self.get(plan)
        if fn is not None:
            return fn
        with self._lock:
            variant, fn = self._get(plan)
            if fn is not None:
                return fn
            if plan.key() in self._compiled_plans:
                self._thrashing(plan)
            t0 = time.perf_counter()
            if self.compiler == "eager":
                fn = variant.gm
            else:
                fn = (compile_piecewise if self.piecewise else _LazyPiece)(variant.gm, self._compile_piece)
                fn(*example_inputs)  # compiles the pieces now, so that compile time is counted here
                if isinstance(fn, _LazyPiece) and not isinstance(fn.fn, _PerSize):
                    fn = fn.fn  # the compiled graph itself: no module call around it on every call
            if self.cudagraphs and wants_graphs(example_inputs):
                fn = Graphed(fn, input_kinds(variant.inputs, self.discovery.placeholders), plan.label, self.graphs)
            stats.compiles += 1
            stats.compile_time_s += time.perf_counter() - t0
            self._entries[plan.key()] = (variant, fn)
            self._compiled_plans.add(plan.key())
            return fn

    def _thrashing(self, plan: Plan) -> None:
        """`plan` was compiled before and evicted: max_variants is below the number of plans the model cycles
        through, so variants are compiled again and again. Warned once per graph."""
        if self._warned_thrash:
            return
        self._warned_thrash = True
        n = len(self._compiled_plans)
        warnings.warn(f"fxcache: option 'max_variants'={self.max_variants} is too small for this model: it has "
                      f"used {n} distinct plans so far, and plan {plan.label!r}, evicted from the variant cache, "
                      f"is being compiled again; set max_variants >= {n} (default 16) to compile each plan once "
                      f"(warned once)", stacklevel=2)

    def _compile_piece(self, gm: fx.GraphModule, example_inputs: list) -> Callable:
        return inner_compile(gm, example_inputs, self.compiler)

    def __len__(self) -> int:
        return len(self._entries)
