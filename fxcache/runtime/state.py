"""Per-stream cache state and the detection of streams and generations.

A *stream* is one sequence of calls whose activations resemble each other step to step: the conditional or the
unconditional branch when a pipeline calls the model twice per step (Wan, Flux true-CFG). Calls at the same
timestep as the previous call are further streams of the same step; `fxcache.context(name)` names them explicitly.
A new *generation* starts when the timestep turns back (goes up, for the usual 1000 -> 0 schedules; down for
models that count the other way, like Mochi, which a generation's first two steps reveal) or a stream's input
shapes change (cond and uncond may differ in shape, e.g. QwenImage trims each prompt to its own length); it
starts from a clean state.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any

import torch

_CONTEXT: contextvars.ContextVar[str | None] = contextvars.ContextVar("fxcache_stream", default=None)


@contextlib.contextmanager
def context(name: str):
    """Name the stream of the calls made inside: `with fxcache.context("uncond"): model(...)`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"fxcache.context: name must be a non-empty string, got {name!r}")
    token = _CONTEXT.set(name)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


@dataclass
class StreamState:
    name: str
    step: int = 0  # 1-based index of the current call within this stream's generation
    cache: dict = field(default_factory=dict)  # Site -> tuple of tensors (buffers the runtime owns)
    policy: Any = None  # the policy's own per-stream state
    shapes: tuple = ()

    def store(self, site, values) -> None:
        old = self.cache.get(site)
        if old is not None and len(old) == len(values) and all(
                o.shape == v.shape and o.dtype == v.dtype for o, v in zip(old, values)):
            for o, v in zip(old, values):  # keep buffer addresses stable (CUDA graphs read them in place)
                o.copy_(v)
        else:
            self.cache[site] = tuple(v.detach().clone() for v in values)


class Streams:
    def __init__(self, timestep_index: int | None, user_indices: list[int], new_policy_state) -> None:
        self.timestep_index = timestep_index
        self.user_indices = user_indices
        self.new_policy_state = new_policy_state
        self.states: dict[str, StreamState] = {}
        self.generation = 0
        self._last_t: float | None = None
        self._direction = 0  # -1: timesteps fall (1000 -> 0), +1: they rise; 0: not known yet
        self._position = 0

    def reset(self) -> None:
        self.states.clear()
        self._last_t = None
        self._direction = 0
        self._position = 0

    def resolve(self, args) -> StreamState:
        shapes = tuple(tuple(args[i].shape) for i in self.user_indices if isinstance(args[i], torch.Tensor))
        t = None
        if self.timestep_index is not None:
            ts = args[self.timestep_index]
            t = float(ts.reshape(-1)[0]) if isinstance(ts, torch.Tensor) else float(ts)
        move = 0 if t is None or self._last_t is None or t == self._last_t else (1 if t > self._last_t else -1)
        position = self._position + 1 if (t is not None and t == self._last_t) else 0
        name = _CONTEXT.get() or f"stream{position}"
        known = self.states.get(name)
        if (move and self._direction and move != self._direction) or (known is not None and known.shapes != shapes):
            self.states.clear()
            self.generation += 1
            self._direction = move = 0
        elif move and not self._direction:
            self._direction = move
        self._position, self._last_t = position, t
        st = self.states.get(name)
        if st is None:
            st = self.states[name] = StreamState(name, policy=self.new_policy_state(), shapes=shapes)
        st.step += 1
        return st
