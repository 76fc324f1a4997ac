"""Passes 2 and 3 of a profile, on the plain model with forward hooks (`Tap`): the statistics of each MixCache
granularity's "distance tensor between the real output and the cached output" per step (pass 2), and the impact
of Gaussian noise N(mu-hat, sigma-hat) on it, measured on the guided prediction of the same step (pass 3).
Granularities: "step" (O_t - O_{t-1}, both streams pooled), "cfg" (uncond_t - (cond_t + Delta_{t-1}), Delta =
uncond - cond of the previous step) and "block:i" (the streams leaving units [0, i) at t minus at t-1, cond pass).
Wei et al., "MixCache: Mixture-of-Cache for Video Diffusion Transformer Acceleration", sections 3.4 and 3.5."""

from __future__ import annotations

from typing import Callable

import torch

from .recording import Target


def _first(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    raise TypeError(f"fxcache.profile: cannot find the output tensor in a {type(out).__name__}")


class Tap:
    """Forward hooks on the plain model: the model output of each call (cond / uncond), and the streams leaving
    units [0, i) on the cond pass for each candidate cut i; optionally a perturbation added to them."""

    def __init__(self, target: Target, discovery, cuts: list[int]) -> None:
        self.model, self.cfg, self.cuts = target.model, target.cfg, cuts
        units = discovery.units
        self.blocks = {i: self.model.get_submodule(f"{units[i - 1].list_name}.{units[i - 1].index}") for i in cuts}
        self.calls = 0
        self.busy = False
        self.role = None
        self.captured: dict[int, list[torch.Tensor]] = {}
        self.capture = False
        self.perturb: tuple[int, Callable] | None = None  # (cut, tensor -> noise like it)
        self.on_output: Callable | None = None
        self.handles: list = []

    def __enter__(self):
        self.handles.append(self.model.register_forward_pre_hook(self._before))
        self.handles.append(self.model.register_forward_hook(self._after, with_kwargs=True))
        for i, m in self.blocks.items():
            self.handles.append(m.register_forward_hook(lambda mod, a, out, i=i: self._block(i, out)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def start(self) -> None:
        self.calls = 0

    def _before(self, module, args) -> None:
        if self.busy:
            return
        self.role = "batched" if self.cfg == "batched" else ("cond" if self.calls % 2 == 0 else "uncond")
        self.captured = {}

    def _after(self, module, args, kwargs, output) -> None:
        if self.busy:
            return
        step = self.calls if self.cfg == "batched" else self.calls // 2
        self.calls += 1
        out = _first(output).detach()
        self.on_output(step, self.role, out, args, kwargs)

    def _cond_part(self, t: torch.Tensor) -> torch.Tensor:
        return t.chunk(2)[1] if self.cfg == "batched" else t

    def _block(self, cut: int, out):
        tensors = [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)] \
            if isinstance(out, (tuple, list)) else []
        floats = [t for t in tensors if t.is_floating_point()]
        if self.perturb is not None and self.perturb[0] == cut:
            noise = self.perturb[1]

            def add(t):
                if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
                    return t
                if self.cfg == "batched":
                    u, c = t.chunk(2)
                    return torch.cat([u, c + noise(c)])
                return t + noise(t)

            return add(out) if isinstance(out, torch.Tensor) else type(out)(add(t) for t in out)
        if self.capture and not self.busy and self.role in ("cond", "batched"):
            self.captured[cut] = [self._cond_part(t).detach().clone() for t in floats]
        return None

    def rerun(self, args, kwargs, cut: int, noise: Callable) -> torch.Tensor:
        """The model output of this call again, with `noise` added to the streams entering unit `cut`."""
        self.busy, self.perturb = True, (cut, noise)
        try:
            return _first(self.model(*args, **kwargs)).detach()
        finally:
            self.busy, self.perturb = False, None


def _mean_std(parts: list[torch.Tensor]) -> tuple[float, float]:
    flat = torch.cat([p.reshape(-1).double() for p in parts])
    return float(flat.mean()), float(flat.std(unbiased=False))


def _rel(diff: torch.Tensor, ref: torch.Tensor) -> float:
    return float(diff.double().abs().mean() / ref.double().abs().mean().clamp_min(1e-12))


def statistics(target: Target, tap: Tap, generations, steps: int, guidance: float, bar):
    """Per generation: {granularity: {"mu": [per step], "sigma": [per step]}}."""
    runs = []
    for prompt, seed in generations:
        st: dict = {"prev": None}
        series = {g: {"mu": [None] * steps, "sigma": [None] * steps} for g in granularities(tap.cuts)}

        def record(g, t, parts):
            if t < steps:
                series[g]["mu"][t], series[g]["sigma"][t] = _mean_std(parts)

        def on_output(t, role, out, args, kwargs):
            if role == "cond":
                st["cond"], st["streams"] = out, dict(tap.captured)
                return
            if role == "batched":
                u, c = out.chunk(2)
                streams = dict(tap.captured)
            else:
                u, c, streams = out, st["cond"], st["streams"]
            prev = st["prev"]
            if prev is not None:
                record("step", t, [c - prev["c"], u - prev["u"]])
                record("cfg", t, [u - (c + (prev["u"] - prev["c"]))])
                for i in tap.cuts:
                    record(f"block:{i}", t, [a - b for a, b in zip(streams[i], prev["streams"][i])])
            st["prev"] = {"c": c, "u": u, "streams": streams}

        tap.on_output, tap.capture = on_output, True
        tap.start()
        target.generate(target.model, prompt, seed, steps, guidance)
        tap.capture = False
        runs.append(series)
        bar.update(1)
    return runs


def granularities(cuts) -> list[str]:
    return ["step", "cfg", *(f"block:{i}" for i in cuts)]


def _noise_fn(seed: int, mu: float, sigma: float) -> Callable:
    def noise(like: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        n = torch.randn(like.shape, generator=g, dtype=torch.float32) * sigma + mu
        return n.to(device=like.device, dtype=like.dtype)

    return noise


def impact(target: Target, tap: Tap, generations, steps: int, guidance: float, mu: dict, sigma: dict, bar):
    """Per generation: {granularity: [I_t per step]}."""
    runs = []
    for n, (prompt, seed) in enumerate(generations):
        series = {g: [None] * steps for g in granularities(tap.cuts)}
        st: dict = {}

        def noise(t, tag, g):
            return _noise_fn((int(seed) * 1_000_003 + n * 10_007 + t * 101 + tag) % (2 ** 62), mu[g], sigma[g])

        def perturbed_cond(t, c, args, kwargs):
            nums = {}
            for k, i in enumerate(tap.cuts):
                out = tap.rerun(args, kwargs, i, noise(t, 3 + k, f"block:{i}"))
                cp = out.chunk(2)[1] if tap.cfg == "batched" else out
                nums[i] = (cp - c).double().abs().mean()
            return nums

        def on_output(t, role, out, args, kwargs):
            if role == "cond":
                st["cond"], st["nums"] = out, perturbed_cond(t, out, args, kwargs)
                return
            if role == "batched":
                u, c = out.chunk(2)
                nums = perturbed_cond(t, c, args, kwargs)
            else:
                u, c, nums = out, st["cond"], st["nums"]
            if t >= steps:
                return
            guided = u + guidance * (c - u)
            den = guided.double().abs().mean().clamp_min(1e-12)
            nc, nu = noise(t, 0, "step")(c), noise(t, 1, "step")(u)
            series["step"][t] = _rel(nu + guidance * (nc - nu), guided)
            series["cfg"][t] = _rel((1.0 - guidance) * noise(t, 2, "cfg")(u), guided)
            for i in tap.cuts:
                series[f"block:{i}"][t] = float(nums[i] / den)

        tap.on_output = on_output
        tap.start()
        target.generate(target.model, prompt, seed, steps, guidance)
        runs.append(series)
        bar.update(1)
    return runs
