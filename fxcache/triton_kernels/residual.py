"""The residual cache's two elementwise passes.

- `residual_store(y, x, buf) -> finite`: buf = y - x, written in place into an existing cache buffer, and a 0-dim
  bool "every stored value is finite" flag. A computed step stores the stack's residual and the runtime must know
  whether it may keep it (NaN / inf never stays in a cache); separately that is a subtraction, a copy into the
  buffer and an isfinite().all() reduction, three passes over the residual; here it is one (each program writes
  its chunk of buf and one partial flag, a tiny second stage ANDs the partials: deterministic, no atomics). The
  buffer keeps its address, so CUDA graphs that read it in place stay valid.
- `residual_apply(x, cached) -> x + cached`: a skipped step's output, one pass (read two, write one).

Math in float32, results in the tensors' dtype (float32, bfloat16 or float16; all operands of one call share it).
Non-contiguous inputs are copied to contiguous ones first (one extra pass); the written tensors (`buf`, `out`)
must be contiguous (ValueError otherwise).
"""

from __future__ import annotations

import torch

from ._common import (FLOATS, check_like, check_output, check_tensor, device_guard, flat, require_triton, tl,
                      tracing, triton, use_kernel)

BLOCK = 2048

# ------------------------------------------------------------------------------------------------- references


def residual_store_reference(y: torch.Tensor, x: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    buf.copy_(y.float() - x.float())
    return torch.isfinite(buf).all()


def residual_apply_reference(x: torch.Tensor, cached: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    r = (x.float() + cached.float()).to(x.dtype)
    return r if out is None else out.copy_(r)


# ---------------------------------------------------------------------------------------------------- kernels

if triton is not None:
    FLT_MAX = tl.constexpr(3.4028234663852886e38)  # largest finite float32

    @triton.jit
    def _store_kernel(y_ptr, x_ptr, buf_ptr, fin_ptr, n, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        d = (y - x).to(buf_ptr.dtype.element_ty)
        tl.store(buf_ptr + offs, d, mask=mask)
        # Finite as stored (after the cast: a float32 difference may overflow float16). NaN fails the compare too;
        # masked lanes hold 0 and pass.
        ok = (tl.abs(d.to(tl.float32)) <= FLT_MAX).to(tl.int32)
        tl.store(fin_ptr + pid, tl.min(ok, axis=0))

    @triton.jit
    def _apply_kernel(x_ptr, c_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        c = tl.load(c_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, (x + c).to(out_ptr.dtype.element_ty), mask=mask)


def _check_store(y, x, buf) -> None:
    fn = "residual_store"
    check_tensor(fn, "y", y, FLOATS + (torch.float64,))
    check_like(fn, "x", x, "y", y)
    check_like(fn, "buf", buf, "y", y)
    check_output(fn, "buf", buf)


def _check_apply(x, cached, out) -> None:
    fn = "residual_apply"
    check_tensor(fn, "x", x, FLOATS + (torch.float64,))
    check_like(fn, "cached", cached, "x", x)
    if out is not None:
        check_like(fn, "out", out, "x", x)
        check_output(fn, "out", out)


def residual_store_triton(y: torch.Tensor, x: torch.Tensor, buf: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    require_triton()
    _check_store(y, x, buf)
    n = buf.numel()
    chunks = max(1, triton.cdiv(n, block))
    if not n:
        return torch.ones((), dtype=torch.bool, device=buf.device)
    partial = torch.empty(chunks, device=buf.device, dtype=torch.int32)  # every program writes its own
    with device_guard(buf):
        _store_kernel[(chunks,)](flat(y), flat(x), buf.view(-1), partial, n, BLOCK=block)
    return partial.all()


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


def residual_store(y: torch.Tensor, x: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """Write buf = y - x in place (computed in float32, stored in buf's dtype; buf keeps its data_ptr) and return
    a 0-dim bool tensor on buf's device: whether every stored value is finite. y, x and buf share shape, dtype and
    device; buf is contiguous."""
    if tracing(y, x, buf):
        return residual_store_reference(y, x, buf)
    _check_store(y, x, buf)
    if use_kernel(y, x, buf):
        return residual_store_triton(y, x, buf)
    return residual_store_reference(y, x, buf)


def residual_apply(x: torch.Tensor, cached: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x + cached, computed in float32 and returned in x's dtype (a new contiguous tensor, or written into `out`,
    contiguous, of x's shape and dtype). x and cached share shape, dtype and device."""
    if tracing(x, cached, *(() if out is None else (out,))):
        return residual_apply_reference(x, cached, out)
    _check_apply(x, cached, out)
    if use_kernel(x, cached, *(() if out is None else (out,))):
        return residual_apply_triton(x, cached, out)
    return residual_apply_reference(x, cached, out)
