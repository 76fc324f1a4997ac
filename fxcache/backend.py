"""The Dynamo entry point: options -> discover -> Runtime; plain compilation with one warning when the graph has
no block list or the policy cannot use it.

    torch.compile(model, backend="fxcache", options={"policy": "fbcache", "threshold": 0.08})
    torch.compile(model, backend=fxcache.backend(policy="teacache"))
"""

from __future__ import annotations

import inspect
import threading
import warnings
import weakref
from collections.abc import Mapping

import torch

from . import calibration as calibration_file
from .errors import option_error
from .passes.collectives import hoist_shards
from .passes.discover import discover, timestep_input
from .policies import POLICIES, Policy, Unsupported
from .runtime.runtime import Runtime
from .runtime.halfbatch import HalfBatch, HalfSource
from .runtime.instances import Instance
from .runtime.persample import PerSample
from .runtime.rowgraph import RowGraphs
from .runtime.state import Clock
from .runtime.stats import DECISION_LOG
from .runtime.variants import inner_compile

# The policy and settings used when `options` names no policy: the fastest setting measured that keeps mean PSNR
# >= 35 dB and the worst clip >= 30 dB on the reference model at both 30 and 50 steps, with no calibration file,
# chosen on clips the benchmark does not report (bench/results/default-screen-heldout.log), then reported on the
# benchmark's (docs/results.md, "The default"). On other held-out seeds (2026-12-08,
# bench/results/default-screen-2026-12-08-wan.log) its worst clip fell to 25.0 / 19.1 dB at 30 / 50 steps on that
# model (it held on the Flux model): choosing it again is issue 25's. Options given without a policy override it.
DEFAULT_POLICY = "fbcache"
DEFAULT_OPTIONS = {"threshold": 0.06, "forecast": "taylor"}
DEFAULT_WHY = ("fbcache with threshold 0.06 and an order-1 Taylor forecast of the skipped blocks' residual: the "
               "fastest calibration-free setting that kept mean PSNR >= 35 dB and the worst clip >= 30 dB on the "
               "held-out clips it was chosen on (reference model, 30 and 50 steps), though not on every held-out "
               "seed since; it needs no calibration, and a model it cannot probe "
               "(no first-block residual) compiles plainly with one warning")
COMPILERS = ("inductor", "eager")
# How a variant graph is compiled: whole (one Inductor graph: the least per-call cost), split per block
# (runtime/piecewise.py: compiled blocks shared across variants, the least compile time), or "auto": whole for
# policies whose variants skip at step granularity (a few variants), per block for block-level ones (many).
PIECEWISE = ("auto", True, False)

# Runtimes alive, so that fxcache.stats(model) can find the instances of `model` in them.
_RUNTIMES: "weakref.WeakSet[Runtime]" = weakref.WeakSet()
# The runtime of each distinct (graph, inputs, options): Dynamo compiles a frame once per thread that reaches it
# while no compiled code exists yet, so two threads starting two models at once get two identical graphs. One
# runtime for both keeps each instance's state in one place (instances_of would otherwise find two, one stale).
_BY_GRAPH: "weakref.WeakValueDictionary[tuple, Runtime]" = weakref.WeakValueDictionary()
_COMPILE_LOCK = threading.Lock()
_PLAIN_GRAPHS: list[dict] = []  # graphs compiled without caching, for explain()
_WARNED: set[str] = set()


def parse_options(options: Mapping | None) -> tuple[Policy, dict]:
    """Validate options; return the policy and the engine settings. Every error is an `OptionError` (a ValueError
    that Dynamo passes through unwrapped, see errors.py) naming the option and what is accepted."""
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise option_error(f"fxcache: options must be a dict such as {{'policy': {DEFAULT_POLICY!r}}}, "
                           f"got {type(options).__name__} {options!r}")
    options = dict(options)
    bad_keys = [k for k in options if not isinstance(k, str)]
    if bad_keys:
        raise option_error(f"fxcache: option names must be strings such as 'policy', got {bad_keys[0]!r}")
    calibration = options.pop("calibration", None)
    if calibration is not None:
        calibration = calibration_file.load(calibration)
    if "policy" not in options:  # a tuned calibration file (`python -m fxcache.tune`) names its own setting
        options = {**(calibration_file.tuned_options(calibration) or DEFAULT_OPTIONS), **options}
    name = options.pop("policy", DEFAULT_POLICY)
    if not isinstance(name, str) or name not in POLICIES:
        raise option_error(f"fxcache: unknown policy {name!r}; choose one of: {', '.join(sorted(POLICIES))}")
    compiler = options.pop("compiler", "inductor")
    if not isinstance(compiler, str) or compiler not in COMPILERS:
        raise option_error(f"fxcache: option 'compiler' must be one of {COMPILERS}, got {compiler!r}")
    num_steps = options.pop("num_steps", None)
    if num_steps is not None and (not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1):
        raise option_error(f"fxcache: option 'num_steps' must be a positive int or None, got {num_steps!r}")
    max_variants = options.pop("max_variants", 16)
    if not isinstance(max_variants, int) or isinstance(max_variants, bool) or max_variants < 2:
        raise option_error(f"fxcache: option 'max_variants' must be an int >= 2, got {max_variants!r}")
    piecewise = options.pop("piecewise", "auto")
    if piecewise not in PIECEWISE or isinstance(piecewise, int) and not isinstance(piecewise, bool):
        raise option_error(f"fxcache: option 'piecewise' must be one of {PIECEWISE}, got {piecewise!r}")
    speculate = options.pop("speculate", True)
    if not isinstance(speculate, bool):
        raise option_error(f"fxcache: option 'speculate' must be True or False, got {speculate!r}")
    cudagraphs = options.pop("cudagraphs", False)  # off until a GPU run passes tests/test_cudagraphs.py
    if not isinstance(cudagraphs, bool):
        raise option_error(f"fxcache: option 'cudagraphs' must be True (replay variants as CUDA graphs where the "
                           f"inputs are CUDA tensors) or False, got {cudagraphs!r}")
    decision_log = options.pop("decision_log", DECISION_LOG)
    if not isinstance(decision_log, int) or isinstance(decision_log, bool) or decision_log < 0:
        raise option_error(f"fxcache: option 'decision_log' (decision records kept per model) must be an int "
                           f">= 0, got {decision_log!r}")
    check_ranks = options.pop("check_ranks", False)
    if not isinstance(check_ranks, bool):
        raise option_error(f"fxcache: option 'check_ranks' (check that every rank of a sharded model took the same "
                           f"plan, a debug aid) must be True or False, got {check_ranks!r}")
    per_sample = options.pop("per_sample", True)
    if not isinstance(per_sample, bool):
        raise option_error(f"fxcache: option 'per_sample' must be True (each request of a batch decides alone: a "
                           f"batch row, or the rows given one id by fxcache.context(requests=...)) or False (the "
                           f"whole batch decides together), got {per_sample!r}")
    policy = POLICIES[name](**options)
    policy.configure(calibration)
    return policy, {"compiler": compiler, "num_steps": num_steps, "max_variants": max_variants,
                    "decision_log": decision_log, "piecewise": piecewise, "speculate": speculate,
                    "cudagraphs": cudagraphs, "check_ranks": check_ranks, "per_sample": per_sample}


