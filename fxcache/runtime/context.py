"""What the caller says about the calls it makes: the stream they belong to (`fxcache.context("uncond")`) and,
for a batch that holds several requests, which request each row belongs to
(`fxcache.context(requests=[...])`: runtime/persample.py)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Hashable

_CONTEXT: contextvars.ContextVar[str | None] = contextvars.ContextVar("fxcache_stream", default=None)
_REQUESTS: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("fxcache_requests", default=None)


@contextlib.contextmanager
def context(name: str | None = None, *, requests=None):
    """Name the stream of the calls made inside, `with fxcache.context("uncond"): model(...)`, and/or say which
    request each batch row belongs to, `with fxcache.context(requests=["a", "b", "a"]): model(...)`: one id per
    row of dim 0 (rows with the same id are one request: e.g. its uncond and cond rows). Each request keeps its own
    cache and decisions across calls, whatever its row; `fxcache.release(model, ids)` frees finished ones."""
    if name is None and requests is None:
        raise ValueError("fxcache.context: give a stream name, requests=[one id per batch row], or both")
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"fxcache.context: name must be a non-empty string, got {name!r}")
    if requests is not None:
        requests = check_requests(requests)
    tokens = []
    if name is not None:
        tokens.append((_CONTEXT, _CONTEXT.set(name)))
    if requests is not None:
        tokens.append((_REQUESTS, _REQUESTS.set(requests)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def check_requests(requests) -> tuple:
    if isinstance(requests, (str, bytes)) or not hasattr(requests, "__iter__"):
        raise ValueError(f"fxcache.context: requests must be a list with one hashable id per batch row, got "
                         f"{requests!r}")
    out = tuple(requests)
    bad = [r for r in out if not isinstance(r, Hashable) or r is None]
    if not out or bad:
        raise ValueError(f"fxcache.context: requests must be a non-empty list of hashable ids (not None), one per "
                         f"batch row, got {requests!r}")
    return out


def requests() -> tuple | None:
    """The request ids of the calls made now (one per batch row), or None."""
    return _REQUESTS.get()
