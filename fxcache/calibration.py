"""Calibration files: what `python -m fxcache.profile` measures on a model, read by every policy through
`options={"calibration": path}`.

One JSON object, versioned:

    {"format": "fxcache-calibration", "version": 1,
     "model":    {"class", "block", "family", "num_units", "fingerprint"},
     "run":      {"num_steps", "prompts", "seeds", "guidance_scale", "cfg", "torch", ...},
     "teacache": {indicator: [c4, .., c0]},                   # "output" is the identity [1.0, 0.0]
     "magcache": {stream name: [gamma_1 .. gamma_N]},          # gamma_1 = 1
     "mixcache": {"theta", "delta1", "delta2", "blocks", "mu", "sigma", "impact": {"step", "cfg", "block"}},
     "adacache": {"sites", "per_step": {"mean", "p10", "p50", "p90", "max"}, "per_block"},
     "curves":   {name: [one value per step]},                 # what the plot shows
     "tuned":    {"options": {"policy", ...} or null, ...}}    # optional: `python -m fxcache.tune`'s choice

`load` validates the file and raises an `OptionError` naming the file and what is wrong; `check_model` compares
it with the graph being compiled (block class and unit count, and the model class where the graph tells it).
`save` writes atomically (a temporary file renamed over the target). `save_mag_ratios` writes MagCache's own,
smaller ratio file (what `MagCache(calibrate=path)` records from one uncached generation).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .errors import option_error

FORMAT = "fxcache-calibration"
VERSION = 1
SECTIONS = ("model", "run", "teacache", "magcache", "mixcache", "adacache")
PROFILE_HINT = "write one with `python -m fxcache.profile --target module:callable --out PATH`"


class Calibration(dict):
    """The loaded file (a dict of its sections) and where it came from (`path`)."""

    path: str = "<memory>"

    def section(self, name: str) -> dict:
        return self.get(name) or {}


def _fail(path, problem: str) -> ValueError:
    return option_error(f"fxcache: option 'calibration': {str(path)!r} {problem}; {PROFILE_HINT}")


def _finite_list(v, minimum: float | None = None) -> bool:
    return (isinstance(v, list) and len(v) > 0
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                    and (minimum is None or x >= minimum) for x in v))


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate(data: Any, path="<memory>") -> Calibration:
    """`data` as a Calibration, or an OptionError saying what is wrong with it."""
    if not isinstance(data, dict):
        raise _fail(path, f"is not a calibration file (a JSON {type(data).__name__}, not an object)")
    if data.get("format") != FORMAT:
        raise _fail(path, f"is not a calibration file (format {data.get('format')!r}, expected {FORMAT!r})")
    if data.get("version") != VERSION:
        raise _fail(path, f"has version {data.get('version')!r}; this fxcache reads version {VERSION}")
    for name in SECTIONS:
        if not isinstance(data.get(name), dict):
            raise _fail(path, f"has no {name!r} section" if name not in data else
                        f"has a {name!r} section that is not an object")
    model = data["model"]
    if not (isinstance(model.get("num_units"), int) and model["num_units"] > 0):
        raise _fail(path, f"has no valid model.num_units (got {model.get('num_units')!r})")
    for indicator, coeffs in data["teacache"].items():
        if not _finite_list(coeffs):
            raise _fail(path, f"has teacache.{indicator} that is not a list of finite numbers: {coeffs!r}")
    for stream, ratios in data["magcache"].items():
        if not _finite_list(ratios, 0.0):
            raise _fail(path, f"has magcache.{stream} that is not a list of finite numbers >= 0: {ratios!r}")
    mix = data["mixcache"]
    if mix:
        for key in ("theta", "delta1", "delta2"):
            if not _number(mix.get(key)):
                raise _fail(path, f"has mixcache.{key} that is not a finite number: {mix.get(key)!r}")
        impact = mix.get("impact")
        if not isinstance(impact, dict) or not isinstance(impact.get("block", {}), dict):
            raise _fail(path, "has no mixcache.impact object")
        for key in ("step", "cfg"):
            if key in impact and not _number(impact[key]):
                raise _fail(path, f"has mixcache.impact.{key} that is not a finite number: {impact[key]!r}")
        for cut, values in impact.get("block", {}).items():
            if not _finite_list(values, 0.0):
                raise _fail(path, f"has mixcache.impact.block.{cut} that is not a list of finite numbers")
    if "tuned" in data:
        tuned = data["tuned"]
        options = tuned.get("options") if isinstance(tuned, dict) else False
        if not (options is None or isinstance(options, dict) and isinstance(options.get("policy"), str)):
            raise _fail(path, "has a 'tuned' section whose 'options' is neither null nor an object with a 'policy'")
    out = Calibration(data)
    out.path = str(path)
    return out


def tuned_options(cal: "Calibration | None") -> dict | None:
    """The options `python -m fxcache.tune` chose and wrote into the file (no setting held the floor: policy
    "none"); None when the file was not tuned."""
    tuned = (cal or {}).get("tuned")
    if not tuned:
        return None
    return dict(tuned["options"] or {"policy": "none"})


def load(path) -> Calibration:
    """Read and validate a calibration file; every problem is an OptionError naming the file."""
    if not isinstance(path, (str, os.PathLike)):
        raise option_error(f"fxcache: option 'calibration' must be a path to a calibration file, got {path!r}")
    p = Path(path)
    if not p.exists():
        raise _fail(p, "does not exist")
    if not p.is_file():
        raise _fail(p, "is not a file")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(p, f"cannot be read ({type(e).__name__}: {e})") from None
    except ValueError as e:
        raise _fail(p, f"is not JSON ({e})") from None
    return validate(data, p)


def save(path, data: dict) -> Path:
    """Validate `data` and write it to `path` atomically (a temporary file next to it, then renamed)."""
    validate(data, path)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def save_mag_ratios(path, streams: dict[str, list[float]]) -> None:
    """Write {stream: [gamma_1..gamma_N]} as MagCache's ratio file (gamma_1 = 1: no previous step), atomically:
    what `MagCache(calibrate=path)` records from one uncached generation, read back by its option `ratios`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"method": "magcache", "num_steps": max((len(v) for v in streams.values()), default=0),
            "streams": streams}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def _basename(type_name: str) -> str:
    return type_name.rsplit(".", 1)[-1].strip("'>")


