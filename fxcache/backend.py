"""The Dynamo entry point: options -> discover -> Runtime; plain compilation with one warning when the graph has
no block list or the policy cannot use it.

    torch.compile(model, backend="fxcache", options={"policy": "fbcache", "threshold": 0.08})
    torch.compile(model, backend=fxcache.backend(policy="teacache"))
"""

from __future__ import annotations

import warnings
import weakref

import torch

from .passes.discover import discover, timestep_input
from .policies import POLICIES, Policy, Unsupported
from .runtime.executor import Runtime
from .runtime.instances import Instance
from .runtime.state import Clock
from .runtime.stats import DECISION_LOG
from .runtime.variants import inner_compile

DEFAULT_POLICY = "fbcache"
COMPILERS = ("inductor", "eager")

# Runtimes alive, so that fxcache.stats(model) can find the instances of `model` in them.
_RUNTIMES: "weakref.WeakSet[Runtime]" = weakref.WeakSet()
_PLAIN_GRAPHS: list[dict] = []  # graphs compiled without caching, for explain()
_WARNED: set[str] = set()


def parse_options(options: dict | None) -> tuple[Policy, dict]:
    """Validate options; return the policy and the engine settings. Errors name the option and what is accepted."""
    options = dict(options or {})
    name = options.pop("policy", DEFAULT_POLICY)
    if name not in POLICIES:
        raise ValueError(f"fxcache: unknown policy {name!r}; choose one of: {', '.join(sorted(POLICIES))}")
    compiler = options.pop("compiler", "inductor")
    if compiler not in COMPILERS:
        raise ValueError(f"fxcache: option 'compiler' must be one of {COMPILERS}, got {compiler!r}")
    num_steps = options.pop("num_steps", None)
    if num_steps is not None and (not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1):
        raise ValueError(f"fxcache: option 'num_steps' must be a positive int or None, got {num_steps!r}")
    max_variants = options.pop("max_variants", 16)
    if not isinstance(max_variants, int) or isinstance(max_variants, bool) or max_variants < 2:
        raise ValueError(f"fxcache: option 'max_variants' must be an int >= 2, got {max_variants!r}")
    decision_log = options.pop("decision_log", DECISION_LOG)
    if not isinstance(decision_log, int) or isinstance(decision_log, bool) or decision_log < 0:
        raise ValueError(f"fxcache: option 'decision_log' (decision records kept per model) must be an int >= 0, "
                         f"got {decision_log!r}")
    policy = POLICIES[name](**options)
    return policy, {"compiler": compiler, "num_steps": num_steps, "max_variants": max_variants,
                    "decision_log": decision_log}


def fxcache_backend(gm: torch.fx.GraphModule, example_inputs, options: dict | None = None, **_):
    policy, engine = parse_options(options)
    d = discover(gm, example_inputs)
    reason = None
    if d is None:
        reason = "no list of repeated transformer blocks in this graph"
    else:
        try:
            policy.bind(d)
        except Unsupported as e:
            reason = f"policy {policy.name!r} cannot be used here: {e}"
    if reason is not None:
        if policy.name != "none" and reason not in _WARNED:
            _WARNED.add(reason)
            warnings.warn(f"fxcache: {reason}; compiling it without caching", stacklevel=2)
        _PLAIN_GRAPHS.append({"reason": reason, "nodes": len(gm.graph.nodes), "params": _param_ids(example_inputs)})
        return _publishing_timestep(inner_compile(gm, example_inputs, engine["compiler"]), gm, example_inputs, d)
    runtime = Runtime(gm, d, policy, **engine)
    _RUNTIMES.add(runtime)
    return runtime


def _publishing_timestep(fn, gm, example_inputs, d):
    """A graph compiled plainly that takes the timestep (the part before a graph break, e.g. Lumina2's) tells it
    to the block graph that follows it in the same forward call (runtime.state.Clock)."""
    index = d.timestep if d is not None else timestep_input(gm, example_inputs)
    if index is None:
        return fn

    def run(*args):
        Clock.publish(args[index])
        return fn(*args)

    return run


def _param_ids(example_inputs) -> frozenset:
    return frozenset(id(x) for x in example_inputs if isinstance(x, torch.nn.Parameter))


def _reset() -> None:
    for r in list(_RUNTIMES):
        r.reset()
    _WARNED.clear()


fxcache_backend.reset = _reset  # torch._dynamo.reset() calls this


def backend(**options):
    """`torch.compile(m, backend=fxcache.backend(policy="teacache", threshold=0.1))`: the same backend as
    backend="fxcache" with options, as a callable. Options are validated here, at once."""
    parse_options(options)

    def fxcache(gm, example_inputs, **_):
        return fxcache_backend(gm, example_inputs, options=options)

    fxcache.reset = _reset
    return fxcache


def runtimes_of(model) -> list[Runtime]:
    """The cached graphs that `model` (the compiled module or the original one) has run."""
    return [r for r, _ in instances_of(model)]


def instances_of(model) -> list[tuple[Runtime, Instance]]:
    """(graph, this model's state in it) for every cached graph `model` has run: exact per model instance,
    although Dynamo shares graphs between instances of one class."""
    if isinstance(model, Runtime):
        return [(model, i) for i in model.instances.all()]
    module = getattr(model, "_orig_mod", model)
    ids = ({id(p) for p in module.parameters()} | {id(b) for b in module.buffers()}
           if isinstance(module, torch.nn.Module) else set())
    return [(r, i) for r in list(_RUNTIMES) for i in r.instances.owned_by(ids)]
