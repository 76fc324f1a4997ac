"""fxcache: a torch.compile backend that caches diffusion-transformer work across denoising steps.

    torch.compile(model, backend="fxcache", options={"policy": "fbcache"})
    fxcache.stats(compiled); fxcache.explain(compiled); fxcache.reset(compiled)
"""

from __future__ import annotations

from .backend import DEFAULT_POLICY, backend, runtimes_of
from .policies import POLICIES
from .runtime.state import context
from .runtime.stats import Stats

__all__ = ["POLICIES", "DEFAULT_POLICY", "backend", "context", "explain", "reset", "stats", "Stats"]
__version__ = "0.1.0"


def stats(model) -> Stats:
    """What the backend did for `model` (the compiled module or the original one) since it was compiled."""
    total = Stats()
    for r in runtimes_of(model):
        total = total + r.stats
    return total


def reset(model) -> None:
    """Clear every cache buffer and policy state of `model`'s runtimes (a new generation also does this)."""
    for r in runtimes_of(model):
        r.reset()


def explain(model, file=None) -> str:
    """Print and return what the backend found in `model`'s graphs: block lists, carried streams, sites, policy."""
    from .describe import describe

    text = describe(model)
    print(text, file=file)
    return text
