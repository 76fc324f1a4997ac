"""Tracing the cond half of a batched-CFG call: how to call the model's forward again, recorded while Dynamo
compiles it (`HalfSource.from_dynamo`), and the re-trace itself (`HalfSource.call`).

Batched-CFG pipelines (CogVideoX, Latte, PixArt, SD3) call the transformer once per step on `[uncond; cond]`.
Dynamo's graph is static: batch-size literals are baked into its views, so the cond half needs a graph of its own.
The user must not have to pass `dynamic=True` or change the pipeline, so the backend records the function Dynamo is
tracing, the module, and where each argument comes from (a graph input, or a constant Dynamo guards on). The
runtime (runtime/halfbatch.py) traces a copy of that function with the cond halves of a call's inputs, statically,
once per input shapes it meets.
"""

from __future__ import annotations

import types
import weakref

import torch
import torch.fx as fx

from .passes.discover import Discovery


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
        self.fn, self.module, self.template = fn, weakref.ref(module), template
        self.varargs, self.varkw = varargs, varkw

    @classmethod
    def from_dynamo(cls, gm: fx.GraphModule, d: Discovery) -> "HalfSource | str":
        """The source of the graph Dynamo is compiling now, or why there is none."""
        try:
            # Deferred: a private Dynamo API, whose absence must only mean "no half-batch graph".
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
        return cls(fn, module, template, varargs, varkw)

    def _fresh(self):
        # A fresh code object per trace: Dynamo keeps its cache, its recompile count and its record of seen sizes
        # on the code object; the user's model must not see these traces, nor one trace the others.
        fn = self.fn
        fresh = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__,
                                   fn.__closure__)
        fresh.__kwdefaults__ = fn.__kwdefaults__
        return fresh

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

        traced = torch.compile(self._fresh(), backend=capture, fullgraph=True, dynamic=False)
        with torch.no_grad():
            traced(module, *star, **kwargs, **more)
        if len(got) != 1:
            raise RuntimeError(f"Dynamo produced {len(got)} graphs")
        return got[0]
