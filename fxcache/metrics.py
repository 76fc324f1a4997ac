"""Distances a plan measures at a site, computed inside the compiled variant: a registry of metric functions.

A plan's `measure` holds `(site, Metric)` pairs; `metric(name, **params)` builds the Metric (hashable, its
parameters checked against the registered function's typed keyword parameters). The compiled variant calls the
registered function on the site's value and on what the function's positional parameters after the value name:

- `cached`: this stream's cached value of the site (the previous step's, for a site the plan also writes);
- `peer`: the peer stream's cached value of the site (`Plan.peer`: the cond output of this step, for the
  uncond call).

A metric reads one output of the site, `Metric.output` (default 0, the first stream: the image stream of
dual-stream blocks). Its function returns per-sample terms, and its `reduce` kind says how they become one
value per sample (a [B] vector, `per_sample`) or one value for the batch (a scalar, `batch`):

- "ratio": the function returns (num [B], den [B]); per sample num / den, for the batch sum(num) / sum(den)
  (samples weighted by their size, as one distance over the whole batch);
- "mean": the function returns terms [B, ...]; per sample their mean, for the batch the mean of all.

Both reductions run inside the variant, so the runtime reads one number per (site, metric) in one host read.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .triton_kernels import rel_l1_sums

EPS = 1e-12  # the smallest denominator of a ratio (an all-zero reference)


@dataclass(frozen=True)
class Metric:
    """A registered metric with its parameters, as a plan's `measure` names it: `(site, Metric)`."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()  # (name, value) pairs, sorted by name
    output: int = 0  # which output of the site it reads

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    def __str__(self) -> str:
        args = [f"{k}={v}" for k, v in self.params] + ([f"output={self.output}"] if self.output else [])
        return f"{self.name}({', '.join(args)})" if args else self.name


@dataclass(frozen=True)
class Definition:
    name: str
    fn: Callable  # fn(value, *references, **params) -> per-sample terms
    references: tuple[str, ...]  # what the function reads besides the value: "cached" / "peer"
    params: dict  # keyword parameter -> its type
    reduce: str  # "ratio" | "mean"

    def batch(self) -> Callable:
        """terms -> a 0-dim tensor: the value for the whole batch."""
        return _BATCH[self.reduce]

    def per_sample(self) -> Callable:
        """terms -> a [B] tensor: one value per sample."""
        return _PER_SAMPLE[self.reduce]

    def sums(self) -> Callable:
        """terms -> [a, b], float32, additive over shards: the batch value of a tensor sharded over ranks is
        `from_sums` of the ranks' summed [a, b] (context parallelism)."""
        return _SUMS[self.reduce]

    def row_sums(self) -> Callable:
        """(terms, rows) -> [2, rows], float32: the additive sums of each batch row (dim 0 of the terms is
        batch-major: `rows` samples, each over one or more leading entries). A request's value over its rows is
        `from_sums` of its rows' sums: the batch value of that request generated alone (runtime/persample.py)."""
        return _ROW_SUMS[self.reduce]


REFERENCES = ("cached", "peer")
_REGISTRY: dict[str, Definition] = {}


