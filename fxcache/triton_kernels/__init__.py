"""Triton kernels for the guard and cache math, each next to its torch reference and a CPU fallback.
Test them on the CPU with TRITON_INTERPRET=1 (tests/test_triton_kernels.py)."""

from .rel_l1 import rel_l1_sums, rel_l1_sums_reference

__all__ = ["rel_l1_sums", "rel_l1_sums_reference"]
