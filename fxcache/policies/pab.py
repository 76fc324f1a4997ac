"""Pyramid Attention Broadcast (VideoSys `pab_mgr.py`; diffusers `PyramidAttentionBroadcastConfig`).

Each attention type has a broadcast range: inside the timestep window (lo, hi), an attention output is computed on
every `range`-th call of its stream and the last computed output is reused (broadcast) on the others; outside the
window, and on a stream's first call, it is computed. The pyramid is cross > temporal > spatial. What is cached
is the attention module's own output (diffusers' choice; VideoSys caches it after the gate).

Defaults: VideoSys's per-model settings where the family is known (Latte 2/3/6 in (100, 800); CogVideoX 2/-/- in
(100, 850)), else VideoSys's pyramid 2/4/6 with diffusers' window (100, 800) (diffusers itself leaves every range
off by default). `None` turns an attention type off. Timesteps are on the 0-1000 scale (models that pass t in
[0, 1], like Flux, are rescaled). VideoSys's optional MLP broadcast is not implemented.
"""

from __future__ import annotations

from ..families import family
from ..passes.modules import sites_with
from ..plan import Plan
from .base import Param, Policy, Unsupported
from .schedule import Schedule, window_ok

PRESETS = {  # family -> (spatial, temporal, cross, window)
    "latte": (2, 3, 6, (100.0, 800.0)),
    "cogvideox-2b": (2, None, None, (100.0, 850.0)),
    "cogvideox-5b": (2, None, None, (100.0, 850.0)),
}
GENERIC = (2, 4, 6, (100.0, 800.0))
_AUTO = -1


class PAB(Policy):
    name = "pab"
    block_level = True
    params = {
        "spatial_range": Param(_AUTO, int, "broadcast range of spatial self-attention (None: off; -1: preset)",
                               lambda v: v == _AUTO or v >= 1, ">= 1, None or -1 (preset)", optional=True),
        "temporal_range": Param(_AUTO, int, "broadcast range of temporal self-attention",
                                lambda v: v == _AUTO or v >= 1, ">= 1, None or -1 (preset)", optional=True),
        "cross_range": Param(_AUTO, int, "broadcast range of cross-attention",
                             lambda v: v == _AUTO or v >= 1, ">= 1, None or -1 (preset)", optional=True),
        "window": Param(None, (list, tuple), "timestep window (lo, hi) where attention is broadcast (None: preset)",
                        window_ok, "(lo, hi) with lo < hi, or None", optional=True),
    }

    def bind(self, d) -> None:
        preset = PRESETS.get(family(d), GENERIC)
        ranges = {}
        for key, role, temporal, value in (("spatial_range", "attn", False, preset[0]),
                                           ("temporal_range", "attn", True, preset[1]),
                                           ("cross_range", "cross", None, preset[2])):
            r = getattr(self, key)
            r = value if r == _AUTO else r
            setattr(self, key, r)
            if r is not None:
                sites = frozenset(sites_with(d, (role,), temporal))
                if sites:
                    ranges[sites] = r
        self.window = tuple(self.window) if self.window is not None else preset[3]
        if not ranges:
            raise Unsupported("no attention module of a broadcast type found inside the blocks")
        # Each attention type is computed on every r-th call of its stream inside the window (the first call too).
        self.schedules = {sites: Schedule(r, warmup=1, window=self.window) for sites, r in ranges.items()}
        self.all_sites = frozenset().union(*ranges)
        self.any_site = min(self.all_sites, key=str)

    def plan(self, call, state) -> Plan:
        reuse = frozenset()
        if call.cached(self.any_site):
            reuse = reuse.union(*(sites for sites, s in self.schedules.items() if not s.due(call.index, call.t)))
        return Plan(reuse=reuse, write=self.all_sites - reuse, label="broadcast" if reuse else "full")
