"""Dynamo's automatic dynamic shapes: a second resolution or batch size recompiles the transformer with symbolic
sizes (no `dynamic=True` needed). Size expressions computed inside block 0 are then read by later blocks (PixArt's
`mul_7 = s78 * 2` after a batch change, SD3's `4*(s42//2)` and CogVideoX's `8*(s18//2)` after a resolution change,
Sana's `2*s69`); they are values any piece can recompute, so they must not stop a cut from being cached (issue 7,
finding 8). Without that, fbcache found no cut, the backend compiled the symbolic graph plainly with a warning, and
the model stayed uncached for the rest of the process, original resolution included.

Each generation below is 8 steps (4 with Inductor); the uncached reference is the eager model on the same loop.
"""

from __future__ import annotations

import dataclasses
import operator
import warnings

import pytest
import torch

import fxcache

from .loop import first
from .test_engine import CACHING, TOLERANCE, rel_l1
from .zoo import ZOO, ZooEntry, _cogvideox_rope

STEPS = 8
BATCHED = ("pixart", "sd3", "cogvideox", "sana")  # the batched-CFG families whose pipelines were affected
ORIGINAL, WIDER, BIGGER_BATCH = (8, 8, 1), (8, 12, 1), (8, 12, 2)  # (height, width, images per prompt)


def resized(entry: ZooEntry, height: int, width: int) -> ZooEntry:
    """`entry` with latents of another spatial size (and what the pipeline derives from it: CogVideoX's rotary
    embedding). Only the spatial size changes; timestep, text and masks are the entry's own."""
    if (height, width) == (8, 8):
        return entry

    def inputs(timestep, batch, prompt=0):
        kw = entry.inputs(timestep, batch, prompt)
        h = kw["hidden_states"]
        kw["hidden_states"] = torch.randn((*h.shape[:-2], height, width), generator=torch.Generator().manual_seed(0))
        if "image_rotary_emb" in kw and entry.name == "cogvideox":
            kw["image_rotary_emb"] = _cogvideox_rope(height, width, h.shape[1], head_dim=16, patch=2,
                                                     sample_hw=(8, 8))
        return kw

    return dataclasses.replace(entry, inputs=inputs)


def _cat(uncond: dict, cond: dict) -> dict:
    """[uncond; cond] along the batch dimension, as the batched-CFG pipelines call the transformer."""
    return {k: torch.cat([v, cond[k]]) if isinstance(v, torch.Tensor) and v.ndim >= 1 else v
            for k, v in uncond.items()}


@torch.no_grad()
def generate(model, entry: ZooEntry, size=ORIGINAL, steps: int = STEPS, guidance: float = 3.0) -> torch.Tensor:
    """tests/loop.py's flow-matching Euler loop with batched CFG, at a given (height, width, images per prompt)."""
    height, width, per_prompt = size
    entry = resized(entry, height, width)
    sigmas = torch.linspace(1.0, 1.0 / steps, steps).tolist() + [0.0]
    shape = entry.inputs(torch.tensor(1000.0), per_prompt, prompt=0)["hidden_states"].shape
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    for k in range(steps):
        t = torch.tensor(1000.0 * sigmas[k])
        cond = {**entry.inputs(t, per_prompt, prompt=0), "hidden_states": x}
        uncond = {**entry.inputs(t, per_prompt, prompt=1), "hidden_states": x}
        uncond_out, cond_out = first(model(**_cat(uncond, cond)))[:, : x.shape[1]].chunk(2)
        x = x + (sigmas[k + 1] - sigmas[k]) * (uncond_out + guidance * (cond_out - uncond_out))
    return x


def compile_(model, **options):
    options.setdefault("compiler", "eager")
    return torch.compile(model, backend="fxcache", options=options)  # no dynamic=True: Dynamo decides


def run_sizes(model, entry, cm, sizes, caching: bool = True, steps: int = STEPS):
    """Generate at each size in turn, through `cm` and uncached; check each cached generation."""
    for size in sizes:
        ref = generate(model, entry, size, steps)
        before = fxcache.stats(cm).skipped_steps
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = generate(cm, entry, size, steps)
        uncached = [str(w.message) for w in caught if "without caching" in str(w.message)]
        assert not uncached, (size, uncached)
        skipped = fxcache.stats(cm).skipped_steps - before
        if caching:
            assert skipped >= 1, (size, fxcache.stats(cm).decisions)
            assert rel_l1(out, ref) < TOLERANCE, (size, rel_l1(out, ref))
        else:
            assert skipped == 0
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", BATCHED)
def test_fbcache_keeps_caching_after_a_new_resolution_and_batch(name):
    """The default policy, as a pipeline meets it: original size, another resolution (Dynamo recompiles with
    symbolic height/width), another batch size (symbolic batch), then the original size again."""
    entry = ZOO[name]
    model = entry.build()
    cm = compile_(model, **CACHING["fbcache"])
    run_sizes(model, entry, cm, (ORIGINAL, WIDER, BIGGER_BATCH, ORIGINAL))


POLICIES = {"none": {"policy": "none"}, **{p: o for p, o in CACHING.items() if p != "magcache"},
            # a flat ratio list instead of a calibration file: no error accumulates, so max_skips decides
            "magcache": {"policy": "magcache", "threshold": 0.3, "ratios": [1.0] * 20, "max_skips": 1},
            "seacache": {"policy": "seacache", "threshold": 0.6},
            "easycache": {"policy": "easycache", "warmup_steps": 4, "threshold": 0.2}}


