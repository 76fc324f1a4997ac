"""fxcache: a torch.compile backend that caches diffusion-transformer work across denoising steps.

    torch.compile(model, backend="fxcache", options={"policy": "fbcache"})
    fxcache.stats(compiled); fxcache.explain(compiled); fxcache.reset(compiled)
"""

from __future__ import annotations

from .backend import DEFAULT_OPTIONS, DEFAULT_POLICY, DEFAULT_WHY, backend, instances_of, runtimes_of
from .describe import describe as _describe
from .policies import POLICIES
from .runtime.state import context
from .runtime.stats import Stats

__all__ = ["POLICIES", "DEFAULT_POLICY", "DEFAULT_OPTIONS", "DEFAULT_WHY", "backend", "context", "explain", "reset", "stats", "Stats"]
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
    total.generations = generations  # every graph of a forward call sees the same generations: not a sum
    return total


def reset(model) -> None:
    """Clear every cache buffer and policy state of `model` (all its threads). A new generation is detected by
    itself (docs/guarantees.md); this is the escape hatch where detection cannot apply."""
    for _, inst in instances_of(model):
        inst.reset()


def explain(model, file=None) -> str:
    """Print and return what the backend found in `model`'s graphs: block lists, carried streams, sites, policy."""
    text = _describe(model)
    print(text, file=file)
    return text
