"""CUDA graphs per variant (runtime/cudagraphs.py). The GPU tests skip where no CUDA device is present; the CPU tests
check that the CPU path never wraps a variant nor touches a CUDA API, and that the option is validated."""

from __future__ import annotations

import warnings

import pytest
import torch

import fxcache
from fxcache.runtime.cudagraphs import Graphed

from .loop import denoise
from .test_engine import compile_
from .zoo import ZOO

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CUDA graphs)")


def test_cudagraphs_option_is_validated():
    with pytest.raises(ValueError, match="option 'cudagraphs' must be True"):
        fxcache.backend(policy="fbcache", cudagraphs="on")


def test_cpu_path_wraps_nothing_and_touches_no_cuda_api(monkeypatch):
    entry = ZOO["wan"]
    model = entry.build()

    def refusing(name):
        def refuse(*a, **k):
            raise AssertionError(f"torch.cuda.{name} was called on the CPU path")

        return refuse

    for name in ("Stream", "CUDAGraph", "graph", "current_stream", "synchronize", "set_sync_debug_mode"):
        monkeypatch.setattr(torch.cuda, name, refusing(name))
    torch._dynamo.reset()
    cm = compile_(model, policy="fbcache", threshold=0.2)
    denoise(cm, entry, steps=6)
    (runtime,) = fxcache.runtimes_of(cm)
    assert runtime.variants._entries and not any(isinstance(fn, Graphed) for _, fn in runtime.variants._entries.values())


# --------------------------------------------------------------------------------------------------------- GPU


def _cuda_model(name="wan"):
    entry = ZOO[name]
    return entry, entry.build().cuda()


def _cuda_loop(model, entry, steps, **options):
    """denoise() on CUDA: the zoo's CPU inputs moved to the device each call."""
    class OnDevice(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, **kw):
            return self.m(**{k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in kw.items()})

    return denoise(OnDevice(model), entry, steps=steps)


@GPU
@pytest.mark.parametrize("options", [{"policy": "none"}, {"policy": "fbcache", "threshold": 0.2},
                                     {"policy": "fora", "interval": 2}, {"policy": "teacache", "threshold": 0.3}])
def test_graphs_equal_the_non_graph_path(options):
    entry, model = _cuda_model()
    outs = {}
    for graphs in (False, True):
        torch._dynamo.reset()
        cm = compile_(model, compiler="inductor", cudagraphs=graphs, **options)
        outs[graphs] = _cuda_loop(cm, entry, 10)
        runtime = fxcache.runtimes_of(cm)[0]
        wrapped = [fn for _, fn in runtime.variants._entries.values() if isinstance(fn, Graphed)]
        assert bool(wrapped) == graphs
        if graphs:
            assert all(fn.captures and not fn.failed for fn in wrapped) and sum(fn.replays for fn in wrapped) > 0
    torch.testing.assert_close(outs[True], outs[False], rtol=1e-4, atol=1e-5)


@GPU
def test_capture_once_and_buffers_stay():
    entry, model = _cuda_model()
    torch._dynamo.reset()
    cm = compile_(model, compiler="inductor", policy="fbcache", threshold=1e9)
    _cuda_loop(cm, entry, 4)
    runtime = fxcache.runtimes_of(cm)[0]
    graphs = {k: fn for k, (_, fn) in runtime.variants._entries.items() if isinstance(fn, Graphed)}
    before = {k: [(id(c.graph), [b.data_ptr() for b in c.buffers if isinstance(b, torch.Tensor)])
                  for c in fn.captures.values()] for k, fn in graphs.items()}
    _cuda_loop(cm, entry, 4)  # a second generation: replays, no capture
    after = {k: [(id(c.graph), [b.data_ptr() for b in c.buffers if isinstance(b, torch.Tensor)])
                 for c in fn.captures.values()] for k, fn in graphs.items()}
    assert before == after
    assert all(fn.replays > 0 for fn in graphs.values())


def _syncs_per_call(cm, entry, steps):
    """Host syncs of each model call, counted by torch's sync debug mode (one warning per synchronising call)."""
    counts = []

    class Counting(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, **kw):
            kw = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    out = self.m(**kw)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            counts.append(sum("synchroniz" in str(w.message) for w in caught))
            return out

    denoise(Counting(cm), entry, steps=steps)
    return counts


@GPU
def test_host_syncs_per_step():
    """The design's count (README "GPU path"): a probing call reads its decision once, and the timestep once when
    it is a CUDA tensor not seen at the previous call; a schedule call reads only that timestep. The zoo loop
    hands each call a fresh CUDA timestep, so the cond call of each step reads it and the uncond call does not."""
    entry, model = _cuda_model()
    torch._dynamo.reset()
    cm = compile_(model, compiler="inductor", policy="fbcache", threshold=0.2)
    probing = _syncs_per_call(cm, entry, 8)[4:]
    torch._dynamo.reset()
    cm = compile_(model, compiler="inductor", policy="fora", interval=2)
    schedule = _syncs_per_call(cm, entry, 8)[4:]
    assert max(probing) <= 2 and max(schedule) <= 2, (probing, schedule)
