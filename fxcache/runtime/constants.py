"""Forecast weights and band scales (the ("coef",) / ("scales",) inputs of a variant) as float32 tensors.

On a GPU they live in fixed buffers, one per (kind, length, device) and thread, rewritten in place when the values
change, by one non-blocking copy from pinned host memory: a CUDA graph reads them in place (cudagraphs.py), and a
step whose weights differ from the last costs no allocation. The copy is ordered on the current stream, before the
variant that reads it; the pinned source is released to torch's host allocator, which does not hand it out again
before the copy has run. One buffer per thread: two threads' generations may need different values at once.

On the CPU (and without a device) one tensor per distinct value, bounded, as nothing there is captured.
"""

from __future__ import annotations

import threading

import torch

BY_VALUE = 256  # CPU tensors kept, one per distinct value (weights that change every step: bounded)


class StaticConstants:
    def __init__(self) -> None:
        self._local = threading.local()
        self._by_value: dict = {}

    def get(self, kind: str, values: tuple, device) -> torch.Tensor:
        """`values` as a float32 tensor on `device`; on a device other than the CPU, the fixed buffer of (`kind`,
        len(`values`), `device`) in this thread, holding `values` by the time a later launch reads it."""
        if device is None or torch.device(device).type == "cpu":
            return self._on_cpu(kind, values, device)
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        key = (kind, len(values), device)
        entry = buffers.get(key)
        if entry is None:
            entry = buffers[key] = [torch.empty(len(values), dtype=torch.float32, device=device), None]
        if entry[1] != values:
            pinned = torch.device(device).type == "cuda"
            entry[0].copy_(torch.tensor(values, dtype=torch.float32, pin_memory=pinned), non_blocking=pinned)
            entry[1] = values
        return entry[0]

    def _on_cpu(self, kind: str, values: tuple, device) -> torch.Tensor:
        key = (kind, values, device)
        t = self._by_value.get(key)
        if t is None:
            if len(self._by_value) >= BY_VALUE:
                self._by_value.clear()
            t = self._by_value[key] = torch.tensor(values, dtype=torch.float32, device=device)
        return t
