"""The reference model as a `python -m fxcache.profile` target, and the calibration prompts and seed (prompts the
benchmark does not use).

    python -m fxcache.profile --target bench.profiling:reference --prompts 4 --seeds 1234 --steps 50 \\
        --out bench/reference/weights/calibration.json
"""

from __future__ import annotations

from fxcache.profile import Target
from fxcache.profile.__main__ import main

from .pipeline import generate
from .reference.data import all_prompts
from .reference.model import WEIGHTS, load

CALIBRATION = WEIGHTS / "calibration.json"  # what every fxcache policy of the benchmark reads (options "calibration")
CALIBRATION_PROMPTS = all_prompts()[2::7]  # the benchmark uses all_prompts()[::6]
CALIBRATION_SEED = 1234
PROFILE_ARGS = ["--target", "bench.profiling:reference", "--prompts", "4", "--seeds", str(CALIBRATION_SEED),
                "--steps", "50", "--guidance", "5.0", "--out", str(CALIBRATION)]


def reference(cfg: str = "separate") -> Target:
    """The reference transformer and one generation of calibration prompt `prompt` (bench.pipeline.generate)."""
    model, encoder = load()

    def generate_one(transformer, prompt: int, seed: int, steps: int, guidance: float):
        cond, uncond = encoder.encode([CALIBRATION_PROMPTS[prompt]])
        return generate(transformer, cond, uncond, num_inference_steps=steps, guidance_scale=guidance, seed=seed,
                        cfg=cfg)

    return Target(model, generate_one, cfg=cfg, prompts=len(CALIBRATION_PROMPTS), name="bench.profiling:reference")


def reference_batched() -> Target:
    """The same with batched CFG (one call on [uncond; cond] per step)."""
    return reference("batched")


def calibrate(steps: int = 50) -> None:
    """Write the committed calibration (the command line in PROFILE_ARGS) when it is missing."""
    args = list(PROFILE_ARGS)
    args[args.index("--steps") + 1] = str(steps)
    main(args)
