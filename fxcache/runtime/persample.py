"""Per-request decisions inside one batch: each request (one row, or the rows that share an id) plans, probes and
decides as if it were generated alone; only the rows that compute run the blocks.

A call whose batch holds several requests (`fxcache.context(requests=[...])`, a serving engine batching requests
at different steps; or a plain batch of independent prompts, a request per row) goes here:
1. each request resolves its own stream and step from its rows (its timestep, latent, text) in its own table entry
   (requests.py) and its policy plans;
2. requests with the same plan run as one group: their rows gathered, their cached values concatenated, through
   the row graph (rowgraph.py: dynamic in the batch dimension, so any row count runs one compiled variant);
   what the group writes is split back per request;
3. a probe returns per-row sums of its distances (`Plan.rows`); each request's value is made from its rows' sums,
   its policy decides, and the requests are grouped again by their continuation, which runs on their rows of the
   probe's values;
4. the outputs are scattered back to the call's rows.
A request's values are never read by another request's decision; a non-finite value in a group drops that group's
written values for all its requests (conservative: they compute again).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import torch

from ..plan import Plan
from . import requests as request_tables
from .calls import make_call
from .context import requests
from .rowgraph import RowGraph, rows_of

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
    extra: dict = field(default_factory=dict)


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
            hit = self._memo[site] = [tuple(torch.cat([p[s][j] for p in per]) for j in range(len(per[0][s])))
                                      for s in range(depth)]
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


def _view(members: list[Member]):
    if len(members) == 1:
        return members[0].st, members[0].streams
    return Group([m.st for m in members], [len(m.rows) for m in members]), _Peers(members)


def _row_timesteps(ts, batch: int) -> list:
    if ts is None:
        return [None] * batch
    if not isinstance(ts, torch.Tensor):
        return [float(ts)] * batch
    if ts.numel() == 1:
        return [float(ts.item())] * batch
    return ts.reshape(batch, -1)[:, 0].tolist()


def paired(x) -> bool:
    """Whether batch `x` is two equal halves (a batched-CFG call: the same latent for uncond and cond)."""
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[0] < 2 or x.shape[0] % 2:
        return False
    a, b = x.chunk(2)
    return bool(torch.equal(a, b))


def request_ids(rt, args) -> tuple | None:
    """The request of each batch row (the caller's `fxcache.context(requests=...)`, else one per row of a batch
    of independent samples), or None: the whole batch is one request."""
    ids = requests()
    if ids is not None:
        return ids
    x = args[rt.discovery.hidden]
    batch = x.shape[0] if isinstance(x, torch.Tensor) and x.ndim >= 1 else 1
    if batch < 2:
        return None
    if paired(x):  # batched CFG: a sample's uncond and cond rows are one request
        if batch == 2:
            return None
        if rt.policy.batched_cfg:
            rt._warn_once(f"fxcache: policy {rt.policy.name} rebuilds the uncond half of batched-CFG calls, "
                            f"which is decided for the whole batch; a batch of several prompts decides together "
                            f"(warned once)", key="rows-cfg")
            return None
        return tuple(r % (batch // 2) for r in range(batch))
    return tuple(range(batch))

def plan_for(rt, call, st, inst) -> Plan:
    """A request's plan in a per-request call (persample.py): no cond-half plans there (a request's rows are
    not run as a half batch)."""
    if st.pending:
        sites = list(st.pending)
        if rt.guard.settle(st, sites, inst):
            st.policy = rt.policy.new_state()
    plan = rt.policy.plan(call, st.policy)
    if plan.half:
        raise RuntimeError(f"fxcache: policy {rt.policy.name} planned a cond-half call on a request's rows")
    return plan

def decide_for(rt, call, st, probe: Plan) -> Plan:
    plan = rt.policy.decide(call, st.policy)
    if plan.start != probe.stop or plan.stop is not None:
        raise RuntimeError(f"fxcache: policy {rt.policy.name} must continue from where its probe stopped")
    return plan


class PerSample:
    def __init__(self, rowgraphs, config) -> None:
        self.rowgraphs, self.config = rowgraphs, config

    def members(self, ids, batch: int) -> list[Member]:
        order: OrderedDict = OrderedDict()
        for r, rid in enumerate(ids):
            order.setdefault(rid, []).append(r)
        return [Member(rid, rows, None) for rid, rows in order.items()]

    def __call__(self, rt, args, inst, ids) -> tuple | None:
        """The call's outputs, or None where the row graph is not available (the caller runs the whole batch)."""
        d, policy = rt.discovery, rt.policy
        x = args[d.hidden]
        batch = x.shape[0]
        if len(ids) != batch:
            raise ValueError(f"fxcache.context: requests has {len(ids)} ids for a batch of {batch} rows; give one id "
                             f"per row of dim 0")
        graph = self.rowgraphs.get(args, batch, rt._variants_of)
        if graph is None:
            return None
        key = args[rt.instances.key_index] if rt.instances.key_index is not None else rt
        table = request_tables.table(key, self.config, rt.make_request_streams)
        members = self.members(ids, batch)
        ts = _row_timesteps(args[d.timestep] if d.timestep is not None else None, batch)
        text = args[d.encoder] if d.encoder is not None else None
        text = text if isinstance(text, torch.Tensor) and text.ndim >= 1 and text.shape[0] == batch else None
        user = rt.user_inputs
        for m in members:
            t = ts[m.rows[0]]
            if any(ts[r] != t for r in m.rows):
                raise ValueError(f"fxcache: the rows of request {m.rid!r} have different timesteps; one request's "
                                 f"rows (e.g. its uncond and cond) must be at the same step")
            index = torch.tensor(m.rows)
            shapes = tuple((len(m.rows), *args[i].shape[1:]) if args[i].ndim >= 1 and args[i].shape[0] == batch
                           else tuple(args[i].shape) for i in user if isinstance(args[i], torch.Tensor))
            m.streams = table.of(m.rid)
            before = m.streams.generation
            m.st = m.streams.resolve_at(t, rows_of(x, index), None if text is None else rows_of(text, index),
                                        shapes)
            m.new_generation = m.streams.generation != before
            m.call = make_call(m.st, m.streams, policy, rt.num_steps)
            m.plan = plan_for(rt, m.call, m.st, inst)
        parts = []
        groups: OrderedDict = OrderedDict()
        for m in members:
            groups.setdefault(m.plan, []).append(m)
        for plan, group in groups.items():
            parts += self._run(rt, graph, plan, group, args, inst)
        for m in members:
            if policy.joint:
                m.streams.joint.decided(m.call.step, m.plan.label)
            policy.observe(m.call, m.st.policy, m.plan)
            with inst.lock:
                inst.stats.count(m.call, m.plan, m.computed, d.num_units, m.runs, None, m.new_generation,
                                 request=m.rid)
        return _scatter(parts, batch)

    def _run(self, rt, graph: RowGraph, plan: Plan, group: list[Member], args, inst) -> list:
        rows = [r for m in group for r in m.rows]
        index = torch.tensor(rows)
        st, peers = _view(group)
        values, scratch, measured = {}, {}, {}
        run = replace(plan, rows=True) if plan.measure else plan
        outs, variant = rt._run(run, graph.inputs(args, index), st, values, scratch, measured, inst, peers,
                                graph=graph.variants)
        for m in group:
            m.computed += variant.units_computed
            m.runs += 1
        _spread(measured, group, plan)
        if plan.stop is None:
            return [(rows, outs)]
        decided: OrderedDict = OrderedDict()
        for k, m in enumerate(group):
            m.plan = decide_for(rt, m.call, m.st, plan)
            decided.setdefault(m.plan, []).append(k)
        parts = []
        offsets = [0]
        for m in group:
            offsets.append(offsets[-1] + len(m.rows))
        for cont, ks in decided.items():
            sub = [group[k] for k in ks]
            sub_rows = [r for m in sub for r in m.rows]
            if len(sub) == len(group):
                sv, ss = values, scratch
            else:  # this continuation's rows of the probe's values
                pos = torch.tensor([p for k in ks for p in range(offsets[k], offsets[k + 1])])
                sv = {name: _take(v, pos, graph.val_factor(name)) for name, v in values.items()}
                ss = {k: ([_take(t, pos, _factor(t, len(rows))) for t in v] if isinstance(v, list) else v)
                      for k, v in scratch.items()}
            sst, speers = _view(sub)
            measured2 = {}
            run2 = replace(cont, rows=True) if cont.measure else cont
            outs2, v2 = rt._run(run2, graph.inputs(args, torch.tensor(sub_rows)), sst, sv, ss, measured2, inst,
                                speers, graph=graph.variants)
            for m in sub:
                m.computed += v2.units_computed
                m.runs += 1
            _spread(measured2, sub, cont)
            parts.append((sub_rows, outs2))
        return parts


