"""The two trained reference models the benchmarks run, behind one interface (`REFERENCES["wan"|"flux"]`):

- "wan": the Wan-architecture video DiT (`bench/reference/model.py`) through diffusers' WanPipeline;
- "flux": the Flux-architecture image DiT (`bench/reference/flux_model.py`) through diffusers' FluxPipeline.

Each gives its weights, prompt splits (the benchmark's, held-out ones for choosing settings, calibration ones),
how prompts become the pipeline's conditioning, how one generation runs, the judge, and where its calibration
file lives. The benchmarks take `--model wan|flux` and read everything model-specific from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .pipeline import generate as generate_video
from .pipeline_flux import generate_images
from .reference import flux_model, model as wan_model
from .reference.data import all_prompts
from .reference.flux_data import all_image_prompts
from .reference.flux_judge import score_images
from .reference.judge import score as score_clips


@dataclass(frozen=True)
class Reference:
    name: str  # "wan" | "flux"
    title: str  # for plots and tables
    weights: Path
    load: Callable[[], tuple]  # -> (transformer, prompt encoder)
    every: tuple  # every prompt of the task
    prompts: tuple  # the benchmark's prompts
    heldout: tuple  # prompts the benchmark never uses: where settings are chosen
    calibration_prompts: tuple  # `python -m fxcache.profile`'s prompts (neither of the above)
    guidance: float  # the CFG scale every benchmark uses
    attributes: tuple  # what the judge checks
    _encode: Callable  # (encoder, prompts) -> conditioning
    _generate: Callable  # (transformer, conditioning, **kw) -> samples
    score: Callable  # (samples, prompts) -> {attribute: fraction right, "all": ..., "verdicts": [...]}
    probe: Callable  # transformer -> a module that runs exactly when the last block runs (peers' step counter)
    pipeline: str  # the diffusers pipeline of the separate-CFG layout

    @property
    def calibration(self) -> Path:
        return self.weights / "calibration.json"

    def encode(self, encoder, prompts) -> Any:
        with torch.no_grad():
            return self._encode(encoder, list(prompts))

    def generate(self, transformer, conditioning, **kw) -> torch.Tensor:
        """One generation: kw are num_inference_steps, guidance_scale, seed, cfg ("separate" | "batched")."""
        return self._generate(transformer, conditioning, **kw)


def _heldout(prompts: list, benchmark: list, every: int) -> tuple:
    unused = [p for p in prompts if p not in benchmark]
    return tuple(unused[::every] + unused[1::every])


_WAN_PROMPTS = all_prompts()[::6]  # 8 prompts: every shape, color and direction
# 8 of the 96 image prompts: every shape, color, position and size appears (index 13k: shape k*13 // 32, ...)
_FLUX_PROMPTS = all_image_prompts()[::13]

REFERENCES = {
    "wan": Reference(
        name="wan", title="reference Wan DiT", weights=wan_model.WEIGHTS, load=wan_model.load,
        every=tuple(all_prompts()), prompts=tuple(_WAN_PROMPTS),
        heldout=_heldout(all_prompts(), _WAN_PROMPTS, 5),
        calibration_prompts=tuple(all_prompts()[2::7]), guidance=5.0, attributes=("color", "shape", "direction"),
        _encode=lambda enc, ps: enc.encode(ps),
        _generate=lambda t, c, **kw: generate_video(t, c[0], c[1], **kw),
        score=score_clips, probe=lambda t: t.blocks[-1].attn1.to_q, pipeline="WanPipeline"),
    "flux": Reference(
        name="flux", title="reference Flux DiT", weights=flux_model.WEIGHTS, load=flux_model.load,
        every=tuple(all_image_prompts()), prompts=tuple(_FLUX_PROMPTS),
        heldout=_heldout(all_image_prompts(), _FLUX_PROMPTS, 11),
        calibration_prompts=tuple(all_image_prompts()[7::23]), guidance=4.0,
        attributes=("color", "shape", "position", "size"),
        _encode=lambda enc, ps: enc.encode(ps),
        _generate=lambda t, c, **kw: generate_images(t, c, **kw),
        score=score_images, probe=lambda t: t.single_transformer_blocks[-1].attn.to_q, pipeline="FluxPipeline"),
}


def reference(name: str) -> Reference:
    if name not in REFERENCES:
        raise ValueError(f"--model must be one of {sorted(REFERENCES)}, got {name!r}")
    return REFERENCES[name]


def rows_of(conditioning, rows: slice) -> Any:
    """The conditioning of some prompts only (Wan: a (cond, uncond) pair; Flux: a dict of embeddings)."""
    if isinstance(conditioning, dict):
        return {k: v[rows] for k, v in conditioning.items()}
    return tuple(c[rows] for c in conditioning)
