"""Unit tests of the pieces: stream/generation detection and the specialize pass."""

import torch

from fxcache.passes.discover import discover
from fxcache.passes.nodes import block_of
from fxcache.passes.specialize import specialize
from fxcache.plan import FULL, Plan, Site, Stop
from fxcache.runtime.context import context
from fxcache.runtime.state import Streams

from .zoo import ZOO


def _args(t, shape=(1, 4)):
    return [torch.zeros(shape), torch.tensor([t])]


def _streams():
    return Streams(timestep_index=1, hidden_index=0, encoder_index=None, user_indices=[0, 1], new_policy_state=dict)


def test_streams_separate_calls_and_generations():
    s = _streams()
    seen = [(st.name, st.step) for st in (s.resolve(_args(t)) for t in (999.0, 999.0, 950.0, 950.0, 900.0, 900.0))]
    assert seen == [("stream0", 1), ("stream1", 1), ("stream0", 2), ("stream1", 2), ("stream0", 3), ("stream1", 3)]
    gen = s.generation
    assert s.resolve(_args(999.0)).step == 1 and s.generation == gen + 1  # timestep went back up: new generation


def test_streams_rising_timesteps_and_shape_change():
    s = _streams()
    steps = [s.resolve(_args(t)).step for t in (0.0, 100.0, 200.0, 300.0)]  # Mochi counts upward
    assert steps == [1, 2, 3, 4]
    assert s.resolve(_args(0.0)).step == 1  # turned back: a new generation
    assert s.resolve(_args(100.0, shape=(2, 4))).step == 1  # new shapes: a new generation


def test_named_streams():
    s = _streams()
    with context("cond"):
        assert s.resolve(_args(999.0)).name == "cond"
    with context("uncond"):
        assert s.resolve(_args(999.0)).name == "uncond"


def _wan_graph():
    entry = ZOO["wan"]
    model = entry.build()
    seen = {}

    def grab(gm, example_inputs):
        seen["gm"], seen["ex"] = gm, example_inputs
        return gm.forward

    with torch.no_grad():
        torch.compile(model, backend=grab, fullgraph=True)(**entry.inputs(torch.tensor(500.0), 1))
    return seen["gm"], discover(seen["gm"], seen["ex"])


def test_skipped_blocks_are_gone_from_the_variant():
    gm, d = _wan_graph()
    full = specialize(gm, d, FULL)
    skip = specialize(gm, d, Plan(reuse=frozenset({Site("residual", 1, d.num_units)}), start=Stop("cut", 1)))
    blocks = lambda g: {block_of(n)[1] for n in g.graph.nodes if n.op != "placeholder" and block_of(n)}  # noqa: E731
    assert blocks(full.gm) == set(range(d.num_units))
    assert blocks(skip.gm) == set()  # block 0 ran in the probe, blocks 1.. are replaced by the cached residual
    assert len(skip.gm.graph.nodes) < len(full.gm.graph.nodes) / 3
    assert ("cache", Site("residual", 1, d.num_units), 0, 0) in skip.inputs  # output 0, newest slot
    assert full.units_computed == d.num_units and skip.units_computed == 0


def test_probe_outputs_what_continuations_need():
    gm, d = _wan_graph()
    head = Site("residual", 0, 1)
    probe = specialize(gm, d, Plan(write=frozenset({head}), stop=Stop("cut", 1)))
    produced = {k[1] for k in probe.outputs if k[0] == "val"}
    for plan in (Plan(write=frozenset({Site("residual", 1, d.num_units)}), start=Stop("cut", 1)),
                 Plan(reuse=frozenset({Site("residual", 1, d.num_units)}), start=Stop("cut", 1))):
        needed = {k[1] for k in specialize(gm, d, plan).inputs if k[0] == "val"}
        assert needed <= produced


def test_streams_of_different_shapes_are_not_new_generations():
    """QwenImage trims each prompt to its own length: cond and uncond calls differ in shape every step."""
    s = Streams(timestep_index=1, hidden_index=0, encoder_index=2, user_indices=[0, 1, 2], new_policy_state=dict)
    seen = []
    for t in (999.0, 950.0, 900.0):
        latent = torch.randn(1, 4)
        for length in (6, 5):
            st = s.resolve([latent, torch.tensor([t]), torch.zeros(1, length, 3)])
            seen.append((st.name, st.step))
    assert seen == [("stream0", 1), ("stream1", 1), ("stream0", 2), ("stream1", 2),
                                                   ("stream0", 3), ("stream1", 3)]
