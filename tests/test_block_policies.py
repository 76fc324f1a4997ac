"""Sites inside blocks, forecasts, and the block-level policies (issue 8): fora, pab, taylorseer, tgate, deltadit,
blockdance, dbcache, and the `forecast` option of the step-level policies.

Decision logic is checked on scripted calls against sequences worked out by hand from the papers' rules
(docs/methods.md); the policies then run on zoo models (eager inner compiler), where they must reuse what they
say, stay close to the uncached output (tests/test_engine.py's tolerance) and be deterministic.
"""

from __future__ import annotations

import math
import random
import warnings

import pytest
import torch

import fxcache
from fxcache.metrics import REL_L1
from fxcache.backend import parse_options
from fxcache.plan import Site
from fxcache.policies import forecast

from .driver import Driver
from .loop import denoise
from .test_engine import TOLERANCE, models, rel_l1  # noqa: F401 - `models`: the fixture of uncached references
from .zoo import CORE, ZOO

NEW = ("fora", "pab", "taylorseer", "tgate", "deltadit", "blockdance", "dbcache")


def compile_(model, **options):
    options.setdefault("compiler", "eager")
    return torch.compile(model, backend="fxcache", fullgraph=True, options=options)


_DISCOVERIES: dict = {}


def discovery(name: str):
    if name not in _DISCOVERIES:
        entry = ZOO[name]
        cm = compile_(entry.build(), policy="none")
        with torch.no_grad():
            cm(**entry.inputs(torch.tensor(500.0), 1))
        (runtime,) = fxcache.runtimes_of(cm)
        _DISCOVERIES[name] = runtime.discovery
    return _DISCOVERIES[name]


def bound(name: str, **options):
    policy, _ = parse_options(options)
    policy.bind(discovery(name))
    return policy


def script(policy, timesteps, measured=None, stream="stream0"):
    """Drive a policy through one stream's calls (tests/driver.py); `measured(k)`: {(site, metric): value} of call
    k, read for what its plans measure. Returns the final plan of each call."""
    measure = (lambda call, site, metric: measured(call.step)[(site, metric)]) if measured else None
    drive = Driver(policy, len(timesteps), measure=measure)
    return [drive(t, stream) for t in timesteps]


def schedule(n: int, first: float = 1000.0) -> list[float]:
    return [first * (1 - k / n) for k in range(n)]


# ------------------------------------------------------------------------------------------------- sites in blocks

ROLES = {  # family -> {submodule: role} expected in every block of its first list
    "wan": {"attn1": "attn", "attn2": "cross", "ffn": "mlp"},
    "pixart": {"attn1": "attn", "attn2": "cross", "ff": "mlp"},
    "flux": {"attn": "attn", "ff": "mlp", "ff_context": "mlp"},
    "sd3": {"attn": "attn", "ff": "mlp", "ff_context": "mlp"},
    "cogvideox": {"attn1": "attn", "ff": "mlp"},
}


@pytest.mark.parametrize("name", CORE)
def test_module_sites_are_found_in_every_block(name):
    d = discovery(name)
    per_block: dict = {}
    for site, m in d.modules.items():
        per_block.setdefault(site.start, {})[site.name] = m.role
        assert m.outputs and all(o in m.nodes for o in m.outputs)
    # every unit has an attention site; every family but single-stream-only lists has an MLP too
    assert set(per_block) == set(range(d.num_units)), per_block
    assert all("attn" in roles.values() for roles in per_block.values()), per_block
    assert any("mlp" in roles.values() for roles in per_block.values()), per_block
    if name in ROLES:
        assert per_block[0] == ROLES[name] or ROLES[name].items() <= per_block[0].items(), per_block[0]
    if name == "latte":
        temporal = {m.temporal for m in d.modules.values()}
        assert temporal == {True, False}


def test_explain_lists_module_sites():
    entry = ZOO["wan"]
    cm = compile_(entry.build(), policy="fora")
    denoise(cm, entry, steps=4)
    text = fxcache.explain(cm)
    assert "inside blocks" in text and "attn1=attn" in text and "attn2=cross" in text and "ffn=mlp" in text


# -------------------------------------------------------------------------------------------------------- forecasts