def check_model(cal: Calibration, discovery, model_class: str | None = None) -> None:
    """Raise an OptionError when the file was profiled on another model than the graph being compiled: another
    block unit count, another block class, or (where the caller knows it) another model class."""
    m = cal["model"]
    if m.get("num_units") != discovery.num_units:
        raise _fail(cal.path, f"was profiled on a model with {m.get('num_units')} block units "
                              f"({m.get('class')}), but this graph has {discovery.num_units}")
    block = _basename(discovery.units[0].module_type) if discovery.units else None
    if m.get("block") and block and _basename(m["block"]) != block:
        raise _fail(cal.path, f"was profiled on a model with {_basename(m['block'])} blocks ({m.get('class')}), "
                              f"but this graph's blocks are {block}")
    if m.get("class") and model_class and _basename(m["class"]) != _basename(model_class):
        raise _fail(cal.path, f"was profiled on {_basename(m['class'])}, but this graph is traced from "
                              f"{_basename(model_class)}")


def traced_model_class(discovery) -> str | None:
    """The class of the module whose forward Dynamo is compiling now, when that module holds the graph's block
    list (private API; None if not readable, or if the graph is traced from another frame)."""
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        module = InstructionTranslator.current_tx().f_locals.get("self")
        import torch

        if not isinstance(module, torch.nn.Module) or not discovery.units:
            return None
        module.get_submodule(f"{discovery.units[0].list_name}.{discovery.units[0].index}")
    except Exception:  # noqa: BLE001 - a private API: any failure means "not known"
        return None
    return type(module).__name__
