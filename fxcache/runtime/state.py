"""Per-stream cache state and the detection of streams and generations.

A *stream* is one sequence of calls whose activations resemble each other step to step: the conditional or the
unconditional branch when a pipeline calls the model twice per step (Wan, Flux true-CFG). Calls at the same
timestep as the previous call, on the same latent, are further streams of the same step; `fxcache.context(name)`
names them explicitly.

A new *generation* starts, from a clean state, when
- the timestep turns back (goes up, for the usual 1000 -> 0 schedules; down for models that count the other way,
  like Mochi, which a generation's first two steps reveal);
- a call comes at the same timestep as the previous one but is not another stream of that step: a different latent
  (neither the same tensor nor equal values), or a stream name or text embedding (the same tensor or equal
  values) already seen at this step. This is what separates a generation that starts where the previous one stopped (after a run interrupted
  in its first step, or after a 1-step generation) from the uncond call of the same step;
- a stream's input shapes change (cond and uncond may differ in shape, e.g. QwenImage trims each prompt to its own
  length, so shapes are compared per stream);
- a stream has made `num_steps` calls, when that option is given.
A block graph without a timestep input (the model broke the graph before its blocks, like Lumina2) uses the
timestep that the model's earlier graph published in the same thread during the same forward call (`Clock`).
`fxcache.reset(model)` is the escape hatch where none of this applies.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from .context import _CONTEXT

class Clock:
    """The timestep most recently seen by any fxcache graph of this thread, with a serial number, so that a block
    graph without a timestep input can take the one its model's earlier graph saw in the same forward call."""

    _local = threading.local()

    @classmethod
    def publish(cls, t) -> None:
        cls._local.t = t
        cls._local.serial = getattr(cls._local, "serial", 0) + 1

    @classmethod
    def read(cls) -> tuple[Any, int]:
        return getattr(cls._local, "t", None), getattr(cls._local, "serial", 0)


def timestep_value(ts) -> float | None:
    if ts is None:
        return None
    if not isinstance(ts, torch.Tensor):
        return float(ts)
    return float(ts.item() if ts.numel() == 1 else ts.reshape(-1)[0].item())


@dataclass
class StreamState:
    name: str
    step: int = 0  # 1-based index of the current call within this stream's generation
    # Site -> the last computed values, newest first: a list of slots, each a tuple of tensors (one per output of
    # the site), in buffers the runtime owns.
    cache: dict = field(default_factory=dict)
    pending: dict = field(default_factory=dict)  # Site -> 0-dim bool tensor: were the newest values finite?
    policy: Any = None  # the policy's own per-stream state
    shapes: tuple = ()
    paired: bool | None = None  # the batch is [uncond; cond] (Call role "batched"); None: not looked at yet
    first_t: float | None = None  # the stream's first timestep: tells a 0-1 scale from a 0-1000 one

    def store(self, site, values, finite=None, depth: int = 1) -> None:
        """Make `values` slot 0 of `site`, keeping at most `depth` slots. The oldest slot's buffers take the new
        values when shapes allow, so buffer addresses stay fixed (CUDA graphs read them in place)."""
        slots = self.cache.setdefault(site, [])
        if slots and not all(len(s) == len(values) and all(o.shape == v.shape and o.dtype == v.dtype
                                                           for o, v in zip(s, values)) for s in slots):
            slots.clear()
        if len(slots) >= depth:
            buffers = slots.pop()
            del slots[depth - 1:]
            for o, v in zip(buffers, values):
                o.copy_(v)
        else:
            buffers = tuple(v.detach().clone() for v in values)
        slots.insert(0, buffers)
        if finite is None:
            self.pending.pop(site, None)
        else:
            self.pending[site] = finite

    def drop(self, site) -> None:
        self.cache.pop(site, None)
        self.pending.pop(site, None)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for slots in self.cache.values() for vals in slots for t in vals)


def _same(a, b) -> bool:
    """The same tensor, or equal values (read only when the cheap checks leave it open)."""
    if a is b:
        return True
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b))


class Joint:
    """A joint policy's per-generation state (Call.shared) and the decision of the current step's first call
    (Call.agreed): the one mechanism by which the streams of a generation (the CFG branches) take one decision
    per step."""

    __slots__ = ("shared", "step", "label", "made")

    def __init__(self, shared) -> None:
        self.shared, self.step, self.label, self.made = shared, None, None, False

    def agreed(self, step: int) -> str | None:
        return self.label if self.step == step else None

    def decided(self, step: int, label: str) -> None:
        if self.step != step:
            self.step, self.label = step, label


