"""The denoising loop of the Flux reference model: diffusers' own FluxPipeline assembled from local parts (no
tokenizers, text encoders or VAE: embeddings in, `output_type="latent"` out), with true classifier-free guidance
(`true_cfg_scale` and the null prompt as the negative prompt), and a batched-CFG loop written like
`bench/pipeline.py`'s for the layout FluxPipeline does not have.

The scheduler is FLUX.1-dev's: FlowMatchEulerDiscreteScheduler with resolution-dependent shifting; at 256 image
tokens FluxPipeline's `calculate_shift` gives mu = 0.5, i.e. a shift of e^0.5 = 1.65.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from .reference.flux_model import LATENT_CHANNELS, LATENT_SIZE, PIPELINE_GEOMETRY, pack, position_ids, unpack

SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
TOKENS = (LATENT_SIZE // 2) ** 2
MU = 0.5 + (1.15 - 0.5) / (4096 - 256) * (TOKENS - 256)  # FluxPipeline's calculate_shift at 256 tokens
SHIFT = math.exp(MU)  # the same shift as a plain number, for training noise levels


def make_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)


def initial_latents(batch: int, seed: int) -> torch.Tensor:
    """Packed (B, 256, 12) noise, drawn in the unpacked layout so a seed means the same image at any batch."""
    noise = torch.randn((batch, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE),
                        generator=torch.Generator().manual_seed(seed))
    return pack(noise)


def flux_pipeline(transformer):
    from diffusers import FluxPipeline

    return FluxPipeline(scheduler=make_scheduler(), vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)


@torch.no_grad()
def generate_images(
    transformer,
    embeds: dict[str, torch.Tensor],
    *,
    num_inference_steps: int = 30,
    guidance_scale: float = 4.0,
    seed: int = 0,
    cfg: str = "separate",
    latents: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sample images (B, 3, 32, 32) in [-1, 1] (unclamped) for `ImagePromptEncoder.encode`'s embeddings."""
    if cfg not in ("separate", "batched"):
        raise ValueError(f"cfg must be 'separate' or 'batched', got {cfg!r}")
    batch = embeds["prompt_embeds"].shape[0]
    latents = initial_latents(batch, seed) if latents is None else latents.clone()
    if cfg == "separate":
        pipe = flux_pipeline(transformer)
        pipe.set_progress_bar_config(disable=not progress, leave=False, desc="denoise")
        out = pipe(**embeds, latents=latents, num_inference_steps=num_inference_steps, true_cfg_scale=guidance_scale,
                   output_type="latent", return_dict=False, **PIPELINE_GEOMETRY)[0]
        return unpack(out)
    scheduler = make_scheduler()
    sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
    scheduler.set_timesteps(sigmas=sigmas, mu=MU)
    scheduler.set_begin_index(0)
    img_ids, txt_ids = position_ids()
    text = torch.cat([embeds["negative_prompt_embeds"], embeds["prompt_embeds"]])
    pooled = torch.cat([embeds["negative_pooled_prompt_embeds"], embeds["pooled_prompt_embeds"]])
    for t in tqdm(scheduler.timesteps, disable=not progress, desc="denoise", leave=False):
        out = transformer(hidden_states=torch.cat([latents, latents]), timestep=t.expand(2 * batch) / 1000,
                          pooled_projections=pooled, encoder_hidden_states=text, txt_ids=txt_ids, img_ids=img_ids,
                          return_dict=False)[0]
        uncond, cond = out.chunk(2)
        latents = scheduler.step(uncond + guidance_scale * (cond - uncond), t, latents, return_dict=False)[0]
    return unpack(latents)
