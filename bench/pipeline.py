"""The denoising loop the benchmarks run: diffusers' FlowMatchEulerDiscreteScheduler with classifier-free
guidance, calling the transformer exactly as diffusers' pipelines do.

- cfg="separate": diffusers' own `WanPipeline`, assembled from local parts (no tokenizer, text encoder or VAE:
  `prompt_embeds` in, `output_type="latent"` out). Two calls per step, cond then uncond, each inside
  `transformer.cache_context(...)`; diffusers' cache hooks need those contexts, fxcache detects the streams itself.
- cfg="batched": one call on `[uncond; cond]`, the layout of the CogVideoX, PixArt, SD3 and Latte pipelines
  (a loop written here: WanPipeline has no batched mode).
"""

from __future__ import annotations

import contextlib

import torch
from tqdm.auto import tqdm

LATENT_SHAPE = (3, 8, 32, 32)  # (C, F, H, W) of the reference model's clips
SHIFT = 3.0


def make_scheduler(shift: float = SHIFT):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def initial_latents(batch: int, seed: int, shape=LATENT_SHAPE) -> torch.Tensor:
    return torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed))


# WanPipeline derives the latent shape from pixel sizes through its (absent) VAE's default factors 4 and 8:
# 29 frames of 256x256 pixels are the 8 latent frames of 32x32 that the reference model works on.
PIPELINE_GEOMETRY = dict(num_frames=29, height=256, width=256)


def wan_pipeline(transformer, shift: float = SHIFT):
    from diffusers import WanPipeline

    return WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                       scheduler=make_scheduler(shift))


def _context(model, name: str):
    ctx = getattr(model, "cache_context", None)
    return ctx(name) if callable(ctx) else contextlib.nullcontext()


@torch.no_grad()
def generate(
    transformer,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None = None,
    *,
    num_inference_steps: int = 50,
    guidance_scale: float = 5.0,
    seed: int = 0,
    cfg: str = "separate",
    latents: torch.Tensor | None = None,
    shift: float = SHIFT,
    progress: bool = False,
) -> torch.Tensor:
    """Sample clips (B, C, F, H, W) in [-1, 1] (unclamped) for a batch of prompt embeddings."""
    if cfg not in ("separate", "batched"):
        raise ValueError(f"cfg must be 'separate' or 'batched', got {cfg!r}")
    batch = prompt_embeds.shape[0]
    latents = initial_latents(batch, seed) if latents is None else latents.clone()
    if cfg == "separate":
        pipe = wan_pipeline(transformer, shift)
        pipe.set_progress_bar_config(disable=not progress, leave=False, desc="denoise")
        return pipe(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds, latents=latents,
                    num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                    output_type="latent", return_dict=False, **PIPELINE_GEOMETRY)[0]
    scheduler = make_scheduler(shift)
    scheduler.set_timesteps(num_inference_steps)
    use_cfg = guidance_scale > 1.0 and negative_prompt_embeds is not None
    for t in tqdm(scheduler.timesteps, disable=not progress, desc="denoise", leave=False):
        if use_cfg and cfg == "batched":
            x = torch.cat([latents, latents])
            emb = torch.cat([negative_prompt_embeds, prompt_embeds])
            out = transformer(hidden_states=x, timestep=t.expand(2 * batch), encoder_hidden_states=emb,
                              return_dict=False)[0]
            uncond, cond = out.chunk(2)
            noise_pred = uncond + guidance_scale * (cond - uncond)
        else:  # no guidance (separate-CFG generation returned through WanPipeline above)
            with _context(transformer, "cond"):
                noise_pred = transformer(hidden_states=latents, timestep=t.expand(batch),
                                         encoder_hidden_states=prompt_embeds, return_dict=False)[0]
        latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
    return latents
