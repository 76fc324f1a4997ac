"""The cond half of a batched-CFG call: a second graph of the same model, traced at half the batch, once per input
shapes.

FasterCache's CFG-Cache (and MixCache's cfg level) run only the cond half of a `[uncond; cond]` call and rebuild the
uncond half. Dynamo's graph bakes batch sizes into its views, so the runtime traces the model's forward again with
the cond halves of the call's inputs (fxcache/halfbatch_trace.py), statically, and discovers its blocks like any
graph. A static trace serves only the shapes it was traced at, so there is one per input shapes (`_Trace`), keyed
like a stream's shapes (`StreamState.shapes`: the shapes of the graph's tensor inputs that are not weights): a
generation at shapes A gives the same result whatever shapes ran before it. The `keep` most recently used traces
keep their compiled variants; older ones keep only their input wiring (a few integers, what a stream in flight
needs to store its values) and are traced again if their shapes come back.

Variants take the parent graph's inputs by placeholder name, the tensors batched along dim 0 cut to their cond half;
cached values from full-batch steps are read as their cond half too (diffusers' FasterCache does the same).

Limits: the graph must be the whole forward of the model (no graph break before or inside it: the half graph is
traced with fullgraph=True), the model output one latent tensor, and every tensor argument either a graph input
or still alive. Where a limit is hit, FasterCache falls back to feature reuse only, with one warning.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from ..halfbatch_trace import HalfSource  # noqa: F401 - re-exported: the backend builds one per graph
from ..passes.discover import Discovery, discover
from ..passes.nodes import is_param_like
from ..passes.nodes import example

KEEP = 4  # traces whose compiled variants are kept (distinct input shapes in use at once)
WIRINGS = 64  # traces whose input wiring is kept once their variants are dropped


class _Trace:
    """The half graph traced at one set of input shapes: its discovery, variants and input wiring."""

    def __init__(self, gm, d: Discovery, arg_of: list[int], make_variants) -> None:
        self.arg_of = arg_of  # half graph input i -> parent graph input
        # Leading lengths in the half graph: a batch-major leading dimension (batch, or batch x tokens as in
        # Latte's temporal blocks) is half as long there as in the full graph.
        self._arg_len = [_length(p) for p in d.placeholders]
        self._site_len = {(site, j): _length(o) for site, m in d.modules.items() for j, o in enumerate(m.outputs)}
        self.discovery, self.variants = d, make_variants(gm, d)

    def retire(self) -> None:
        """Drop the compiled variants (memory); the wiring stays for streams still storing values at these shapes."""
        self.discovery = self.variants = None

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


class HalfBatch:
    """The half-batch graphs of one runtime, one per input shapes, built on first use at those shapes."""

    def __init__(self, source: HalfSource, parent: Discovery, keep: int = KEEP) -> None:
        self.source, self.parent, self.keep = source, parent, keep
        self.failed: str | None = None
        self._user = [i for i, p in enumerate(parent.placeholders) if not is_param_like(p)]
        self._traces: OrderedDict[tuple, _Trace] = OrderedDict()  # most recently used last
        self._make_variants = None
        # Two threads meeting a batched-CFG call at new shapes trace it once; the table is shared by all threads.
        self._lock = threading.Lock()

    def key(self, args) -> tuple:
        """The shapes a trace serves: as `Streams.resolve` computes a stream's shapes."""
        return tuple(args[i].shape for i in self._user if isinstance(args[i], torch.Tensor))

    def ready(self, args, batch: int, make_variants) -> bool:
        """Build the half graph for these inputs' shapes if not done yet; False (with `failed` set) if it cannot be
        used."""
        with self._lock:
            self._make_variants = make_variants
            if self.failed is not None:
                return False
            return self._get(self.key(args), args, batch) is not None

    def why_not(self, args) -> str | None:
        return self.failed

    def at(self, shapes: tuple, args=None) -> _Trace:
        """The trace for a stream's `shapes` (readied at this generation's second call). With the call's `args`,
        one whose variants were dropped is traced again; without them its wiring is enough (storing values)."""
        with self._lock:
            trace = self._traces.get(shapes)
            if trace is not None and (trace.variants is not None or args is None):
                self._traces.move_to_end(shapes)
                return trace
            if args is None or self._make_variants is None:
                raise RuntimeError(f"fxcache: no half-batch graph was traced at input shapes {shapes} (more than "
                                   f"{WIRINGS} shapes in use at once?)")
            trace = self._get(shapes, args, args[self.parent.hidden].shape[0])
            if trace is None:
                raise RuntimeError(f"fxcache: the half-batch graph could not be traced again at input shapes "
                                   f"{shapes}: {self.failed}")
            return trace

    def _get(self, shapes: tuple, args, batch: int) -> _Trace | None:
        trace = self._traces.get(shapes)
        if trace is None or trace.variants is None:
            trace = self._build(args, batch)
            if trace is None:
                return None
            self._traces[shapes] = trace
        self._traces.move_to_end(shapes)
        live = [k for k, t in self._traces.items() if t.variants is not None]
        for k in live[:-self.keep]:
            self._traces[k].retire()
        while len(self._traces) > WIRINGS:
            self._traces.popitem(last=False)
        return trace

    def _build(self, args, batch: int) -> _Trace | None:
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
                    return _Trace(gm, d, [index[p.name] for p in d.placeholders], self._make_variants)
        except Exception as e:  # noqa: BLE001 - any failure: the runtime falls back to full batches
            self.failed = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        return None

    def _mismatch(self, d: Discovery | None) -> str | None:
        p = self.parent
        if d is None:
            return "no block list in the half-batch graph"
        if d.num_units != p.num_units or set(d.modules) != set(p.modules):
            return "the half-batch graph has other blocks or modules than the full one"
        if len(d.nodes[-1].args[0]) != len(p.nodes[-1].args[0]):
            return "the half-batch graph has other outputs than the full one"
        return None


def _length(n):
    v = example(n)
    return v.shape[0] if isinstance(v, torch.Tensor) and v.ndim >= 1 else None


def _cond_half(x, n):
    if isinstance(x, torch.Tensor) and n is not None and x.ndim >= 1 and x.shape[0] == 2 * n:
        return x[n:]
    return x


def cut_batch(x, batch: int):
    """The cond half of a batched-CFG input: dim 0 of length `batch` cut to its second half."""
    if isinstance(x, torch.Tensor) and x.ndim >= 1 and x.shape[0] == batch:
        return x[batch // 2:]
    return x
