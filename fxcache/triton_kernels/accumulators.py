"""On-device decision accumulators for TeaCache and MagCache: a one-program kernel per step updates a small float32
state tensor in place and writes the step's skip flag on the device, so the host reads one value per step (the
decision), and not the distance, the accumulator and the decision each (a host round-trip per value read).

Why fused: the update is a handful of scalar ops on tensors of one to a few elements; as torch ops each is a
kernel launch (about ten per step), here it is one.

TeaCache (`fxcache/policies/teacache.py`, `decide`, with the distance fxcache makes of the rel-L1 sums):
    rel  = num.sum() / den.sum().clamp_min(1e-12)        (num, den: the per-sample rel-L1 sums, float32)
    rel  = NaN if rel is not finite                      (the runtime hands a non-finite distance on as NaN)
    acc += poly(rel)                                     (Horner, coefficients highest degree first, as np.poly1d)
    skip = acc < threshold;  if not skip: acc = 0        (a NaN acc compares False: compute)
  state: [acc]. Steps the policy computes without a probe (warm-up, last step, no reference yet) clear it on the
  host: `state.zero_()`.

MagCache (`fxcache/policies/magcache.py`, `plan`, on a step with a cached residual inside the skipping window):
    R *= gamma;  skipped += 1;  E += |1 - R|
    skip = E < threshold and skipped <= max_skips;  if not skip: R, E, skipped = 1, 0, 0
  state: [R, E, skipped]. Steps outside the window compute and reset on the host: `state.copy_(magcache_state())`.

The references below do the same math in the state's dtype: with a float64 state (and float64 coefficients) they
give the policies' host math exactly; with the kernels' float32 state, decisions can differ from the host's float64
ones only where the accumulated value lies within float32 rounding of the threshold.
"""

from __future__ import annotations

import torch

from ._common import check_output, check_tensor, check_vector, device_guard, require_triton, tl, tracing, triton, \
    use_kernel

STATE_DTYPES = (torch.float32, torch.float64)
MAX_COEFFS = 16


def teacache_state(device=None, dtype=torch.float32) -> torch.Tensor:
    """A fresh TeaCache state: [acc] = [0]."""
    return torch.zeros(1, dtype=dtype, device=device)


def magcache_state(device=None, dtype=torch.float32) -> torch.Tensor:
    """A fresh MagCache state: [R, E, skipped] = [1, 0, 0]."""
    return torch.tensor([1.0, 0.0, 0.0], dtype=dtype, device=device)