def fxcache_backend(gm: torch.fx.GraphModule, example_inputs, options: dict | None = None, **_):
    try:
        policy, engine = parse_options(options)
    except ValueError as e:  # an OptionError: Dynamo re-raises it to the caller as it is (errors.py)
        e.first_useful_frame = inspect.currentframe()  # its traceback starts here, not in Dynamo's frames
        raise
    key = _graph_key(gm, example_inputs, options)
    with _COMPILE_LOCK:
        runtime = _BY_GRAPH.get(key)
        if runtime is None:
            runtime = _compile(gm, example_inputs, policy, engine)
            if isinstance(runtime, Runtime):
                _BY_GRAPH[key] = runtime
        return runtime


def _graph_key(gm: torch.fx.GraphModule, example_inputs, options) -> tuple:
    """What makes two graphs the same computation: their code, the metadata of their inputs, the options."""
    def meta(x):
        if isinstance(x, torch.Tensor):
            return ("T", tuple(map(str, x.shape)), tuple(map(str, x.stride())), x.dtype, x.device.type,
                    isinstance(x, torch.nn.Parameter))
        return (type(x).__name__, str(x) if isinstance(x, (torch.SymInt, torch.SymFloat, torch.SymBool)) else None)

    return gm.code, tuple(meta(x) for x in example_inputs), repr(sorted((options or {}).items()))


def _compile(gm, example_inputs, policy: Policy, engine: dict):
    d = discover(hoist_shards(gm), example_inputs)
    reason = None
    if d is None:
        reason = "no list of repeated transformer blocks in this graph"
    else:
        if policy.calibration is not None:  # a file profiled on another model is an error, not a fallback
            calibration_file.check_model(policy.calibration, d, calibration_file.traced_model_class(d))
        try:
            policy.bind(d)
        except Unsupported as e:
            reason = f"policy {policy.name!r} cannot be used here: {e}"
    if reason is not None:
        if policy.name != "none" and reason not in _WARNED:
            _WARNED.add(reason)
            warnings.warn(f"fxcache: {reason}; compiling it without caching", stacklevel=3)
        _PLAIN_GRAPHS.append({"reason": reason, "nodes": len(gm.graph.nodes), "params": _param_ids(example_inputs)})
        return _publishing_timestep(inner_compile(gm, example_inputs, engine["compiler"]), gm, example_inputs, d)
    engine = dict(engine)
    per_sample = engine.pop("per_sample", False)
    runtime = Runtime(gm, d, policy, **engine)
    source = HalfSource.from_dynamo(gm, d) if not d.groups else None
    if policy.batched_cfg and d.groups:
        runtime.why_no_half = ("the model is sharded over ranks (context parallelism), where the cond half is not "
                               "traced")
    elif policy.batched_cfg:
        if isinstance(source, HalfSource):
            runtime.half = HalfBatch(source, d)
        else:
            runtime.why_no_half = source
    if per_sample and policy.name != "none" and d.hidden is not None:
        why = ("the model is sharded over ranks (context parallelism)" if d.groups else
               "no timestep input reaches the block graph" if d.timestep is None else source)
        config = (policy.name, policy.describe(), engine["num_steps"])
        runtime.per_sample = PerSample(RowGraphs(why, d, gm), config)
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
    # Dynamo drops its compiled code: the runtimes are no model's any more, and fxcache.stats must not find them
    # (one may outlive the reset a while, held by Dynamo's wrapper of it).
    for r in list(_RUNTIMES):
        r.reset()
        _RUNTIMES.discard(r)
    _BY_GRAPH.clear()
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
