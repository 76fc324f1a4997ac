"""Compiled variants replayed as CUDA graphs (the piecewise approach of vLLM's `vllm/compilation/`, per variant).

A variant is captured after one warm-up call on a side stream, then replayed: one launch per variant call instead
of one per kernel. What makes replay correct, input by input (`input_kinds`):
- the caller's inputs (latents, timestep, text embeddings: ("arg", i) that are not weights) are copied into static
  buffers the capture owns: the caller hands new tensors every call;
- weights are read in place; their addresses are checked on every replay, and moved weights recapture;
- what the runtime owns (cache buffers, which `StreamState.store` overwrites in place; probe values, outputs of the
  probe's graph; forecast weights and band scales, in `StaticConstants` buffers) is read in place, never copied
  (one residual of a 14B model at 720p is ~0.8 GB). Its addresses are part of the capture key: a buffer that moved
  (a new generation's cache, a rotated slot) selects another capture, and captures whose buffers are gone are
  dropped at the next capture;
- outputs live in the pool and are overwritten by the next replay of the same graph: the runtime copies what it
  caches into its buffers, reads distances at once, and clones what outlives the call (`Graphed.escape`).

One `GraphPool` per runtime: one memory pool for all its captures, and one lock held across warm-up and capture and
around every replay, so no thread of the runtime launches into the pool while another captures. Captures use
`capture_error_mode="thread_local"`, so host reads in other threads (the runtime's decisions) stay legal. A capture
is per thread (a replay's outputs are read after it returns), input shapes and model instance (the first weight's
address); each variant keeps the `keep` most recently used, and a thread's captures go when the thread ends.

Never graphed: a variant called with a CPU tensor; one whose capture fails (a host sync, a dynamic allocation), or
that is captured again and again (weights moving every call, as with CPU offloading): one warning. Nothing here
runs for CPU inputs: variants are wrapped only when their inputs are CUDA tensors, and `GraphPool` makes no CUDA
call before its first capture.
"""

from __future__ import annotations

import itertools
import threading
import warnings
import weakref
from collections import OrderedDict
from typing import Callable

import torch

from ..passes.nodes import is_param_like

COPY, WEIGHT, IN_PLACE = "copy", "weight", "in place"
KEEP = 4  # captures per variant (thread x shapes x model instance x buffer addresses)
THRASH = 8  # after this many captures, a variant replayed less than twice per capture stops using graphs
_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=4)


def input_kinds(keys: list[tuple], placeholders: list) -> list[str]:
    """How a capture treats each variant input, from its key (passes/specialize.py): the caller's graph inputs are
    copied, weights and what the runtime owns are read in place. An unknown kind is copied (always correct)."""
    return [(WEIGHT if is_param_like(placeholders[k[1]]) else COPY) if k[0] == "arg"
            else IN_PLACE if k[0] in ("val", "cache", "peer", "coef", "scales") else COPY for k in keys]


def _base(t: torch.Tensor) -> torch.Tensor:
    return t if t._base is None else t._base


class _Token:
    """Kept in one thread's local storage, so that its finaliser runs when the thread ends."""


class GraphPool:
    """What the CUDA graphs of one runtime share: a memory pool, a lock, and the threads' identities."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._handle = None  # torch.cuda.graph_pool_handle(), made at the first capture: no CUDA call before
        self._stream = None  # the stream of the last launch: replays in the shared pool must not overlap
        self._local = threading.local()
        self._serials = itertools.count()
        self._graphed: "weakref.WeakSet[Graphed]" = weakref.WeakSet()

    def thread(self) -> int:
        """A number for the calling thread, never reused (thread idents are); its captures go when it ends."""
        serial = getattr(self._local, "serial", None)
        if serial is None:
            serial = self._local.serial = next(self._serials)
            self._local.token = _Token()
            done = weakref.finalize(self._local.token, GraphPool._thread_ended, weakref.ref(self), serial)
            done.atexit = False  # at interpreter exit nothing needs freeing, and CUDA may be gone already
        return serial

    @staticmethod
    def _thread_ended(pool_ref, serial: int) -> None:
        pool = pool_ref()
        if pool is not None:
            with pool.lock:
                for g in list(pool._graphed):
                    g.drop(lambda key: key[0] == serial)

    def register(self, graphed: "Graphed") -> None:
        self._graphed.add(graphed)

    def handle(self):
        if self._handle is None:
            self._handle = torch.cuda.graph_pool_handle()
        return self._handle

    def order(self) -> None:
        """Before a launch into the pool (under `lock`): the current stream waits for the previous launch's."""
        stream = torch.cuda.current_stream()
        if self._stream is not None and stream != self._stream:
            stream.wait_stream(self._stream)
        self._stream = stream