def register(name: str, reduce: str = "ratio") -> Callable:
    """Register `fn(value, *references, **params)` as metric `name`. Its positional parameters after the value
    name what else it reads (`REFERENCES`); its keyword-only parameters, all annotated int / float / bool / str,
    are the metric's parameters."""
    if reduce not in _BATCH:
        raise ValueError(f"metric {name!r}: reduce must be one of {sorted(_BATCH)}, got {reduce!r}")

    def add(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"metric {name!r} is registered already")
        hints = typing.get_type_hints(fn)
        positional = [p for p in inspect.signature(fn).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        refs = tuple(p.name for p in positional[1:])
        if not positional or any(r not in REFERENCES for r in refs):
            raise ValueError(f"metric {name!r}: parameters after the value must be among {REFERENCES}, got {refs}")
        params = {p.name: hints.get(p.name) for p in inspect.signature(fn).parameters.values()
                  if p.kind == p.KEYWORD_ONLY}
        if any(t not in (int, float, bool, str) for t in params.values()):
            raise ValueError(f"metric {name!r}: keyword parameters must be annotated int, float, bool or str")
        _REGISTRY[name] = Definition(name, fn, refs, params, reduce)
        return fn

    return add


def metric(name: str, output: int = 0, **params) -> Metric:
    """The Metric `name` with `params` (every keyword parameter of its function, of its type) on output
    `output` of the site."""
    d = _REGISTRY.get(name)
    if d is None:
        raise ValueError(f"unknown metric {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    if set(params) != set(d.params):
        raise ValueError(f"metric {name!r} takes parameters {sorted(d.params)}, got {sorted(params)}")
    for k, v in params.items():
        if type(v) is not d.params[k] and not (d.params[k] is float and type(v) is int):
            raise ValueError(f"metric {name!r}: parameter {k} must be {d.params[k].__name__}, got {v!r}")
    if type(output) is not int or output < 0:
        raise ValueError(f"metric {name!r}: output must be an int >= 0, got {output!r}")
    return Metric(name, tuple(sorted(params.items())), output)


def definition(m: Metric) -> Definition:
    if not isinstance(m, Metric):
        raise TypeError(f"a plan measures (site, Metric) pairs (fxcache.metrics.metric), got {m!r}")
    d = _REGISTRY.get(m.name)
    if d is None:
        raise ValueError(f"unknown metric {m.name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return d


def evaluate(m: Metric, value: torch.Tensor, *references: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
    """The metric on tensors, outside a variant: a [B] vector (`per_sample`) or a 0-dim tensor for the batch."""
    d = definition(m)
    terms = d.fn(value, *references, **m.kwargs)
    return (d.per_sample() if per_sample else d.batch())(terms)


def ratio_of_sums(terms: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    num, den = terms
    return torch.div(num.sum(), den.sum().clamp_min(EPS))


def ratio_per_sample(terms: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    num, den = terms
    return torch.div(num, den.clamp_min(EPS))


def mean_of_all(terms: torch.Tensor) -> torch.Tensor:
    return terms.mean()


def mean_per_sample(terms: torch.Tensor) -> torch.Tensor:
    return terms.reshape(terms.shape[0], -1).mean(1)


def ratio_sums(terms: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    num, den = terms
    return torch.stack([num.sum().float(), den.sum().float()])


def mean_sums(terms: torch.Tensor) -> torch.Tensor:
    t = terms.float()
    return torch.stack([t.sum(), torch.ones_like(t).sum()])


def ratio_row_sums(terms: tuple[torch.Tensor, torch.Tensor], rows) -> torch.Tensor:
    num, den = terms
    return torch.stack([num.float().reshape(rows, -1).sum(1), den.float().reshape(rows, -1).sum(1)])


def mean_row_sums(terms: torch.Tensor, rows) -> torch.Tensor:
    t = terms.float().reshape(rows, -1)
    return torch.stack([t.sum(1), torch.ones_like(t).sum(1)])


def from_sums(sums: torch.Tensor) -> torch.Tensor:
    """[a, b] summed over the shards -> the value (a / b; a ratio of zero over zero is 0, as `ratio_of_sums`)."""
    return torch.div(sums[0], sums[1].clamp_min(EPS))


_BATCH = {"ratio": ratio_of_sums, "mean": mean_of_all}
_SUMS = {"ratio": ratio_sums, "mean": mean_sums}
_PER_SAMPLE = {"ratio": ratio_per_sample, "mean": mean_per_sample}
_ROW_SUMS = {"ratio": ratio_row_sums, "mean": mean_row_sums}


# ------------------------------------------------------------------------------------------- the metrics


@register("rel_l1")
def rel_l1(value: torch.Tensor, cached: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative L1 change against the cached value, sum|x - ref| / sum|ref| (one fused pass: rel_l1_sums).
    FBCache (Chen et al., "First Block Cache", the diffusers / ParaAttention implementation), TeaCache (Liu et al.,
    "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model", section 3.3), and most others."""
    return rel_l1_sums(value, cached)


@register("peer_rel_l1")
def peer_rel_l1(value: torch.Tensor, peer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative L1 against the peer stream's value of the same site: the uncond output against this step's cond
    output (MixCache's D_cfg; Wei et al., "MixCache: Mixture-of-Cache for Video Diffusion Transformer
    Acceleration", section 3.3)."""
    return rel_l1_sums(value, peer)


@register("cfg_rel_l1")
def cfg_rel_l1(value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same distance within one batched-CFG value [uncond; cond]: sum|uncond - cond| / sum|cond|."""
    halves = value.chunk(2)
    return rel_l1_sums(halves[0], halves[1])


@register("mag_ratio", reduce="mean")
def mag_ratio(value: torch.Tensor, cached: torch.Tensor) -> torch.Tensor:
    """MagCache's magnitude ratio (Ma et al., "MagCache: Fast Video Generation with Magnitude-Aware Cache",
    section 3.2): per token |x|_2 / |ref|_2 over channels, [B, tokens]; averaged over tokens."""
    x, r = value.float(), cached.float()
    q = torch.div(torch.linalg.vector_norm(x, dim=-1), torch.linalg.vector_norm(r, dim=-1))
    return q.reshape(x.size(0), -1)


@register("motion")
def motion(value: torch.Tensor, *, per_frame: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """AdaCache's motion term (Kahatapitiya et al., "Adaptive Caching for Faster Video Generation with Diffusion
    Transformers", section 3.2, MoReg): with the token axis (dim 1) cut into frames of `per_frame` tokens,
    sum|x[f + s] - x[f]| and sum|x[f + s]| + sum|x[f]| over the frames f that have a partner `stride` frames on.
    No reference: one pass over this step's value."""
    v = value.reshape(value.shape[0], value.shape[1] // per_frame, -1).float()
    later, earlier = v[:, stride:], v[:, :-stride]
    num = (later - earlier).abs().sum((1, 2))
    return num, later.abs().sum((1, 2)) + earlier.abs().sum((1, 2))


@register("l1_mean", reduce="mean")
def l1_mean(value: torch.Tensor, cached: torch.Tensor) -> torch.Tensor:
    """mean|x - ref| and (abs_mean) mean|x|: EasyCache's norms (H-EmbodVis/EasyCache takes norms as mean |.|)."""
    return (value.float() - cached.float()).abs()


register("abs_mean", reduce="mean")(lambda value: value.float().abs())


REL_L1, PEER_REL_L1, CFG_REL_L1 = metric("rel_l1"), metric("peer_rel_l1"), metric("cfg_rel_l1")
MAG_RATIO, L1_MEAN, ABS_MEAN = metric("mag_ratio"), metric("l1_mean"), metric("abs_mean")
