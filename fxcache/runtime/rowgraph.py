"""The model's graph for any subset of a batch's rows: traced again, dynamic in the batch dimension.

Per-request decisions (persample.py) run the rows that compute apart from the rows that reuse. Dynamo's graph of
the call is static (batch-size literals are baked into its views), so the model's forward is traced once more
with the batched inputs' dim 0 marked dynamic (`HalfSource`, which records how to call the forward again): one
graph whose compiled variants serve every row count, 1 to B. It is traced on two copies of row 0 (Dynamo
specialises sizes 0 and 1) and kept per input shapes without the batch dimension.

An input is batched when its dim 0 is the call's batch size; the same test picks the rows of a call's inputs at
run time (`inputs`). Values inside the graph are batched where their dim 0 is a multiple of the batch symbol
(`factor`): probe values are gathered by rows with it, and written sites split per request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import sympy
import torch

from ..halfbatch_trace import HalfSource
from ..passes.discover import Discovery, discover
from ..passes.nodes import example, is_param_like

KEEP = 4  # row graphs kept (distinct input shapes in use at once)


def batched_inputs(args, user: list[int], batch: int) -> tuple[bool, ...]:
    """For each user input of the parent graph: whether its dim 0 is the batch."""
    return tuple(isinstance(args[i], torch.Tensor) and args[i].ndim >= 1 and args[i].shape[0] == batch
                 for i in user)


def row_index(index: torch.Tensor, factor: int = 1) -> torch.Tensor:
    """Entries along dim 0 of rows `index` of a batch-major tensor holding `factor` entries per row."""
    if factor == 1:
        return index
    return (index[:, None] * factor + torch.arange(factor, device=index.device)).reshape(-1)


def rows_of(x: torch.Tensor, index: torch.Tensor, factor: int = 1) -> torch.Tensor:
    """Rows `index` of a batch-major tensor whose dim 0 holds `factor` entries per row, in `x`'s layout (compiled
    variants assert the strides they were compiled for: a probe's value may be a chunk of a wider tensor)."""
    index = row_index(index, factor)
    if x.stride(0) == 0:  # an expanded input (`t.expand(B)`): every row is the same
        return x[:1].expand(index.numel(), *x.shape[1:])
    return like(x, x.index_select(0, index.to(x.device)))


