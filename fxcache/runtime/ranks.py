"""Every rank of a sharded model takes the same plan: a debug check (engine option `check_ranks`).

The values a decision reads are made global inside the variants (passes/collectives.py), so ranks agree by
construction. This check proves it at run time: before a plan runs (the policy's plan, and its decision after a
probe), every rank shares it with the others (one
`all_gather_object` per process group: slow, for debugging) and all of them raise the same error, naming the step,
the stream and each rank's plan, where one differs. Without it, ranks that disagree would wait in different
collectives until the process group times out.
"""

from __future__ import annotations

import torch.distributed as dist
from torch.distributed.distributed_c10d import _resolve_process_group


class RankCheck:
    def __init__(self, groups: tuple[str, ...]) -> None:
        self.groups = groups

    def agree(self, call, plan) -> None:
        mine = (call.step, call.stream, plan)  # compared by value (a Plan's sets print in a per-process order)
        for name in self.groups:
            group = _resolve_process_group(name)
            seen: list = [None] * dist.get_world_size(group)
            dist.all_gather_object(seen, mine, group=group)
            if any(s != mine for s in seen):
                ranks = "; ".join(f"rank {dist.get_global_rank(group, r)}: step {s[0]} stream {s[1]!r} "
                                  f"plan {_describe(s[2])}" for r, s in enumerate(seen))
                raise RuntimeError(f"fxcache (check_ranks): the ranks of process group {name!r} took different "
                                   f"plans at step {call.step} (stream {call.stream!r}): {ranks}")


def _describe(plan) -> str:
    sets = {k: sorted(map(str, getattr(plan, k))) for k in ("reuse", "forecast", "write", "measure")}
    return f"{plan.label!r} " + " ".join(f"{k}={v}" for k, v in sets.items() if v)