def _flag(state: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    return torch.empty((), dtype=torch.bool, device=state.device) if out is None else out


# ------------------------------------------------------------------------------------------------- references


def teacache_step_reference(state: torch.Tensor, num: torch.Tensor, den: torch.Tensor, coeffs: torch.Tensor,
                            threshold: float, out: torch.Tensor | None = None) -> torch.Tensor:
    rel = num.sum() / den.sum().clamp_min(1e-12)
    rel = torch.where(torch.isfinite(rel), rel, torch.full_like(rel, float("nan"))).to(state.dtype)
    p = torch.zeros_like(rel)
    for k in range(coeffs.numel()):
        p = p * rel + coeffs[k].to(state.dtype)
    acc = state[0] + p
    skip = acc < threshold
    state[0] = torch.where(skip, acc, torch.zeros_like(acc))
    return _flag(state, out).copy_(skip)


def magcache_step_reference(state: torch.Tensor, gamma, threshold: float, max_skips: int,
                            out: torch.Tensor | None = None) -> torch.Tensor:
    g = gamma.reshape(()).to(state.dtype) if isinstance(gamma, torch.Tensor) else gamma
    r = state[0] * g
    s = state[2] + 1
    e = state[1] + (1.0 - r).abs()
    skip = (e < threshold) & (s <= max_skips)
    state.copy_(torch.where(skip, torch.stack([r, e, s]), torch.stack([torch.ones_like(r), torch.zeros_like(e),
                                                                       torch.zeros_like(s)])))
    return _flag(state, out).copy_(skip)


# ---------------------------------------------------------------------------------------------------- kernels

if triton is not None:
    FLT_MAX = tl.constexpr(3.4028234663852886e38)  # largest finite float32

    @triton.jit
    def _teacache_kernel(state_ptr, num_ptr, den_ptr, c_ptr, flag_ptr, b, threshold, NC: tl.constexpr,
                         BLOCK_B: tl.constexpr):
        i = tl.arange(0, BLOCK_B)
        m = i < b
        num = tl.sum(tl.load(num_ptr + i, mask=m, other=0.0), axis=0)
        den = tl.sum(tl.load(den_ptr + i, mask=m, other=0.0), axis=0)
        den = tl.where(den < 1e-12, 1e-12, den)  # clamp_min, NaN kept (as torch does)
        rel = num / den
        finite = tl.abs(rel) <= FLT_MAX  # False for inf and NaN: the runtime's NaN distance, which computes
        p = rel * 0.0
        for k in tl.static_range(NC):
            p = p * rel + tl.load(c_ptr + k)
        acc = tl.load(state_ptr) + p
        skip = (acc < threshold) & finite
        tl.store(state_ptr, tl.where(skip, acc, 0.0))
        tl.store(flag_ptr, skip.to(tl.uint8))

    @triton.jit
    def _magcache_kernel(state_ptr, gamma_ptr, flag_ptr, gamma_value, threshold, max_skips,
                         GAMMA_ON_DEVICE: tl.constexpr):
        if GAMMA_ON_DEVICE:
            g = tl.load(gamma_ptr).to(tl.float32)
        else:
            g = gamma_value
        r = tl.load(state_ptr) * g
        e = tl.load(state_ptr + 1) + tl.abs(1.0 - r)
        s = tl.load(state_ptr + 2) + 1.0
        skip = (e < threshold) & (s <= max_skips)
        tl.store(state_ptr, tl.where(skip, r, 1.0))
        tl.store(state_ptr + 1, tl.where(skip, e, 0.0))
        tl.store(state_ptr + 2, tl.where(skip, s, 0.0))
        tl.store(flag_ptr, skip.to(tl.uint8))


def _check_flag(fn, state, out) -> None:
    if out is not None:
        check_tensor(fn, "out", out, (torch.bool,))
        if out.ndim != 0 or out.device != state.device:
            raise ValueError(f"{fn}: argument 'out' must be a 0-dim bool tensor on {state.device}, got shape "
                             f"{tuple(out.shape)} on {out.device}")


def _check_teacache(state, num, den, coeffs, threshold, out) -> None:
    fn = "teacache_step"
    check_vector(fn, "state", state, 1, "state", state, STATE_DTYPES)
    check_output(fn, "state", state)
    check_vector(fn, "num", num, None, "state", state, STATE_DTYPES)
    check_vector(fn, "den", den, num.numel(), "state", state, (num.dtype,))
    check_vector(fn, "coeffs", coeffs, None, "state", state, (state.dtype,))
    if coeffs.numel() > MAX_COEFFS:
        raise ValueError(f"{fn}: argument 'coeffs' has {coeffs.numel()} coefficients; at most {MAX_COEFFS}")
    if isinstance(threshold, torch.Tensor) or not isinstance(threshold, (int, float)):
        raise TypeError(f"{fn}: argument 'threshold' must be a Python number, got {type(threshold).__name__}")
    _check_flag(fn, state, out)


def _check_magcache(state, gamma, threshold, max_skips, out) -> None:
    fn = "magcache_step"
    check_vector(fn, "state", state, 3, "state", state, STATE_DTYPES)
    check_output(fn, "state", state)
    if isinstance(gamma, torch.Tensor):
        check_tensor(fn, "gamma", gamma, STATE_DTYPES)
        if gamma.numel() != 1 or gamma.device != state.device:
            raise ValueError(f"{fn}: argument 'gamma' must be a one-element tensor on {state.device}, got shape "
                             f"{tuple(gamma.shape)} on {gamma.device}")
    elif not isinstance(gamma, (int, float)):
        raise TypeError(f"{fn}: argument 'gamma' must be a Python number or a one-element tensor, got "
                        f"{type(gamma).__name__}")
    if isinstance(threshold, torch.Tensor) or not isinstance(threshold, (int, float)):
        raise TypeError(f"{fn}: argument 'threshold' must be a Python number, got {type(threshold).__name__}")
    if isinstance(max_skips, bool) or not isinstance(max_skips, int) or max_skips < 0:
        raise ValueError(f"{fn}: argument 'max_skips' must be an int >= 0, got {max_skips!r}")
    _check_flag(fn, state, out)


def teacache_step_triton(state: torch.Tensor, num: torch.Tensor, den: torch.Tensor, coeffs: torch.Tensor,
                         threshold: float, out: torch.Tensor | None = None) -> torch.Tensor:
    require_triton()
    _check_teacache(state, num, den, coeffs, threshold, out)
    for name, t in (("state", state), ("num", num), ("coeffs", coeffs)):
        if t.dtype != torch.float32:
            raise TypeError(f"teacache_step_triton: argument '{name}' must be float32 (float64: use the reference)")
    flag = _flag(state, out)
    with device_guard(state):
        _teacache_kernel[(1,)](state, num.contiguous(), den.contiguous(), coeffs.contiguous(), flag.view(torch.uint8),
                               num.numel(), float(threshold), NC=coeffs.numel(),
                               BLOCK_B=max(16, triton.next_power_of_2(num.numel())))
    return flag


def magcache_step_triton(state: torch.Tensor, gamma, threshold: float, max_skips: int,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    require_triton()
    _check_magcache(state, gamma, threshold, max_skips, out)
    if state.dtype != torch.float32:
        raise TypeError("magcache_step_triton: argument 'state' must be float32 (float64: use the reference)")
    flag = _flag(state, out)
    on_device = isinstance(gamma, torch.Tensor)
    with device_guard(state):
        _magcache_kernel[(1,)](state, gamma if on_device else state, flag.view(torch.uint8),
                               1.0 if on_device else float(gamma), float(threshold), int(max_skips),
                               GAMMA_ON_DEVICE=on_device)
    return flag


# --------------------------------------------------------------------------------------------------- dispatch


def teacache_step(state: torch.Tensor, num: torch.Tensor, den: torch.Tensor, coeffs: torch.Tensor,
                  threshold: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """One TeaCache decision on the device. state: [acc] (1-D float32, updated in place); num / den: this step's
    per-sample rel-L1 sums (1-D, float32); coeffs: the rescaling polynomial, highest degree first (1-D, the state's
    dtype); threshold: a Python number. Returns the skip flag, a 0-dim bool tensor on the state's device (or
    written into `out`). A float64 state (and coefficients) runs the reference: the policy's host math exactly."""
    if tracing(state, num, den, coeffs):
        return teacache_step_reference(state, num, den, coeffs, threshold, out)
    _check_teacache(state, num, den, coeffs, threshold, out)
    if use_kernel(state, num, den, coeffs) and state.dtype == num.dtype == torch.float32:
        return teacache_step_triton(state, num, den, coeffs, threshold, out)
    return teacache_step_reference(state, num, den, coeffs, threshold, out)


def magcache_step(state: torch.Tensor, gamma, threshold: float, max_skips: int,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """One MagCache decision on the device, for a step with a cached residual inside the skipping window. state:
    [R, E, skipped] (1-D float32, updated in place); gamma: this step's calibrated ratio (a Python number, or a
    one-element tensor on the state's device); threshold: a Python number; max_skips: K. Returns the skip flag, a
    0-dim bool tensor on the state's device (or written into `out`). A float64 state runs the reference."""
    tensors = (state, gamma) if isinstance(gamma, torch.Tensor) else (state,)
    if tracing(*tensors):
        return magcache_step_reference(state, gamma, threshold, max_skips, out)
    _check_magcache(state, gamma, threshold, max_skips, out)
    if use_kernel(*tensors) and state.dtype == torch.float32:
        return magcache_step_triton(state, gamma, threshold, max_skips, out)
    return magcache_step_reference(state, gamma, threshold, max_skips, out)
