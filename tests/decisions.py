"""Recorded decisions: every policy's per-call decisions and outputs, kept in `tests/data/decisions.json`, so that
a refactor of the engine shows that behaviour did not change (tests/test_decisions.py replays the file).

    python -m tests.decisions --record     # rewrite the file from the code as it is now (on purpose only)

Runs: each benchmark setting of `bench.quality` (the reference model, 50 steps, two prompts in one batch, separate
and batched CFG) and each policy's defaults on two zoo families (Wan: separate calls; PixArt: batched CFG), all
under the "eager" inner compiler (decisions do not depend on it; Inductor's are checked by the speculation tests).
An output is kept as its norm and 64 fixed random projections: any change above float rounding moves them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import fxcache

FILE = Path(__file__).parent / "data" / "decisions.json"
PROJECTIONS = 64
REFERENCE_STEPS = 50
ZOO_STEPS = 12
ZOO_FAMILIES = {"wan": "separate", "pixart": "batched"}


def fingerprint(x: torch.Tensor) -> list[float]:
    """The norm of `x` and its projections on fixed random unit directions."""
    x = x.detach().double().flatten()
    g = torch.Generator().manual_seed(0)
    p = torch.randn(PROJECTIONS, x.numel(), generator=g, dtype=torch.float64)
    p = p / p.norm(dim=1, keepdim=True)
    return [x.norm().item(), *(p @ x).tolist()]


def decisions_of(model) -> list[list]:
    return [[d["step"], d["stream"], d["decision"], d["blocks"], d.get("sites", 0)]
            for d in fxcache.stats(model).decisions]


def compiled(model, options: dict):
    torch._dynamo.reset()
    # One decision for the whole batch, as the runs were recorded (per-request decisions: tests/test_per_sample.py)
    return torch.compile(model, fullgraph=True, backend=fxcache.backend(compiler="eager", decision_log=4096,
                                                                        per_sample=False, **options))


def reference_settings() -> list[dict]:
    """The benchmark's fxcache settings as option dicts (the calibration file path made relative)."""
    from bench import quality

    settings = []

    def collect(name, setting="", compiler="inductor", **options):
        options = {k: (str(Path(v).relative_to(Path.cwd())) if k == "calibration" else v) for k, v in options.items()}
        settings.append({"policy": options.pop("policy", name), "setting": setting, **options})
        return quality.Method(name, "fxcache", setting, None)

    original = quality.fxcache_method
    quality.fxcache_method = collect
    try:
        quality.fxcache_methods("eager", REFERENCE_STEPS)
    finally:
        quality.fxcache_method = original
    settings.insert(0, {"policy": None, "setting": "default"})
    unique = []
    for s in settings:
        if s not in unique:
            unique.append(s)
    return unique


def options_of(entry: dict) -> dict:
    opts = {k: (tuple(v) if isinstance(v, list) else v) for k, v in entry["options"].items() if k != "setting"}
    if opts.get("policy") is None:
        opts.pop("policy", None)
    return opts


def run_reference(entry: dict) -> dict:
    from bench.pipeline import generate
    from bench.quality import PROMPTS
    from bench.reference.model import load

    model, encoder = load()
    cond, uncond = encoder.encode(PROMPTS[:2])
    cm = compiled(model, options_of(entry))
    out = generate(cm, cond, uncond, num_inference_steps=REFERENCE_STEPS, guidance_scale=5.0, seed=7,
                   cfg=entry["cfg"])
    return {"decisions": decisions_of(cm), "output": fingerprint(out)}


def run_zoo(entry: dict) -> dict:
    from .loop import denoise
    from .zoo import ZOO

    family = ZOO[entry["family"]]
    torch.manual_seed(0)
    model = family.build()
    cm = compiled(model, options_of(entry))
    out = denoise(cm, family, steps=ZOO_STEPS, cfg=entry["cfg"])
    return {"decisions": decisions_of(cm), "output": fingerprint(out)}


def run(entry: dict) -> dict:
    return run_reference(entry) if entry["model"] == "reference" else run_zoo(entry)


def entries() -> list[dict]:
    out = []
    for s in reference_settings():
        for cfg in ("separate", "batched"):
            out.append({"model": "reference", "cfg": cfg, "options": s})
    for family, cfg in ZOO_FAMILIES.items():
        for name in fxcache.POLICIES:
            # MagCache needs ratios: flat ones, so that its limits (K, retention) decide
            options = ({"policy": name, "ratios": [1.0] * ZOO_STEPS, "threshold": 0.3} if name == "magcache"
                       else {"policy": name})
            out.append({"model": "zoo", "family": family, "cfg": cfg, "options": options})
    return out


def name_of(entry: dict) -> str:
    o = entry["options"]
    where = "reference" if entry["model"] == "reference" else entry["family"]
    return f"{where}-{entry['cfg']}-{o.get('policy') or 'default'}-{o.get('setting', '')}".rstrip("-")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", action="store_true", help="rewrite tests/data/decisions.json")
    args = ap.parse_args(argv)
    if not args.record:
        ap.error("nothing to do: pass --record to rewrite the recorded file (the test replays it)")
    torch.set_num_threads(1)
    from tqdm.auto import tqdm

    records = []
    FILE.parent.mkdir(parents=True, exist_ok=True)
    for entry in tqdm(entries(), desc="record"):
        records.append({**entry, **run(entry)})
        FILE.write_text(json.dumps({"torch": torch.__version__, "records": records}) + "\n")
    print(f"{len(records)} runs -> {FILE}")


if __name__ == "__main__":
    main()