def _diffusers_taylor(values: dict[int, float], computed: list[int], step: int, order: int) -> float:
    """diffusers' TaylorSeerState update/predict (divided differences by the step gap), on scalars."""
    factors: dict[int, float] = {}
    last = None
    for s in computed:
        new = {0: values[s]}
        if last is not None:
            for j in range(order):
                if j not in factors:
                    break
                new[j + 1] = (new[j] - factors[j]) / (s - last)
        factors, last = new, s
    return sum(f * (step - last) ** j / math.factorial(j) for j, f in factors.items())


@pytest.mark.parametrize("order", [1, 2, 3])
def test_taylor_weights_equal_the_reference_recursion(order):
    rng = random.Random(order)
    for _ in range(20):
        steps = sorted(rng.sample(range(40), order + 3))
        history, step = steps[:-1], steps[-1]
        values = {s: rng.uniform(-2, 2) for s in history}
        w = forecast.taylor(list(reversed(history)), step, order)
        kept = list(reversed(history))[: order + 1]
        ours = sum(wi * values[s] for wi, s in zip(w, kept))
        assert ours == pytest.approx(_diffusers_taylor(values, history, step, order), rel=1e-9, abs=1e-9)


def test_taylor_weights_by_hand():
    assert forecast.taylor([2, 1], 3, 1) == pytest.approx((2.0, -1.0))
    assert forecast.taylor([4, 2], 5, 1) == pytest.approx((1.5, -0.5))  # F4 + (F4 - F2) / 2
    assert forecast.taylor([2, 1, 0], 3, 2) == pytest.approx((2.5, -2.0, 0.5))
    assert forecast.taylor([7], 9, 2) == pytest.approx((1.0,))  # one value: plain reuse
    assert forecast.linear(0.3) == pytest.approx((1.3, -0.3))


# ------------------------------------------------------------------------------------------- scripted decisions


def labels(plans):
    return "".join({"full": "C", "reuse": "R", "forecast": "F", "broadcast": "B", "skip": "S",
                    "skip rear": "r", "skip front": "f"}[p.label] for p in plans)


def test_fora_schedule():
    assert labels(script(bound("wan", policy="fora"), schedule(10))) == "CRRCRRCRRC"
    assert labels(script(bound("wan", policy="fora", interval=2), schedule(5))) == "CRCRC"


def test_taylorseer_schedule_and_weights():
    """diffusers: computed while i < 3 and when (i - 4) % 5 == 0 (0-based i); forecast otherwise."""
    policy = bound("wan", policy="taylorseer")
    plans = script(policy, schedule(15))
    assert labels(plans) == "CCCFCFFFFCFFFFC"
    assert plans[3].coeffs == pytest.approx((2.0, -1.0))  # from steps 2, 1 at step 3
    assert plans[5].coeffs == pytest.approx((1.5, -0.5))  # from steps 4, 2 at step 5
    assert plans[6].coeffs == pytest.approx((2.0, -1.0))
    assert len({p.key() for p in plans if p.label == "forecast"}) == 1  # weights change, the variant does not
    assert policy.depth(next(iter(policy.sites))) == 2


def test_pab_schedule():
    """Wan: spatial self-attention range 2, cross-attention range 6, inside t in (100, 800)."""
    policy = bound("wan", policy="pab")
    d = discovery("wan")
    self_sites = {s for s, m in d.modules.items() if m.role == "attn"}
    cross_sites = {s for s, m in d.modules.items() if m.role == "cross"}
    ts = schedule(20)
    plans = script(policy, ts)
    for i, (t, p) in enumerate(zip(ts, plans)):
        inside = 100 < t < 800 and i > 0
        assert (self_sites <= p.reuse) == (inside and i % 2 != 0), (i, t)
        assert (cross_sites <= p.reuse) == (inside and i % 6 != 0), (i, t)
        assert not (p.reuse & {s for s, m in d.modules.items() if m.role == "mlp"})
        assert p.write == policy.all_sites - p.reuse


