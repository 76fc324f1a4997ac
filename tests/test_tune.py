"""`python -m fxcache.tune` on a tiny zoo model with a small budget: it searches, chooses a setting that holds the
floor on both splits, writes it into the calibration file with the plot, and `options={"calibration": path}` with
no policy then runs the chosen setting."""

from __future__ import annotations

import json

import pytest
import torch

from fxcache import calibration
from fxcache.backend import DEFAULT_POLICY, parse_options
from fxcache.tune import candidates
from fxcache.tune.__main__ import main

from .test_profile import zoo_target

STEPS = 6


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("tune") / "cal.json"
    target = zoo_target("wan")
    target.prompts = 4
    import tests.test_tune as me

    me._TARGET = target
    section = main(["--target", "tests.test_tune:_target", "--calibration", str(path), "--floor", "20/15",
                    "--steps", str(STEPS), "--guidance", "3.0", "--budget", "120", "--policies",
                    "fbcache,taylorseer", "--quiet"])
    return path, section


_TARGET = None


def _target():
    return _TARGET


def test_tune_searches_and_writes_its_choice(tuned):
    path, section = tuned
    data = json.loads(path.read_text())
    assert data["tuned"] == section and path.with_name("cal-tune.png").stat().st_size > 10_000
    assert {r["options"]["policy"] for r in section["searched"]} <= {"fbcache", "taylorseer"}
    assert section["searched"] and all(r["speedup"] > 0 for r in section["searched"])
    assert section["tuning_clips"] == [[0, 0], [2, 0]] and section["heldout_clips"] == [[1, 1], [3, 1]]
    # The most cautious FBCache (0.02) computes every block: identical output, so something holds a 20 / 15 floor.
    chosen = section["chosen"]
    assert chosen is not None
    for split in ("tuning", "heldout"):  # the choice holds the floor on both splits ...
        r = chosen[split]
        assert r["holds"] and (r["psnr_worst"] is None or r["psnr_worst"] >= 15)
    faster = [r for r in section["searched"] if r["holds"] and r["speedup"] > chosen["tuning"]["speedup"]]
    assert len(section["heldout"]) == len(faster) + 1  # ... and each faster one failed its held-out check
    assert section["options"] == chosen["tuning"]["options"]


def test_no_policy_with_a_tuned_file_runs_the_choice(tuned):
    path, section = tuned
    policy, _ = parse_options({"calibration": str(path)})
    options = section["options"]
    assert policy.name == options["policy"]
    assert all(getattr(policy, k) == v for k, v in options.items() if k != "policy")  # its settings, not defaults
    policy, _ = parse_options({"calibration": str(path), "policy": "teacache"})  # a named policy wins
    assert policy.name == "teacache"


def test_untuned_or_failed_tuning(tuned, tmp_path):
    path, _ = tuned
    data = json.loads(path.read_text())
    data["tuned"]["options"] = None  # no setting held the floor: cache nothing
    failed = tmp_path / "failed.json"
    calibration.save(failed, data)
    assert parse_options({"calibration": str(failed)})[0].name == "none"
    del data["tuned"]
    plain = tmp_path / "plain.json"
    calibration.save(plain, data)
    assert parse_options({"calibration": str(plain)})[0].name == DEFAULT_POLICY
    data["tuned"] = {"options": {"threshold": 0.1}}
    with pytest.raises(ValueError, match="tuned"):
        calibration.validate(data, "bad.json")


def test_candidates_need_calibration_for_calibrated_policies():
    names = {c.policy for c in candidates(None)}
    assert "magcache" not in names and {"fbcache", "teacache", "taylorseer"} <= names
    assert "magcache" in {c.policy for c in candidates({"magcache": {"*": [1.0]}})}


def test_bad_floor_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        main(["--target", "x:y", "--calibration", "c.json", "--floor", "35"])
    assert "--floor must be MEAN/WORST" in capsys.readouterr().err
