"""fxcache: a torch.compile backend that caches diffusion-transformer work across denoising steps.

    torch.compile(model, backend="fxcache", options={"policy": "fbcache"})
    fxcache.stats(compiled); fxcache.explain(compiled); fxcache.reset(compiled)
"""

from __future__ import annotations

import torch

from .backend import DEFAULT_OPTIONS, DEFAULT_POLICY, DEFAULT_WHY, backend, instances_of, runtimes_of
from .describe import describe as _describe
from .policies import POLICIES
from .runtime.context import context
from .runtime.requests import tables_of
from .runtime.stats import Stats

__all__ = ["POLICIES", "DEFAULT_POLICY", "DEFAULT_OPTIONS", "DEFAULT_WHY", "backend", "context", "explain", "release", "reset", "stats",
           "Stats"]
__version__ = "0.1.0"


def stats(model) -> Stats:
    """What the backend did for `model` (the compiled module or the original one) since it was compiled: a
    snapshot, exact for this model instance (other instances of the same class are counted on their own)."""
    total = Stats()
    generations = 0
    for _, inst in instances_of(model):
        with inst.lock:
            total = total + inst.stats
            generations = max(generations, inst.stats.generations)
        total.cache_bytes += inst.nbytes()
    for t in _tables(model):
        live = t.live()
        total.requests_live += len(live)
        total.request_cache_bytes += sum(live.values())
    total.cache_bytes += total.request_cache_bytes
    total.generations = generations  # every graph of a forward call sees the same generations: not a sum
    return total


def _tables(model) -> list:
    module = getattr(model, "_orig_mod", model)
    if not isinstance(module, torch.nn.Module):
        return []
    return tables_of([*module.parameters(), *module.buffers()])


def release(model, ids) -> int:
    """Free the cache state of requests `ids` (given to `fxcache.context(requests=...)`) of `model`: call it when
    a request finishes. Returns how many were held. An id that comes back later starts clean."""
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        ids = [ids]
    ids = list(ids)
    return sum(t.release(ids) for t in _tables(model))


def reset(model) -> None:
    """Clear every cache buffer and policy state of `model` (all its threads). A new generation is detected by
    itself (docs/guarantees.md); this is the escape hatch where detection cannot apply."""
    for _, inst in instances_of(model):
        inst.reset()
    for t in _tables(model):
        t.reset()


def explain(model, file=None) -> str:
    """Print and return what the backend found in `model`'s graphs: block lists, carried streams, sites, policy."""
    text = _describe(model)
    print(text, file=file)
    return text
