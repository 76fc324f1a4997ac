"""The runtime: what the backend returns to Dynamo. Per call it resolves the stream, asks the policy for a plan,
runs the plan's compiled variant (a probe first, then the continuation, when the policy needs this step's data),
stores written sites into the stream's cache and counts what happened. It decides nothing itself."""

from __future__ import annotations

from ..passes.discover import is_param_like
from ..plan import Plan
from .state import Streams, StreamState
from .stats import Stats
from .variants import VariantCache


class Call:
    """What a policy may know about the current call."""

    __slots__ = ("step", "stream", "timestep", "num_steps")

    def __init__(self, step: int, stream: str, timestep: float | None, num_steps: int | None) -> None:
        self.step, self.stream, self.timestep, self.num_steps = step, stream, timestep, num_steps

    @property
    def is_last(self) -> bool:
        return self.num_steps is not None and self.step >= self.num_steps


class Runtime:
    def __init__(self, gm, discovery, policy, compiler: str = "inductor", max_variants: int = 16,
                 num_steps: int | None = None) -> None:
        self.gm, self.discovery, self.policy, self.num_steps = gm, discovery, policy, num_steps
        self.stats = Stats()
        self.variants = VariantCache(gm, discovery, compiler, max_variants, self.stats)
        user = [i for i, p in enumerate(discovery.placeholders) if not is_param_like(p)]
        self.streams = Streams(discovery.timestep, user, policy.new_state)

    def reset(self) -> None:
        self.streams.reset()

    def __call__(self, *args):
        st = self.streams.resolve(args)
        call = Call(st.step, st.name, self.streams._last_t, self.num_steps)
        plan = self.policy.plan(call, st.policy)
        values: dict = {}
        scratch: dict = {}
        measured: dict = {}
        outputs, computed = self._run(plan, args, st, values, scratch, measured)
        if plan.stop is not None:
            probe = plan
            plan = self.policy.decide(call, st.policy, measured)
            if plan.start != probe.stop or plan.stop is not None:
                raise RuntimeError(f"fxcache: policy {self.policy.name} must continue from where its probe stopped")
            outputs, more = self._run(plan, args, st, values, scratch, measured)
            computed += more
        self.policy.observe(call, st.policy, measured, plan)
        self._count(call, plan, computed, measured)
        return outputs

    def _run(self, plan: Plan, args, st: StreamState, values: dict, scratch: dict, measured: dict):
        # Sites a probe already produced are stored from it rather than computed again.
        done = frozenset(s for s in plan.write if s in scratch)
        run_plan = Plan(plan.reuse, plan.write - done, plan.measure, plan.start, plan.stop, plan.label)
        variant, _ = self.variants.get(run_plan)
        inputs = []
        for key in variant.inputs:
            kind = key[0]
            if kind == "arg":
                inputs.append(args[key[1]])
            elif kind == "val":
                inputs.append(values[key[1]])
            else:
                cached = st.cache.get(key[1])
                if cached is None:
                    raise RuntimeError(f"fxcache: policy {self.policy.name} read {key[1]} before writing it")
                inputs.append(cached[key[2]])
        fn = self.variants.compiled(run_plan, inputs)
        results = fn(*inputs)
        outs, sites, nums, dens = [], {}, {}, {}
        for key, r in zip(variant.outputs, results):
            kind = key[0]
            if kind == "out":
                outs.append(r)
            elif kind == "val":
                values[key[1]] = r
            elif kind == "site":
                sites.setdefault(key[1], []).append(r)
            elif kind == "num":
                nums[key[1]] = r
            elif kind == "den":
                dens[key[1]] = r
            elif kind == "mag":
                measured[(key[1], "mag_ratio")] = float(r.mean())
        for site, num in nums.items():
            measured[(site, "rel_l1")] = float(num.sum() / dens[site].sum().clamp_min(1e-12))
        scratch.update(sites)
        for site in plan.write:
            st.store(site, scratch[site])
        return (tuple(outs) if plan.stop is None else None), variant.units_computed

    def _count(self, call: Call, plan: Plan, computed: int, measured: dict) -> None:
        s = self.stats
        s.calls += 1
        s.steps += 1
        total = self.discovery.num_units
        s.blocks_computed += computed
        s.blocks_skipped += total - computed
        if computed >= total:
            s.full_steps += 1
        else:
            s.skipped_steps += 1
        dist = next(iter(measured.values()), None)
        s.decisions.append({"step": call.step, "stream": call.stream, "decision": plan.label,
                            "distance": dist, "blocks": computed})
