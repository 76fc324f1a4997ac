"""The non-finite guard: no NaN or inf ever stays in a cache.

Every written site comes with a finiteness flag computed inside the variant. The flags are read with the
distances a probe reads anyway (one host read), or, for plans that reuse without probing, just before the first
reuse of what they flag. A site that was not finite is dropped (its stream starts over: the policy's next plan
computes, since `Call.cached` says nothing is held), and a non-finite distance reaches the policy as NaN, which
every policy treats as "compute".
"""

from __future__ import annotations

import math
import warnings

import torch

from .state import StreamState


class NonFiniteGuard:
    def __init__(self) -> None:
        self._warned = False

    def settle(self, st: StreamState, sites, inst) -> bool:
        """Read the pending flags of `sites` (one read). If any is not finite, the stream starts over: its cache is
        cleared and the caller makes its policy state anew. Returns whether it started over."""
        flags = torch.stack([st.pending.pop(s) for s in sites]).tolist()
        bad = [s for s, ok in zip(sites, flags) if not ok]
        if not bad:
            return False
        self.poisoned(st, bad, inst)
        st.cache.clear()
        st.pending.clear()
        return True

    def read(self, st: StreamState, keys, vector: torch.Tensor, measured: dict, inst) -> None:
        """One host read for the policy's distances (`vector`, in the order of `keys`) and this stream's pending
        finiteness flags; fills `measured` (NaN for every distance where a flag or the distance is not finite)."""
        flagged = list(st.pending)
        if flagged:
            vector = torch.cat([vector, torch.stack([st.pending.pop(s) for s in flagged]).float()])
        got = vector.tolist()
        bad = [s for s, ok in zip(flagged, got[len(keys):]) if not ok]
        for key, v in zip(keys, got):
            measured[key] = v if math.isfinite(v) and not bad else math.nan
        if bad:
            self.poisoned(st, bad, inst)
            for s in bad:
                st.drop(s)

    def poisoned(self, st: StreamState, sites, inst) -> None:
        with inst.lock:
            inst.stats.not_cached += len(sites)
        if not self._warned:
            self._warned = True
            warnings.warn(f"fxcache: a computed step of stream {st.name!r} produced non-finite values (NaN or inf) "
                          f"in {', '.join(map(str, sites))}; they were not cached and the next step computes "
                          f"(warned once; fxcache.stats(model).not_cached counts them)", stacklevel=4)