def like(ref: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`x` (rows of tensors laid out as `ref`) in `ref`'s strides, where dim 0 is `ref`'s outermost dimension."""
    if x.stride() == ref.stride() or x.ndim == 0:
        return x
    inner = max(((n - 1) * st for n, st in zip(ref.shape[1:], ref.stride()[1:])), default=0) + 1
    if ref.stride(0) < inner:
        return x
    out = torch.empty_strided(x.shape, ref.stride(), dtype=x.dtype, device=x.device)
    out.copy_(x)
    return out


def _canonical(size: torch.SymInt):
    """A size's expression with the shape environment's replacements applied: Dynamo gives each dynamic input its
    own symbol and records which are equal (the latent's batch and the text's) as replacements."""
    expr = size.node.expr
    env = getattr(size.node, "shape_env", None)
    try:
        return env.replace(expr) if env is not None else expr
    except Exception:  # noqa: BLE001 - a private API: the raw expression is the fallback
        return expr


class RowGraph:
    """One trace: its discovery, its variants, and how to build its inputs from the parent's."""

    def __init__(self, gm, d: Discovery, parent: Discovery, make_variants, batched: dict | None = None) -> None:
        index = {p.name: i for i, p in enumerate(parent.placeholders)}
        self.discovery = d
        # A graph traced here took contiguous inputs; Dynamo's own graph takes the call's layout (it guards on it)
        self.contiguous = d is not parent
        self._nodes = {n.name: n for n in d.nodes}
        hidden = example(d.placeholders[d.hidden]) if d.hidden is not None else None
        if not isinstance(hidden, torch.Tensor) or not isinstance(hidden.shape[0], torch.SymInt):
            raise RuntimeError("the latent's batch dimension did not stay symbolic")
        self.symbol = _canonical(hidden.shape[0])
        self.plan: list[tuple] = []  # per placeholder: ("arg", parent index, batched) | ("size", placeholder, dim)
        where = {}
        for k, p in enumerate(d.placeholders):
            v = example(p)
            if isinstance(v, torch.Tensor) and not is_param_like(p):
                for dim, s in enumerate(v.shape):
                    if isinstance(s, torch.SymInt):
                        where.setdefault(s.node.expr, (k, dim))
        for k, p in enumerate(d.placeholders):
            v = example(p)
            if isinstance(v, torch.SymInt):
                expr = v.node.expr
                if expr not in where:
                    raise RuntimeError(f"size input {p.name} ({expr}) is no tensor input's dimension")
                self.plan.append(("size", *where[expr]))
            elif p.name in index:
                # The inputs traced with a dynamic batch (`batched`, by parent index); else read from the sizes
                i = index[p.name]
                is_batched = (batched.get(i, False) if batched is not None else
                              isinstance(v, torch.Tensor) and v.ndim >= 1 and self.factor(v.shape[0]) == 1)
                self.plan.append(("arg", i, is_batched))
            else:
                raise RuntimeError(f"the row graph has an input the call's graph does not ({p.name})")
        self.variants = make_variants(gm, d)

    def factor(self, length) -> int | None:
        """Entries per row of a leading dimension `length` (a size of this graph), or None if not batch-major."""
        if not isinstance(length, torch.SymInt):
            return None
        q = sympy.simplify(_canonical(length) / self.symbol)
        return int(q) if q.is_Integer and q > 0 else None

    def val_factor(self, name: str) -> int | None:
        """Entries per row of the graph value `name` (a probe value), or None if it is not batched."""
        n = self._nodes.get(name)
        v = example(n) if n is not None else None
        return self.factor(v.shape[0]) if isinstance(v, torch.Tensor) and v.ndim >= 1 else None

    def inputs(self, args, rows: list[int], batch: int) -> list:
        """This graph's inputs for rows `rows` of the parent call's `args` (a batch of `batch` rows)."""
        index = None if rows == list(range(batch)) else torch.tensor(rows)
        out: list = []
        for entry in self.plan:
            if entry[0] == "arg":
                a = args[entry[1]]
                if entry[2] and index is not None:
                    a = rows_of(a, index)
                if entry[2] and self.contiguous:  # traced on contiguous inputs: compiled code assumes so
                    a = a.contiguous()
                out.append(a)
            else:
                out.append(None)
        for k, entry in enumerate(self.plan):
            if entry[0] == "size":
                out[k] = int(out[entry[1]].shape[entry[2]])
        return out


class RowGraphs:
    """The row graphs of one runtime, traced on first use per input shapes; None where the model cannot be traced
    again (`failed` says why)."""

    def __init__(self, source: HalfSource | str, parent: Discovery, parent_gm=None) -> None:
        self.source, self.parent, self.parent_gm = source, parent, parent_gm
        self.failed: str | None = source if isinstance(source, str) else None
        self._user = [i for i, p in enumerate(parent.placeholders) if not is_param_like(p)]
        self._graphs: OrderedDict[tuple, RowGraph | None] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, args, batch: int, make_variants) -> RowGraph | None:
        mask = batched_inputs(args, self._user, batch)
        key = (mask, tuple(tuple(args[i].shape[1:] if b else args[i].shape) if isinstance(args[i], torch.Tensor)
                           else None for i, b in zip(self._user, mask)))
        with self._lock:
            if key in self._graphs:
                self._graphs.move_to_end(key)
                return self._graphs[key]
            if isinstance(self.source, str):
                return None
            graph = self._build(args, batch, make_variants)
            self._graphs[key] = graph
            while len(self._graphs) > KEEP:
                self._graphs.popitem(last=False)
            return graph

    def _build(self, args, batch: int, make_variants) -> RowGraph | None:
        hidden = example(self.parent.placeholders[self.parent.hidden])
        mask = dict(zip(self._user, batched_inputs(args, self._user, batch)))
        if self.parent_gm is not None and isinstance(hidden.shape[0], torch.SymInt):
            # Dynamo's own graph is dynamic in the batch already (automatic dynamic shapes, after a second batch
            # size): it serves every row count as it is
            try:
                return RowGraph(self.parent_gm, self.parent, self.parent, make_variants, mask)
            except RuntimeError:
                pass
        def cut(x):
            if isinstance(x, torch.Tensor) and x.ndim >= 1 and x.shape[0] == batch:
                y = x[:1].expand(2, *x.shape[1:]).contiguous()
                torch._dynamo.mark_dynamic(y, 0)
                return y
            return x

        try:
            gm, example_inputs = self.source.call(args, cut)
            d = discover(gm, example_inputs)
            if d is None or d.num_units != self.parent.num_units or set(d.modules) != set(self.parent.modules):
                raise RuntimeError("the row graph has other blocks than the call's graph")
            if d.hidden is None:
                raise RuntimeError("no latent input found in the row graph")
            return RowGraph(gm, d, self.parent, make_variants, mask)
        except Exception as e:  # noqa: BLE001 - any failure: the runtime falls back to whole-batch decisions
            self.failed = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
            return None
