"""The reference models as `python -m fxcache.profile` targets, and their calibration prompts and seed (prompts
the benchmark does not use; `bench/models.py`).

    python -m fxcache.profile --target bench.profiling:reference --prompts 4 --seeds 1234 --steps 50 \\
        --guidance 5.0 --out bench/reference/weights/calibration.json
    python -m fxcache.profile --target bench.profiling:reference_flux --prompts 4 --seeds 1234 --steps 50 \\
        --guidance 4.0 --out bench/reference/weights-flux/calibration.json
"""

from __future__ import annotations

from fxcache.profile import Target
from fxcache.profile.__main__ import main

from .models import REFERENCES

CALIBRATION = REFERENCES["wan"].calibration  # what every fxcache policy of the benchmark reads ("calibration")
CALIBRATION_PROMPTS = list(REFERENCES["wan"].calibration_prompts)  # the benchmark uses all_prompts()[::6]
CALIBRATION_SEED = 1234
TARGETS = {"wan": "bench.profiling:reference", "flux": "bench.profiling:reference_flux"}


def profile_args(model: str = "wan", steps: int = 50) -> list[str]:
    ref = REFERENCES[model]
    # the first 4 calibration prompts (the committed Wan calibration was profiled on 4 of its 7)
    return ["--target", TARGETS[model], "--prompts", str(min(4, len(ref.calibration_prompts))), "--seeds",
            str(CALIBRATION_SEED), "--steps", str(steps), "--guidance", str(ref.guidance), "--out",
            str(ref.calibration)]


PROFILE_ARGS = profile_args()


def _target(model: str, cfg: str) -> Target:
    """A reference transformer and one generation of calibration prompt `prompt`."""
    ref = REFERENCES[model]
    transformer, encoder = ref.load()
    prompts = ref.calibration_prompts

    def generate_one(t, prompt: int, seed: int, steps: int, guidance: float):
        return ref.generate(t, ref.encode(encoder, [prompts[prompt]]), num_inference_steps=steps,
                            guidance_scale=guidance, seed=seed, cfg=cfg)

    return Target(transformer, generate_one, cfg=cfg, prompts=len(prompts), name=TARGETS[model], data_range=2.0)


def reference(cfg: str = "separate") -> Target:
    """The Wan reference model (bench.pipeline.generate: WanPipeline, or the batched-CFG loop)."""
    return _target("wan", cfg)


def reference_batched() -> Target:
    """The same with batched CFG (one call on [uncond; cond] per step)."""
    return reference("batched")


def reference_flux(cfg: str = "separate") -> Target:
    """The Flux reference model (bench.pipeline_flux.generate_images: FluxPipeline with true CFG)."""
    return _target("flux", cfg)


def calibrate(steps: int = 50, model: str = "wan") -> None:
    """Write a reference model's committed calibration (`profile_args`) when it is missing."""
    main(profile_args(model, steps))
