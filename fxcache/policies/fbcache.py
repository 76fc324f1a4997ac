"""First Block Cache (ParaAttention; diffusers `FirstBlockCache`): DBCache's F1B0 (dbcache.py) with FBCache's
defaults.

Every call runs the first block (probe) and compares its residual with the one from the last *computed* step
(relative L1). Below `threshold`, the remaining blocks are skipped and their cached residual is added instead;
otherwise they run and both residuals are cached. Default threshold 0.05 (diffusers), no warm-up, no limit on
cached steps. Where a model's first block changes the tensor layout (Latte's spatial block hands a temporal layout
to its temporal block), the "first block" is the first run of blocks whose output matches its input in shape.
"""

from __future__ import annotations

from .base import Param, non_negative
from .budget import warmup_param
from .dbcache import DBCache


class FBCache(DBCache):
    name = "fbcache"
    params = {
        **{k: p for k, p in DBCache.params.items() if k not in ("Fn", "Bn")},
        "threshold": Param(0.05, float, "relative L1 of the first block's residual below which the rest is reused",
                           non_negative, ">= 0", aliases=("residual_diff_threshold",)),
        "warmup_steps": warmup_param(0),
    }
    Fn, Bn = 1, 0
