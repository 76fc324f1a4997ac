"""Forecast: out = sum_k coeffs[k] * slots[k], the cached value a forecasting policy puts in place of a skipped
site (linear extrapolation: K = 2 with weights (2, -1); Taylor order m: K = m + 1 with the weights the policy
computes; slot 0 the newest).

Why fused: the torch expression is K multiplies and K - 1 adds, each a pass over memory with a temporary; the
kernel reads each slot once and writes the output once. The weights are read on the device (a 1-D float32
tensor of K elements), so a step's new weights need no recompile and no host sync. Accumulation in float32,
output in the slots' dtype (float32, bfloat16 or float16; all slots share shape, dtype and device). Up to
MAX_SLOTS slots. Non-contiguous slots are copied to contiguous ones first (one extra pass); `out` must be
contiguous.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._common import (FLOATS, check_like, check_output, check_tensor, check_vector, device_guard, flat,
                      require_triton, tl, tracing, triton, use_kernel)

NAME = "forecast"
MAX_SLOTS = 8
BLOCK = 2048


def forecast_reference(slots: Sequence[torch.Tensor], coeffs: torch.Tensor,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    acc = coeffs[0] * slots[0].float()
    for k in range(1, len(slots)):
        acc = acc + coeffs[k] * slots[k].float()
    r = acc.to(slots[0].dtype)
    return r if out is None else out.copy_(r)


if triton is not None:

    @triton.jit
    def _forecast_kernel(out_ptr, c_ptr, s0, s1, s2, s3, s4, s5, s6, s7, n, K: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        acc = tl.load(c_ptr) * tl.load(s0 + offs, mask=mask, other=0.0).to(tl.float32)
        # K is a compile-time constant: the unused pointer arguments are never read.
        if K > 1:
            acc += tl.load(c_ptr + 1) * tl.load(s1 + offs, mask=mask, other=0.0).to(tl.float32)
        if K > 2:
            acc += tl.load(c_ptr + 2) * tl.load(s2 + offs, mask=mask, other=0.0).to(tl.float32)
        if K > 3:
            acc += tl.load(c_ptr + 3) * tl.load(s3 + offs, mask=mask, other=0.0).to(tl.float32)
        if K > 4:
            acc += tl.load(c_ptr + 4) * tl.load(s4 + offs, mask=mask, other=0.0).to(tl.float32)
        if K > 5:
            acc += tl.load(c_ptr + 5) * tl.load(s5 + offs, mask=mask, other=0.0).to(tl.float32)
        if K > 6:
            acc += tl.load(c_ptr + 6) * tl.load(s6 + offs, mask=mask, other=0.0).to(tl.float32)
        if K > 7:
            acc += tl.load(c_ptr + 7) * tl.load(s7 + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _check(slots, coeffs, out) -> None:
    if isinstance(slots, torch.Tensor) or not isinstance(slots, Sequence) or not slots:
        raise TypeError(f"{NAME}: argument 'slots' must be a non-empty sequence of tensors, got "
                        f"{type(slots).__name__}")
    if len(slots) > MAX_SLOTS:
        raise ValueError(f"{NAME}: argument 'slots' has {len(slots)} tensors; at most {MAX_SLOTS} are supported")
    check_tensor(NAME, "slots[0]", slots[0], FLOATS + (torch.float64,))
    for k, s in enumerate(slots[1:], 1):
        check_like(NAME, f"slots[{k}]", s, "slots[0]", slots[0])
    check_vector(NAME, "coeffs", coeffs, len(slots), "slots[0]", slots[0])
    if out is not None:
        check_like(NAME, "out", out, "slots[0]", slots[0])
        check_output(NAME, "out", out)


def forecast_triton(slots: Sequence[torch.Tensor], coeffs: torch.Tensor, out: torch.Tensor | None = None,
                    block: int = BLOCK) -> torch.Tensor:
    require_triton()
    _check(slots, coeffs, out)
    first = slots[0]
    if out is None:
        out = torch.empty(first.shape, dtype=first.dtype, device=first.device)
    n = first.numel()
    if n:
        ptrs = [flat(s) for s in slots]
        ptrs += [ptrs[0]] * (MAX_SLOTS - len(ptrs))
        with device_guard(first):
            _forecast_kernel[(triton.cdiv(n, block),)](out.view(-1), coeffs.contiguous(), *ptrs, n, K=len(slots),
                                                       BLOCK=block)
    return out


def forecast(slots: Sequence[torch.Tensor], coeffs: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """sum_k coeffs[k] * slots[k] for K = len(slots) <= MAX_SLOTS tensors of one shape, dtype and device; coeffs a
    1-D float32 tensor of K weights on the same device (read there: no host sync). Float32 accumulation; the
    result in the slots' dtype (a new contiguous tensor, or written into `out`)."""
    extra = () if out is None else (out,)
    if tracing(*slots, coeffs, *extra):
        return forecast_reference(slots, coeffs, out)
    _check(slots, coeffs, out)
    if use_kernel(*slots, coeffs, *extra):
        return forecast_triton(slots, coeffs, out)
    return forecast_reference(slots, coeffs, out)
