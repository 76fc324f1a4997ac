"""The cond half of a batched-CFG call: a second graph of the same model, traced at half the batch.

Batched-CFG pipelines (CogVideoX, Latte, PixArt, SD3) call the transformer once per step on `[uncond; cond]`.
FasterCache's CFG-Cache runs only the cond half there and rebuilds the uncond half. Dynamo's graph is static:
batch-size literals are baked into its views, so the cond half needs a graph of its own. The user must not have
to pass `dynamic=True` or change the pipeline, so the backend records, while Dynamo compiles the model's forward,
how to call it again (`HalfSource.from_dynamo`: the function Dynamo is tracing, the module, and where each argument
comes from: a graph input, or a constant Dynamo guards on). On the first half-batch step the runtime traces a copy
of that function (a fresh code object, so that Dynamo's cache and automatic-dynamic state for the user's model are
not touched) with the cond halves of the current inputs, statically, and discovers its blocks like any graph
(`HalfBatch`). Its variants take the parent graph's inputs by placeholder name, the tensors batched along dim 0
cut to their cond half; cached values from full-batch steps are read as their cond half too (diffusers' FasterCache
does the same).

Limits: the graph must be the whole forward of the model (no graph break before or inside it: the half graph is
traced with fullgraph=True), the model output one latent tensor, and every tensor argument either a graph input
or still alive. Where a limit is hit, FasterCache falls back to feature reuse only, with one warning.
"""

from __future__ import annotations

import threading
import types
import weakref

import torch
import torch.fx as fx

from ..passes.discover import Discovery, discover
from ..passes.nodes import example


class _Input:
    """A tensor argument read from the parent graph's input `index` at run time."""

    def __init__(self, index: int) -> None:
        self.index = index


class _Stale:
    """A tensor argument that is not a graph input (the graph does not read it): the tensor of the compiling call,
    held weakly."""

    def __init__(self, t: torch.Tensor) -> None:
        self.ref = weakref.ref(t)


def _source_path(source) -> tuple | None:
    """("name", key, key, ...) for a graph input reached from a frame local through items, or None."""
    keys = []
    while source is not None:
        name = type(source).__name__
        if name == "LocalSource":
            return (source.local_name, *reversed(keys))
        if name in ("GetItemSource", "DictGetItemSource"):
            keys.append(source.index)
            source = source.base
        else:
            return None
    return None


