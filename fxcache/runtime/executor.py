"""The runtime: what the backend returns to Dynamo. Per call it finds the model instance and this thread's streams,
resolves the stream, asks the policy for a plan, runs the plan's compiled variant (a probe first, then the
continuation, when the policy needs this step's data), stores written sites into the stream's cache and counts
what happened. It decides nothing itself.

Non-finite values never stay in a cache: every written site comes with a finiteness flag computed inside the
variant. The flags are read with the distance a probe reads anyway, or, for plans that reuse without probing,
just before the first reuse of what they flag. A site that was not finite is dropped (the stream starts over:
its next step computes), and a non-finite distance reaches the policy as NaN, which every policy treats as
"compute".
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import torch

from ..passes.discover import is_param_like
from ..plan import CFG_BATCH, Plan
from .constants import StaticConstants
from .cudagraphs import Graphed
from .halfbatch import HalfBatch
from .instances import Instances
from .state import Clock, Streams, StreamState
from .stats import DECISION_LOG
from .variants import VariantCache


def _paired(x) -> bool:
    """Whether batch `x` is two equal halves (a batched-CFG call: the same latent for uncond and cond)."""
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[0] < 2 or x.shape[0] % 2:
        return False
    a, b = x.chunk(2)
    return bool(torch.equal(a, b))


class Call:
    """What a policy may know about the current call."""

    __slots__ = ("step", "stream", "timestep", "num_steps", "paired", "shared")

    def __init__(self, step: int, stream: str, timestep: float | None, num_steps: int | None,
                 paired: bool = False, shared: dict | None = None) -> None:
        self.step, self.stream, self.timestep, self.num_steps = step, stream, timestep, num_steps
        # State the streams of one generation share (a policy that decides per step for both CFG branches keeps
        # its decision here); cleared with the generation, like the streams' own states.
        self.shared = {} if shared is None else shared
        # The batch is [uncond; cond] (both halves of the latent input equal, as batched-CFG pipelines call the
        # model) and the cond half can run alone (Plan.half); looked at only for policies with `batched_cfg`,
        # once per generation.
        self.paired = paired

    @property
    def is_last(self) -> bool:
        return self.num_steps is not None and self.step >= self.num_steps


def _as_is(x):
    return x


class Wiring:
    """How a variant's inputs are gathered, precomputed from its input keys (specialize orders them: graph inputs,
    probe values, cached values, weights), so that a call builds its input list with a few comprehensions."""

    __slots__ = ("args", "vals", "cached", "constants")

    def __init__(self, keys: list[tuple]) -> None:
        self.args = [k[1] for k in keys if k[0] == "arg"]
        self.vals = [k[1] for k in keys if k[0] == "val"]
        self.cached = [k for k in keys if k[0] in ("cache", "peer")]
        self.constants = [k[0] for k in keys if k[0] in ("coef", "scales")]
        if [k for k in keys] != ([("arg", i) for i in self.args] + [("val", v) for v in self.vals] + self.cached
                                 + [(c,) for c in self.constants]):
            raise RuntimeError("fxcache: variant inputs are not in gathering order (passes/specialize.py)")


class Runtime:
    def __init__(self, gm, discovery, policy, compiler: str = "inductor", max_variants: int = 16,
                 num_steps: int | None = None, decision_log: int = DECISION_LOG, piecewise="auto",
                 speculate: bool = True, cudagraphs: bool = True) -> None:
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

        self.instances = Instances(params[0] if params else None, make_streams, decision_log)
        self._warned: set[str] = set()
        self.compiler = compiler
        # The cond-half graph for batched CFG (halfbatch.py), or why there is none; set by the backend.
        self.half: HalfBatch | None = None
        self._trims: dict = {}  # (plan, sites a probe produced) -> the plan without them
        self._constants = StaticConstants()  # forecast weights / band scales; fixed buffers on a GPU
        self._fusions: dict = {}  # id(probe) -> (probe, its fused plan)
        self.speculate = speculate
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
                         and _paired(args[self.discovery.hidden]) and self._half_ready(args))
        call = Call(st.step, st.name, streams.last_t, self.num_steps, bool(st.paired) and len(streams.states) == 1,
                    streams.shared)
        plan = self.policy.plan(call, st.policy)
        if plan.half and not st.paired:
            raise RuntimeError(f"fxcache: policy {self.policy.name} planned a cond-half call on a call that is not "
                               f"a batched-CFG one")
        unread = [s for s in (*plan.reuse, *plan.forecast) if s in st.pending] if st.pending else ()
        if unread and self._settle(st, unread, inst):
            plan = self.policy.plan(call, st.policy)  # the stream started over: its policy plans afresh
        values: dict = {}
        scratch: dict = {}
        measured: dict = {}
        fusion = self._fused(plan) if self.speculate and plan.then is not None else None
        guess = plan.then if fusion is not None else None
        if guess is not None:  # probe and guessed continuation in one variant; its writes wait for the decision
            outputs, fused = self._run(fusion[0], args, st, values, scratch, measured, inst, streams,
                                       store=plan.write)
            computed = fused.units_computed
            spec = {k: scratch.pop(k) for k in fusion[1] if k in scratch}
        else:
            outputs, variant = self._run(plan, args, st, values, scratch, measured, inst, streams)
            computed = variant.units_computed
        if plan.stop is not None:
            probe = plan
            plan = self.policy.decide(call, st.policy, measured)
            if plan.start != probe.stop or plan.stop is not None:
                raise RuntimeError(f"fxcache: policy {self.policy.name} must continue from where its probe stopped")
            right = guess is not None and plan.same_as(guess)
            if right:
                self._store(plan, {**scratch, **spec}, st, plan.write - probe.write)
            else:
                if guess is not None:
                    computed = fused.units_probe  # the guess's part of the fused variant is thrown away
                outputs, variant = self._run(plan, args, st, values, scratch, measured, inst, streams)
                computed += variant.units_computed
        self.policy.observe(call, st.policy, measured, plan)
        self._count(inst, streams.generation != generation, call, plan, computed, measured,
                    None if guess is None else right)
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

    def _settle(self, st: StreamState, sites, inst) -> bool:
        """Read the finiteness flags of `sites` (one read). If any is not finite, the stream starts over: its cache
        and policy state are cleared, so the policy's next plan computes. Returns whether it started over."""
        flags = torch.stack([st.pending.pop(s) for s in sites]).tolist()
        bad = [s for s, ok in zip(sites, flags) if not ok]
        if not bad:
            return False
        self._poisoned(st, bad, inst)
        st.cache.clear()
        st.pending.clear()
        st.policy = self.policy.new_state()
        return True

    def _poisoned(self, st: StreamState, sites, inst) -> None:
        with inst.lock:
            inst.stats.not_cached += len(sites)
        self._warn_once(f"fxcache: a computed step of stream {st.name!r} produced non-finite values (NaN or inf) "
                        f"in {', '.join(map(str, sites))}; they were not cached and the next step computes "
                        f"(warned once; fxcache.stats(model).not_cached counts them)", key="non-finite")

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

    def _fused(self, probe: Plan) -> tuple[Plan, tuple] | None:
        """(`probe.fused()`, the scratch keys of the guess's own writes), or None where the probe and its guess cannot
        be fused; made once per probe object (policies hand out the same probe object for the same guess)."""
        hit = self._fusions.get(id(probe))
        if hit is None or hit[0] is not probe:
            if len(self._fusions) >= 64:  # probes made afresh each call (forecast weights): bounded
                self._fusions.clear()
            own = probe.then.write - probe.write
            fusion = (probe.fused(), (*own, *(("fin", s) for s in own))) if probe.fusable() else None
            hit = self._fusions[id(probe)] = (probe, fusion)
        return hit[1]

    def _constant(self, kind: str, plan: Plan, device) -> torch.Tensor:
        """The forecast weights / band scales of `plan` as a float32 tensor on `device`, made once per value."""
        return self._constants.get(kind, plan.coeffs if kind == "coef" else plan.scales, device)

    def _run(self, plan: Plan, args, st: StreamState, values: dict, scratch: dict, measured: dict, inst,
             streams: Streams, store: frozenset | None = None):
        """Run `plan`'s variant; store the sites it writes (those in `store` where given)."""
        run_plan = self._trimmed(plan, scratch)
        variants, half = self.variants, self.half.at(st.shapes, args) if plan.half else None
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
        if reads is not None:
            # One host read for the policy's distances and the pending finiteness flags of this stream.
            keys, vector = reads
            flagged = list(st.pending)
            if flagged:
                vector = torch.cat([vector, torch.stack([st.pending.pop(s) for s in flagged]).float()])
            got = vector.tolist()
            bad = [s for s, ok in zip(flagged, got[len(keys):]) if not ok]
            for key, v in zip(keys, got):
                measured[key] = v if math.isfinite(v) and not bad else math.nan
            if bad:
                self._poisoned(st, bad, inst)
                for s in bad:
                    st.drop(s)
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

    def _count(self, inst, new_generation: bool, call: Call, plan: Plan, computed: int, measured: dict,
               right: bool | None) -> None:
        total = self.discovery.num_units
        dist = next(iter(measured.values()), None)
        reused = sum(1 for x in plan.reuse if x.kind == "module") if plan.reuse else 0
        with inst.lock:
            s = inst.stats
            if right is not None:
                s.guesses_right += right
                s.guesses_wrong += not right
            s.calls += 1
            s.steps += 1
            s.generations += new_generation
            s.blocks_computed += computed
            s.blocks_skipped += total - computed
            s.sites_reused += reused
            s.sites_forecast += len(plan.forecast)
            s.cfg_reused += plan.rebuilds
            if computed >= total:
                s.full_steps += 1
            else:
                s.skipped_steps += 1
            s.record({"step": call.step, "stream": call.stream, "decision": plan.label,
                      "distance": dist, "blocks": computed, "sites": reused + len(plan.forecast)})
