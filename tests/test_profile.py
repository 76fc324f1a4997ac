"""`python -m fxcache.profile` and the calibration files it writes (fxcache/calibration.py): a short profile of tiny
zoo models writes every section deterministically, the file round-trips, bad or mismatched files raise a clear
OptionError naming the file, and TeaCache / MagCache take their constants from it."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import fxcache
from fxcache import calibration
from fxcache.profile import Target, profile
from fxcache.profile.__main__ import main

from .loop import denoise
from .zoo import ZOO

STEPS = 8


def zoo_target(name: str) -> Target:
    entry = ZOO[name]
    model = entry.build()

    def generate(m, prompt, seed, steps, guidance):
        return denoise(m, entry, steps=steps, guidance=guidance, seed=seed + 100 * prompt)

    return Target(model, generate, cfg=entry.cfg, name=f"zoo:{name}")


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "wan.json"
    target = zoo_target("wan")
    data = profile(target, prompts=2, seeds=(0,), steps=STEPS, guidance=3.0, out=out,
                   plot=out.with_suffix(".png"), progress=False)
    return target, data, out


def test_profile_writes_every_section(wan):
    target, data, out = wan
    assert out.exists() and out.with_suffix(".png").stat().st_size > 10_000
    assert data["format"] == "fxcache-calibration" and data["version"] == 1
    assert data["model"]["class"] == type(target.model).__name__ and data["model"]["num_units"] == 3
    assert data["run"]["num_steps"] == STEPS and data["run"]["cfg"] == "separate"
    tea = data["teacache"]
    assert tea["output"] == [1.0, 0.0]
    assert len(tea["modulated_input"]) == 5 and len(tea["timestep"]) == 5  # np.polyfit(deg=4): c4..c0
    mag = data["magcache"]
    assert len(mag) == 2 and all(len(v) == STEPS and v[0] == 1.0 for v in mag.values())
    mix = data["mixcache"]
    cuts = mix["blocks"]
    assert cuts == [1, 2]  # 1/4, 1/2, 3/4 of 3 units, rounded
    assert 0 < mix["theta"] and 0 <= mix["delta1"] <= mix["delta2"]
    assert set(mix["mu"]) == set(mix["sigma"]) == {"step", "cfg", *(f"block:{i}" for i in cuts)}
    assert all(v > 0 for v in mix["sigma"].values())
    assert mix["impact"]["step"] > 0 and mix["impact"]["cfg"] > 0
    assert set(mix["impact"]["block"]) == {str(i) for i in cuts}
    assert all(len(v) == STEPS and min(v) > 0 for v in mix["impact"]["block"].values())
    ada = data["adacache"]
    assert [s["block"] for s in ada["sites"]] == [0, 1, 2]
    assert ada["per_step"]["mean"][0] is None and all(v > 0 for v in ada["per_step"]["mean"][1:])
    curves = data["curves"]
    assert curves["d_step"][0] is None and all(v > 0 for v in curves["d_step"][1:])
    assert all(v > 0 for v in curves["d_cfg"])  # the uncond output vs this step's cond output: from step 1


def test_round_trip(wan, tmp_path):
    _, data, out = wan
    assert dict(calibration.load(out)) == data
    again = calibration.save(tmp_path / "again.json", calibration.load(out))
    assert json.loads(again.read_text()) == data


def test_deterministic(wan):
    _, data, out = wan
    again = profile(zoo_target("wan"), prompts=2, seeds=(0,), steps=STEPS, guidance=3.0, progress=False)
    assert again == data
    assert json.loads(out.read_text()) == again


def test_batched_cfg():
    data = profile(zoo_target("cogvideox"), prompts=1, seeds=(3,), steps=6, guidance=3.0, progress=False)
    assert data["run"]["cfg"] == "batched" and list(data["magcache"]) and len(data["run"]["streams"]) == 1
    assert all(v > 0 for v in data["curves"]["d_cfg"])  # cfg_rel_l1 between the halves
    assert all(v > 0 for v in data["mixcache"]["impact"]["block"][str(data["mixcache"]["blocks"][0])])


def _bad(tmp_path, name, content):
    p = tmp_path / name
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return p


def test_bad_files_say_which_and_why(wan, tmp_path):
    _, data, _ = wan
    cases = [
        (tmp_path / "missing.json", "does not exist"),
        (_bad(tmp_path, "text.json", "not json {"), "is not JSON"),
        (_bad(tmp_path, "format.json", {**data, "format": "other"}), "format 'other'"),
        (_bad(tmp_path, "version.json", {**data, "version": 99}), "version 99"),
        (_bad(tmp_path, "section.json", {k: v for k, v in data.items() if k != "mixcache"}), "no 'mixcache' section"),
        (_bad(tmp_path, "poly.json", {**data, "teacache": {"timestep": ["x"]}}), "teacache.timestep"),
        (_bad(tmp_path, "list.json", [1, 2]), "not an object"),
    ]
    for path, problem in cases:
        for load in (calibration.load, lambda p: fxcache.backend(policy="teacache", calibration=str(p))):
            with pytest.raises(ValueError) as e:
                load(path)
            assert type(e.value).__name__ == "OptionError"
            assert str(path) in str(e.value) and problem in str(e.value), str(e.value)
    with pytest.raises(ValueError, match="must be a path"):
        fxcache.backend(policy="teacache", calibration=3)


def _compile_call(model, entry, path, batch):
    torch._dynamo.reset()
    cm = torch.compile(model, backend="fxcache", options={"policy": "teacache", "compiler": "eager",
                                                          "calibration": str(path)})
    with pytest.raises(ValueError) as e:
        cm(**entry.inputs(torch.tensor(900.0), batch))
    assert type(e.value).__name__ == "OptionError" and str(path) in str(e.value)
    return str(e.value)


def test_mismatched_model(wan, tmp_path):
    target, data, out = wan
    entry = ZOO["cogvideox"]
    msg = _compile_call(entry.build(), entry, out, 2)
    assert "WanTransformerBlock blocks (WanTransformer3DModel)" in msg and "CogVideoXBlock" in msg, msg
    units = _bad(tmp_path, "units.json", {**data, "model": {**data["model"], "num_units": 5}})
    msg = _compile_call(target.model, ZOO["wan"], units, 1)
    assert "with 5 block units" in msg and "this graph has 3" in msg, msg
    cls = _bad(tmp_path, "class.json", {**data, "model": {**data["model"], "class": "OtherModel"}})
    msg = _compile_call(target.model, ZOO["wan"], cls, 1)
    assert "profiled on OtherModel" in msg and "traced from WanTransformer3DModel" in msg, msg


def test_policies_read_it(wan):
    target, data, out = wan
    from fxcache.backend import parse_options
    from fxcache.passes.discover import discover

    # TeaCache: "auto" takes the fitted polynomial of its indicator; an explicit list wins
    for indicator in ("modulated_input", "timestep"):
        tea, _ = parse_options({"policy": "teacache", "indicator": indicator, "calibration": str(out)})
        assert tea.calibration.path == str(out)
        captured = {}

        def grab(gm, example_inputs, **_):
            captured["d"] = discover(gm, example_inputs)
            return gm.forward

        torch._dynamo.reset()
        entry = ZOO["wan"]
        torch.compile(target.model, backend=grab)(**entry.inputs(torch.tensor(900.0), 1))
        tea.bind(captured["d"])
        np.testing.assert_allclose(tea.poly.coeffs, data["teacache"][indicator])
    explicit, _ = parse_options({"policy": "teacache", "coefficients": [2.0, 0.0], "calibration": str(out)})
    explicit.bind(captured["d"])
    assert list(explicit.poly.coeffs) == [2.0, 0.0]
    # MagCache: the file's ratios, without `ratios`; `ratios` wins; neither is an error
    mag, _ = parse_options({"policy": "magcache", "calibration": str(out)})
    assert mag.table == data["magcache"]
    mag2, _ = parse_options({"policy": "magcache", "calibration": str(out), "ratios": [1.0] * 4})
    assert mag2.table == {"*": [1.0] * 4}
    mag3, _ = parse_options({"policy": "magcache", "ratios": str(out)})  # a calibration file as `ratios` too
    assert mag3.table == data["magcache"]
    no_mag = _bad(out.parent, "nomag.json", {**data, "magcache": {}})
    with pytest.raises(ValueError, match="has no magcache ratios"):
        parse_options({"policy": "magcache", "calibration": str(no_mag)})


def test_generation_with_calibration(wan):
    target, data, out = wan
    entry = ZOO["wan"]
    ref = denoise(target.model, entry, steps=STEPS)
    for policy in ("teacache", "magcache"):
        torch._dynamo.reset()
        cm = torch.compile(target.model, backend="fxcache",
                           options={"policy": policy, "compiler": "eager", "calibration": str(out)})
        got = denoise(cm, entry, steps=STEPS)
        assert torch.isfinite(got).all() and got.shape == ref.shape
        assert fxcache.stats(cm).steps == 2 * STEPS


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--target" in text and "calibration" in text and "theta" in text


def test_validate_copy_is_independent(wan):
    _, data, _ = wan
    d = copy.deepcopy(data)
    d["mixcache"]["theta"] = float("nan")
    with pytest.raises(ValueError, match="mixcache.theta"):
        calibration.validate(d, "x.json")


@pytest.mark.parametrize("model, cls", [("wan", "WanTransformer3DModel"), ("flux", "FluxTransformer2DModel")])
def test_committed_reference_calibration(model, cls):
    """bench/reference/weights*/calibration.json: what `make calibration [MODEL=flux]`
    (bench.profiling.profile_args) writes."""
    from bench.models import REFERENCES
    from bench.profiling import CALIBRATION_SEED, profile_args

    CALIBRATION = REFERENCES[model].calibration
    if not CALIBRATION.exists():
        pytest.skip("no committed calibration")
    data = calibration.load(CALIBRATION)
    args = profile_args(model)
    args = dict(zip(args[::2], args[1::2]))
    assert data["run"]["num_steps"] == int(args["--steps"]) and data["run"]["prompts"] == int(args["--prompts"])
    assert data["run"]["seeds"] == [CALIBRATION_SEED] and data["model"]["class"] == cls
    assert all(len(v) == data["run"]["num_steps"] for v in data["magcache"].values())
    assert CALIBRATION.with_suffix(".png").exists()
