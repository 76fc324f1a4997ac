"""CUDA graphs per variant (runtime/cudagraphs.py). The GPU tests skip where no CUDA device is present; the CPU tests
check that the CPU path never wraps a variant nor touches a CUDA API, which inputs a capture copies and which it reads
in place (on the variants of a real runtime), and the bookkeeping of captures (keys, eviction, threads, fallbacks)
with a stand-in for the CUDA capture that replays by running the function on the capture's buffers."""

from __future__ import annotations

import gc
import threading
import warnings

import pytest
import torch

import fxcache
from fxcache.runtime import cudagraphs
from fxcache.runtime.constants import StaticConstants
from fxcache.runtime.cudagraphs import COPY, IN_PLACE, WEIGHT, GraphPool, Graphed, _Capture, input_kinds

from .loop import denoise
from .test_engine import compile_
from .zoo import ZOO

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CUDA graphs)")


def test_cudagraphs_option_is_validated_and_off_by_default():
    with pytest.raises(ValueError, match="option 'cudagraphs' must be True"):
        fxcache.backend(policy="fbcache", cudagraphs="on")
    entry = ZOO["wan"]
    torch._dynamo.reset()
    cm = compile_(entry.build(), policy="fbcache", threshold=0.2)
    denoise(cm, entry, steps=2)
    assert all(r.variants.graphs is None for r in fxcache.runtimes_of(cm))


def test_cpu_path_wraps_nothing_and_touches_no_cuda_api(monkeypatch):
    entry = ZOO["wan"]
    model = entry.build()

    def refusing(name):
        def refuse(*a, **k):
            raise AssertionError(f"torch.cuda.{name} was called on the CPU path")

        return refuse

    for name in ("Stream", "CUDAGraph", "graph", "graph_pool_handle", "current_stream", "synchronize",
                 "set_sync_debug_mode"):
        monkeypatch.setattr(torch.cuda, name, refusing(name))
    for options in ({"policy": "fbcache", "threshold": 0.2}, {"policy": "taylorseer"}):  # taylorseer: forecast weights
        torch._dynamo.reset()
        cm = compile_(model, cudagraphs=True, **options)
        denoise(cm, entry, steps=6)
        (runtime,) = fxcache.runtimes_of(cm)
        assert runtime.variants.graphs is not None
        entries = runtime.variants._entries.values()
        assert entries and not any(isinstance(fn, Graphed) for _, fn in entries)


def test_only_the_callers_inputs_are_copied():
    """On the variants of a real runtime: the model's user inputs are copied into static buffers, weights and the
    runtime's own buffers (cached values, forecast weights) are read in place."""
    entry = ZOO["wan"]
    torch._dynamo.reset()
    cm = compile_(entry.build(), policy="taylorseer")
    denoise(cm, entry, steps=8)
    (runtime,) = fxcache.runtimes_of(cm)
    d = runtime.discovery
    user = {d.hidden, d.timestep, d.encoder}
    seen = set()
    for variant, _ in runtime.variants._entries.values():
        for key, kind in zip(variant.inputs, input_kinds(variant.inputs, d.placeholders)):
            seen.add(key[0])
            if key[0] == "arg" and key[1] in user:
                assert kind == COPY, key
            elif key[0] == "arg" and "_parameters_" in d.placeholders[key[1]].name:
                assert kind == WEIGHT, key
            elif key[0] != "arg":
                assert kind == IN_PLACE, key
    assert {"arg", "cache", "coef"} <= seen, seen
    assert input_kinds([("something new",)], d.placeholders) == [COPY]  # unknown: copied, always correct


# ------------------------------------------------------------------------------------------- bookkeeping, faked

