"""Run one function on N local ranks (torch.distributed over gloo, 127.0.0.1, a free port), for the benchmarks and
the two-process tests, and never hang: every rank's process group has a timeout, the parent waits for each rank
with a deadline and ends every process it started.

    results = run_ranks(work, world=2, args=(...,), timeout_s=300)   # work(rank, world, *args) -> picklable

Also `enable_ulysses`: diffusers' context parallelism on a model, with the one workaround a CPU-only torch needs.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import queue
import socket
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass
class RankResult:
    rank: int
    ok: bool
    value: Any = None  # what `work` returned (ok) or its traceback (not ok)


class RanksFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, pg_timeout_s: float, threads: int, work: Callable, args: tuple,
               results) -> None:
    import torch.distributed as dist

    torch.set_num_threads(threads)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=pg_timeout_s))
        value = work(rank, world, *args)
        # Pickled here, by value: a tensor sent through the queue as shared memory dies with this process.
        results.put(pickle.dumps(RankResult(rank, True, value)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        results.put(pickle.dumps(RankResult(rank, False, traceback.format_exc())))
    finally:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


def run_ranks(work: Callable, world: int = 2, args: tuple = (), timeout_s: float = 600, pg_timeout_s: float = 120,
              threads: int | None = None, check: bool = True) -> list[RankResult]:
    """`work(rank, world, *args)` on `world` spawned processes; their results in rank order. A rank that does not
    report within `timeout_s` is killed and counts as failed; with `check`, any failure raises `RanksFailed` with
    every failed rank's traceback. `work` must be importable (a module-level function)."""
    import torch.multiprocessing as mp

    threads = threads or max(1, (os.cpu_count() or 1) // world)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, pg_timeout_s, threads, work, args, results),
                         daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    got: dict[int, RankResult] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < world:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                r = pickle.loads(results.get(timeout=min(left, 1.0)))
                got[r.rank] = r
            except queue.Empty:
                if all(not p.is_alive() for p in procs) and results.empty():
                    break  # every process ended; whoever did not report died without a word
    finally:
        for p in procs:
            p.join(timeout=max(0.0, min(10.0, deadline - time.monotonic())))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=10)
    out = [got.get(r, RankResult(r, False, f"rank {r} did not report within {timeout_s:.0f} s (killed)"))
           for r in range(world)]
    if check and not all(r.ok for r in out):
        raise RanksFailed("\n".join(f"--- rank {r.rank}:\n{r.value}" for r in out if not r.ok))
    return out


def enable_ulysses(model: torch.nn.Module, degree: int) -> torch.nn.Module:
    """`model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=degree))` with the `native` attention
    backend (the one that runs Ulysses on the CPU). Workaround: diffusers 0.42.1 picks the device as
    `rank % torch.accelerator.device_count()`, a ZeroDivisionError on a CPU-only torch; there the count reads 1
    for the duration of the call (newer diffusers no longer compute it).

    And for `fullgraph=True`: the hooks log through `Logger.warning_once` (added to `logging.Logger` by
    transformers), which Dynamo cannot trace; it is added to Dynamo's ignored logger methods."""
    import logging

    from diffusers import ContextParallelConfig

    warning_once = getattr(logging.Logger, "warning_once", None)
    if warning_once is not None:
        torch._dynamo.config.ignore_logger_methods.add(warning_once)

    model.set_attention_backend("native")
    count = torch.accelerator.device_count
    if count() == 0:
        torch.accelerator.device_count = lambda: 1
    try:
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=degree))
    finally:
        torch.accelerator.device_count = count
    return model
