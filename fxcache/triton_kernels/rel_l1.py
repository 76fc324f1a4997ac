"""Per-sample relative-L1 sums: num[b] = sum |x[b] - ref[b]|, den[b] = sum |ref[b]| (float32), the distance every
probing policy reads each step (FBCache's first-block residual, TeaCache's indicator).

Inside Inductor-compiled variants the reference below is traced and Inductor fuses it with its producers; the
Triton kernel serves variants run by the "eager" inner compiler on a GPU, where two separate reductions would
read the tensors twice. Two stages (per-chunk partial sums, then a sum over chunks) keep it deterministic, unlike
atomics: a cached run must give the same decisions every time.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs without Triton use the reference
    triton = None


def rel_l1_sums_reference(x: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b = x.shape[0]
    xf, rf = x.reshape(b, -1).float(), ref.reshape(b, -1).float()
    return (xf - rf).abs().sum(1), rf.abs().sum(1)


if triton is not None:

    @triton.jit
    def _partial_sums(x_ptr, r_ptr, num_ptr, den_ptr, n, chunks, BLOCK: tl.constexpr):
        sample = tl.program_id(0)
        chunk = tl.program_id(1)
        offs = chunk * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + sample * n + offs, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + sample * n + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(num_ptr + sample * chunks + chunk, tl.sum(tl.abs(x - r), axis=0))
        tl.store(den_ptr + sample * chunks + chunk, tl.sum(tl.abs(r), axis=0))


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def rel_l1_sums_triton(x: torch.Tensor, ref: torch.Tensor, block: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    if triton is None:
        raise RuntimeError("triton is not installed")
    b = x.shape[0]
    x, ref = x.reshape(b, -1).contiguous(), ref.reshape(b, -1).contiguous()
    n = x.shape[1]
    chunks = triton.cdiv(n, block)
    num = torch.empty(b, chunks, device=x.device, dtype=torch.float32)
    den = torch.empty_like(num)
    _partial_sums[(b, chunks)](x, ref, num, den, n, chunks, BLOCK=block)
    return num.sum(1), den.sum(1)


def rel_l1_sums(x: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch: the Triton kernel on CUDA tensors (or on the CPU under TRITON_INTERPRET=1) outside tracing; the
    torch reference otherwise, and whenever the graph is being traced for Inductor."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode, is_traceable_wrapper_subclass

    # Under Dynamo, make_fx/AOT (a dispatch mode is active) or on fake/functional tensors: trace the reference.
    tracing = (torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None
               or is_traceable_wrapper_subclass(x) or isinstance(x, torch._subclasses.FakeTensor))
    if triton is not None and not tracing and (x.is_cuda or _interpreting()):
        return rel_l1_sums_triton(x, ref)
    return rel_l1_sums_reference(x, ref)


def benchmark(numel: int = 1 << 22, batch: int = 2) -> dict:
    """Time the kernel against the reference (CUDA only; the interpreter's timings mean nothing)."""
    if not torch.cuda.is_available() or triton is None:
        return {"skipped": "needs a CUDA device and triton"}
    x = torch.randn(batch, numel // batch, device="cuda", dtype=torch.bfloat16)
    r = torch.randn_like(x)
    ms = {name: triton.testing.do_bench(lambda f=f: f(x, r))
          for name, f in (("reference", rel_l1_sums_reference), ("triton", rel_l1_sums_triton))}
    return {"numel": numel, "ms": ms, "speedup": ms["reference"] / ms["triton"]}
