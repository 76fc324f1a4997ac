"""Options are validated with errors that name the option and what it accepts; bad graphs fall back."""

import pickle
import subprocess
import sys
import traceback
import warnings

import pytest
import torch

import fxcache
from fxcache.backend import parse_options

from .loop import denoise
from .zoo import ZOO

NAN, INF = float("nan"), float("inf")


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
    # issue 7: every value checked, non-finite numbers and list contents included
    ({"policy": "fbcache", "threshold": NAN}, ["threshold", "finite", "nan"]),
    ({"policy": "fbcache", "threshold": INF}, ["threshold", "finite", "inf"]),
    ({"policy": "teacache", "threshold": NAN}, ["threshold", "finite"]),
    ({"policy": "magcache", "ratios": [1.0], "threshold": INF}, ["threshold", "finite"]),
    ({"policy": "teacache", "coefficients": [NAN, 0.0]}, ["coefficients", "finite floats", "nan"]),
    ({"policy": "teacache", "coefficients": [True]}, ["coefficients", "finite floats", "True"]),
    ({"policy": "teacache", "coefficients": ["1.0", 0.0]}, ["coefficients", "finite floats"]),
    ({"policy": "magcache", "ratios": [None, 1.0]}, ["ratios", "finite floats >= 0", "None"]),
    ({"policy": "magcache", "ratios": [1.0, -0.5]}, ["ratios", "finite floats >= 0"]),
    ({"policy": "magcache", "ratios": {"cond": [INF]}}, ["ratios", "stream name", "inf"]),
    ({"policy": "magcache", "ratios": {}}, ["ratios", "stream name"]),
    ({"policy": ["fbcache"]}, ["policy", "fbcache", "teacache"]),
    ("fbcache", ["options must be a dict", "{'policy': 'fbcache'}", "got str 'fbcache'"]),
    (["policy"], ["options must be a dict", "got list ['policy']"]),
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
    with pytest.raises(ValueError, match="unknown policy 'bogus'"):
        cm(torch.randn(2, 4))


def _graph_break(x):
    y = torch.sin(x)
    torch._dynamo.graph_break()
    return torch.cos(y)


@pytest.mark.parametrize("fullgraph", [True, False])
@pytest.mark.parametrize("options, words", [
    ({"policy": "bogus"}, ["unknown policy 'bogus'", "fbcache"]),
    ({"policy": "fbcache", "threshold": NAN}, ["'threshold'", "finite"]),
    ({"policy": "teacache", "coefficients": [NAN, 0.0]}, ["'coefficients'", "finite floats"]),
    ({"policy": "teacache", "coefficients": [True]}, ["'coefficients'", "finite floats"]),
    ({"policy": "magcache", "ratios": [None, 1.0]}, ["'ratios'", "finite floats >= 0"]),
    ({"policy": "magcache", "ratios": {"cond": [INF]}}, ["'ratios'", "stream name"]),
    ("fbcache", ["options must be a dict such as {'policy': 'fbcache'}, got str 'fbcache'"]),
    (["policy"], ["options must be a dict", "got list ['policy']"]),
])
def test_bad_option_raises_value_error_at_first_call(options, words, fullgraph):
    """Dynamo calls the backend at the first call only; the OptionError reaches the caller unwrapped (not as
    BackendCompilerFailed), with its message as raised, and is not turned into a graph break / eager fallback."""
    for fn in (torch.nn.Linear(4, 4),) + (() if fullgraph else (_graph_break,)):
        cm = torch.compile(fn, backend="fxcache", fullgraph=fullgraph, options=options)
        with pytest.raises(ValueError) as e:
            cm(torch.randn(2, 4))
        assert type(e.value) is fxcache.errors.OptionError
        assert str(e.value).startswith("fxcache: ") and "TORCHDYNAMO_VERBOSE" not in str(e.value)
        files = [f.filename for f in traceback.extract_tb(e.value.__traceback__)]
        if not torch._dynamo.config.verbose:  # Dynamo's frames stripped
            assert not any("output_graph.py" in f for f in files), files
        for w in words:
            assert w in str(e.value), (w, str(e.value))
        with pytest.raises(ValueError):  # the next call tries again and fails the same way
            cm(torch.randn(2, 4))


def test_option_error_is_a_value_error():
    e = fxcache.errors.option_error("fxcache: x")
    assert isinstance(e, ValueError) and isinstance(e, torch._dynamo.exc.ShortenTraceback)
    assert type(e) is fxcache.errors.OptionError and str(e) == "fxcache: x"
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is fxcache.errors.OptionError and str(e2) == "fxcache: x"


def test_ratios_file_is_checked(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"streams": {"cond": [1.0, NaN]}}')
    with pytest.raises(ValueError, match="'ratios'.*finite floats >= 0"):
        parse_options({"policy": "magcache", "ratios": str(bad)})
    bad.write_text("not json")
    with pytest.raises(ValueError, match="'ratios'.*not a MagCache calibration file"):
        parse_options({"policy": "magcache", "ratios": str(bad)})


def _max_variants_warnings(max_variants: int | None) -> list[str]:
    entry = ZOO["wan"]
    model = entry.build()
    options = {"policy": "fbcache", "threshold": 0.2, "max_consecutive_skips": 2, "compiler": "eager"}
    if max_variants is not None:
        options["max_variants"] = max_variants
    cm = torch.compile(model, backend="fxcache", fullgraph=True, options=options)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        denoise(cm, entry, steps=8)
        denoise(cm, entry, steps=8, seed=1)  # a second generation
    return [str(x.message) for x in w if "max_variants" in str(x.message)]


def test_max_variants_too_small_warns_once():
    """fbcache cycles through 3 plans (the first full step, the probe fused with its "skip" guess, the full
    continuation after a wrong guess); 2 slots recompile them over and over: one warning that names max_variants
    and how many plans the model uses."""
    msgs = _max_variants_warnings(2)
    assert len(msgs) == 1, msgs
    assert "'max_variants'=2" in msgs[0] and "max_variants >= 3" in msgs[0], msgs[0]
    assert _max_variants_warnings(None) == []


def test_default_policy_is_valid():
    policy, engine = parse_options({})
    assert policy.name == fxcache.DEFAULT_POLICY and engine["compiler"] == "inductor"
    for key, value in fxcache.DEFAULT_OPTIONS.items():
        assert getattr(policy, key) == value
    # options without a policy adjust the default; naming the policy gives its published defaults
    assert parse_options({"threshold": 0.1})[0].threshold == 0.1
    named, _ = parse_options({"policy": fxcache.DEFAULT_POLICY})
    assert named.threshold == named.params["threshold"].default


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
