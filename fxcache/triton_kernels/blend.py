"""CFG rebuild blend: uncond = cond + scales[0] * low + scales[1] * high, FasterCache's CFG-Cache rebuilt step
(`fxcache.passes.cfg.rebuild`: the same expression, in the same order).

Why fused: in torch that is two multiplies, two adds and a cast, each a pass with a float32 temporary of the
latent's size; the kernel reads cond, low and high once and writes the result once. The band scales are read on
the device (a 2-element float32 tensor), so the compounding scales of each rebuilt step need no recompile and no
host sync. cond: float32, bfloat16 or float16; low and high: the float32 band images of cond's shape; the result
in cond's dtype. Non-contiguous inputs are copied to contiguous ones first; `out` must be contiguous.
"""

from __future__ import annotations

import torch

from ._common import (FLOATS, check_like, check_output, check_tensor, check_vector, device_guard, flat,
                      require_triton, tl, tracing, triton, use_kernel)

NAME = "cfg_blend"
BLOCK = 2048


def cfg_blend_reference(cond: torch.Tensor, low: torch.Tensor, high: torch.Tensor, scales: torch.Tensor,
                        out: torch.Tensor | None = None) -> torch.Tensor:
    r = (cond.float() + scales[0] * low + scales[1] * high).to(cond.dtype)
    return r if out is None else out.copy_(r)


if triton is not None:

    @triton.jit
    def _blend_kernel(c_ptr, lo_ptr, hi_ptr, s_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        c = tl.load(c_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        lo = tl.load(lo_ptr + offs, mask=mask, other=0.0)
        hi = tl.load(hi_ptr + offs, mask=mask, other=0.0)
        r = (c + tl.load(s_ptr) * lo) + tl.load(s_ptr + 1) * hi
        tl.store(out_ptr + offs, r.to(out_ptr.dtype.element_ty), mask=mask)


def _check(cond, low, high, scales, out) -> None:
    check_tensor(NAME, "cond", cond, FLOATS + (torch.float64,))
    for name, t in (("low", low), ("high", high)):
        check_like(NAME, name, t, "cond", cond, dtype=False)
        check_tensor(NAME, name, t, (torch.float32,))
    check_vector(NAME, "scales", scales, 2, "cond", cond)
    if out is not None:
        check_like(NAME, "out", out, "cond", cond)
        check_output(NAME, "out", out)


def cfg_blend_triton(cond: torch.Tensor, low: torch.Tensor, high: torch.Tensor, scales: torch.Tensor,
                     out: torch.Tensor | None = None, block: int = BLOCK) -> torch.Tensor:
    require_triton()
    _check(cond, low, high, scales, out)
    if out is None:
        out = torch.empty(cond.shape, dtype=cond.dtype, device=cond.device)
    n = cond.numel()
    if n:
        with device_guard(cond):
            _blend_kernel[(triton.cdiv(n, block),)](flat(cond), flat(low), flat(high), scales.contiguous(),
                                                    out.view(-1), n, BLOCK=block)
    return out


def cfg_blend(cond: torch.Tensor, low: torch.Tensor, high: torch.Tensor, scales: torch.Tensor,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """cond.float() + scales[0] * low + scales[1] * high, cast to cond's dtype (a new contiguous tensor, or written
    into `out`). low / high: float32 of cond's shape and device; scales: a 2-element float32 tensor there."""
    extra = () if out is None else (out,)
    if tracing(cond, low, high, scales, *extra):
        return cfg_blend_reference(cond, low, high, scales, out)
    _check(cond, low, high, scales, out)
    if use_kernel(cond, low, high, scales, *extra):
        return cfg_blend_triton(cond, low, high, scales, out)
    return cfg_blend_reference(cond, low, high, scales, out)
