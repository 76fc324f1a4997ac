"""Symbolic sizes in a Dynamo graph: values any piece can recompute.

After a second resolution or batch size, Dynamo's automatic dynamic shapes recompile the model with symbolic sizes:
the graph takes SymInt inputs (`s78`) and computes size expressions (`mul_7 = s78 * 2`, `12*(s18//2)`), some of
them inside block 0 and read by every later block. Such a node is not work a cache could save, and it must not stop a
cut from being cached: a variant that skips the block defining it copies the node (when its inputs are at hand) or
rebuilds its value from its sympy expression in terms of the graph's size inputs (`build`).
"""

from __future__ import annotations

import math
import operator

import sympy
import torch
import torch.fx as fx
from torch.utils._sympy.interp import sympy_interp
from torch.utils._sympy.reference import PythonReferenceAnalysis

from .nodes import example

_SYM = (torch.SymInt, torch.SymFloat, torch.SymBool)
_SCALAR = _SYM + (int, float, bool)


def is_size_value(n: fx.Node) -> bool:
    """Whether `n` computes a size-like value: a SymInt / SymFloat / SymBool, a plain number, or a tuple of those
    (`x.size()`). Tensors, and nodes without an example value, are not."""
    if n.op in ("placeholder", "output"):
        return False
    v = example(n)
    if isinstance(v, (tuple, list)):  # torch.Size is a tuple
        return len(v) > 0 and all(isinstance(e, _SCALAR) for e in v)
    return isinstance(v, _SCALAR)


def size_symbols(placeholders: list[fx.Node], is_param) -> dict[sympy.Symbol, tuple]:
    """Where each size symbol of the graph can be read: ("arg", placeholder) for a SymInt input (Dynamo lifts the
    symbols it uses as inputs), else ("size", placeholder, dim) for a dimension of a user input tensor."""
    found: dict[sympy.Symbol, tuple] = {}
    for ph in placeholders:
        v = example(ph)
        if isinstance(v, _SYM) and isinstance(v.node.expr, sympy.Symbol):
            found.setdefault(v.node.expr, ("arg", ph))
    for ph in placeholders:
        v = example(ph)
        if isinstance(v, torch.Tensor) and not is_param(ph):
            for dim, s in enumerate(v.shape):
                if isinstance(s, torch.SymInt) and isinstance(s.node.expr, sympy.Symbol):
                    found.setdefault(s.node.expr, ("size", ph, dim))
    return found


def _call(fn, *args):
    """fn(*args), recorded in the graph when an argument is a graph value."""
    proxy = next((a for a in args if isinstance(a, fx.Proxy)), None)
    if proxy is None:
        return fn(*args)
    return proxy.tracer.create_proxy("call_function", fn, args, {})


class _ToGraph(PythonReferenceAnalysis):
    """sympy -> FX: the reference analysis records Python operators on proxies; these are the handlers that would
    branch on their (symbolic) arguments instead."""

    @staticmethod
    def int_truediv(a, b):
        return _call(operator.truediv, a, b)

    @staticmethod
    def truediv(a, b):
        return _call(operator.truediv, a, b)

    @staticmethod
    def floor_to_int(x, dtype):
        return _call(math.floor, x)

    @staticmethod
    def ceil_to_int(x, dtype):
        return _call(math.ceil, x)

    @staticmethod
    def trunc_to_int(x, dtype):
        return _call(math.trunc, x)


def free_symbols(n: fx.Node) -> set:
    v = example(n)
    out: set = set()
    for e in (v if isinstance(v, (tuple, list)) else (v,)):
        if isinstance(e, _SYM):
            out |= e.node.expr.free_symbols
    return out


def build(g: fx.Graph, n: fx.Node, symbol_value) -> object:
    """Emit into `g` the computation of size node `n`'s value from its sympy expression. `symbol_value(sym)` gives
    the variant's node holding that symbol. Returns a node, a Python number, or a tuple of those."""
    tracer = fx.proxy.GraphAppendingTracer(g)

    def one(v):
        if not isinstance(v, _SYM):
            return v
        expr = v.node.expr
        if expr.is_number:
            return {torch.SymInt: int, torch.SymFloat: float}.get(type(v), bool)(expr)
        env = {s: fx.Proxy(symbol_value(s), tracer) for s in expr.free_symbols}
        r = sympy_interp(_ToGraph, env, expr)
        return r.node if isinstance(r, fx.Proxy) else r

    v = example(n)
    if isinstance(v, (tuple, list)):
        return tuple(one(e) for e in v)
    return one(v)