class _OnCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA: Graphed decides from `is_cuda` alone."""

    @property
    def is_cuda(self):
        return True


def cuda(t: torch.Tensor) -> torch.Tensor:
    return torch.Tensor._make_subclass(_OnCuda, t)


class _Pool(GraphPool):
    def order(self) -> None:
        pass


class _Fake(_Capture):
    """Replays by running the function on the capture's buffers, into the capture's output tensors."""

    made = 0

    def _record(self, fn, pool) -> None:
        type(self).made += 1
        self.fn = fn
        self.outputs = [o.clone() for o in fn(*self.buffers)]

    def _launch(self) -> None:
        for o, r in zip(self.outputs, self.fn(*self.buffers)):
            o.copy_(r)


def _fn(x, w, cached):  # a caller input, a weight, a runtime buffer
    return [x * w + cached]


def _graphed(keep=4, fn=_fn, capture=_Fake):
    _Fake.made = 0
    return Graphed(fn, [COPY, WEIGHT, IN_PLACE], "test", _Pool(), keep=keep, capture=capture)


def test_fake_replays_follow_inputs_copied_and_in_place():
    g = _graphed()
    w, cached = cuda(torch.tensor([2.0])), cuda(torch.tensor([1.0]))
    for k in range(4):
        x = cuda(torch.tensor([float(k)]))  # a new caller tensor every call
        cached.fill_(10.0 * k)  # the runtime's buffer, overwritten in place
        assert g(x, w, cached)[0].item() == 2.0 * k + 10.0 * k
    assert _Fake.made == 1 and g.replays == 4
    (capture,) = g.captures.values()
    assert capture.buffers[2] is cached and capture.buffers[0] is not x  # read in place / copied


def test_keys_shapes_instances_buffers_and_lru():
    g = _graphed(keep=3)
    w1, w2 = cuda(torch.ones(1)), cuda(torch.ones(1))
    cached = cuda(torch.zeros(1))
    for _ in range(3):  # two model instances, switching: one capture each, no recapture on a switch
        g(cuda(torch.ones(1)), w1, cached)
        g(cuda(torch.ones(1)), w2, cached)
    assert _Fake.made == 2
    g(cuda(torch.ones(2)), w1, cached)  # another shape
    assert _Fake.made == 3
    other = cuda(torch.zeros(1))  # the runtime's buffer moved (a new generation's cache)
    g(cuda(torch.ones(1)), w1, other)
    assert _Fake.made == 4 and len(g.captures) == 3  # LRU: the least recently used (w1 at shape 1) went
    g(cuda(torch.ones(1)), w2, cached)
    assert _Fake.made == 4  # still kept
    g(cuda(torch.ones(1)), w1, cached)
    assert _Fake.made == 5  # captured again
    del other
    gc.collect()
    g(cuda(torch.ones(3)), w1, cached)  # a capture drops those whose buffers are gone
    assert all(c.alive() for c in g.captures.values())


def test_moved_weights_recapture():
    g = _graphed()
    x, cached = cuda(torch.ones(1)), cuda(torch.zeros(1))
    w = [cuda(torch.ones(1)), cuda(torch.ones(1))]
    fn = lambda x, w0, w1, c: [x * w0 * w1 + c]  # noqa: E731
    g = Graphed(fn, [COPY, WEIGHT, WEIGHT, IN_PLACE], "test", _Pool(), capture=_Fake)
    _Fake.made = 0
    g(x, *w, cached)
    w[1] = cuda(torch.full((1,), 3.0))  # the second weight replaced; the first, the instance key, stays
    assert g(x, *w, cached)[0].item() == 3.0 and _Fake.made == 2 and len(g.captures) == 1


def test_captures_are_per_thread_and_go_with_their_thread():
    g = _graphed()
    w, cached = cuda(torch.ones(1)), cuda(torch.zeros(1))
    g(cuda(torch.ones(1)), w, cached)
    t = threading.Thread(target=lambda: g(cuda(torch.ones(1)), w, cached))
    t.start()
    t.join()
    del t
    gc.collect()
    assert _Fake.made == 2 and len(g.captures) == 1


def test_cpu_inputs_failures_and_thrash_run_the_function():
    g = _graphed()
    w, cached = cuda(torch.ones(1)), cuda(torch.zeros(1))
    assert g(torch.ones(1), w, cached)[0].item() == 1.0  # a CPU tensor among the inputs: never graphed
    assert _Fake.made == 0 and not g.failed

    class Failing(_Fake):
        def _record(self, fn, pool):
            raise RuntimeError("operation not permitted when stream is capturing")

    g = _graphed(capture=Failing)
    with pytest.warns(UserWarning, match="runs without CUDA graphs .capture failed"):
        assert g(cuda(torch.ones(1)), w, cached)[0].item() == 1.0
    assert g.failed and g(cuda(torch.ones(1)), w, cached)[0].item() == 1.0

    g = _graphed()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(cudagraphs.THRASH + 1):  # weights that move every call (CPU offloading)
            g(cuda(torch.ones(1)), cuda(torch.ones(1)), cached)
    assert g.failed and _Fake.made == cudagraphs.THRASH
    assert any("captured again on most calls" in str(m.message) for m in caught)


def test_static_constants():
    c = StaticConstants()
    a, b = c.get("coef", (1.0, 2.0), torch.device("meta")), c.get("coef", (3.0, 4.0), torch.device("meta"))
    assert a is b  # one fixed buffer per (kind, length, device): a graph reads it in place
    assert c.get("scales", (1.0, 2.0), torch.device("meta")) is not a
    assert c.get("coef", (1.0,), torch.device("meta")) is not a
    other = []
    t = threading.Thread(target=lambda: other.append(c.get("coef", (1.0, 2.0), torch.device("meta"))))
    t.start()
    t.join()
    assert other[0] is not a  # per thread
    x, y = c.get("coef", (1.0, 2.0), torch.device("cpu")), c.get("coef", (3.0, 4.0), torch.device("cpu"))
    assert x.tolist() == [1.0, 2.0] and y.tolist() == [3.0, 4.0]  # on the CPU: a tensor per value


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
def test_captures_are_replayed_across_generations():
    """A second generation replays; a variant captures again at most once (a new generation's cache buffers may
    sit at other addresses), and the replayed outputs stay equal to the non-graph path (test above)."""
    entry, model = _cuda_model()
    torch._dynamo.reset()
    cm = compile_(model, compiler="inductor", cudagraphs=True, policy="fbcache", threshold=1e9)
    _cuda_loop(cm, entry, 4)
    runtime = fxcache.runtimes_of(cm)[0]
    graphs = [fn for _, fn in runtime.variants._entries.values() if isinstance(fn, Graphed)]
    before = [(fn.captured, fn.replays) for fn in graphs]
    _cuda_loop(cm, entry, 4)
    assert graphs and all(fn.captured - c <= 1 and fn.replays > r for fn, (c, r) in zip(graphs, before))


@GPU
@pytest.mark.parametrize("policy", ["fastercache", "taylorseer"])
def test_half_batch_and_forecast_weights_graphed(policy):
    """The cond-half graph (batched CFG) and the forecast weights / band scales read in place."""
    options = {"policy": policy, **({"uncond_window": (-1, 1001), "attention_window": (-1, 1001)}
                                    if policy == "fastercache" else {})}
    entry, model = _cuda_model("pixart")
    outs = {}
    for graphs in (False, True):
        torch._dynamo.reset()
        cm = compile_(model, compiler="inductor", cudagraphs=graphs, **options)
        outs[graphs] = _cuda_loop(cm, entry, 10)
    torch.testing.assert_close(outs[True], outs[False], rtol=1e-4, atol=1e-5)


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
    """The design's count (docs/gpu.md): a probing call reads its decision once, and the timestep once when
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
