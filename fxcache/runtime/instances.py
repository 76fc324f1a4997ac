"""Who owns cache state: the model instance, then the thread, then the stream and the generation; never the graph.

Dynamo hands every instance of a model class the same graph (weights are graph inputs), so the backend's callable
is shared by all of them. Each call therefore finds its instance from a weight tensor it receives: the first
parameter input of the graph, held by a weak reference, so that the instance's cache buffers go when the model is
garbage-collected. Within an instance each thread has its own streams (a `threading.local`), so concurrent
generations on one model in different threads never see each other's caches; a generation must stay on one
thread. Stats are per instance, summed over its threads.
"""

from __future__ import annotations

import threading
import weakref
from typing import Callable

from .state import Streams
from .stats import Stats


class Instance:
    """The cache state of one model instance in one graph."""

    def __init__(self, key, make_streams: Callable[[], Streams], decision_log: int) -> None:
        self.key = weakref.ref(key) if key is not None else None
        self.stats = Stats()
        self.stats.decisions = type(self.stats.decisions)(maxlen=decision_log)
        self.lock = threading.Lock()  # guards stats and the set of streams
        self._make_streams = make_streams
        self._local = threading.local()
        self._streams: "weakref.WeakSet[Streams]" = weakref.WeakSet()  # every thread's, for reset / explain

    def streams(self) -> Streams:
        """This thread's streams of this instance."""
        s = getattr(self._local, "streams", None)
        if s is None:
            s = self._local.streams = self._make_streams()
            with self.lock:
                self._streams.add(s)
        return s

    def all_streams(self) -> list[Streams]:
        with self.lock:
            return list(self._streams)

    def reset(self) -> None:
        for s in self.all_streams():
            s.reset()

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.all_streams())

    def owned_by(self, ids: set[int]) -> bool:
        key = self.key() if self.key is not None else None
        return key is not None and id(key) in ids


class Instances:
    """The instances seen by one graph, keyed by the identity of their first parameter input."""

    def __init__(self, key_index: int | None, make_streams: Callable[[], Streams], decision_log: int) -> None:
        self.key_index, self.make_streams, self.decision_log = key_index, make_streams, decision_log
        self._by_id: dict[int, Instance] = {}
        self._lock = threading.RLock()  # re-entrant: a weakref callback may run (GC) while it is held

    def of(self, args) -> Instance:
        key = args[self.key_index] if self.key_index is not None else None
        inst = self._by_id.get(id(key))
        if inst is not None and (inst.key is None or inst.key() is key):
            return inst
        with self._lock:
            inst = Instance(key, self.make_streams, self.decision_log)
            if key is not None:
                k = id(key)
                inst.key = weakref.ref(key, lambda _, k=k: self._forget(k))  # no reference to inst: no cycle
            self._by_id[id(key)] = inst
            return inst

    def _forget(self, k: int) -> None:
        with self._lock:
            inst = self._by_id.get(k)
            if inst is not None and inst.key is not None and inst.key() is None:
                del self._by_id[k]

    def all(self) -> list[Instance]:
        with self._lock:
            return list(self._by_id.values())

    def owned_by(self, ids: set[int]) -> list[Instance]:
        return [i for i in self.all() if i.owned_by(ids)]
