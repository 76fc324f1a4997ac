"""The peer caching methods (bench/peers.py) run on the reference Wan model through `generate`, skip work,
and leave the transformer exactly as they found it.

Work is counted with a forward hook on `blocks[1].attn1.to_q`: a hook on `blocks[1]` itself would not do,
because diffusers' FirstBlockCache / MagCache keep calling a skipped block (its forward is replaced by one
that returns its input), while the query projection runs only when block 1's self-attention is computed.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench import peers
from bench.pipeline import generate

STEPS = 8
torch.set_num_threads(1)

# Methods whose skipping is a fixed schedule: every setting skips within 8 steps. The others decide from the
# data; for those only the most aggressive setting (last of the method) must skip within 8 steps.
SCHEDULED = {"fastercache", "pab", "taylorseer"}


@pytest.fixture(scope="module")
def ref():
    from bench.reference.data import all_prompts
    from bench.reference.model import load

    transformer, encoder = load()
    pe, ne = encoder.encode(all_prompts()[:1])
    counter = {"n": 0}

    def count(*_):
        counter["n"] += 1

    handle = transformer.blocks[1].attn1.to_q.register_forward_hook(count)
    base = {mode: generate(transformer, pe, ne, num_inference_steps=STEPS, cfg=mode) for mode in ("separate", "batched")}
    full = {"separate": 2 * STEPS, "batched": STEPS}
    magcache = next(p for p in peers.diffusers_settings() if p.method == "magcache")
    calib = peers.calibrate_peer(transformer, magcache, _one(pe, ne), num_inference_steps=STEPS)
    yield dict(transformer=transformer, pe=pe, ne=ne, counter=counter, base=base, full=full, calib=calib)
    handle.remove()


def _one(pe, ne):
    return lambda t, cfg: generate(t, pe, ne, num_inference_steps=STEPS, guidance_scale=5.0, cfg=cfg)


def _run(r, peer, mode):
    r["counter"]["n"] = 0
    out = generate(r["transformer"], r["pe"], r["ne"], num_inference_steps=STEPS, cfg=mode)
    return out, r["counter"]["n"]


def _assert_clean(transformer):
    assert not transformer.is_cache_enabled
    for name, m in transformer.named_modules():
        assert "forward" not in vars(m), f"{name} keeps a patched forward"
        if name:
            assert not hasattr(m, "_diffusers_hook"), f"{name} keeps a diffusers hook registry"
    root = getattr(transformer, "_diffusers_hook", None)
    assert root is None or not root.hooks


def _check_peer(r, peer, must_skip: bool, repeat: bool):
    transformer = r["transformer"]
    mode = peers.cfg_mode(peer)
    with peers.apply_peer(transformer, peer, num_inference_steps=STEPS, calibration=r["calib"]) as ctx:
        out, calls = _run(r, peer, mode)
        if repeat:  # a second generation starts from a fresh cache state
            again, calls_again = _run(r, peer, mode)
            assert torch.equal(again, out) and calls_again == calls
            assert ctx.tracker.runs == 2
    assert out.shape == r["base"][mode].shape
    assert torch.isfinite(out).all()
    if must_skip:
        assert calls < r["full"][mode], f"{peer.name} computed all {calls} calls of block 1's attention"
    _assert_clean(transformer)
    after, _ = _run(r, peer, mode)
    assert torch.equal(after, r["base"][mode]), f"{peer.name} left the transformer changed"
    return out, calls


def _last_of_method(settings):
    last = {}
    for p in settings:
        last[p.method] = p
    return set(last.values())


DIFFUSERS = peers.diffusers_settings()
AGGRESSIVE = _last_of_method(DIFFUSERS)


@pytest.mark.parametrize("peer", DIFFUSERS, ids=lambda p: f"{p.method}[{p.setting}]")
def test_diffusers_peer(ref, peer):
    must_skip = peer.method in SCHEDULED or peer in AGGRESSIVE
    _check_peer(ref, peer, must_skip=must_skip, repeat=peer in AGGRESSIVE)


def test_settings_shape():
    settings = peers.diffusers_settings() + peers.cachedit_settings()
    methods = {}
    for p in settings:
        assert p.provider in (peers.DIFFUSERS, peers.CACHEDIT)
        assert peers.cfg_mode(p) in ("separate", "batched")
        methods.setdefault((p.provider, p.method), []).append(p.setting)
    assert {m for _, m in methods} >= {"fastercache", "fbcache", "pab", "magcache", "taylorseer", "dbcache"}
    for key, labels in methods.items():
        assert 1 <= len(labels) <= 3 and len(set(labels)) == len(labels), key
    assert peers.cfg_mode(next(p for p in settings if p.method == "fastercache")) == "batched"


def test_magcache_calibration(ref):
    calib = ref["calib"]
    assert len(calib["mag_ratios"]) == STEPS and len(calib["mag_ratios_uncond"]) == STEPS
    assert calib["mag_ratios"][0] == 1.0 and all(0.2 < x < 5.0 for x in calib["mag_ratios"])
    fb = next(p for p in peers.diffusers_settings() if p.method == "fbcache")
    assert peers.calibrate_peer(ref["transformer"], fb, _one(ref["pe"], ref["ne"]), num_inference_steps=STEPS) is None
    _assert_clean(ref["transformer"])


def test_cachedit_status_is_explained():
    status = peers.cachedit_status()
    assert isinstance(status, str) and status
    if status != "ok":
        assert "cache-dit" in status


CACHEDIT = peers.cachedit_settings()


@pytest.mark.parametrize("peer", CACHEDIT, ids=lambda p: f"{p.method}[{p.setting}]")
def test_cachedit_peer(ref, peer):
    if peers.cachedit_status() != "ok":
        pytest.skip(peers.cachedit_status())
    # The published settings warm up for 8 steps, i.e. the whole of this short run; the skip check uses the
    # same setting with a 2-step warmup.
    _check_peer(ref, peer, must_skip=False, repeat=False)
    if peer in _last_of_method(CACHEDIT):
        short = dataclasses.replace(peer, params={**peer.params,
                                                  "cache_config": {**peer.params["cache_config"], "max_warmup_steps": 2}})
        _check_peer(ref, short, must_skip=True, repeat=True)
