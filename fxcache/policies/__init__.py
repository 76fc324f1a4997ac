"""Policies: one file per method family. `POLICIES` maps every accepted name to its class."""

from .base import NoCache, Param, Policy, Unsupported
from .fbcache import FBCache
from .magcache import MagCache
from .teacache import DynamicCache, TeaCache

__all__ = ["POLICIES", "Param", "Policy", "Unsupported"]

POLICIES: dict[str, type[Policy]] = {
    "none": NoCache,
    "fbcache": FBCache,
    "teacache": TeaCache,
    "dynamiccache": DynamicCache,
    "magcache": MagCache,
}