@pytest.mark.parametrize("policy", list(POLICIES))
def test_every_policy_keeps_caching_under_automatic_dynamic_shapes(policy):
    """Every policy on one batched-CFG family through a resolution change and a batch change; "none" stays equal
    to eager."""
    options = POLICIES[policy]
    entry = ZOO["pixart"]
    model = entry.build()
    cm = compile_(model, **options)
    run_sizes(model, entry, cm, (ORIGINAL, WIDER, BIGGER_BATCH), caching=options["policy"] != "none")


def test_a_third_resolution_reuses_the_symbolic_graph_with_inductor():
    """The graph Dynamo recompiles for the second resolution serves every later one. Its variants are compiled
    for their symbolic example values: compiled for the first call's real tensors, Inductor specialised them to
    that size, and the third resolution failed the compiled code's input checks (`expected size 16==12`)."""
    entry = ZOO["pixart"]
    model = entry.build()
    cm = compile_(model, **CACHING["fbcache"], compiler="inductor")
    run_sizes(model, entry, cm, (ORIGINAL, WIDER, (8, 16, 1)), steps=4)


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x, n=None):
        y = self.lin(x)
        if n is None:  # block 0 computes a size that every later block reads
            n = y.flatten(1, 2).shape[1] // 2
        return x + y, n


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.transformer_blocks = torch.nn.ModuleList(_Block() for _ in range(3))

    def forward(self, hidden_states, timestep):
        h = self.proj(hidden_states) * timestep.view(-1, 1, 1, 1)
        n = None
        for block in self.transformer_blocks:
            h, n = block(h, n)
            h = h + n / 8
        return (h,)


def _tiny_graph(*shapes):
    """_Tiny's graph under dynamic=True, and the real arguments it was called with for each latent shape."""
    torch.manual_seed(0)
    model = _Tiny().eval()
    captured = {"args": [], "graphs": []}

    def capture(gm, example_inputs):
        captured["graphs"].append(gm)

        def run(*args):
            captured["args"].append(args)
            return gm(*args)

        return run

    cm = torch.compile(model, backend=capture, dynamic=True)
    with torch.no_grad():
        for shape in shapes:
            cm(torch.randn(shape), torch.rand(shape[0]))
    (gm,) = captured["graphs"]  # one graph serves every shape
    return gm, captured["args"]


def test_symbolic_pieces_are_compiled_for_their_symbolic_inputs():
    """A piece with symbolic sizes is compiled once, for Dynamo's fake tensors and SymInts, and serves every size;
    where that compile fails it is compiled per distinct input size, for the real tensors."""
    from torch._subclasses.fake_tensor import FakeTensor

    from fxcache.runtime.piecewise import _LazyPiece

    gm, calls = _tiny_graph((2, 3, 5, 4), (2, 3, 7, 4), (2, 3, 5, 4))
    for symbolic_ok in (True, False):
        compiled = []

        def compile_fn(piece, example_inputs):
            fake = any(isinstance(x, FakeTensor) for x in example_inputs)
            if fake and not symbolic_ok:
                raise RuntimeError("no symbolic compile")
            compiled.append(fake)
            return piece

        piece = _LazyPiece(gm, compile_fn)
        with torch.no_grad():
            for args in calls:
                torch.testing.assert_close(piece(*args), gm(*args))
        assert compiled == ([True] if symbolic_ok else [False, False])


def test_a_size_read_from_a_skipped_tensor_is_rebuilt_from_its_expression():
    """Dynamo itself writes sizes over its SymInt inputs (`s33 * s87 // 2`), which a variant can copy. A size read
    from a tensor that only the skipped range computes (`z.size(1)`, z inside block 0) is rebuilt from its sympy
    expression instead: by a variant that reuses block 0, and by a probe's continuation."""
    from fxcache.passes.discover import discover
    from fxcache.passes.specialize import specialize
    from fxcache.plan import Plan, Stop, residual

    gm, (args,) = _tiny_graph((2, 3, 5, 4))
    g = gm.graph
    flat = next(n for n in g.nodes if n.op == "call_method" and n.target == "flatten")
    half = next(n for n in g.nodes if n.target is operator.floordiv)
    with g.inserting_after(flat):
        size = g.call_method("size", (flat, 1))
    size.meta = {**flat.meta, "example_value": flat.meta["example_value"].shape[1]}
    old = half.args[0]
    half.args = (size, *half.args[1:])
    g.erase_node(old)
    gm.recompile()
    with torch.no_grad():
        ref = gm(*args)[0]

    d = discover(gm, list(args))
    assert d.recomputable(size) and d.recomputable(half)
    assert d.first_residual_cut() == 1  # before the fix: None, `half` is read by blocks 1 and 2

    def run(plan, values=None, cache=None):
        v = specialize(gm, d, plan)
        feed = {"arg": lambda k: args[k[1]], "val": lambda k: values[k[1]], "cache": lambda k: cache[k[2]]}
        with torch.no_grad():
            out = v.gm(*[feed[k[0]](k) for k in v.inputs])
        return v, dict(zip(v.outputs, out))

    head = residual(0, 1)
    _, full = run(Plan(write=frozenset({head})))
    torch.testing.assert_close(full[("out", 0)], ref)
    skip, out = run(Plan(reuse=frozenset({head})), cache=[full[("site", head, 0)]])
    assert not any(n.target == "flatten" for n in skip.gm.graph.nodes)  # block 0 is gone
    torch.testing.assert_close(out[("out", 0)], ref)
    # Probe up to cut 1, then the continuation: it computes `half` itself rather than taking it from the probe.
    _, probe = run(Plan(write=frozenset({head}), stop=Stop("cut", 1)))
    assert ("val", half.name) not in probe
    values = {k[1]: v for k, v in probe.items() if k[0] == "val"}
    rest, out = run(Plan(start=Stop("cut", 1)), values=values)
    assert not any(n.target == "flatten" for n in rest.gm.graph.nodes)
    torch.testing.assert_close(out[("out", 0)], ref)