def _factor(t, rows: int) -> int | None:
    if isinstance(t, torch.Tensor) and t.ndim >= 1 and t.shape[0] % rows == 0:
        return t.shape[0] // rows
    return None


def _take(v, pos: torch.Tensor, factor: int | None):
    return rows_of(v, pos, factor) if factor is not None and isinstance(v, torch.Tensor) else v


def _spread(measured: dict, group: list[Member], plan: Plan) -> None:
    """Each request's distances from its rows' sums (one host read for the group)."""
    got = measured.get(ROWS)
    if got is None:
        return
    keys, matrix, bad = got
    sums = matrix.tolist()  # [keys][2][rows]
    offset = 0
    for m in group:
        n = len(m.rows)
        for k, key in enumerate(keys):
            a = sum(sums[k][0][offset:offset + n])
            b = sum(sums[k][1][offset:offset + n])
            v = a / max(b, 1e-12)
            m.call.measured[key] = v if math.isfinite(v) and not bad else math.nan
        offset += n


def _scatter(parts: list, batch: int) -> tuple:
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
            index = torch.tensor(rows, device=out.device)
            if f != 1:
                index = (index[:, None] * f + torch.arange(f, device=out.device)).reshape(-1)
            out.index_copy_(0, index, o[i])
        outs.append(out)
    return tuple(outs)
