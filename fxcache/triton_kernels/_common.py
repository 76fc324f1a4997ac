"""What every kernel file shares: the guarded Triton import, the one "use the kernel or the reference?" rule, and
the argument checks that give a clear error naming the argument.

The dispatch rule (`use_kernel`): the Triton kernel runs on CUDA tensors, or on CPU tensors under Triton's
interpreter (TRITON_INTERPRET=1, tests), and never while the call is being traced (Dynamo, make_fx / AOT
autograd, fake or functional tensors): inside an Inductor-compiled graph the torch reference is what gets traced,
and Inductor fuses it with the ops that produce its inputs, which a hand-written kernel would prevent. Nothing on
the CPU path touches a CUDA API (`Tensor.is_cuda` is an attribute of the tensor, it does not initialise CUDA).
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch._subclasses import FakeTensor
from torch.utils._python_dispatch import _get_current_dispatch_mode, is_traceable_wrapper_subclass

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs without Triton use the references
    triton = None
    tl = None

# The dtypes the kernels read and write; anything else (float64, ...) goes to the reference.
FLOATS = (torch.float32, torch.bfloat16, torch.float16)


# Triton decides at decoration time (when the kernel modules are imported) whether a @triton.jit function is
# interpreted: the CPU path needs TRITON_INTERPRET=1 both then and now.
_INTERPRETED_AT_IMPORT = os.environ.get("TRITON_INTERPRET") == "1"


def interpreting() -> bool:
    """Whether the kernels run on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1 set before this
    package was imported, and still set)."""
    return _INTERPRETED_AT_IMPORT and os.environ.get("TRITON_INTERPRET") == "1"


def tracing(*tensors: torch.Tensor) -> bool:
    """Whether this call is being traced rather than run: Dynamo, a dispatch mode (make_fx / AOT / fake mode), or a
    fake / functional / other wrapper-subclass tensor among the arguments."""
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return True
    return any(isinstance(t, FakeTensor) or is_traceable_wrapper_subclass(t) for t in tensors)


def use_kernel(*tensors: torch.Tensor) -> bool:
    """The dispatch rule shared by every kernel: Triton is installed, nothing is being traced, every tensor has a
    dtype the kernels handle, and they are on CUDA (or the interpreter is on)."""
    if triton is None or tracing(*tensors):
        return False
    if any(t.dtype not in FLOATS for t in tensors):
        return False
    return all(t.is_cuda for t in tensors) or interpreting()


def device_guard(t: torch.Tensor):
    """Launch on the tensor's own GPU (Triton launches on the current device); nothing on the CPU."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def require_triton() -> None:
    if triton is None:
        raise RuntimeError("fxcache.triton_kernels: triton is not installed (pip install triton); the *_reference "
                           "functions and the dispatch functions work without it")


# ---------------------------------------------------------------------------------------------------- checks

def check_tensor(fn: str, name: str, t, dtypes=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: argument '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{fn}: argument '{name}' has dtype {str(t.dtype).removeprefix('torch.')}; "
                        f"expected one of {allowed}")


def check_like(fn: str, name: str, t: torch.Tensor, like_name: str, like: torch.Tensor, dtype: bool = True) -> None:
    """`t` has the shape, device (and, with `dtype`, the dtype) of `like`."""
    check_tensor(fn, name, t)
    if t.shape != like.shape:
        raise ValueError(f"{fn}: argument '{name}' has shape {tuple(t.shape)}, but '{like_name}' has shape "
                         f"{tuple(like.shape)}; they must be equal")
    check_device(fn, name, t, like_name, like)
    if dtype and t.dtype != like.dtype:
        raise TypeError(f"{fn}: argument '{name}' has dtype {str(t.dtype).removeprefix('torch.')}, but "
                        f"'{like_name}' has dtype {str(like.dtype).removeprefix('torch.')}; they must be equal")


def check_device(fn: str, name: str, t: torch.Tensor, like_name: str, like: torch.Tensor) -> None:
    if t.device != like.device:
        raise ValueError(f"{fn}: argument '{name}' is on {t.device}, but '{like_name}' is on {like.device}; "
                         f"they must be on the same device")


def check_vector(fn: str, name: str, t, length: int | None, like_name: str, like: torch.Tensor,
                 dtypes=(torch.float32,)) -> None:
    """A small 1-D device tensor of parameters (weights, scales, state)."""
    check_tensor(fn, name, t, dtypes)
    if t.ndim != 1 or (length is not None and t.numel() != length):
        want = f"{length} elements" if length is not None else "at least one element"
        raise ValueError(f"{fn}: argument '{name}' must be a 1-D tensor of {want}, got shape {tuple(t.shape)}")
    check_device(fn, name, t, like_name, like)


def check_output(fn: str, name: str, t: torch.Tensor) -> None:
    """A tensor a kernel writes in place: it must be contiguous (the kernels write a flat range of memory, and
    an in-place cache buffer cannot be replaced by a contiguous copy)."""
    if not t.is_contiguous():
        raise ValueError(f"{fn}: argument '{name}' must be contiguous (it is written in place), got strides "
                         f"{t.stride()} for shape {tuple(t.shape)}")


def flat(t: torch.Tensor) -> torch.Tensor:
    """A contiguous 1-D view of an input. A non-contiguous input (a transposed or sliced view) is copied first:
    one extra pass over it, which callers on the hot path avoid by passing contiguous tensors (activations and
    cache buffers are)."""
    return t.reshape(-1) if t.is_contiguous() else t.contiguous().reshape(-1)
