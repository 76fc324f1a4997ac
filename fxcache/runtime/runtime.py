"""The runtime: what the backend returns to Dynamo. Per call it finds the model instance and this thread's streams,
resolves the stream, fills in the `Call` its policy sees, asks the policy for a plan, runs the plan's compiled
variant (a probe first, fused with its guessed continuation where it can: speculation.py; then the decided
continuation where the guess was wrong), stores written sites into the stream's cache (guard.py keeps what is not
finite out) and counts what happened. It decides nothing itself; for a joint policy it hands the decision of the
step's first call to the step's other calls (`Call.agreed`).
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import torch

from ..passes.nodes import is_param_like
from ..plan import CFG_BATCH, Plan
from .calls import make_call
from .constants import StaticConstants
from .cudagraphs import Graphed
from .guard import NonFiniteGuard
from .halfbatch import HalfBatch
from .instances import Instances
from .persample import ROWS, PerSample, paired, request_ids
from .ranks import RankCheck
from .speculation import Speculation
from .state import Clock, Streams, StreamState
from .stats import DECISION_LOG
from .variants import VariantCache
from .wiring import Wiring

def _as_is(x):
    return x


class Runtime:
    def __init__(self, gm, discovery, policy, compiler: str = "inductor", max_variants: int = 16,
                 num_steps: int | None = None, decision_log: int = DECISION_LOG, piecewise="auto",
                 speculate: bool = True, cudagraphs: bool = True, check_ranks: bool = False) -> None:
        self.gm, self.discovery, self.policy, self.num_steps = gm, discovery, policy, num_steps
        self.piecewise = policy.block_level if piecewise == "auto" else piecewise
        self.cudagraphs = cudagraphs
        self.variants = VariantCache(gm, discovery, compiler, max_variants, self.piecewise, cudagraphs)
        d = discovery
        user = [i for i, p in enumerate(d.placeholders) if not is_param_like(p)]
        # The instance key: a parameter (a model's own), else a buffer.
        params = sorted((i for i, p in enumerate(d.placeholders) if is_param_like(p)),
                        key=lambda i: "_parameters_" not in d.placeholders[i].name)

        def make_streams() -> Streams:
            return Streams(d.timestep, d.hidden, d.encoder, user, policy.new_state, num_steps)

        self.user_inputs = user
        self.make_request_streams = lambda: Streams(None, None, None, [], policy.new_state, num_steps)
        self.per_sample: PerSample | None = None  # per-request decisions in a batch; set by the backend

        self.instances = Instances(params[0] if params else None, make_streams, decision_log)
        self._warned: set[str] = set()
        self.compiler = compiler
        # The cond-half graph for batched CFG (halfbatch.py), or why there is none; set by the backend.
        self.half: HalfBatch | None = None
        self._trims: dict = {}  # (plan, sites a probe produced) -> the plan without them
        self._constants = StaticConstants()  # forecast weights / band scales; fixed buffers on a GPU
        self.speculation = Speculation() if speculate else None
        self.guard = NonFiniteGuard()
        self.ranks = RankCheck(discovery.groups) if check_ranks and discovery.groups else None
        self.why_no_half: str | None = "not recorded"

    def reset(self) -> None:
        for inst in self.instances.all():
            inst.reset()

    def _warn_once(self, message: str, key: str | None = None) -> None:
        key = key or message
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def __call__(self, *args):
        inst = self.instances.of(args)
        if self.per_sample is not None:
            ids = request_ids(self, args)
            if ids is not None:
                outputs = self.per_sample(self, args, inst, ids)
                if outputs is not None:
                    return outputs
                self._warn_once(f"fxcache: per-request decisions are not available for this model "
                                f"({self.per_sample.rowgraphs.failed}); the whole batch decides together (warned "
                                f"once)", key="rows")
        streams = inst.streams()
        if self.discovery.timestep is not None:
            Clock.publish(args[self.discovery.timestep])
        generation = streams.generation
        st = streams.resolve(args)
        if streams.last_t is None:
            self._warn_once("fxcache: no timestep reaches this block graph, so a new generation is recognised only "
                            "by a change of input shapes; call fxcache.reset(model) between generations")
        if st.paired is None and st.step >= 2:
            # From the second call on, when it is known whether the pipeline calls once per step (a second
            # stream would exist by now): a batch of two separate prompts with equal latents is not CFG.
            st.paired = (self.policy.batched_cfg and len(streams.states) == 1 and self.discovery.hidden is not None
                         and paired(args[self.discovery.hidden]) and self._half_ready(args))
        call = make_call(st, streams, self.policy, self.num_steps)
        plan = self.policy.plan(call, st.policy)
        if plan.half and call.role != "batched":
            raise RuntimeError(f"fxcache: policy {self.policy.name} planned a cond-half call on a call that is not "
                               f"a batched-CFG one")
        unread = [s for s in (*plan.reuse, *plan.forecast) if s in st.pending] if st.pending else ()
        if unread and self.guard.settle(st, unread, inst):
            st.policy = self.policy.new_state()  # the stream started over: its policy plans afresh
            plan = self.policy.plan(call, st.policy)
        if self.ranks is not None:  # before anything runs: ranks that disagree would wait in different collectives
            self.ranks.agree(call, plan)
        values: dict = {}
        scratch: dict = {}
        measured = call.measured
        fusion = self.speculation.fused(plan) if self.speculation is not None and plan.then is not None else None
        guess = plan.then if fusion is not None else None
        runs = 1
        if guess is not None:  # probe and guessed continuation in one variant; its writes wait for the decision
            outputs, fused = self._run(fusion[0], args, st, values, scratch, measured, inst, streams,
                                       store=plan.write)
            computed = fused.units_computed
            spec = {k: scratch.pop(k) for k in fusion[1] if k in scratch}
        else:
            outputs, variant = self._run(plan, args, st, values, scratch, measured, inst, streams)
            computed = variant.units_computed
        right = None
        if plan.stop is not None:
            probe = plan
            plan = self.policy.decide(call, st.policy)
            if self.ranks is not None:
                self.ranks.agree(call, plan)
            if plan.start != probe.stop or plan.stop is not None:
                raise RuntimeError(f"fxcache: policy {self.policy.name} must continue from where its probe stopped")
            right = guess is not None and plan == guess
            if right:
                self._store(plan, {**scratch, **spec}, st, plan.write - probe.write)
            else:
                if guess is not None:
                    computed = fused.units_probe  # the guess's part of the fused variant is thrown away
                outputs, variant = self._run(plan, args, st, values, scratch, measured, inst, streams)
                computed += variant.units_computed
                runs += 1
        if self.policy.joint:
            streams.joint.decided(call.step, plan.label)
        self.policy.observe(call, st.policy, plan)
        with inst.lock:
            inst.stats.count(call, plan, computed, self.discovery.num_units, runs, None if guess is None else right,
                             streams.generation != generation)
        return outputs

    def _half_ready(self, args) -> bool:
        """Whether the cond-half graph can run (traced on the first batched-CFG call); warns once where not."""
        if self.half is not None and self.half.ready(args, args[self.discovery.hidden].shape[0], self._variants_of):
            return True
        why = self.half.why_not(args) if self.half is not None else self.why_no_half
        self._warn_once(f"fxcache: policy {self.policy.name} cannot run only the cond half of this batched-CFG "
                        f"model ({why}); both halves are computed on every step (warned once)", key="half")
        return False

    def _variants_of(self, gm, d) -> VariantCache:
        return VariantCache(gm, d, self.compiler, self.variants.max_variants, self.piecewise, self.variants.graphs)

    def _trimmed(self, plan: Plan, scratch: dict) -> Plan:
        """`plan` without the written sites a probe already produced (they are stored from the probe's values)."""
        if not scratch:
            return plan
        done = frozenset(s for s in plan.write if s in scratch)
        if not done:
            return plan
        key = (plan, done)
        trimmed = self._trims.get(key)
        if trimmed is None:
            trimmed = self._trims[key] = replace(plan, write=plan.write - done)
        return trimmed

    def _constant(self, kind: str, plan: Plan, device) -> torch.Tensor:
        """The forecast weights / band scales of `plan` as a float32 tensor on `device`, made once per value."""
        return self._constants.get(kind, plan.coeffs if kind == "coef" else plan.scales, device)

    def _run(self, plan: Plan, args, st: StreamState, values: dict, scratch: dict, measured: dict, inst,
             streams: Streams, store: frozenset | None = None, graph: VariantCache | None = None):
        """Run `plan`'s variant (of `graph`, where given: a row graph); store the sites it writes (those in `store`
        where given)."""
        run_plan = self._trimmed(plan, scratch)
        variants, half = self.variants if graph is None else graph, self.half.at(st.shapes, args) if plan.half else None
        if half is not None:  # the cond half: its own graph; batched inputs and cached values cut to their cond half
            variants = half.variants
        variant, fn = variants.get(run_plan)
        w = variant.wiring
        if w is None:
            w = variant.wiring = Wiring(variant.inputs)
        if half is None:
            inputs = [args[i] for i in w.args]
        else:
            inputs = [half.arg(i, args[half.arg_of[i]]) for i in w.args]
        if w.vals:
            inputs += [values[name] for name in w.vals]
        for kind, site, j, slot in w.cached:
            owner = st if kind == "cache" else streams.states.get(plan.peer)
            slots = owner.cache.get(site, ()) if owner is not None else ()
            if len(slots) <= slot:
                what = f"{site} of stream {plan.peer}" if kind == "peer" else str(site)
                when = ("before writing it" if not slots else
                        f"from {slot} computed steps ago, but only {len(slots)} are kept")
                raise RuntimeError(f"fxcache: policy {self.policy.name} read {what} {when}")
            value = slots[slot][j]
            inputs.append(half.site(site, j, value) if half is not None and site.kind in ("module", "stream")
                          else value)
        if w.constants:  # the forecast weights / band scales, on the device of the values they weigh
            device = next((i.device for i in inputs if isinstance(i, torch.Tensor)), None)
            inputs += [self._constant(kind, plan, device) for kind in w.constants]
        if fn is None:
            fn = variants.compiled(run_plan, inputs, inst.stats)
        results = fn(*inputs)
        if variant.reductions:
            with inst.lock:
                inst.stats.reductions += variant.reductions
        # A CUDA graph's outputs are overwritten by its next replay: what outlives this call is copied (cudagraphs.py)
        escape = Graphed.escape if type(fn) is Graphed else _as_is
        outs = []
        reads = None
        for key, r in zip(variant.outputs, results):
            kind = key[0]
            if kind == "out":
                outs.append(escape(r))
            elif kind == "val":
                values[key[1]] = r
            elif kind == "site":
                scratch.setdefault(key[1], []).append(r)
            elif kind == "fin":
                scratch[("fin", key[1])] = escape(r)
            elif kind == "reads":
                reads = (key[1], r)
        if reads is not None and plan.rows:  # per-row sums: each request's values are made by persample.py
            measured[ROWS] = (reads[0], reads[1])
        elif reads is not None:
            self.guard.read(st, reads[0], reads[1], measured, inst)
        self._store(plan, scratch, st, plan.write if store is None else store)
        return (tuple(outs) if plan.stop is None else None), variant

    def _store(self, plan: Plan, scratch: dict, st: StreamState, sites) -> None:
        # Batched CFG: module values are cached for the cond half only (the uncond half is what gets rebuilt)
        half = self.half.at(st.shapes) if plan.half or CFG_BATCH in plan.write else None
        for site in sites:
            site_values = scratch[site]
            if half is not None and site.kind == "module":
                site_values = [half.site(site, j, v) for j, v in enumerate(site_values)]
            st.store(site, site_values, scratch.get(("fin", site)), self.policy.depth(site))