def _template(value, path: tuple, by_path: dict):
    if isinstance(value, torch.Tensor):
        i = by_path.get(path)
        return _Input(i) if i is not None else _Stale(value)
    if isinstance(value, dict):
        return {k: _template(v, (*path, k), by_path) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        out = [_template(v, (*path, k), by_path) for k, v in enumerate(value)]
        return out if isinstance(value, list) else tuple(out)
    return value


def _fill(t, args, cut):
    if isinstance(t, _Input):
        return cut(args[t.index])
    if isinstance(t, _Stale):
        v = t.ref()
        if v is None:
            raise LookupError("an argument of the first call that the graph does not read is gone")
        return cut(v)
    if isinstance(t, dict):
        return {k: _fill(v, args, cut) for k, v in t.items()}
    if isinstance(t, (list, tuple)):
        out = [_fill(v, args, cut) for v in t]
        return out if isinstance(t, list) else tuple(out)
    return t


class HalfSource:
    """How to call the model's forward again: recorded while Dynamo compiles it."""

    def __init__(self, fn, module, template: dict, varargs: str | None, varkw: str | None) -> None:
        self.fn, self.module, self.template, self.varargs, self.varkw = fn, weakref.ref(module), template, varargs, varkw

    @classmethod
    def from_dynamo(cls, gm: fx.GraphModule, d: Discovery) -> "HalfSource | str":
        """The source of the graph Dynamo is compiling now, or why there is none."""
        try:
            from torch._dynamo.symbolic_convert import InstructionTranslator

            tx = InstructionTranslator.current_tx()
            code, f_locals = tx.f_code, dict(tx.f_locals)
        except Exception as e:  # noqa: BLE001 - a private API: any failure means "not available"
            return f"Dynamo's frame is not readable here ({type(e).__name__})"
        module = f_locals.get("self")
        if not isinstance(module, torch.nn.Module):
            return "the graph is not traced from a module's forward"
        fn = type(module).forward
        while fn is not None and getattr(fn, "__code__", None) is not code:
            fn = getattr(fn, "__wrapped__", None)
        if fn is None:
            return (f"the graph is traced from {code.co_name}, not from {type(module).__name__}.forward "
                    f"(a graph break before the blocks?)")
        by_path = {}
        for i, p in enumerate(d.placeholders):
            arg = p.meta.get("grapharg")
            path = _source_path(getattr(arg, "source", None)) if arg is not None else None
            if path is not None:
                by_path[path] = i
        n = code.co_argcount + code.co_kwonlyargcount
        names = list(code.co_varnames[:n])
        varargs = code.co_varnames[n] if code.co_flags & 0x04 else None
        varkw = code.co_varnames[n + (varargs is not None)] if code.co_flags & 0x08 else None
        template = {}
        for name in names[1:] + [x for x in (varargs, varkw) if x]:
            if name not in f_locals:
                return f"argument {name!r} of the forward is not visible to Dynamo"
            template[name] = _template(f_locals[name], (name,), by_path)
        # A fresh code object: Dynamo keeps its cache and its record of seen sizes on the code object, and the
        # user's model must not see this trace in either.
        fresh = types.FunctionType(code.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        fresh.__kwdefaults__ = fn.__kwdefaults__
        return cls(fresh, module, template, varargs, varkw)

    def call(self, args, cut):
        """Trace the forward on the cut arguments; returns Dynamo's (graph, example inputs)."""
        module = self.module()
        if module is None:
            raise LookupError("the model that was compiled is gone")
        kwargs = {k: _fill(v, args, cut) for k, v in self.template.items()}
        star = kwargs.pop(self.varargs, ()) if self.varargs else ()
        more = kwargs.pop(self.varkw, {}) if self.varkw else {}
        got: list = []

        def capture(gm, example_inputs, **_):
            got.append((gm, list(example_inputs)))
            return gm.forward

        traced = torch.compile(self.fn, backend=capture, fullgraph=True, dynamic=False)
        with torch.no_grad():
            traced(module, *star, **kwargs, **more)
        if len(got) != 1:
            raise RuntimeError(f"Dynamo produced {len(got)} graphs")
        return got[0]


class HalfBatch:
    """The half-batch graph of one runtime, built on first use: its discovery, variants and input wiring."""

    def __init__(self, source: HalfSource, parent: Discovery) -> None:
        self.source, self.parent = source, parent
        self.discovery: Discovery | None = None
        self.variants = None
        self.arg_of: list[int] = []  # half graph input i -> parent graph input
        self.failed: str | None = None
        self.shapes: tuple = ()  # the input shapes it was traced at (dynamic=False: it serves only those)
        self._lock = threading.Lock()  # two threads meeting the first batched-CFG call trace it once

    def ready(self, args, batch: int, make_variants) -> bool:
        """Build the half graph if not done yet; False (with `failed` set) if it cannot be used."""
        if self.discovery is not None:
            return _shapes(args) == self.shapes
        with self._lock:
            return self._build(args, batch, make_variants)

    def why_not(self, args) -> str | None:
        if self.failed is not None:
            return self.failed
        if self.discovery is not None and _shapes(args) != self.shapes:
            return ("the input shapes differ from those it was traced at, the first batched-CFG call's (a "
                    "resolution or batch change under automatic dynamic shapes)")
        return None

    def _build(self, args, batch: int, make_variants) -> bool:
        if self.discovery is not None:
            return True
        if self.failed is not None:
            return False
        try:
            gm, example = self.source.call(args, lambda x: cut_batch(x, batch))
            d = discover(gm, example)
            self.failed = self._mismatch(d)
            if self.failed is None:
                index = {p.name: i for i, p in enumerate(self.parent.placeholders)}
                missing = [p.name for p in d.placeholders if p.name not in index]
                if missing:
                    self.failed = f"the half-batch graph has inputs the full one does not ({missing[0]})"
                else:
                    self.arg_of = [index[p.name] for p in d.placeholders]
                    self.shapes = _shapes(args)
                    self._lengths(d)
                    self.discovery, self.variants = d, make_variants(gm, d)
        except Exception as e:  # noqa: BLE001 - any failure: the runtime falls back to full batches
            self.failed = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        self.source = None if self.failed is None else self.source  # drop the template's references once built
        return self.failed is None

    def _mismatch(self, d: Discovery | None) -> str | None:
        p = self.parent
        if d is None:
            return "no block list in the half-batch graph"
        if d.num_units != p.num_units or set(d.modules) != set(p.modules):
            return "the half-batch graph has other blocks or modules than the full one"
        if len(d.nodes[-1].args[0]) != len(p.nodes[-1].args[0]):
            return "the half-batch graph has other outputs than the full one"
        return None

    def arg(self, i: int, x):
        """The parent's input for half-graph input `i`: its cond half where the half graph's is half as long."""
        return _cond_half(x, self._arg_len[i])

    def site(self, site, j: int, x):
        """Output j of a module or stream site as the half graph computes it (the cond half of a full-batch
        value; a stream's leading dimension is batch-major, as the blocks' inputs are)."""
        n = self._site_len.get((site, j))
        if n is None and isinstance(x, torch.Tensor) and x.ndim >= 1:
            n = x.shape[0] // 2
        return _cond_half(x, n)

    def _lengths(self, d: Discovery) -> None:
        # Leading lengths in the half graph: a batch-major leading dimension (batch, or batch x tokens as in
        # Latte's temporal blocks) is half as long there as in the full graph.
        def length(n):
            v = example(n)
            return v.shape[0] if isinstance(v, torch.Tensor) and v.ndim >= 1 else None

        self._arg_len = [length(p) for p in d.placeholders]
        self._site_len = {(site, j): length(o) for site, m in d.modules.items() for j, o in enumerate(m.outputs)}


def _shapes(args) -> tuple:
    return tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else None for a in args)


def _cond_half(x, n):
    if isinstance(x, torch.Tensor) and n is not None and x.ndim >= 1 and x.shape[0] == 2 * n:
        return x[n:]
    return x


def cut_batch(x, batch: int):
    """The cond half of a batched-CFG input: dim 0 of length `batch` cut to its second half."""
    if isinstance(x, torch.Tensor) and x.ndim >= 1 and x.shape[0] == batch:
        return x[batch // 2:]
    return x
