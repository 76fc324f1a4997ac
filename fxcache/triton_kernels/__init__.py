"""Fused Triton kernels for the guard and cache math, each next to its torch reference.

Each kernel X comes as `X_reference` (torch), `X_triton` (the kernel launcher) and `X` (dispatch): the kernel on
CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1, outside tracing; the reference otherwise, and whenever
the call is traced by Dynamo / AOT (inside Inductor-compiled graphs the reference is traced and Inductor fuses it
with its producers). `_common.use_kernel` is that rule. Importing this package needs neither Triton nor CUDA.

    rel_l1_sums(x, ref) -> (num, den)                 per-sample sum|x - ref|, sum|ref| (float32)
    residual_apply(x, cached, out=None) -> x + cached
    forecast(slots, coeffs, out=None) -> sum_k coeffs[k] * slots[k]
    cfg_blend(cond, low, high, scales, out=None) -> cond + scales[0] * low + scales[1] * high

Test them on the CPU with TRITON_INTERPRET=1 (tests/test_triton_kernels.py); time them with `python -m
bench.kernels`.
"""

from ._common import interpreting, use_kernel
from .blend import cfg_blend, cfg_blend_reference
from .forecasting import MAX_SLOTS, forecast, forecast_reference
from .rel_l1 import rel_l1_sums, rel_l1_sums_reference
from .residual import residual_apply, residual_apply_reference

__all__ = [
    "rel_l1_sums", "rel_l1_sums_reference",
    "residual_apply", "residual_apply_reference",
    "forecast", "forecast_reference", "MAX_SLOTS",
    "cfg_blend", "cfg_blend_reference",
    "use_kernel", "interpreting",
]
