"""The residual cache's elementwise pass: `residual_apply(x, cached) -> x + cached`, a skipped step's output, one
pass (read two, write one).

Math in float32, results in the tensors' dtype (float32, bfloat16 or float16; both operands share it).
Non-contiguous inputs are copied to contiguous ones first (one extra pass); `out` must be contiguous (ValueError
otherwise).
"""

from __future__ import annotations

import torch

from ._common import (FLOATS, check_like, check_output, check_tensor, device_guard, flat, require_triton, tl,
                      tracing, triton, use_kernel)

BLOCK = 2048

# ------------------------------------------------------------------------------------------------- references


def residual_apply_reference(x: torch.Tensor, cached: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    r = (x.float() + cached.float()).to(x.dtype)
    return r if out is None else out.copy_(r)


# ---------------------------------------------------------------------------------------------------- kernels

if triton is not None:
    @triton.jit
    def _apply_kernel(x_ptr, c_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        c = tl.load(c_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, (x + c).to(out_ptr.dtype.element_ty), mask=mask)


def _check_apply(x, cached, out) -> None:
    fn = "residual_apply"
    check_tensor(fn, "x", x, FLOATS + (torch.float64,))
    check_like(fn, "cached", cached, "x", x)
    if out is not None:
        check_like(fn, "out", out, "x", x)
        check_output(fn, "out", out)


def residual_apply_triton(x: torch.Tensor, cached: torch.Tensor, out: torch.Tensor | None = None,
                          block: int = BLOCK) -> torch.Tensor:
    require_triton()
    _check_apply(x, cached, out)
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # contiguous, whatever x's strides
    n = x.numel()
    if n:
        with device_guard(x):
            _apply_kernel[(triton.cdiv(n, block),)](flat(x), flat(cached), out.view(-1), n, BLOCK=block)
    return out


# --------------------------------------------------------------------------------------------------- dispatch


def residual_apply(x: torch.Tensor, cached: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x + cached, computed in float32 and returned in x's dtype (a new contiguous tensor, or written into `out`,
    contiguous, of x's shape and dtype). x and cached share shape, dtype and device."""
    if tracing(x, cached, *(() if out is None else (out,))):
        return residual_apply_reference(x, cached, out)
    _check_apply(x, cached, out)
    if use_kernel(x, cached, *(() if out is None else (out,))):
        return residual_apply_triton(x, cached, out)
    return residual_apply_reference(x, cached, out)