def test_pab_ranges_off_and_flux_scale():
    policy = bound("wan", policy="pab", cross_range=None)
    assert policy.cross_range is None and all(m.role != "cross" for s, m in discovery("wan").modules.items()
                                              if s in policy.all_sites)
    flux = bound("flux", policy="pab")  # Flux passes t in [0, 1]: the window applies on the 0-1000 scale
    plans = script(flux, [t / 1000 for t in schedule(10)])
    assert any(p.reuse for p in plans) and not plans[0].reuse


def test_tgate_schedule():
    """g = 10, sp = 5, fi = 1, warm_up = 2 (0-based i): self-attention reused for 2 < i < 10 with i % 5 != 0;
    cross-attention reused from i = 10 on."""
    policy = bound("wan", policy="tgate")
    d = discovery("wan")
    plans = script(policy, schedule(14))
    self_sites = {s for s, m in d.modules.items() if m.role == "attn"}
    cross_sites = {s for s, m in d.modules.items() if m.role == "cross"}
    got = "".join(("s" if self_sites <= p.reuse else "-") + ("x" if cross_sites <= p.reuse else "-") for p in plans)
    assert got == "------" + "s-s-" + "--" + "s-s-s-s-" + "-x-x-x-x"


def test_dbcache_decisions():
    """F8B0 on 3 blocks clamps to F2B0; 8 warm-up steps, then the middle is reused below 0.08 (compared with the
    last computed step; the reference moves only on computed steps)."""
    policy = bound("wan", policy="dbcache")
    assert policy.cuts(discovery("wan")) == (2, 3)
    dist = [None] * 8 + [0.05, 0.07, 0.2, 0.01, 0.09, 0.0]
    plans = script(policy, schedule(len(dist)), measured=lambda k: {(policy.head, REL_L1): dist[k - 1]})
    assert labels(plans) == "C" * 8 + "SSCSCS"
    skip = plans[8]
    assert skip.reuse == {Site("residual", 2, 3)} and skip.start == policy.cut
    b = bound("wan", policy="dbcache", Fn=1, Bn=1, warmup_steps=0, max_continuous_cached_steps=1)
    assert b.cuts(discovery("wan")) == (1, 2)
    plans = script(b, schedule(5), measured=lambda k: {(b.head, REL_L1): 0.0})
    assert labels(plans) == "CSCSC"


def test_deltadit_schedule():
    """Computed at k == 1 and k % 3 == 0; the rear range is cached before t = 500, the front range after."""
    policy = bound("wan", policy="deltadit", front=(0, 1), rear=(1, 3))
    plans = script(policy, schedule(10))  # t = 1000, 900, ..., 100
    assert labels(plans) == "CrCrrCffCf"


def test_blockdance_schedule():
    """Late stage (t < 600): a cache step, then the stored state of the first L // 2 blocks reused, every 2."""
    policy = bound("wan", policy="blockdance")
    assert policy.site == Site("stream", 0, 1)
    plans = script(policy, schedule(10))  # t = 1000 ... 100: late from t = 500 (k = 6)
    assert labels(plans) == "CCCCCCRCRC"
    assert plans[5].write == {policy.site} and not plans[4].write


def test_bad_block_policy_options():
    for options, words in [({"policy": "fora", "interval": 0}, ["interval", ">= 1"]),
                           ({"policy": "taylorseer", "order": 7}, ["order", "0..4"]),
                           ({"policy": "pab", "window": (800, 100)}, ["window", "lo < hi"]),
                           ({"policy": "fbcache", "forecast": "cubic"}, ["forecast", "reuse | taylor"]),
                           ({"policy": "teacache", "forecast": "taylor", "order": 0}, ["order", "1..4"]),
                           ({"policy": "deltadit", "boundary": 2000.0}, ["boundary", "0..1000"]),
                           ({"policy": "dbcache", "Fn": 0}, ["Fn", ">= 1"])]:
        with pytest.raises(ValueError) as e:
            parse_options(options)
        assert all(w in str(e.value) for w in words), (words, str(e.value))


