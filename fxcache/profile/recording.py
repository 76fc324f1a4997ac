"""Pass 1 of a profile: the target, and a recording policy run by fxcache's own engine (compiler "eager") that
computes every call whole and measures every site the calibration needs, so the numbers are the distances the
policies see online."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from .. import reset
from ..backend import _compile
from ..metrics import CFG_REL_L1, MAG_RATIO, PEER_REL_L1, REL_L1
from ..plan import OUTPUT, Plan, Site, residual
from ..policies.base import Policy, Unsupported
from ..policies.mixcache_algorithm import candidate_blocks

INDICATORS = ("modulated_input", "timestep")  # TeaCache's indicators (passes/discover.py finds them)


@dataclass
class Target:
    model: torch.nn.Module
    generate: Callable[..., Any]  # generate(model, prompt: int, seed: int, steps: int, guidance: float)
    cfg: str = "separate"  # "separate": cond call, then uncond call, per step | "batched": one call on [uncond; cond]
    prompts: int | None = None  # how many prompts `generate` knows (None: any index)
    name: str = ""
    data_range: float | None = None  # peak-to-peak of an output, for PSNR (`fxcache.tune`; None: the reference's)


def load_target(spec: str) -> Target:
    """`module:callable` -> the Target that callable returns."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"fxcache.profile: --target must be 'module:callable', got {spec!r}")
    mod, _, attr = spec.partition(":")
    fn: Any = importlib.import_module(mod)
    for part in attr.split("."):
        fn = getattr(fn, part)
    got = fn()
    if isinstance(got, tuple):
        got = Target(*got)
    if not isinstance(got, Target):
        raise ValueError(f"fxcache.profile: {spec} returned {type(got).__name__}, not a Target or a tuple "
                         f"(model, generate[, cfg])")
    got.name = got.name or spec
    return got


class Recorder(Policy):
    """Every call full; writes and measures every site the calibration needs (not a user policy). `records`:
    stream -> key -> step -> value, the keys "d_step", "indicator:<name>", "block:<i>", "attn:<block>:<name>",
    "mag_ratio" and "d_cfg"."""

    name = "profile"

    def __init__(self, cfg: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.discovery = None
        self.records: dict[str, dict[str, dict[int, float]]] = {}

    def bind(self, d) -> None:
        if self.discovery is not None and self.discovery.num_units != d.num_units:
            raise Unsupported("fxcache.profile records one block graph per model")
        self.discovery = d
        u = d.num_units
        self.stack = residual(0, u) if d.residual_ok(0, u) else None
        self.blocks = candidate_blocks(d)
        self.attn = sorted((s for s, m in d.modules.items() if m.role == "attn"), key=lambda s: (s.start, s.name))
        names = {OUTPUT: "d_step"}
        names.update({Site("indicator", name=n): f"indicator:{n}" for n in INDICATORS if n in d.indicators})
        names.update({Site("stream", 0, i): f"block:{i}" for i in self.blocks})
        names.update({s: f"attn:{s.start}:{s.name}" for s in self.attn})
        self.keys = {(s, REL_L1): k for s, k in names.items()}
        write = set(names)
        if self.stack is not None:
            write.add(self.stack)
            self.keys[(self.stack, MAG_RATIO)] = "mag_ratio"
        if self.cfg == "batched":
            self.keys[(OUTPUT, CFG_REL_L1)] = "d_cfg"
        self.first = Plan(write=frozenset(write),
                          measure=frozenset({(OUTPUT, CFG_REL_L1)} if self.cfg == "batched" else ()))
        self.later = Plan(write=frozenset(write), measure=frozenset(self.keys))
        self.peer_key = (OUTPUT, PEER_REL_L1)
        self.keys[self.peer_key] = "d_cfg"

    def plan(self, call, state) -> Plan:
        plan = self.later if call.cached(OUTPUT) else self.first
        if self.cfg == "separate" and call.role == "uncond":  # the uncond call: its output vs this step's cond
            plan = replace(plan, measure=plan.measure | {self.peer_key}, peer=call.peer)
        return plan

    def observe(self, call, state, plan: Plan) -> None:
        rec = self.records.setdefault(call.stream, {})
        for key, value in call.measured.items():
            if key in self.keys:
                rec.setdefault(self.keys[key], {})[call.step] = float(value)


def measure(target: Target, generations, steps: int, guidance: float, bar) -> tuple[Recorder, list[dict]]:
    """Pass 1: the recorder and, per generation, {stream: {key: [value or None per step]}}."""
    rec = Recorder(target.cfg)
    engine = {"compiler": "eager", "num_steps": None, "max_variants": 64, "decision_log": 0}

    def backend(gm, example_inputs, **_):
        return _compile(gm, example_inputs, rec, engine)

    torch._dynamo.reset()
    cm = torch.compile(target.model, backend=backend)
    runs = []
    try:
        for prompt, seed in generations:
            rec.records = {}
            reset(cm)
            target.generate(cm, prompt, seed, steps, guidance)
            if rec.discovery is None:
                raise RuntimeError("fxcache.profile: no list of transformer blocks found in the model's graph")
            runs.append({s: {k: [v.get(t) for t in range(1, steps + 1)] for k, v in r.items()}
                         for s, r in rec.records.items()})
            bar.update(1)
    finally:
        torch._dynamo.reset()
    return rec, runs
