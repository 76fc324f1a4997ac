"""Offline calibration of the reference model for the methods that need it (MagCache's magnitude ratios), from
uncached 50-step generations of calibration prompts and seeds that the benchmark does not use.

    python -m bench.calibrate        # writes bench/reference/weights/magcache_ratios.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .pipeline import generate
from .reference.data import all_prompts
from .reference.model import WEIGHTS, load

RATIOS = WEIGHTS / "magcache_ratios.json"
CALIBRATION_PROMPTS = all_prompts()[2::7]  # the benchmark uses all_prompts()[::6]
CALIBRATION_SEED = 1234


def calibrate_magcache(path: Path = RATIOS, steps: int = 50, guidance: float = 5.0, compiler: str = "eager") -> Path:
    import fxcache

    model, encoder = load()
    cond, uncond = encoder.encode(CALIBRATION_PROMPTS)
    torch._dynamo.reset()
    cm = torch.compile(model, fullgraph=True, backend=fxcache.backend(policy="magcache", calibrate=str(path),
                                                                      compiler=compiler))
    generate(cm, cond, uncond, num_inference_steps=steps, guidance_scale=guidance, seed=CALIBRATION_SEED,
             progress=True)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args(argv)
    print(f"wrote {calibrate_magcache(steps=args.steps)}")


if __name__ == "__main__":
    main()
