"""A policy driver for unit tests: what the runtime (fxcache/runtime/runtime.py `Runtime.__call__`, and
fxcache/runtime/calls.py `make_call`) does around a policy, without a graph or tensors.

Per stream it keeps the policy's state (`policy.new_state()`) and a cache dict (site -> list of dummy slots, newest
first, at most `policy.depth(site)` of them) that `Call.cached` reads; for a joint policy, the generation's shared
state (`policy.new_shared()`) and the label of each step's first decision (`Call.agreed`). One call:
plan -> (a probe: `call.measured` filled, its writes stored, `decide`) -> the final plan's measures filled (unless
it is the probe's confirmed guess, fused with it) and writes stored -> `observe`. The `Call` itself (role, peer, 0-1000 timestep, agreed) is the runtime's `make_call`.

    drive = Driver(policy, num_steps=10, measure=lambda call, site, metric: 0.05)
    plans = drive.run(timesteps)                      # one stream: a list of final plans
    plans = drive.run(timesteps, ("stream0", "stream1"))  # cond then uncond at each step: {stream: [plans]}
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Callable

from fxcache.plan import Call, Plan
from fxcache.runtime.calls import make_call
from fxcache.runtime.speculation import fusable
from fxcache.runtime.state import Joint, StreamState

# measure(call, site, metric) -> the value the runtime would measure for (site, metric) on this call
Measure = Callable[[Call, object, str], float]


class Driver:
    def __init__(self, policy, num_steps: int | None = None, *, batched: bool = False,
                 measure: Measure | None = None, speculate: bool = True, generation: int = 1) -> None:
        """`batched`: the calls are batched CFG ([uncond; cond], one stream); the runtime recognises it from a
        stream's second call on, for policies with `batched_cfg`, when the stream is alone. `measure`: the default
        of `__call__`'s. `speculate`: as the engine option (decides which sites a confirmed guess stores)."""
        self.policy, self.num_steps, self.batched = policy, num_steps, batched
        self.measure, self.speculate = measure, speculate
        self.generation = generation
        self.states: dict[str, StreamState] = {}
        self.joint = Joint(None)
        self.history: list[tuple[Call, Plan, Plan]] = []  # (call, first plan, final plan) of every call

    # -- the runtime's bookkeeping ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """A new generation: every stream starts over (`Streams.resolve` on a detected boundary)."""
        self.states.clear()
        self.joint = Joint(None)
        self.generation += 1

    def state(self, stream: str = "stream0"):
        """The policy's own state of `stream` (None before its first call)."""
        st = self.states.get(stream)
        return None if st is None else st.policy

    def cache(self, stream: str = "stream0") -> dict:
        return self.states[stream].cache

    def _store(self, st: StreamState, sites, step: int) -> None:
        for site in sites:
            slots = st.cache.setdefault(site, [])
            slots.insert(0, (st.name, step))  # a dummy slot: whose and when
            del slots[max(1, self.policy.depth(site)):]

    def _fill(self, call: Call, plan: Plan, measure: Measure | None) -> None:
        """What the run of `plan` measures (the guard turns what is not finite into NaN)."""
        for site, metric in plan.measure:
            if measure is None:
                raise AssertionError(f"plan {plan.label!r} at step {call.step} of {call.stream} measures "
                                     f"{site} {metric}, and the test gave no measure function")
            v = float(measure(call, site, metric))
            call.measured[(site, metric)] = v if math.isfinite(v) else math.nan

    def _resolve(self, stream: str) -> StreamState:
        st = self.states.get(stream)
        if st is None:
            st = self.states[stream] = StreamState(stream, policy=self.policy.new_state())
        st.step += 1
        if st.paired is None and st.step >= 2:
            st.paired = bool(self.policy.batched_cfg and len(self.states) == 1 and self.batched)
        return st

    def make_call(self, st: StreamState, t: float | None) -> Call:
        """The runtime's own `make_call` (fxcache/runtime/calls.py), on this driver's streams."""
        streams = SimpleNamespace(states=self.states, joint=self.joint, last_t=t, generation=self.generation)
        return make_call(st, streams, self.policy, self.num_steps)

    # -- calls ----------------------------------------------------------------------------------------------------

    def __call__(self, t: float | None = None, stream: str = "stream0", measure: Measure | None = None) -> Plan:
        """One call of `stream` at timestep `t` (as the model receives it: 0-1 or 0-1000); returns the final plan."""
        measure = self.measure if measure is None else measure
        policy = self.policy
        st = self._resolve(stream)
        call = self.make_call(st, t)
        first = plan = policy.plan(call, st.policy)
        if plan.half and call.role != "batched":
            raise AssertionError(f"policy {policy.name} planned a cond-half call on role {call.role}")
        fused = self.speculate and plan.then is not None and fusable(plan)
        self._fill(call, plan, measure)  # against what was cached before this call's writes
        self._store(st, plan.write, call.step)
        if plan.stop is not None:
            probe = plan
            plan = policy.decide(call, st.policy)
            if plan.start != probe.stop or plan.stop is not None:
                raise AssertionError(f"policy {policy.name} must continue from where its probe stopped")
            if fused and plan == probe.then:
                self._store(st, plan.write - probe.write, call.step)
            else:
                self._fill(call, plan, measure)
                self._store(st, plan.write, call.step)
        if policy.joint:
            self.joint.decided(call.step, plan.label)
        policy.observe(call, st.policy, plan)
        self.history.append((call, first, plan))
        return plan

    def run(self, timesteps, streams=("stream0",), measure: Measure | None = None):
        """Every stream at each timestep, in the order given (a pipeline calls cond, then uncond). One stream: the
        list of its final plans; several: {stream: list}."""
        out: dict = {s: [] for s in streams}
        for t in timesteps:
            for s in streams:
                out[s].append(self(t, s, measure))
        return out[streams[0]] if len(streams) == 1 else out