class Streams:
    """The streams of one model instance in one thread, and its generations."""

    def __init__(self, timestep_index: int | None, hidden_index: int | None, encoder_index: int | None,
                 user_indices: list[int], new_policy_state, num_steps: int | None = None) -> None:
        self.timestep_index, self.hidden_index, self.encoder_index = timestep_index, hidden_index, encoder_index
        self.user_indices = user_indices
        self.new_policy_state = new_policy_state
        self.num_steps = num_steps
        self.states: dict[str, StreamState] = {}
        self.generation = 0
        self.reset()

    def reset(self) -> None:
        self.states.clear()
        self.joint = Joint(None)
        self.last_t: float | None = None
        self._direction = 0  # -1: timesteps fall (1000 -> 0), +1: they rise; 0: not known yet
        self._position = 0
        self._serial = -1  # Clock serial seen at the previous call (graphs without a timestep input)
        self._latent = None  # latent input of the previous call (kept to tell "same step" from "new generation")
        self._seen_here: list = []  # (name, text-embedding tensor) of the calls at the current timestep
        self._t_tensor, self._t_version, self._t_value = None, None, None  # the last timestep tensor read
        self._equal: dict = {}  # (id, version, id, version) -> torch.equal of two text embeddings held here

    def nbytes(self) -> int:
        return sum(st.nbytes() for st in self.states.values())

    def _timestep(self, args):
        if self.timestep_index is not None:
            ts = args[self.timestep_index]
            # The same tensor, unmodified, as the previous call's (pipelines pass one timestep tensor to both CFG
            # calls of a step): its value is known, and reading a CUDA tensor again would sync with the device.
            key = (ts._version,) if isinstance(ts, torch.Tensor) else None
            if key is not None and ts is self._t_tensor and key == self._t_version:
                return self._t_value
            value = timestep_value(ts)
            if key is not None:
                self._t_tensor, self._t_version, self._t_value = ts, key, value
            return value
        t, serial = Clock.read()
        fresh = serial != self._serial
        self._serial = serial
        return timestep_value(t) if fresh else None

    def _same_text(self, a, b) -> bool:
        """`_same` for text embeddings, remembered per pair of unmodified tensors: pipelines pass the same cond and
        uncond embeddings at every step, and comparing their values each step would read them (a device sync)."""
        if a is b or not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return _same(a, b)
        key = (id(a), a._version, id(b), b._version)
        hit = self._equal.get(key)
        if hit is None or hit[1] is not a or hit[2] is not b:  # ids can be reused once a tensor is gone
            if len(self._equal) >= 8:  # the pairs of one generation (cond / uncond, a few streams)
                self._equal.clear()
            hit = self._equal[key] = (_same(a, b), a, b)
        return hit[0]

    def _same_latent(self, x) -> bool:
        if self._latent is None or x is None:
            return True  # nothing to compare: trust the timestep
        return _same(x, self._latent)

    def resolve(self, args) -> StreamState:
        shapes = tuple(args[i].shape for i in self.user_indices if isinstance(args[i], torch.Tensor))
        t = self._timestep(args)
        x = args[self.hidden_index] if self.hidden_index is not None else None
        text = args[self.encoder_index] if self.encoder_index is not None else None
        return self.resolve_at(t, x, text, shapes)

    def resolve_at(self, t: float | None, x, text, shapes: tuple) -> StreamState:
        """`resolve` from the call's values: its timestep, latent, text embedding and input shapes (a request's
        rows of a batched call: runtime/persample.py)."""
        explicit = _CONTEXT.get()
        same_t = t is not None and t == self.last_t
        new = False
        if same_t:
            name = explicit or f"stream{self._position + 1}"
            # Pipelines pass the cond and uncond embeddings as two tensors held for the whole run; a repeat of an
            # earlier call's (the same tensor, or equal values: the same prompt encoded again) is a new run.
            repeated = any(n == name or (text is not None and self._same_text(text, e)) for n, e in self._seen_here)
            if repeated or not self._same_latent(x):
                new, same_t = True, False  # the same call again, or another latent: a new generation
        move = 0 if t is None or self.last_t is None or t == self.last_t else (1 if t > self.last_t else -1)
        if same_t:
            position = self._position + 1
        else:
            position = 0
            self._seen_here = []
        name = explicit or f"stream{position}"
        known = self.states.get(name)
        if move and self._direction and move != self._direction:
            new = True
        if known is not None and (known.shapes != shapes or (
                self.num_steps is not None and known.step >= self.num_steps)):
            new = True
        if new:
            self.states.clear()
            self.joint = Joint(None)
            self._equal.clear()
            self._direction = move = 0
        elif move and not self._direction:
            self._direction = move
        if not self.states:
            self.generation += 1  # the first call after construction, a reset or a detected boundary
        self._position, self.last_t, self._latent = position, t, x
        self._seen_here.append((name, text))
        st = self.states.get(name)
        if st is None:
            st = self.states[name] = StreamState(name, policy=self.new_policy_state(), shapes=shapes)
        st.step += 1
        return st
