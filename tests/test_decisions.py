"""Behaviour unchanged, shown: every policy's per-call decisions and outputs, recorded before the engine-contract
refactor (tests/decisions.py, `tests/data/decisions.json`), replayed on the code as it is.

CI replays the zoo runs and a subset of the reference-model runs (one or two settings per policy family);
`FXCACHE_ALL_DECISIONS=1` replays all of them (~15 minutes on two cores).
"""

from __future__ import annotations

import json
import os

import pytest

from .decisions import FILE, name_of, run

RECORDS = json.loads(FILE.read_text())["records"]
# Runs whose decisions changed on purpose after the recording, and why. Their replay checks the intended
# behaviour instead (both CFG branches take one decision per step).
INTENDED = {
    "dynamiccache timestep": "DynamicCache's `joint` (default on) now covers the timestep indicator too: before, "
                             "it did nothing there and each CFG branch decided alone (issue 16)",
}
CI = {"default", "teacache", "fastercache", "mixcache"}  # reference-model runs CI replays (the zoo runs: all)


def _intended(record) -> str | None:
    o = record["options"]
    if o.get("policy") == "dynamiccache" and o.get("indicator") == "timestep" and o.get("joint", True):
        return INTENDED["dynamiccache timestep"] if record["cfg"] == "separate" else None
    return None


FIRSTS: dict = {}  # (policy, cfg) -> the first recorded reference setting of that policy
for _r in RECORDS:
    if _r["model"] == "reference":
        FIRSTS.setdefault((_r["options"].get("policy") or "default", _r["cfg"]), _r["options"]["setting"])


def _selected(record) -> bool:
    if os.environ.get("FXCACHE_ALL_DECISIONS") or record["model"] == "zoo":
        return True
    policy = record["options"].get("policy") or "default"
    return policy in CI and FIRSTS[(policy, record["cfg"])] == record["options"]["setting"]


SELECTED = [r for r in RECORDS if _selected(r)]


@pytest.mark.parametrize("record", SELECTED, ids=[name_of(r) for r in SELECTED])
def test_recorded_decisions(record):
    got = run(record)
    why = _intended(record)
    if why is not None:
        by_step: dict = {}
        for step, stream, decision, *_ in got["decisions"]:
            by_step.setdefault(step, set()).add(decision)
        assert all(len(d) == 1 for d in by_step.values()), (why, by_step)
        return
    assert got["decisions"] == record["decisions"]
    norm, *proj = record["output"]
    tol = 1e-5 * max(norm, 1.0)
    assert abs(got["output"][0] - norm) <= tol
    assert max(abs(a - b) for a, b in zip(got["output"][1:], proj)) <= tol
