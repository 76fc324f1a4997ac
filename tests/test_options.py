"""Options are validated with errors that name the option and what it accepts; bad graphs fall back."""

import subprocess
import sys
import warnings

import pytest
import torch

import fxcache
from fxcache.backend import parse_options


@pytest.mark.parametrize("options, words", [
    ({"policy": "bogus"}, ["policy", "fbcache", "teacache", "magcache", "none"]),
    ({"policy": "fbcache", "treshold": 0.1}, ["treshold", "threshold", "warmup_steps"]),
    ({"policy": "fbcache", "threshold": "high"}, ["threshold", "float"]),
    ({"policy": "fbcache", "threshold": -0.1}, ["threshold", ">= 0"]),
    ({"policy": "fbcache", "max_consecutive_skips": 0}, ["max_consecutive_skips", ">= 1"]),
    ({"policy": "teacache", "indicator": "noise"}, ["indicator", "modulated_input", "timestep", "output"]),
    ({"policy": "teacache", "coefficients": "cubic"}, ["coefficients", "auto", "identity"]),
    ({"policy": "magcache"}, ["ratios", "calibrate"]),
    ({"policy": "magcache", "ratios": [1.0], "retention": 1.5}, ["retention", "[0, 1]"]),
    ({"compiler": "tvm"}, ["compiler", "inductor", "eager"]),
    ({"num_steps": 0}, ["num_steps", "positive"]),
    ({"policy": "none", "threshold": 0.1}, ["threshold", "none"]),
])
def test_bad_options_name_the_option(options, words):
    with pytest.raises(ValueError) as e:
        parse_options(options)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_backend_callable_validates_eagerly():
    with pytest.raises(ValueError, match="threshold"):
        fxcache.backend(policy="fbcache", threshold=-1)


def test_bad_option_through_torch_compile():
    m = torch.nn.Linear(4, 4)
    cm = torch.compile(m, backend="fxcache", options={"policy": "bogus"})
    with pytest.raises(Exception, match="unknown policy 'bogus'"):
        cm(torch.randn(2, 4))


def test_default_policy_is_valid():
    policy, engine = parse_options({})
    assert policy.name == fxcache.DEFAULT_POLICY and engine["compiler"] == "inductor"


def test_no_blocks_falls_back_with_one_warning():
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))
    x = torch.randn(3, 4)
    cm = torch.compile(m, backend="fxcache", options={"policy": "fbcache", "compiler": "eager"})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        y1 = cm(x)
        y2 = cm(x + 1)
    msgs = [str(x.message) for x in w if "fxcache" in str(x.message)]
    assert len(msgs) == 1 and "no list of repeated transformer blocks" in msgs[0]
    torch.testing.assert_close(y1, m(x))
    torch.testing.assert_close(y2, m(x + 1))


def test_entry_point_without_import():
    code = ("import sys, torch; assert 'fxcache' in torch._dynamo.list_backends(); "
            "m = torch.nn.Linear(2, 2); y = torch.compile(m, backend='fxcache', "
            "options={'policy': 'none', 'compiler': 'eager'})(torch.ones(1, 2)); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout
