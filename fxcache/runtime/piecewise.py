"""Piecewise compilation of a variant graph (the approach of vLLM's `vllm/compilation/`).

A variant is split at transformer-block boundaries and every piece is compiled on its first call with the real
tensors it receives. Blocks of one list are the same code with different weights (weights are graph inputs), so
after the first block the others are hits in Inductor's FX-graph cache, and variants that share pieces (the
suffix, the prefix) share their compiled code too: compile time grows with the number of *distinct* pieces rather
than with (variants x blocks). The price is that Inductor does not fuse across a block boundary.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections import OrderedDict
from typing import Callable

import torch
import torch.fx as fx
from torch._dynamo.exc import TensorifyScalarRestartAnalysis
from torch.fx.passes.split_module import split_module

from ..passes.nodes import block_of, example


def partition(gm: fx.GraphModule) -> dict[fx.Node, int]:
    """Piece index per node: a new piece starts wherever the enclosing block changes, so each block is one piece
    and the code between blocks (prefix, glue, suffix, cache arithmetic) forms pieces of its own."""
    parts: dict[fx.Node, int] = {}
    piece, current = 0, None
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "output"):
            continue
        b = block_of(n)
        key = b[:2] if b is not None else None
        if parts and key != current:
            piece += 1
        current = key
        parts[n] = piece
    return parts


class _LazyPiece(torch.nn.Module):
    """One piece, compiled on its first call. A piece with symbolic sizes (automatic dynamic shapes, dynamic=True)
    is compiled for its placeholders' symbolic example values (Dynamo's fake tensors and SymInts), so that one
    compiled function serves every size Dynamo sends to the graph: compiled for the first call's real tensors,
    Inductor would specialise it to that size and the next size would fail its input checks. Where Inductor cannot
    compile it symbolically (e.g. it asks Dynamo to restart and specialise a float input), the piece is compiled once
    per distinct input size instead (`_PerSize`)."""

    def __init__(self, gm: fx.GraphModule, compile_fn: Callable) -> None:
        super().__init__()
        self.gm, self.compile_fn, self.fn = gm, compile_fn, None

    def forward(self, *args):
        if self.fn is None:
            values = [example(ph) for ph in self.gm.graph.find_nodes(op="placeholder")]
            if not any(_symbolic(v) for v in values):
                self.fn = _compile(self.gm, self.compile_fn, list(args)) or self.gm
            else:
                if len(values) == len(args) and all(isinstance(v, (torch.Tensor, torch.SymInt, int)) for v in values):
                    self.fn = _compile(self.gm, self.compile_fn, values, quiet=True)
                if self.fn is None:
                    self.fn = _PerSize(self.gm, self.compile_fn)
        return self.fn(*args)


class _PerSize:
    """A piece compiled for the real tensors of each distinct input size (shapes, strides, size arguments); the
    most recent `keep` sizes are kept. A size Inductor cannot compile runs eagerly."""

    def __init__(self, gm: fx.GraphModule, compile_fn: Callable, keep: int = 8) -> None:
        self.gm, self.compile_fn, self.keep = gm, compile_fn, keep
        self.fns: OrderedDict = OrderedDict()

    def __call__(self, *args):
        key = tuple((a.shape, a.stride(), a.dtype) if isinstance(a, torch.Tensor) else a for a in args)
        fn = self.fns.get(key)
        if fn is None:
            fn = self.fns[key] = _compile(self.gm, self.compile_fn, list(args)) or self.gm
            while len(self.fns) > self.keep:
                self.fns.popitem(last=False)
        self.fns.move_to_end(key)
        return fn(*args)


def _compile(gm: fx.GraphModule, compile_fn: Callable, example_inputs: list, quiet: bool = False) -> Callable | None:
    """`compile_fn` on a copy of `gm`, or None (with a warning unless `quiet`) where Inductor cannot take it."""
    reason = ""  # a string, not the exception: its traceback would keep the calling frames (the runtime) alive
    with _tensorify_state():
        for attempt in (0, 1):
            try:
                # Inductor may edit the graph it is given: hand it a copy, keep the original for the fallback.
                return compile_fn(fx.GraphModule(gm, copy.deepcopy(gm.graph)), example_inputs)
            except TensorifyScalarRestartAnalysis:
                # Inductor asks Dynamo to restart with the float symbols of the shape environment specialised
                # (layer-norm eps, dropout p under dynamic=True) and has marked them so. The piece's inputs are
                # tensors and integers, so a second compile, with them specialised, is what the restart would give.
                if attempt == 0:
                    continue
                reason = "TensorifyScalarRestartAnalysis"
            except Exception as e:  # noqa: BLE001 - a piece Inductor cannot take still runs, eagerly
                reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
            break
    if not quiet:
        _warn_once(f"fxcache: Inductor could not compile a piece of the graph ({reason}); running that piece eagerly")
    return None


@contextlib.contextmanager
def _tensorify_state():
    """Dynamo's record of float symbols to specialise (what a restart asks for), as it was: a compile here is not
    a restart of Dynamo's analysis and must not leave that record behind for the next frame Dynamo traces."""
    try:
        from torch._dynamo.symbolic_convert import TensorifyState

        saved = set(TensorifyState.force_specializations)
    except (ImportError, AttributeError):  # another torch: nothing to keep
        yield
        return
    try:
        yield
    finally:
        TensorifyState.force_specializations.clear()
        TensorifyState.force_specializations.update(saved)


def _symbolic(v) -> bool:
    if isinstance(v, (torch.SymInt, torch.SymFloat)):
        return True
    return isinstance(v, torch.Tensor) and any(isinstance(s, torch.SymInt) for s in (*v.shape, *v.stride()))


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=3)


def compile_piecewise(gm: fx.GraphModule, compile_fn: Callable) -> Callable:
    """Split `gm` into per-block pieces, each compiled by `compile_fn(piece, example_inputs)` on first use."""
    parts = partition(gm)
    if len(set(parts.values())) <= 1:
        return _LazyPiece(gm, compile_fn)
    try:
        split = split_module(gm, None, lambda n: parts[n], keep_original_order=True)
    except KeyError:  # symbolic sizes (dynamic=True graphs) whose symbols split_module cannot place: one piece
        return _LazyPiece(gm, compile_fn)
    for name, sub in list(split.named_children()):
        setattr(split, name, _LazyPiece(sub, compile_fn))
    return split
