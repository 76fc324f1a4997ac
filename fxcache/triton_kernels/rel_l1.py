"""Per-sample relative-L1 sums: num[b] = sum |x[b] - ref[b]|, den[b] = sum |ref[b]| (float32), the distance every
probing policy reads each step (FBCache's first-block residual, TeaCache's indicator).

Why fused: two separate torch reductions would read `ref` twice and materialise |x - ref|; the kernel reads each
tensor once and writes two small partial-sum arrays. Inside Inductor-compiled variants the reference below is
traced and Inductor fuses it with its producers; the Triton kernel serves variants run by the "eager" inner
compiler on a GPU. Two stages (per-chunk partial sums, then a sum over chunks) keep it deterministic, unlike
atomics: a cached run must give the same decisions every time.

Inputs: x and ref of the same shape (batch first), dtype (float32, bfloat16 or float16) and device; the sums are
float32. Non-contiguous inputs are copied to contiguous ones first (one extra pass; activations are contiguous).
"""

from __future__ import annotations

import torch

from ._common import FLOATS, check_like, check_tensor, device_guard, require_triton, tl, tracing, triton, use_kernel

NAME = "rel_l1_sums"


def rel_l1_sums_reference(x: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b = x.shape[0]
    xf, rf = x.reshape(b, -1).float(), ref.reshape(b, -1).float()
    return (xf - rf).abs().sum(1), rf.abs().sum(1)


if triton is not None:

    @triton.jit
    def _partial_sums(x_ptr, r_ptr, num_ptr, den_ptr, n, chunks, BLOCK: tl.constexpr):
        # Chunks on grid axis 0 (up to 2**31 - 1 programs; axis 1 allows only 65535: a 14B Wan 720p sample has
        # 94500 chunks of 4096), samples on axis 1.
        chunk = tl.program_id(0)
        sample = tl.program_id(1).to(tl.int64)
        offs = chunk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + sample * n + offs, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + sample * n + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(num_ptr + sample * chunks + chunk, tl.sum(tl.abs(x - r), axis=0))
        tl.store(den_ptr + sample * chunks + chunk, tl.sum(tl.abs(r), axis=0))


def _check(x, ref) -> None:
    check_tensor(NAME, "x", x, FLOATS + (torch.float64,))
    check_like(NAME, "ref", ref, "x", x)
    if x.ndim < 1:
        raise ValueError(f"{NAME}: argument 'x' must have a batch dimension, got a 0-dim tensor")


def rel_l1_sums_triton(x: torch.Tensor, ref: torch.Tensor, block: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    require_triton()
    _check(x, ref)
    b = x.shape[0]
    # reshape copies a non-contiguous view (one extra pass); contiguous inputs are only viewed.
    x, ref = x.reshape(b, -1).contiguous(), ref.reshape(b, -1).contiguous()
    n = x.shape[1]
    chunks = max(1, triton.cdiv(n, block))
    num = torch.empty(b, chunks, device=x.device, dtype=torch.float32)
    den = torch.empty_like(num)
    if b:
        with device_guard(x):
            _partial_sums[(chunks, b)](x, ref, num, den, n, chunks, BLOCK=block)
    return num.sum(1), den.sum(1)


def rel_l1_sums(x: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(num, den): num[b] = sum |x[b] - ref[b]|, den[b] = sum |ref[b]|, float32 of shape (B,). The Triton kernel on
    CUDA tensors (or on the CPU under TRITON_INTERPRET=1) outside tracing; the torch reference otherwise, and
    whenever the graph is being traced for Inductor."""
    if tracing(x, ref):
        return rel_l1_sums_reference(x, ref)
    _check(x, ref)
    if use_kernel(x, ref):
        return rel_l1_sums_triton(x, ref)
    return rel_l1_sums_reference(x, ref)
