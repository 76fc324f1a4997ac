"""A batch's requests as groups of rows: a request's state (`Member`), several requests' stream states seen as one
batch (`Group`: their cached values concatenated, what a group writes split back per request), the rows of a
group's values, each request's distances from its rows' sums, and the outputs scattered back to the call's rows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..metrics import EPS
from ..plan import Plan
from .rowgraph import like, row_index, rows_of

ROWS = "rows"  # the key under which a run leaves its per-row distances in `measured` (runtime._run)


@dataclass(eq=False)
class Member:
    """One request of this call."""

    rid: object
    rows: list
    streams: object
    st: object = None
    call: object = None
    plan: Plan | None = None
    new_generation: bool = False
    computed: int = 0
    runs: int = 0
    right: bool | None = None  # its probe's guessed continuation was its decision (None: no guess)


class _Merged:
    """The cached values of several requests' streams as one batch (concatenated along dim 0, in group order)."""

    def __init__(self, states: list) -> None:
        self.states, self._memo = states, {}

    def get(self, site, default=()):
        hit = self._memo.get(site)
        if hit is None:
            per = [st.cache.get(site) for st in self.states]
            if any(not p for p in per):
                return default
            depth = min(len(p) for p in per)
            hit = self._memo[site] = [tuple(like(per[0][s][j], torch.cat([p[s][j] for p in per]))
                                            for j in range(len(per[0][s]))) for s in range(depth)]
        return hit


class Group:
    """Several requests' stream states seen as one (what runtime._run reads and stores)."""

    def __init__(self, states: list, sizes: list[int]) -> None:
        self.states, self.sizes = states, sizes
        self.name, self.shapes, self.pending = states[0].name, (), {}
        self.cache = _Merged(states)

    def store(self, site, values, finite=None, depth: int = 1) -> None:
        total, offset = sum(self.sizes), 0
        for st, n in zip(self.states, self.sizes):
            parts = []
            for v in values:
                if v.ndim == 0 or v.shape[0] % total:
                    raise RuntimeError(f"fxcache: {site} is not batch-major ({tuple(v.shape)} for {total} rows)")
                f = v.shape[0] // total
                parts.append(v.narrow(0, offset * f, n * f))
            st.store(site, parts, finite, depth)
            offset += n

    def drop(self, site) -> None:
        for st in self.states:
            st.drop(site)


class _Peers:
    """The group's peer streams (the cond stream of each request, for its uncond call), as one `Streams.states`."""

    def __init__(self, members: list[Member]) -> None:
        self.members = members

    @property
    def states(self):
        return self

    def get(self, name):
        states = [m.streams.states.get(name) for m in self.members]
        if any(s is None for s in states):
            return None
        return Group(states, [len(m.rows) for m in self.members])


def view(members: list[Member]):
    if len(members) == 1:
        return members[0].st, members[0].streams
    return Group([m.st for m in members], [len(m.rows) for m in members]), _Peers(members)


def factor(t, rows: int) -> int | None:
    if isinstance(t, torch.Tensor) and t.ndim >= 1 and t.shape[0] % rows == 0:
        return t.shape[0] // rows
    return None


def take(v, pos: torch.Tensor, factor: int | None):
    return rows_of(v, pos, factor) if factor is not None and isinstance(v, torch.Tensor) else v


def spread(measured: dict, group: list[Member]) -> None:
    """Each request's distances from its rows' sums (one host read for the group)."""
    got = measured.get(ROWS)
    if got is None:
        return
    keys, matrix = got
    sums = matrix.tolist()  # [keys][2][rows]
    offset = 0
    for m in group:
        n = len(m.rows)
        for k, key in enumerate(keys):
            a = sum(sums[k][0][offset:offset + n])
            b = sum(sums[k][1][offset:offset + n])
            v = a / max(b, EPS)
            m.call.measured[key] = v if math.isfinite(v) else math.nan  # NaN: the request computes
        offset += n


def scatter(parts: list, batch: int) -> tuple:
    """The call's outputs from each group's (rows, outputs)."""
    if len(parts) == 1 and parts[0][0] == list(range(batch)):
        return parts[0][1]
    n_out = len(parts[0][1])
    outs = []
    for i in range(n_out):
        first = parts[0][1][i]
        f = first.shape[0] // len(parts[0][0])
        out = first.new_empty((batch * f, *first.shape[1:]))
        for rows, o in parts:
            out.index_copy_(0, row_index(torch.tensor(rows, device=out.device), f), o[i])
        outs.append(out)
    return tuple(outs)
