"""The `Call` a policy sees (plan.py), filled in from the runtime's own state: the stream's step, the timestep on
the 0-1000 scale, the role of the call, what the stream holds, and, for joint policies, the step's decision."""

from __future__ import annotations

from ..plan import Call
from .state import Streams, StreamState

COND_OF = {"uncond": "cond", "stream1": "stream0"}  # an uncond stream -> the cond stream of the same step


def _t1000(st: StreamState, t: float | None) -> float | None:
    """The timestep on the 0-1000 scale of the published timestep windows: models that pass t in [0, 1] (Flux,
    SD3's sigmas) are rescaled, judged from the stream's first timestep."""
    if st.first_t is None:
        st.first_t = t
    if t is None:
        return None
    return t * 1000.0 if st.first_t is not None and st.first_t <= 1.0 else t


def _role(st: StreamState, streams: Streams) -> str:
    if st.paired and len(streams.states) == 1:
        return "batched"
    if st.name in COND_OF:
        return "uncond"
    if st.name in ("cond", "stream0"):
        return "only" if st.step >= 2 and len(streams.states) == 1 else "cond"
    return "other"


def make_call(st: StreamState, streams: Streams, policy, num_steps: int | None) -> Call:
    role = _role(st, streams)
    agreed = shared = None
    if policy.joint:
        joint = streams.joint
        if not joint.made:
            joint.shared, joint.made = policy.new_shared(), True
        agreed, shared = joint.agreed(st.step), joint.shared
    return Call(st.step, _t1000(st, streams.last_t), role, st.name, num_steps,
                peer=COND_OF.get(st.name) if role == "uncond" else None, generation=streams.generation,
                cache=st.cache, agreed=agreed, shared=shared)
