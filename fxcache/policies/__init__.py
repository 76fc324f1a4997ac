"""Policies: one file per method family. `POLICIES` maps every accepted name to its class."""

from .adacache import AdaCache
from .base import NoCache, Param, Policy, Unsupported
from .blockdance import BlockDance
from .dbcache import DBCache
from .deltadit import DeltaDiT
from .dynamiccache import DynamicCache
from .easycache import EasyCache
from .fastercache import FasterCache
from .fbcache import FBCache
from .fora import FORA
from .magcache import MagCache
from .mixcache import MixCache
from .pab import PAB
from .seacache import SeaCache
from .taylorseer import TaylorSeer
from .teacache import TeaCache
from .tgate import TGate

__all__ = ["POLICIES", "Param", "Policy", "Unsupported"]

POLICIES: dict[str, type[Policy]] = {
    "none": NoCache,
    "fbcache": FBCache,
    "teacache": TeaCache,
    "dynamiccache": DynamicCache,
    "magcache": MagCache,
    "adacache": AdaCache,
    "dbcache": DBCache,
    "fora": FORA,
    "pab": PAB,
    "taylorseer": TaylorSeer,
    "tgate": TGate,
    "deltadit": DeltaDiT,
    "blockdance": BlockDance,
    "fastercache": FasterCache,
    "mixcache": MixCache,
    "seacache": SeaCache,
    "easycache": EasyCache,
}
