"""Who owns a request's cache state: the model instance, the policy configuration, the thread, the request id.

A serving engine batches requests at different steps into one forward; each request keeps its own streams (CFG
branches), generations, steps and cache across calls, whatever its row in a call (persample.py). The table is the
model's, not one graph's: Dynamo compiles the model again as batch sizes change (a static graph for 1 row, a
dynamic one for more), and a request's state must follow it across those graphs. It is found, like an `Instance`,
from the model's first parameter, held weakly.

A request's state is freed by `fxcache.release(model, ids)` (the engine's "request finished"), by
`fxcache.reset(model)`, or, beyond `LIMIT` live requests, least recently used first (with one warning: an engine
that never releases would otherwise grow without bound).
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections import OrderedDict
from typing import Callable

from .state import Streams

LIMIT = 256  # live requests per model, configuration and thread


class RequestTable:
    """The requests of one model instance and policy configuration in one thread."""

    def __init__(self, make_streams: Callable[[], Streams], limit: int = LIMIT) -> None:
        self.make_streams, self.limit = make_streams, limit
        self.config = None  # the policy configuration it holds requests of
        self._by_id: OrderedDict = OrderedDict()
        self._warned = False

    def of(self, rid) -> Streams:
        streams = self._by_id.get(rid)
        if streams is None:
            streams = self._by_id[rid] = self.make_streams()
            if len(self._by_id) > self.limit:
                old, _ = self._by_id.popitem(last=False)
                if not self._warned:
                    self._warned = True
                    warnings.warn(f"fxcache: more than {self.limit} requests hold cache state on this model; the "
                                  f"least recently used ({old!r}) was dropped. Call fxcache.release(model, ids) "
                                  f"when requests finish (warned once)", stacklevel=4)
        else:
            self._by_id.move_to_end(rid)
        return streams

    def release(self, ids) -> int:
        return sum(self._by_id.pop(rid, None) is not None for rid in ids)

    def reset(self) -> None:
        self._by_id.clear()

    def live(self) -> dict:
        """{request id: cache bytes} of the live requests."""
        return {rid: s.nbytes() for rid, s in list(self._by_id.items())}


class _Model:
    """Every table of one model instance: per configuration, per thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.local: dict = {}  # configuration -> threading.local holding that thread's table
        self.tables: list[RequestTable] = []  # every thread's (alive while the model is)


_MODELS: dict[int, tuple] = {}  # id(first parameter) -> (weak reference to it, _Model)
_LOCK = threading.Lock()


def _model(key, create: bool = True) -> _Model | None:
    k = id(key)
    with _LOCK:
        hit = _MODELS.get(k)
        if hit is not None and hit[0]() is key:
            return hit[1]
        if not create:
            return None
        m = _Model()
        _MODELS[k] = (weakref.ref(key, lambda _, k=k: _MODELS.pop(k, None)), m)
        return m


def table(key, config, make_streams: Callable[[], Streams]) -> RequestTable:
    """This thread's table of requests for model `key` (its first parameter) and policy `config`."""
    m = _model(key)
    local = m.local.get(config)
    if local is None:
        with m.lock:
            local = m.local.setdefault(config, threading.local())
    t = getattr(local, "table", None)
    if t is None:
        t = local.table = RequestTable(make_streams)
        t.config = config
        with m.lock:
            m.tables.append(t)
    return t


def tables_of(keys) -> list[RequestTable]:
    """Every request table of the models whose first parameters are `keys`."""
    out = []
    for key in keys:
        m = _model(key, create=False)
        if m is not None:
            with m.lock:
                out += list(m.tables)
    return out