def test_range_outside_the_model_falls_back_with_a_warning():
    entry = ZOO["wan"]
    model = entry.build()
    cm = compile_(model, policy="deltadit", front=(0, 9), rear=(1, 3))
    with pytest.warns(UserWarning, match=r"deltadit.*front range \[0, 9\)"):
        out = denoise(cm, entry, steps=3)
    torch.testing.assert_close(out, denoise(model, entry, steps=3), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------------- on models

# wan: separate CFG + cross-attention; flux: dual stream; latte: temporal blocks in pairs; cogvideox: joint attention
OPTIONS = {p: {"policy": p} for p in NEW}
OPTIONS["dbcache"] = {"policy": "dbcache", "Fn": 1, "warmup_steps": 2, "threshold": 0.2}  # random weights
OPTIONS["fbcache-taylor"] = {"policy": "fbcache", "threshold": 0.2, "max_consecutive_skips": 3, "forecast": "taylor"}
OPTIONS["teacache-taylor"] = {"policy": "teacache", "threshold": 0.3, "forecast": "taylor", "order": 2}
OPTIONS["dbcache-foca"] = {"policy": "dbcache", "Fn": 1, "warmup_steps": 2, "threshold": 0.2, "forecast": "foca"}


# Every option set on Wan; each other family with the policies whose sites it exercises differently.
CASES = ([("wan", k) for k in OPTIONS] + [("flux", k) for k in ("fora", "taylorseer", "dbcache", "fbcache-taylor",
                                                                 "dbcache-foca")]
         + [("latte", k) for k in ("pab", "deltadit", "blockdance", "tgate")]
         + [("cogvideox", k) for k in ("fora", "teacache-taylor")])


@pytest.mark.parametrize("name, key", CASES)
def test_policy_on_zoo_model(name, key, models):
    entry, model, ref = models(name)
    cm = compile_(model, **OPTIONS[key])
    out = denoise(cm, entry)
    s = fxcache.stats(cm)
    saved = s.sites_reused + s.sites_forecast + s.blocks_skipped
    assert saved > 0, s.decision_counts
    if key in ("fora", "pab", "tgate"):
        assert s.sites_reused > 0 and s.blocks_skipped == 0
    if key == "taylorseer":
        assert s.sites_forecast > 0 and s.sites_reused == 0
    if key.endswith("-taylor") or key.endswith("-foca"):
        assert s.sites_forecast > 0 and s.skipped_steps > 0
    assert rel_l1(out, ref) < TOLERANCE
    assert torch.equal(denoise(cm, entry), out)  # deterministic, independent of the previous generation


def test_reused_module_is_not_computed():
    """A reused attention module is gone from the variant: its ops are not in the graph, its gate still is."""
    entry = ZOO["wan"]
    cm = compile_(entry.build(), policy="fora")
    denoise(cm, entry, steps=3)
    ((runtime, _),) = fxcache.instances_of(cm)
    d = runtime.discovery
    full = runtime.variants.get(runtime.policy.compute)[0].gm
    reuse = runtime.variants.get(runtime.policy.reuse)[0].gm
    ops = lambda gm: sum(1 for n in gm.graph.nodes if n.op == "call_function")  # noqa: E731
    module_ops = sum(len(m.nodes) for m in d.modules.values())
    assert ops(full) - ops(reuse) > 0.8 * module_ops
    sdpa = lambda gm: sum(1 for n in gm.graph.nodes if "scaled_dot_product" in str(n.target))  # noqa: E731
    assert sdpa(full) > 0 and sdpa(reuse) == 0


# ------------------------------------------------------------------------------------------ FasterCache, CFG branch


def test_cfg_rebuild_equals_fastercache_formula():
    """cond + s_L·low(Δ) + s_H·high(Δ) equals diffusers' ifft(LF(cond) + s_L·ΔLF + HF(cond) + s_H·ΔHF), odd sizes."""
    from fxcache.passes import cfg

    g = torch.Generator().manual_seed(0)
    for shape in [(1, 3, 2, 7, 10), (2, 4, 9, 9), (1, 2, 3, 16, 12)]:
        cond, uncond_full, cond_full = (torch.randn(shape, generator=g) for _ in range(3))
        low, high = cfg.bands(uncond_full, cond_full)
        scales = torch.tensor([1.21, 1.1])
        got = cfg.rebuild(cond, low, high, scales)
        want = cfg.rebuild_reference(cond, uncond_full, cond_full, 1.21, 1.1)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(low + high, uncond_full - cond_full, rtol=1e-5, atol=1e-5)


def _fastercache_script(policy, n: int):
    ts = schedule(n)
    drive = Driver(policy, n)
    plans = []
    for t in ts:
        for s in ("stream0", "stream1"):
            plans.append((s, drive(t, s)))
    return ts, plans


def test_fastercache_schedule_by_hand():
    """diffusers' defaults: uncond rebuilt when i > 0, t < 641 and i % 5 != 0; s_L *= 1.1 inside (99, 901),
    s_H *= 1.1 inside (-1, 301), reset by a computed uncond step; cond self-attention extrapolated with w = 0.5
    on those steps when t < 681 and i % 2 != 0."""
    policy = bound("wan", policy="fastercache")
    ts, plans = _fastercache_script(policy, 20)  # t = 1000, 950, ..., 50
    s_low = s_high = 1.0
    for i, t in enumerate(ts):
        (_, cond), (_, uncond) = plans[2 * i], plans[2 * i + 1]
        rebuilt = i > 0 and t < 641 and i % 5 != 0
        assert uncond.rebuilds == rebuilt, (i, t)
        if rebuilt:
            s_low *= 1.1 if 99 < t < 901 else 1.0
            s_high *= 1.1 if t < 301 else 1.0
            assert uncond.scales == pytest.approx((s_low, s_high)) and uncond.peer == "stream0"
        else:
            s_low = s_high = 1.0
            assert uncond.write == {Site("cfg")}
        forecast = rebuilt and t < 681 and i % 2 != 0
        assert bool(cond.forecast) == forecast, (i, t)
        if forecast:
            assert cond.forecast == policy.attention and cond.coeffs == pytest.approx((1.5, -0.5))
        assert Site("output") in cond.write


@pytest.mark.parametrize("name", ("wan", "pixart", "latte"))
def test_fastercache_on_separate_and_batched_cfg(name, models):
    """Separate calls (Wan) and batched CFG (PixArt; Latte, whose temporal blocks fold the batch into tokens):
    the uncond output is rebuilt on uncond-skip steps and self-attention is extrapolated."""
    entry, model, ref = models(name)
    cm = compile_(model, policy="fastercache", uncond_window=(-1, 1001), attention_window=(-1, 1001))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        out = denoise(cm, entry)
    s = fxcache.stats(cm)
    assert s.cfg_reused > 0 and s.sites_forecast > 0
    assert rel_l1(out, ref) < TOLERANCE
    assert torch.equal(denoise(cm, entry), out)


def test_fastercache_batched_schedule_by_hand():
    """Batched CFG, one stream: the first call computes (batched CFG is recognised from the second call on), a
    call outside the uncond schedule computes the whole batch and caches the bands; on an uncond-skip call only
    the cond half runs (Plan.half), with the compounded scales, its self-attention extrapolated by the attention
    schedule once two cond-half values are cached."""
    policy = bound("pixart", policy="fastercache", uncond_window=(-1, 1001), attention_window=(-1, 1001))
    n = 12
    ts = schedule(n)
    plans = Driver(policy, n, batched=True).run(ts)  # batched CFG recognised from the second call on
    labels = [p.label for p in plans]
    # i = 0 full (unpaired), 1 full (bands), 2..4 rebuilt (i % 5 != 0), 5 full, 6..9 rebuilt, 10 full, 11 rebuilt;
    # attention: extrapolated on rebuilt calls with i % 2 != 0
    assert labels == ["full", "full", "cfg", "cfg+forecast", "cfg", "full", "cfg", "cfg+forecast", "cfg",
                      "cfg+forecast", "full", "cfg+forecast"], labels
    assert not plans[0].half and Site("cfg", name="batch") not in plans[0].write
    assert Site("cfg", name="batch") in plans[1].write and not plans[1].half
    s_low = s_high = 1.0
    for i, (t, p) in enumerate(zip(ts, plans)):
        if p.half:
            s_low *= 1.1 if 99 < t < 901 else 1.0
            s_high *= 1.1 if t < 301 else 1.0
            assert p.scales == pytest.approx((s_low, s_high)) and p.rebuilds
        else:
            s_low = s_high = 1.0
    # two cond-half values cached by then (calls 2 and 3): linear extrapolation
    assert plans[3].coeffs == pytest.approx((1.5, -0.5)) and plans[7].coeffs == pytest.approx((1.5, -0.5))


def test_batched_rebuild_is_the_formula_and_the_cond_half_is_exact():
    """On a rebuilt batched call the cond half equals the model on the cond half alone, and the uncond half is
    FasterCache's rebuild from it and the last full call's halves."""
    from fxcache.passes import cfg

    entry = ZOO["pixart"]
    model = entry.build()
    cm = compile_(model, policy="fastercache", uncond_window=(-1, 1001), attention_window=(-1, 0))
    outs, ins = [], []

    class Recorder(torch.nn.Module):
        def forward(self, **kw):
            o = cm(**kw)
            ins.append(kw)
            outs.append(o[0] if isinstance(o, tuple) else o.sample)
            return o

    n = 6
    denoise(Recorder(), entry, steps=n, cfg="batched")
    assert [d["decision"] for d in fxcache.stats(cm).decisions] == ["full", "full", "cfg", "cfg", "cfg", "full"]
    sigmas = torch.linspace(1.0, 1.0 / n, n).tolist()
    s_low = s_high = 1.0
    for i in (2, 3, 4):
        t = 1000 * sigmas[i]
        s_low *= 1.1 if 99 < t < 901 else 1.0
        s_high *= 1.1 if t < 301 else 1.0
        uncond, cond = outs[i].chunk(2)
        half = {k: v[v.shape[0] // 2:] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == 2 else v
                for k, v in ins[i].items()}
        with torch.no_grad():
            alone = model(**half)
        torch.testing.assert_close(cond, alone[0] if isinstance(alone, tuple) else alone.sample,
                                   rtol=1e-5, atol=1e-5)
        full_uncond, full_cond = outs[1].chunk(2)
        torch.testing.assert_close(uncond, cfg.rebuild_reference(cond, full_uncond, full_cond, s_low, s_high),
                                   rtol=1e-4, atol=1e-5)


def test_batched_cfg_without_a_half_graph_falls_back_with_one_warning():
    """A graph break before the blocks: the block graph is not the model's forward, so the cond half cannot be
    traced again; FasterCache reuses features only, and says so once."""
    entry = ZOO["pixart"]
    model = entry.build()

    class Breaking(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            torch._dynamo.graph_break()
            return self.inner(**kw)

    cm = torch.compile(Breaking(model), backend="fxcache",
                       options={"policy": "fastercache", "compiler": "eager", "uncond_window": (-1, 1001),
                                "attention_window": (-1, 1001)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = denoise(cm, entry, cfg="batched")
    msgs = [str(w.message) for w in caught if "cond half" in str(w.message)]
    assert len(msgs) == 1, msgs
    s = fxcache.stats(cm)
    assert s.cfg_reused == 0 and s.sites_forecast > 0
    assert rel_l1(out, denoise(model, entry, cfg="batched")) < TOLERANCE


def test_rebuilt_uncond_output_is_the_formula():
    """The uncond output of a rebuilt call equals FasterCache's rebuild from this step's cond output and the
    last computed step's outputs, with the compounded scales."""
    from fxcache.passes import cfg

    entry = ZOO["wan"]
    model = entry.build()
    cm = compile_(model, policy="fastercache", uncond_window=(-1, 1001), attention_range=1000)
    outs = []

    class Recorder(torch.nn.Module):
        def forward(self, **kw):
            o = cm(**kw)
            outs.append(o[0] if isinstance(o, tuple) else o.sample)
            return o

    n = 8
    denoise(Recorder(), entry, steps=n)
    decisions = fxcache.stats(cm).decisions
    assert [d["decision"] for d in decisions[1::2]] == ["full", "cfg", "cfg", "cfg", "cfg", "full", "cfg", "cfg"]
    sigmas = torch.linspace(1.0, 1.0 / n, n).tolist()
    s_low = s_high = 1.0
    for i in range(1, 5):
        t = 1000 * sigmas[i]
        s_low *= 1.1 if 99 < t < 901 else 1.0
        s_high *= 1.1 if t < 301 else 1.0
        want = cfg.rebuild_reference(outs[2 * i], outs[1], outs[0], s_low, s_high)
        torch.testing.assert_close(outs[2 * i + 1], want, rtol=1e-4, atol=1e-5)


def test_fastercache_cogvideox_preset_by_hand():
    """The official CogVideoX schedule on 1-based k: uncond rebuilt when k >= 18 and k % 5 != 0 (s_L *= 1.1 for
    k <= 40, s_H *= 1.1 for k >= 30); self-attention extrapolated with w = 0.3 when k >= 18 and k % 3 != 0."""
    policy = bound("cogvideox", policy="fastercache", preset="cogvideox")
    n = 50
    ts = schedule(n)
    drive = Driver(policy, n)
    s_low = s_high = 1.0
    for k, t in enumerate(ts, start=1):
        cond = drive(t, "stream0")
        uncond = drive(t, "stream1")
        rebuilt = k >= 18 and k % 5 != 0
        assert uncond.rebuilds == rebuilt, k
        if rebuilt:
            s_low *= 1.1 if k <= 40 else 1.0
            s_high *= 1.1 if k >= 30 else 1.0
            assert uncond.scales == pytest.approx((s_low, s_high))
        else:
            s_low = s_high = 1.0
        assert bool(cond.forecast) == (k >= 18 and k % 3 != 0), k
        if cond.forecast:
            assert cond.coeffs == pytest.approx((1.3, -0.3))


def test_fastercache_preset_errors():
    with pytest.raises(ValueError, match=r"'preset'='cogvideox' is for cogvideox models; this graph is wan"):
        bound("wan", policy="fastercache", preset="cogvideox")
    with pytest.raises(ValueError, match=r"option 'preset'.*latte \| cogvideox \| mochi"):
        parse_options({"policy": "fastercache", "preset": "opensora"})
    with pytest.raises(ValueError, match=r"cannot be combined with 'uncond_range'"):
        parse_options({"policy": "fastercache", "preset": "latte", "uncond_range": 3})


def test_foca_forecast_equals_cache_dit_foca_state():
    """FoCa as fxcache runs it (weights over the last two computed values and the two-slot window, the forecast
    stored into the window) against cache-dit's own FoCaState on random tensors, for a pattern of computed and
    skipped steps with gaps beyond the damping horizon."""
    foca_state = pytest.importorskip("cache_dit.caching.cache_contexts.calibrators.foca").FoCaState
    g = torch.Generator().manual_seed(0)
    pattern = "CCSSCSSSSSCSCCSSSS"  # C computed, S skipped
    ref = foca_state()
    anchors: list = []  # computed values, newest first (depth 2)
    window: list = []  # computed or forecast values, newest first (depth 2)
    last = None
    for step, kind in enumerate(pattern, start=1):
        ref.mark_step_begin()
        if kind == "C":
            y = torch.randn(3, 5, generator=g, dtype=torch.float64)
            ref.update(y)
            anchors, window, last = [y, *anchors][:2], [y, *window][:2], step
            continue
        want = ref.approximate()
        if len(anchors) < 2:
            got = anchors[0]  # plain reuse, the window unchanged (cache-dit returns F_full)
        else:
            w = forecast.foca(step - last)
            got = sum(c * v for c, v in zip(w, [*anchors, *window]))
            window = [got, *window][:2]
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_foca_plans_write_the_window():
    from fxcache.plan import window_of

    policy = bound("wan", policy="dbcache", Fn=1, threshold=1e9, warmup_steps=2, forecast="foca")
    plans = script(policy, schedule(8), measured=lambda k: {(policy.head, REL_L1): 0.0})
    middle = policy.middle
    assert [p.label for p in plans] == ["full", "full"] + ["skip"] * 6
    assert window_of(middle) in plans[0].write and window_of(middle) in plans[1].write
    assert plans[2].window == 2 and plans[2].forecast == {middle} and plans[2].write == {window_of(middle)}
    assert plans[2].coeffs == pytest.approx(forecast.foca(1)) and plans[6].coeffs == pytest.approx(forecast.foca(5))