class _Capture:
    """One captured graph: static buffers for the caller's inputs, the weights and runtime buffers it reads in
    place, its outputs."""

    def __init__(self, fn: Callable, inputs: list, kinds: list[str], pool: GraphPool) -> None:
        tensor = [isinstance(x, torch.Tensor) for x in inputs]
        self.copied = [i for i, k in enumerate(kinds) if k == COPY and tensor[i]]
        self.weights = [i for i, k in enumerate(kinds) if k == WEIGHT and tensor[i]]
        self.weight_ptrs = [inputs[i].data_ptr() for i in self.weights]
        # The runtime's buffers read in place, held weakly: once one is gone this capture can serve no call.
        self.held = [weakref.ref(_base(inputs[i])) for i, k in enumerate(kinds) if k == IN_PLACE and tensor[i]]
        self.buffers = list(inputs)
        for i in self.copied:
            self.buffers[i] = inputs[i].clone()
        self._record(fn, pool)

    def _record(self, fn: Callable, pool: GraphPool) -> None:
        """Warm up and capture `fn` on the buffers (the CUDA part; the CPU tests replace it)."""
        pool.order()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the current stream, as CUDA graph capture requires
            fn(*self.buffers)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool.handle(), capture_error_mode="thread_local"):
            self.outputs = fn(*self.buffers)

    def alive(self) -> bool:
        return all(r() is not None for r in self.held)

    def weights_moved(self, inputs) -> bool:
        return any(inputs[i].data_ptr() != p for i, p in zip(self.weights, self.weight_ptrs))

    def replay(self, inputs, pool: GraphPool):
        pool.order()  # first: an earlier replay on another stream may still read the buffers
        buffers = self.buffers
        for i in self.copied:
            x = inputs[i]
            if x.data_ptr() != buffers[i].data_ptr():
                buffers[i].copy_(x, non_blocking=True)
        self._launch()
        return self.outputs

    def _launch(self) -> None:
        self.graph.replay()


class Graphed:
    """A compiled variant replayed as CUDA graphs: at most `keep` captures, least recently used evicted. `kinds`:
    `input_kinds` of its inputs. `capture` makes a capture (a stand-in in the CPU tests)."""

    def __init__(self, fn: Callable, kinds: list[str], label: str, pool: GraphPool, keep: int = KEEP,
                 capture=_Capture) -> None:
        self.fn, self.kinds, self.label, self.pool, self.keep = fn, kinds, label, pool, keep
        self._capture = capture
        self.copy = [i for i, k in enumerate(kinds) if k == COPY]
        self.in_place = [i for i, k in enumerate(kinds) if k == IN_PLACE]
        self.first_weight = next((i for i, k in enumerate(kinds) if k == WEIGHT), None)
        self.captures: OrderedDict = OrderedDict()  # key -> _Capture, or None: this key runs without a graph
        self.failed = False
        self.captured = self.replays = 0
        pool.register(self)

    @staticmethod
    def escape(t):
        """What leaves a replay (the call's outputs, flags kept past it) as a tensor of its own."""
        return t.clone() if isinstance(t, torch.Tensor) else t

    def key(self, inputs) -> tuple:
        """Thread, model instance, the caller inputs' shapes and devices, the in-place buffers' addresses."""
        w = inputs[self.first_weight] if self.first_weight is not None else None
        key = [self.pool.thread(), w.data_ptr() if isinstance(w, torch.Tensor) else None]
        for i in self.copy:
            x = inputs[i]
            key.append((x.shape, x.dtype, x.stride(), x.device) if isinstance(x, torch.Tensor) else x)
        for i in self.in_place:
            x = inputs[i]
            key.append((x.data_ptr(), x.shape, x.dtype, x.stride(), x.device) if isinstance(x, torch.Tensor) else x)
        return tuple(key)

    def drop(self, which: Callable[[tuple], bool]) -> None:
        """Drop the captures whose key satisfies `which` (under the pool's lock)."""
        for key in [k for k in self.captures if which(k)]:
            del self.captures[key]

    def __call__(self, *inputs):
        if self.failed:
            return self.fn(*inputs)
        key = self.key(inputs)
        with self.pool.lock:
            capture = self.captures.get(key, False)
            if capture and capture.weights_moved(inputs):
                del self.captures[key]
                capture = False
            if capture is False:
                capture = self._new(key, list(inputs))
            else:
                self.captures.move_to_end(key)
            if capture is not None:
                self.replays += 1
                return capture.replay(inputs, self.pool)
        return self.fn(*inputs)

    def _new(self, key: tuple, inputs: list):
        """A capture for `key`, or None where this variant runs without graphs (under the pool's lock)."""
        if not all(x.is_cuda for x in inputs if isinstance(x, torch.Tensor)):
            self._remember(key, None)  # a CPU tensor among the inputs: the graph would not see its updates
            return None
        if self.captured >= THRASH and self.replays < 2 * self.captured:
            self._give_up("it was captured again on most calls (inputs or weights that move between calls)")
            return None
        self.drop(lambda k: self.captures[k] is not None and not self.captures[k].alive())
        try:
            capture = self._capture(self.fn, inputs, self.kinds, self.pool)
        except Exception as e:  # noqa: BLE001 - any capture failure: run this variant without graphs
            self._give_up(f"capture failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
            return None
        self.captured += 1
        self._remember(key, capture)
        return capture

    def _remember(self, key: tuple, capture) -> None:
        self.captures[key] = capture
        while len(self.captures) > self.keep:  # least recently used first
            self.captures.popitem(last=False)

    def _give_up(self, why: str) -> None:
        self.failed = True
        self.captures.clear()
        _warn_once(f"fxcache: variant {self.label!r} runs without CUDA graphs ({why}; option cudagraphs=False "
                   f"turns them off; warned once)")


def wants_graphs(inputs: list) -> bool:
    """Whether a variant called with `inputs` runs on a CUDA device (checked on tensors only: no CUDA API call)."""
    return any(isinstance(x, torch.Tensor) and x.is_cuda for x in inputs)
