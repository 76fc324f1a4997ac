"""Piecewise compilation of a variant graph (the approach of vLLM's `vllm/compilation/`).

A variant is split at transformer-block boundaries and every piece is compiled on its first call with the real
tensors it receives. Blocks of one list are the same code with different weights (weights are graph inputs), so
after the first block the others are hits in Inductor's FX-graph cache, and variants that share pieces (the
suffix, the prefix) share their compiled code too: compile time grows with the number of *distinct* pieces rather
than with (variants x blocks). The price is that Inductor does not fuse across a block boundary.
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable

import torch
import torch.fx as fx
from torch.fx.passes.split_module import split_module

from ..passes.discover import block_of


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
    def __init__(self, gm: fx.GraphModule, compile_fn: Callable) -> None:
        super().__init__()
        self.gm, self.compile_fn, self.fn = gm, compile_fn, None

    def forward(self, *args):
        if self.fn is None:
            try:
                # Inductor may edit the graph it is given: hand it a copy, keep the original for the fallback.
                self.fn = self.compile_fn(fx.GraphModule(self.gm, copy.deepcopy(self.gm.graph)), list(args))
            except Exception as e:  # noqa: BLE001 - a piece Inductor cannot take still runs, eagerly
                _warn_once(f"fxcache: Inductor could not compile a piece of the graph ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200]}); running that piece eagerly")
                self.fn = self.gm
        return self.fn(*args)


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
