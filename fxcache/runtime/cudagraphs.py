"""Compiled variants replayed as CUDA graphs (the piecewise approach of vLLM's `vllm/compilation/`, per variant).

A variant's compiled function is captured once per input shape, after one warm-up call on a side stream, and
replayed from then on: one launch per variant call instead of one per kernel. The rules that make replay safe:
- inputs: weights (parameters and buffers of the model) are read in place: their addresses are checked on every
  replay, and a moved weight (model.to(), load_state_dict(assign=True)) recaptures. Every other input (latents,
  text embeddings, cached values, probe values, forecast weights) is copied into a static buffer this graph owns;
  cache buffers are never handed to a graph as its own memory, so a capture cannot alias a stream's cache;
- outputs live in the graph's private memory pool and are overwritten by the next replay of the same graph (the
  uncond call of the same step replays it right after the cond call). The runtime therefore consumes them before
  returning: values it caches are copied into the stream's buffers (`StreamState.store`), distances are read at
  once, finiteness flags kept for later are cloned, and what the call returns is cloned (`Graphed.escape`);
- a capture that fails (an op that syncs with the host, a dynamic allocation the graph cannot hold) falls back to
  the compiled function for this variant, with one warning.

Nothing here runs for CPU inputs: the runtime wraps a variant only when its first input tensors are on CUDA, so the
CPU path never touches a CUDA API.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from typing import Callable

import torch

_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=4)


class _Capture:
    """One captured graph: its static input buffers, the weights it reads in place, its outputs."""

    def __init__(self, fn: Callable, inputs: list, static: list[bool]) -> None:
        self.static = static
        # Static inputs are the caller's tensors themselves (weights); the others get buffers of their own.
        self.buffers = [x if s or not isinstance(x, torch.Tensor) else x.clone() for x, s in zip(inputs, static)]
        self.weight_ptrs = [x.data_ptr() if s and isinstance(x, torch.Tensor) else 0
                            for x, s in zip(inputs, static)]
        self.copied = [i for i, (x, s) in enumerate(zip(inputs, static)) if isinstance(x, torch.Tensor) and not s]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the default stream, as CUDA graph capture requires
            fn(*self.buffers)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(*self.buffers)

    def weights_moved(self, inputs) -> bool:
        return any(p and inputs[i].data_ptr() != p for i, p in enumerate(self.weight_ptrs))

    def replay(self, inputs):
        buffers = self.buffers
        for i in self.copied:
            x = inputs[i]
            if x.data_ptr() != buffers[i].data_ptr():
                buffers[i].copy_(x, non_blocking=True)
        self.graph.replay()
        return self.outputs


class Graphed:
    """A compiled variant replayed as CUDA graphs, one per distinct input shape and thread (at most `keep`; beyond
    that the compiled function runs). `static[i]`: input i is a weight, read in place."""

    def __init__(self, fn: Callable, static: list[bool], label: str, keep: int = 4) -> None:
        self.fn, self.static, self.label, self.keep = fn, static, label, keep
        self.captures: OrderedDict = OrderedDict()
        self.failed = False
        self.replays = 0

    @staticmethod
    def escape(t):
        """What leaves a replay (the call's outputs, flags kept past it) as a tensor of its own."""
        return t.clone() if isinstance(t, torch.Tensor) else t

    def __call__(self, *inputs):
        if self.failed:
            return self.fn(*inputs)
        # Per thread too: a replay's outputs are read after it returns, so two threads must not share a graph.
        key = (threading.get_ident(),
               *((x.shape, x.dtype, x.stride()) if isinstance(x, torch.Tensor) else x for x in inputs))
        capture = self.captures.get(key)
        if capture is not None and capture.weights_moved(inputs):
            del self.captures[key]
            capture = None
        if capture is None:
            if len(self.captures) >= self.keep:
                return self.fn(*inputs)
            try:
                capture = self.captures[key] = _Capture(self.fn, list(inputs), self.static)
            except Exception as e:  # noqa: BLE001 - any capture failure: run this variant without graphs
                self.failed = True
                self.captures.clear()
                _warn_once(f"fxcache: CUDA graph capture failed for variant {self.label!r} "
                           f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}); it runs without CUDA "
                           f"graphs (option cudagraphs=False turns them off; warned once)")
                return self.fn(*inputs)
        self.captures.move_to_end(key)
        self.replays += 1
        return capture.replay(inputs)


def wants_graphs(inputs: list) -> bool:
    """Whether a variant called with `inputs` runs on a CUDA device (checked on tensors only: no CUDA API call)."""
    return any(isinstance(x, torch.Tensor) and x.is_cuda for x in inputs)
