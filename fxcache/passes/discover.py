"""Discovery: find the transformer blocks in a Dynamo graph and describe where work can be cached.

Pure analysis of a GraphModule; nothing is edited. The result, `Discovery`, names positions in the graph's node
order: a *unit* is one block (one index of a repeated ModuleList, plus any glue code the model's loop runs after it,
such as Latte's reshapes between spatial and temporal blocks); *cut k* is the position where unit k starts
(cut U is the end of the last unit). The *streams* live at a cut are the tensors carried from block to block
(hidden states; also the text stream of dual-stream MMDiT blocks). A residual *site* is a range of units whose
output streams match its input streams in shape, so it can be replaced by "input + cached residual".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from ..derived import lookup
from ..plan import Site, Stop
from . import symbolic
from .collectives import groups_of
from .frames import frame_layout
from .indicators import indicators
from .modules import find_module_sites
from .nodes import block_of, dtype, is_param_like, shape
from .streams import close_loop, streams_at


@dataclass
class Unit:
    list_name: str  # normalised path of the ModuleList, e.g. "transformer_blocks"
    index: int
    module_type: str
    start: int  # first node position (cut)
    stop: int  # one past the last node position, glue included


@dataclass
class Discovery:
    nodes: list[fx.Node]
    pos: dict[fx.Node, int]
    units: list[Unit]
    cuts: list[int]  # len(units) + 1
    streams: list[list[fx.Node]]  # per cut: the carried tensors live there, in matching order
    timestep: int | None  # placeholder index of the timestep input
    hidden: int | None  # placeholder index of the latent input
    encoder: int | None  # placeholder index of the text-embedding input
    indicators: dict[str, fx.Node] = field(default_factory=dict)
    last_use: dict[fx.Node, int] = field(default_factory=dict)
    placeholders: list[fx.Node] = field(default_factory=list)
    symbols: dict = field(default_factory=dict)  # size symbol -> where to read it (symbolic.size_symbols)
    modules: dict = field(default_factory=dict)  # Site -> ModuleSite: attention / MLP outputs inside blocks
    groups: tuple[str, ...] = ()  # process groups the graph's collectives span (context parallelism), by name
    _free: dict = field(default_factory=dict, repr=False)

    @property
    def num_units(self) -> int:
        return len(self.units)

    def block_lists(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for u in self.units:
            counts[u.list_name] += 1
        return dict(counts)

    def pairs(self, a: int, b: int) -> list[tuple[fx.Node, fx.Node]] | None:
        """(input, output) stream pairs of units [a, b), matched by shape and dtype in stream order. The output
        side may hold fewer streams (the text stream of MMDiT models is dead after the last block)."""
        if not (0 <= a < b <= self.num_units):
            return None
        free = list(self.streams[a])
        out = []
        for y in self.streams[b]:
            x = next((x for x in free if shape(x) == shape(y) and dtype(x) == dtype(y)), None)
            if x is None:
                return None
            free.remove(x)
            out.append((x, y))
        return out or None

    def residual_ok(self, a: int, b: int) -> bool:
        """Can units [a, b) be replaced by their cached residual? Every stream leaving the range must match one
        entering it, and nothing the range defines may be needed after it but those streams (this rules out
        long skip connections such as HunyuanDiT's) and size values any variant can recompute (`recomputable`)."""
        pairs = self.pairs(a, b)
        if pairs is None:
            return False
        lo, hi = self.cuts[a], self.cuts[b]
        allowed = {y for _, y in pairs}
        return all(n in allowed or self.last_use.get(n, -1) < hi or self.recomputable(n)
                   for n in self.nodes[lo:hi])

    def recomputable(self, n: fx.Node) -> bool:
        """Is `n` a size value (SymInt, number, x.size(); automatic dynamic shapes) that a variant can compute
        without the range defining it, from the graph's size inputs? Such a node never blocks a cut."""
        ok = self._free.get(n)
        if ok is None:
            ok = symbolic.is_size_value(n) and symbolic.free_symbols(n) <= set(self.symbols)
            if ok:
                try:  # a trial rebuild: every function in the expression has a handler
                    g = fx.Graph()
                    symbolic.build(g, n, lambda s: g.placeholder(str(s)))
                except Exception:  # noqa: BLE001 - not rebuildable: the node keeps the cut closed
                    ok = False
            self._free[n] = ok
        return ok

    def valid_cuts(self) -> list[int]:
        """Cuts 0 < c < U where the stack can be split into two valid residuals (every cut of most models;
        for Latte only those between spatial+temporal pairs)."""
        return [c for c in range(1, self.num_units)
                if self.residual_ok(0, c) and self.residual_ok(c, self.num_units)]

    def why_not_rebuildable(self) -> str | None:
        """Why the model output cannot be rebuilt from cached CFG bands (FasterCache's CFG-Cache, MixCache's "step"
        and "cfg"), or None if it can: the graph must return one latent tensor (rank >= 4, spatial dims last)."""
        out = self.nodes[-1].args[0]
        flat = list(out) if isinstance(out, (tuple, list)) else [out]
        if len(flat) != 1 or not isinstance(flat[0], fx.Node):
            return f"the model returns {len(flat)} values, not one latent"
        shp = shape(flat[0])
        if shp is None or len(shp) < 4:
            return "the model output is not a latent image or video (rank >= 4, spatial dimensions last)"
        return None

    def frame_layout(self, site: Site, stride: int, tokens_per_frame: int | None = None) -> tuple[int, int] | str:
        """Where a video's latent frames are in module site `site`'s outputs (passes/frames.py)."""
        return frame_layout(self, site, stride, tokens_per_frame)

    def first_residual_cut(self) -> int | None:
        """The first valid cut: the end of the 'first block' of FBCache (for Latte the first spatial+temporal
        pair)."""
        cuts = self.valid_cuts()
        return cuts[0] if cuts else None

    def snap(self, c: int, lo: int = 0, hi: int | None = None) -> int | None:
        """The cut in [lo, hi] nearest to `c` among 0, U and the valid cuts (ties go up): where a policy's
        block count (a range end, a front/back split) lands on a model whose blocks come in pairs."""
        hi = self.num_units if hi is None else hi
        cands = [x for x in [0, *self.valid_cuts(), self.num_units] if lo <= x <= hi]
        return min(cands, key=lambda x: (abs(x - c), -x)) if cands else None

    def position(self, stop: Stop) -> int:
        """Node position of a plan boundary."""
        if stop.kind == "cut":
            return self.cuts[stop.index]
        if stop.name not in self.indicators and lookup(stop.name) is not None:  # computed from the inputs only
            return next(i for i, n in enumerate(self.nodes) if n.op != "placeholder")
        return self.pos[self.indicators[stop.name]] + 1

    def site_ok(self, site: Site) -> bool:
        if site.kind in ("residual", "stream"):
            return self.residual_ok(site.start, site.stop)
        if site.kind == "indicator":
            return site.name in self.indicators or (lookup(site.name) is not None and self.hidden is not None)
        if site.kind == "module":
            return site in self.modules
        return False

    def latent_io(self) -> tuple[tuple | None, tuple | None]:
        """(shape of the latent input, shape of the model's one output; None where unknown or not one tensor)."""
        out = self.nodes[-1].args[0]
        flat = list(out) if isinstance(out, (tuple, list)) else [out]
        one = shape(flat[0]) if len(flat) == 1 and isinstance(flat[0], fx.Node) else None
        return (shape(self.placeholders[self.hidden]) if self.hidden is not None else None), one

    def live_at(self, p: int) -> list[fx.Node]:
        return [n for n in self.nodes[:p] if n.op != "placeholder" and self.last_use.get(n, -1) >= p]


def _placeholder_name(n: fx.Node) -> str:
    src = getattr(n, "_dynamo_source", None)
    return (src.name if src is not None and hasattr(src, "name") else n.name).lower()


def _find_input(placeholders, example, words, unless=()) -> int | None:
    for i, n in enumerate(placeholders):
        # Only tensors: under dynamic shapes the graph also takes sizes such as L['timestep'].size()[0].
        if isinstance(example[i], torch.nn.Parameter) or not isinstance(example[i], torch.Tensor):
            continue
        name = _placeholder_name(n)
        if any(w in name for w in words) and not any(u in name for u in unless):
            return i
    return None


def timestep_input(gm: fx.GraphModule, example_inputs) -> int | None:
    """Placeholder index of the timestep input of any graph (with or without blocks)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    return _find_input(placeholders, example_inputs, ("timestep", "sigma", "['t']"))


def discover(gm: fx.GraphModule, example_inputs) -> Discovery | None:
    """Describe `gm`, or return None when it holds no list of >= 2 repeated blocks."""
    nodes = list(gm.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((pos[u] for u in n.users), default=-1) for n in nodes}
    placeholders = [n for n in nodes if n.op == "placeholder"]

    # Group compute nodes by (list, index); keep lists with >= 2 indices of one module type.
    members: dict[tuple[str, int], list[int]] = defaultdict(list)
    types: dict[str, set] = defaultdict(set)
    for n in nodes:
        if n.op in ("placeholder", "output", "get_attr"):
            continue
        b = block_of(n)
        if b is not None:
            members[(b[0], b[1])].append(pos[n])
            types[b[0]].add(b[2])
    indices: dict[str, set] = defaultdict(set)
    for (lst, i) in members:
        indices[lst].add(i)
    lists = {lst for lst, idx in indices.items() if len(idx) >= 2 and len(types[lst]) == 1}
    # A repeated list nested inside another (e.g. ff.net.0 inside blocks.3) is not a block list.
    lists = {l for l in lists if not any(l != o and l.startswith(o + ".") for o in lists)}
    if not lists:
        return None
    spans = sorted((min(p), max(p), lst, i) for (lst, i), p in members.items() if lst in lists)
    for (s0, e0, *_), (s1, *_r) in zip(spans, spans[1:]):
        if s1 <= e0:  # interleaved ops of two blocks: cannot cut between them
            return None
    units = []
    for k, (s, e, lst, i) in enumerate(spans):
        nxt = spans[k + 1][0] if k + 1 < len(spans) else e + 1
        units.append(Unit(lst, i, next(iter(types[lst])), s, nxt))
    cuts = [u.start for u in units] + [units[-1].stop]

    streams = [streams_at(nodes, pos, last_use, units, cuts, k) for k in range(len(cuts))]
    close_loop(nodes, pos, last_use, units, cuts, streams)

    d = Discovery(nodes=nodes, pos=pos, units=units, cuts=cuts, streams=streams,
                  timestep=timestep_input(gm, example_inputs),
                  hidden=_find_input(placeholders, example_inputs, ("hidden_states", "sample", "latent", "['x']"),
                                     unless=("encoder",)),
                  encoder=_find_input(placeholders, example_inputs, ("encoder_hidden_states", "context", "prompt_embeds")),
                  last_use=last_use, placeholders=placeholders,
                  symbols=symbolic.size_symbols(placeholders, is_param_like),
                  groups=groups_of(nodes))
    d.indicators = indicators(d)
    d.modules = find_module_sites(d)
    return d
