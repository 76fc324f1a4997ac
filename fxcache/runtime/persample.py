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

from collections import OrderedDict
from dataclasses import replace

import torch

from ..plan import Plan
from . import requests as request_tables
from .calls import make_call
from .context import requests
from .rowgraph import RowGraph, rows_of
from .rowgroups import ROWS, Member, factor, scatter, spread, take, view



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
    # the first rows first: a batch of independent prompts is told apart without reading all of it
    return bool(torch.equal(a[0], b[0])) and bool(torch.equal(a, b))


def _rows(x: torch.Tensor, index):
    return x[index] if isinstance(index, slice) else rows_of(x, index)


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
            rt._warn_once(f"fxcache: policy {rt.policy.name} rebuilds unconditional outputs of batched-CFG calls, "
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


def _same_resolution(m: Member, t, shapes: tuple) -> None:
    """A request in the middle of its generation (its timestep still falling) keeps its input shapes: requests of
    different resolutions cannot be one request (the caller batches by resolution)."""
    s = m.streams
    if s.states and t is not None and s.last_t is not None and t < s.last_t and all(
            st.shapes != shapes for st in s.states.values()):
        old = next(iter(s.states.values())).shapes
        raise ValueError(f"fxcache: request {m.rid!r} changed input shapes in the middle of its generation "
                         f"({[tuple(x) for x in old]} -> {[tuple(x) for x in shapes]}); requests of different "
                         f"resolutions need ids of their own (batch them apart), and a finished request is "
                         f"released with fxcache.release(model, ids)")


class PerSample:
    def __init__(self, rowgraphs, config) -> None:
        self.rowgraphs, self.config = rowgraphs, config

    @staticmethod
    def members(ids) -> list[Member]:
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
        members = self.members(ids)
        ts = _row_timesteps(args[d.timestep] if d.timestep is not None else None, batch)
        text = args[d.encoder] if d.encoder is not None else None
        text = text if isinstance(text, torch.Tensor) and text.ndim >= 1 and text.shape[0] == batch else None
        user = rt.user_inputs
        for m in members:
            t = ts[m.rows[0]]
            if any(ts[r] != t for r in m.rows):
                raise ValueError(f"fxcache: the rows of request {m.rid!r} have different timesteps; one request's "
                                 f"rows (e.g. its uncond and cond) must be at the same step")
            lo, hi = m.rows[0], m.rows[-1] + 1  # consecutive rows (one row, or a prompt's pair): a view, no copy
            index = slice(lo, hi) if hi - lo == len(m.rows) else torch.tensor(m.rows)
            shapes = tuple((len(m.rows), *args[i].shape[1:]) if args[i].ndim >= 1 and args[i].shape[0] == batch
                           else tuple(args[i].shape) for i in user if isinstance(args[i], torch.Tensor))
            m.streams = table.of(m.rid)
            _same_resolution(m, t, shapes)
            before = m.streams.generation
            m.st = m.streams.resolve_at(t, _rows(x, index), None if text is None else _rows(text, index), shapes)
            m.new_generation = m.streams.generation != before
            m.call = make_call(m.st, m.streams, policy, rt.num_steps)
            m.plan = plan_for(rt, m.call, m.st, inst)
        parts = []
        groups: OrderedDict = OrderedDict()
        for m in members:
            groups.setdefault(m.plan, []).append(m)
        for plan, group in groups.items():
            parts += self._run(rt, graph, plan, group, args, inst, batch)
        for m in members:
            if policy.joint:
                m.streams.joint.decided(m.call.step, m.plan.label)
            policy.observe(m.call, m.st.policy, m.plan)
            with inst.lock:
                inst.stats.count(m.call, m.plan, m.computed, d.num_units, m.runs, m.right, m.new_generation,
                                 request=m.rid)
        return scatter(parts, batch)

    def _run(self, rt, graph: RowGraph, plan: Plan, group: list[Member], args, inst, batch: int) -> list:
        """Run one group's plan; a probe's requests then decide and continue in groups of their own. A probe runs
        fused with its guessed continuation (runtime/speculation.py): the requests whose decision is the guess are
        done; the others continue from the probe's values, on their rows."""
        rows = [r for m in group for r in m.rows]
        st, peers = view(group)
        values, scratch, measured = {}, {}, {}
        fusion = rt.speculation.fused(plan) if rt.speculation is not None and plan.then is not None else None
        run = fusion[0] if fusion is not None else plan
        outs, variant = rt._run(replace(run, rows=True) if run.measure else run, graph.inputs(args, rows, batch),
                                st, values, scratch, measured, inst, peers,
                                store=plan.write if fusion is not None else None, graph=graph.variants)
        for m in group:
            m.runs += 1
        spread(measured, group)
        if plan.stop is None:
            for m in group:
                m.computed += variant.units_computed
            return [(rows, outs)]
        guess = plan.then if fusion is not None else None
        spec = {k: scratch.pop(k) for k in fusion[1] if k in scratch} if fusion is not None else {}
        decided: OrderedDict = OrderedDict()
        for k, m in enumerate(group):
            m.plan = decide_for(rt, m.call, m.st, plan)
            decided.setdefault(m.plan, []).append(k)
        offsets = [0]
        for m in group:
            offsets.append(offsets[-1] + len(m.rows))
        parts = []
        for cont, ks in decided.items():
            sub = [group[k] for k in ks]
            sub_rows = [r for m in sub for r in m.rows]
            pos = None if len(sub) == len(group) else torch.tensor(
                [p for k in ks for p in range(offsets[k], offsets[k + 1])])

            def rows_of_group(d: dict) -> dict:  # this subset's rows of the group's site values
                if pos is None:
                    return d
                return {k: ([take(t, pos, factor(t, len(rows))) for t in v] if isinstance(v, list) else v)
                        for k, v in d.items()}

            sst, speers = view(sub)
            if cont == guess:  # the fused variant ran this continuation: keep its writes and outputs
                for m in sub:
                    m.computed += variant.units_computed
                    m.right = True
                rt._store(cont, rows_of_group({**scratch, **spec}), sst, cont.write - plan.write)
                parts.append((sub_rows, outs if pos is None else
                              tuple(take(o, pos, factor(o, len(rows))) for o in outs)))
                continue
            for m in sub:
                m.computed += variant.units_probe if fusion is not None else variant.units_computed
                m.right = None if guess is None else False
            sv = values if pos is None else {name: take(v, pos, graph.val_factor(name)) for name, v in values.items()}
            measured2 = {}
            outs2, v2 = rt._run(replace(cont, rows=True) if cont.measure else cont,
                                graph.inputs(args, sub_rows, batch), sst, sv, rows_of_group(scratch),
                                measured2, inst, speers, graph=graph.variants)
            for m in sub:
                m.computed += v2.units_computed
                m.runs += 1
            spread(measured2, sub)
            parts.append((sub_rows, outs2))
        return parts
