"""Speculation: a probe (a plan that stops to let the policy decide) runs fused with its likely continuation
(`Plan.then`, the policy's guess) as ONE compiled variant. Where the decision is the guess, that was the whole
call; where it is not, the guess's writes are dropped and the decided continuation runs. The policy only says
what it would guess; the fused plans are made and kept here, by value."""

from __future__ import annotations

from ..plan import Plan

LIMIT = 64  # fused plans kept (probes made afresh with weights that change every step stay bounded)


def fusable(probe: Plan) -> bool:
    """A probe whose guessed continuation can run in the same variant: the guess measures nothing (what it would
    measure is read after the decision), runs on the whole batch and skips whole blocks only."""
    t = probe.then
    return (probe.stop is not None and t is not None and not t.measure and not t.half and not probe.half
            and t.start == probe.stop and t.stop is None
            and all(s.kind in ("residual", "stream") for s in t.reuse | t.forecast))


def fuse(probe: Plan) -> Plan:
    """The probe and its guessed continuation as one plan. Written sites of the guess are speculative: kept apart
    by the runtime until the decision confirms the guess."""
    t = probe.then
    return Plan(reuse=t.reuse, forecast=t.forecast, write=probe.write | t.write, measure=probe.measure,
                start=probe.start, emit_at=probe.stop, label=probe.label, coeffs=t.coeffs, peer=t.peer,
                scales=t.scales, window=t.window)


class Speculation:
    def __init__(self) -> None:
        self._fused: dict[Plan, tuple | None] = {}

    def fused(self, probe: Plan) -> tuple[Plan, tuple] | None:
        """(the fused plan, the scratch keys of the guess's own writes), or None where they cannot be fused."""
        hit = self._fused.get(probe, False)
        if hit is False:
            if len(self._fused) >= LIMIT:
                self._fused.clear()
            own = probe.then.write - probe.write
            hit = self._fused[probe] = (fuse(probe), (*own, *(("fin", s) for s in own))) if fusable(probe) else None
        return hit
