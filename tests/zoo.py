"""A zoo of TINY randomly initialised diffusers transformers, one per family.

Each entry builds a deterministic float32 model in eval mode and makes the keyword arguments of ONE denoising call
exactly as the family's diffusers pipeline builds them (`return_dict=False`).

Conventions of `inputs(timestep, batch, prompt=0)`:
- `timestep` is a 0-dim float tensor on a 0..1000 schedule (1000 = noise); the entry applies what the pipeline does
  to it: `t.expand(batch)`, `/ 1000` (Flux, Chroma, QwenImage, AuraFlow, Cosmos), or a reversal where the model uses
  t=0 as noise (Mochi `1000 - t`, Lumina2 `1 - t/1000`, Z-Image `(1000 - t)/1000`; `timestep_scale` then only gives
  the magnitude). It stays float32 even where the pipeline's default scheduler hands over int64 timesteps
  (DDIM/DPM-Solver in CogVideoX, PixArt, Latte, DiT).
- `batch` is the batch size of this model call. Latents depend only on `batch` (seed 0); text embeddings, pooled
  embeddings, masks and class labels depend only on `prompt` (one prompt repeated over the batch, like
  `num_images_per_prompt`), so `prompt=0` / `prompt=1` give cond / uncond conditioning for the same latents.
  For DiT `prompt=1` is the null class. QwenImage and Z-Image trim text to the prompt's length, so their text
  sequence length differs between prompts (6 vs 5 tokens), as in the pipelines.
- Text masks are padded at the end like a tokenizer's, with a valid length that depends on `prompt`.
- Learned-sigma families (PixArt, Latte, DiT, HunyuanDiT) are built with out_channels = in_channels so the output
  has the latent shape (the pipelines handle both).

`cfg` says how the family's pipeline does classifier-free guidance: "separate" = two model calls per step (cond and
uncond, usually inside `transformer.cache_context("cond"/"uncond")`), "batched" = one call on `[uncond; cond]`
(DiT and Z-Image batch `[cond; uncond]` instead).

No family was left out. Deviations from the released configs:
- Cosmos (Predict2 text2image) is built with `concat_padding_mask=False`: the released `True` resizes the mask with
  torchvision, which is not installed here (NameError `transforms`).
- HunyuanDiT has 4 blocks: its U-Net-style skips need an even count (push for `i < n//2 - 1`, pop for `i > n//2`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

TEXT_LEN = 8  # default text length; in every entry the image-token count differs from the text-token count


@dataclass
class ZooEntry:
    name: str
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[torch.Tensor, int], dict]  # (timestep, batch, *, prompt=0) -> kwargs for model(**kwargs)
    cfg: str  # "separate" | "batched"
    timestep_scale: float = 1.0
    blocks: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------------------------------- helpers


def _randn(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _latents(batch: int, *shape: int) -> torch.Tensor:
    return _randn((batch, *shape), seed=0)


def _text(prompt: int, batch: int, dim: int, length: int = TEXT_LEN, seed: int = 1000) -> torch.Tensor:
    """(batch, length, dim) embeddings of prompt `prompt`, repeated over the batch."""
    return _randn((1, length, dim), seed=seed + prompt).repeat(batch, 1, 1)


def _pooled(prompt: int, batch: int, dim: int) -> torch.Tensor:
    return _randn((1, dim), seed=2000 + prompt).repeat(batch, 1)


def _valid_len(prompt: int, length: int = TEXT_LEN) -> int:
    return length - 2 - prompt % 3


def _mask(prompt: int, batch: int, length: int = TEXT_LEN) -> torch.Tensor:
    """int64 tokenizer attention mask, ones then zero padding."""
    return (torch.arange(length) < _valid_len(prompt, length)).long().unsqueeze(0).repeat(batch, 1)


def _t(timestep: torch.Tensor, batch: int) -> torch.Tensor:
    return timestep.expand(batch)


def _build(cls, **config) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return cls(**config).float().eval()

    return build


# ---------------------------------------------------------------------------------------------------------- families


def _wan_inputs(timestep, batch, prompt=0):
    # WanPipeline: T5 embeds trimmed to the valid length and zero-padded to max_sequence_length.
    emb = _text(prompt, batch, 16)
    emb[:, _valid_len(prompt) :] = 0
    return dict(
        hidden_states=_latents(batch, 4, 2, 8, 8),
        timestep=_t(timestep, batch),
        encoder_hidden_states=emb,
        attention_kwargs=None,
        return_dict=False,
    )


def _cogvideox_rope(height: int, width: int, num_frames: int, head_dim: int, patch: int, sample_hw: tuple[int, int]):
    # CogVideoXPipeline._prepare_rotary_positional_embeddings (CogVideoX 1.0 branch), latent-space sizes.
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    grid_h, grid_w = height // patch, width // patch
    crops = get_resize_crop_region_for_grid((grid_h, grid_w), sample_hw[1] // patch, sample_hw[0] // patch)
    return get_3d_rotary_pos_embed(
        embed_dim=head_dim, crops_coords=crops, grid_size=(grid_h, grid_w), temporal_size=num_frames
    )


def _cogvideox_inputs(timestep, batch, prompt=0):
    return dict(
        hidden_states=_latents(batch, 2, 4, 8, 8),  # (B, F, C, H, W)
        encoder_hidden_states=_text(prompt, batch, 16),
        timestep=_t(timestep, batch),
        image_rotary_emb=_cogvideox_rope(8, 8, 2, head_dim=16, patch=2, sample_hw=(8, 8)),
        attention_kwargs=None,
        return_dict=False,
    )


def _hunyuanvideo_inputs(timestep, batch, prompt=0, guidance_scale=6.0):
    return dict(
        hidden_states=_latents(batch, 4, 2, 8, 8),
        timestep=_t(timestep, batch).to(torch.float32),
        encoder_hidden_states=_text(prompt, batch, 16),
        encoder_attention_mask=_mask(prompt, batch).to(torch.float32),  # pipeline casts the mask to transformer_dtype
        pooled_projections=_pooled(prompt, batch, 8),
        guidance=torch.tensor([guidance_scale] * batch, dtype=torch.float32) * 1000.0,
        attention_kwargs=None,
        return_dict=False,
    )


def _ltx_inputs(timestep, batch, prompt=0, frame_rate=25):
    from diffusers.pipelines.ltx.pipeline_ltx import LTXPipeline

    latents = LTXPipeline._pack_latents(_latents(batch, 8, 2, 4, 4))  # (B, F*H*W, C)
    return dict(
        hidden_states=latents,
        encoder_hidden_states=_text(prompt, batch, 16),
        timestep=_t(timestep, batch),
        encoder_attention_mask=_mask(prompt, batch).bool(),
        num_frames=2,
        height=4,
        width=4,
        rope_interpolation_scale=(8 / frame_rate, 32, 32),  # (vae temporal ratio / fps, vae spatial, vae spatial)
        attention_kwargs=None,
        return_dict=False,
    )


def _latte_inputs(timestep, batch, prompt=0):
    return dict(
        hidden_states=_latents(batch, 4, 2, 8, 8),
        encoder_hidden_states=_text(prompt, batch, 16),
        timestep=_t(timestep, batch),
        enable_temporal_attentions=True,
        return_dict=False,
    )


def _flux_image_ids(height: int, width: int) -> torch.Tensor:
    # FluxPipeline._prepare_latent_image_ids on the packed (H/2, W/2) grid.
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(height)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(width)[None, :]
    return ids.reshape(height * width, 3)


def _flux_pack(latents: torch.Tensor) -> torch.Tensor:
    # FluxPipeline._pack_latents: (B, C, H, W) -> (B, H/2 * W/2, C*4)
    b, c, h, w = latents.shape
    latents = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return latents.reshape(b, (h // 2) * (w // 2), c * 4)


def _flux_inputs(timestep, batch, prompt=0, guidance_scale=3.5):
    return dict(
        hidden_states=_flux_pack(_latents(batch, 4, 8, 8)),
        timestep=_t(timestep, batch).to(torch.float32) / 1000,
        guidance=torch.full([1], guidance_scale, dtype=torch.float32).expand(batch),
        pooled_projections=_pooled(prompt, batch, 8),
        encoder_hidden_states=_text(prompt, batch, 16),
        txt_ids=torch.zeros(TEXT_LEN, 3),
        img_ids=_flux_image_ids(4, 4),
        joint_attention_kwargs=None,
        return_dict=False,
    )


def _sd3_inputs(timestep, batch, prompt=0):
    return dict(
        hidden_states=_latents(batch, 4, 8, 8),
        timestep=_t(timestep, batch),
        encoder_hidden_states=_text(prompt, batch, 16),
        pooled_projections=_pooled(prompt, batch, 8),
        joint_attention_kwargs=None,
        return_dict=False,
    )


def _pixart_inputs(timestep, batch, prompt=0):
    return dict(
        hidden_states=_latents(batch, 4, 8, 8),
        encoder_hidden_states=_text(prompt, batch, 16),
        encoder_attention_mask=_mask(prompt, batch),
        timestep=_t(timestep, batch),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},  # PixArt-Sigma
        return_dict=False,
    )


def _core() -> list[ZooEntry]:
    import diffusers as d

    return [
        ZooEntry(
            "wan",
            _build(d.WanTransformer3DModel, patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
                   in_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=3,
                   rope_max_seq_len=32),
            _wan_inputs, "separate", blocks=("blocks",),
        ),
        ZooEntry(
            "cogvideox",
            _build(d.CogVideoXTransformer3DModel, num_attention_heads=2, attention_head_dim=16, in_channels=4,
                   out_channels=4, time_embed_dim=16, text_embed_dim=16, num_layers=3, sample_width=8,
                   sample_height=8, sample_frames=5, patch_size=2, max_text_seq_length=TEXT_LEN,
                   use_rotary_positional_embeddings=True),
            _cogvideox_inputs, "batched", blocks=("transformer_blocks",),
        ),
        ZooEntry(
            "hunyuanvideo",
            _build(d.HunyuanVideoTransformer3DModel, in_channels=4, out_channels=4, num_attention_heads=2,
                   attention_head_dim=16, num_layers=3, num_single_layers=3, num_refiner_layers=1, mlp_ratio=2.0,
                   patch_size=2, patch_size_t=1, text_embed_dim=16, pooled_projection_dim=8,
                   rope_axes_dim=(4, 6, 6)),
            _hunyuanvideo_inputs, "separate", blocks=("transformer_blocks", "single_transformer_blocks"),
        ),
        ZooEntry(
            "ltx",
            _build(d.LTXVideoTransformer3DModel, in_channels=8, out_channels=8, num_attention_heads=2,
                   attention_head_dim=16, cross_attention_dim=32, num_layers=3, caption_channels=16),
            _ltx_inputs, "batched", blocks=("transformer_blocks",),
        ),
        ZooEntry(
            "latte",
            _build(d.LatteTransformer3DModel, num_attention_heads=2, attention_head_dim=8, in_channels=4,
                   out_channels=4, num_layers=3, cross_attention_dim=16, sample_size=8, patch_size=2,
                   num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False,
                   norm_eps=1e-6, caption_channels=16, video_length=2, activation_fn="gelu-approximate"),
            _latte_inputs, "batched", blocks=("transformer_blocks", "temporal_transformer_blocks"),
        ),
        ZooEntry(
            "flux",
            _build(d.FluxTransformer2DModel, patch_size=1, in_channels=16, num_layers=3, num_single_layers=3,
                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8,
                   guidance_embeds=True, axes_dims_rope=(4, 6, 6)),
            _flux_inputs, "separate", timestep_scale=1e-3, blocks=("transformer_blocks", "single_transformer_blocks"),
        ),
        ZooEntry(
            "sd3",
            _build(d.SD3Transformer2DModel, sample_size=8, patch_size=2, in_channels=4, num_layers=3,
                   attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                   pooled_projection_dim=8, out_channels=4, pos_embed_max_size=8, qk_norm="rms_norm"),
            _sd3_inputs, "batched", blocks=("transformer_blocks",),
        ),
        ZooEntry(
            "pixart",
            _build(d.PixArtTransformer2DModel, num_attention_heads=2, attention_head_dim=8, in_channels=4,
                   out_channels=4, num_layers=3, cross_attention_dim=16, sample_size=8, patch_size=2,
                   caption_channels=16),
            _pixart_inputs, "batched", blocks=("transformer_blocks",),
        ),
    ]



# ------------------------------------------------------------------------------------------------------------ extras


def _mochi_inputs(timestep, batch, prompt=0):
    # Mochi's scheduler has inverted sigmas: the model sees 1000 - t (0 = noise).
    return dict(
        hidden_states=_latents(batch, 4, 2, 8, 8),
        encoder_hidden_states=_text(prompt, batch, 16),
        timestep=(1000 - timestep).expand(batch).to(torch.float32),
        encoder_attention_mask=_mask(prompt, batch).bool(),
        attention_kwargs=None,
        return_dict=False,
    )


def _allegro_rope(grid_h: int, grid_w: int, num_frames: int, head_dim: int, interpolation_scale):
    # AllegroPipeline._prepare_rotary_positional_embeddings
    from diffusers.models.embeddings import get_3d_rotary_pos_embed_allegro

    freqs_t, freqs_h, freqs_w, grid_t, grid_h, grid_w = get_3d_rotary_pos_embed_allegro(
        embed_dim=head_dim, crops_coords=((0, 0), (grid_h, grid_w)), grid_size=(grid_h, grid_w),
        temporal_size=num_frames, interpolation_scale=interpolation_scale,
    )
    pos = torch.cartesian_prod(grid_t.long(), grid_h.long(), grid_w.long())
    grid_t, grid_h, grid_w = pos.reshape(-1, 3).transpose(0, 1).reshape(3, 1, -1).contiguous()
    return (freqs_t, freqs_h, freqs_w), (grid_t, grid_h, grid_w)


def _allegro_inputs(timestep, batch, prompt=0):
    return dict(
        hidden_states=_latents(batch, 4, 2, 8, 8),
        encoder_hidden_states=_text(prompt, batch, 16),
        encoder_attention_mask=_mask(prompt, batch),
        timestep=_t(timestep, batch),
        image_rotary_emb=_allegro_rope(4, 4, 2, head_dim=12, interpolation_scale=(2.2, 2.0, 2.0)),
        return_dict=False,
    )


def _cogview4_inputs(timestep, batch, prompt=0):
    # GLM embeds, left-padded to a multiple of 16 tokens, no mask; micro-conditions in pixels.
    size = torch.tensor([[128.0, 128.0]]).repeat(batch, 1)
    return dict(
        hidden_states=_latents(batch, 4, 16, 16),
        encoder_hidden_states=_text(prompt, batch, 16, length=16),
        timestep=_t(timestep, batch),
        original_size=size,
        target_size=size.clone(),
        crop_coords=torch.zeros(batch, 2),
        attention_kwargs=None,
        return_dict=False,
    )


def _lumina2_inputs(timestep, batch, prompt=0):
    # Lumina2 uses t=0 as noise: the pipeline passes 1 - t / 1000.
    return dict(
        hidden_states=_latents(batch, 4, 8, 8),
        timestep=(1 - timestep / 1000).expand(batch),
        encoder_hidden_states=_text(prompt, batch, 16),
        encoder_attention_mask=_mask(prompt, batch),
        return_dict=False,
        attention_kwargs=None,
    )


def _sana_inputs(timestep, batch, prompt=0):
    return dict(
        hidden_states=_latents(batch, 4, 8, 8),
        encoder_hidden_states=_text(prompt, batch, 16),
        encoder_attention_mask=_mask(prompt, batch),
        timestep=_t(timestep, batch) * 1.0,  # * transformer.config.timestep_scale
        return_dict=False,
        attention_kwargs=None,
    )


def _qwenimage_inputs(timestep, batch, prompt=0):
    # Qwen2.5-VL embeds trimmed to the prompt's own length; an all-ones mask is replaced by None.
    return dict(
        hidden_states=_flux_pack(_latents(batch, 4, 8, 8)),
        timestep=_t(timestep, batch).to(torch.float32) / 1000,
        guidance=None,
        encoder_hidden_states_mask=None,
        encoder_hidden_states=_text(prompt, batch, 16, length=_valid_len(prompt)),
        img_shapes=[[(1, 4, 4)]] * batch,
        attention_kwargs={},
        return_dict=False,
    )


def _hunyuandit_rope(grid: int, head_dim: int, patch: int):
    from diffusers.models.embeddings import get_2d_rotary_pos_embed
    from diffusers.pipelines.hunyuandit.pipeline_hunyuandit import get_resize_crop_region_for_grid

    crops = get_resize_crop_region_for_grid((grid, grid), 512 // 8 // patch)
    return get_2d_rotary_pos_embed(head_dim, crops, (grid, grid), output_type="pt")


def _hunyuandit_inputs(timestep, batch, prompt=0):
    return dict(
        hidden_states=_latents(batch, 4, 8, 8),
        timestep=timestep.repeat(batch),  # torch.tensor([t] * batch)
        encoder_hidden_states=_text(prompt, batch, 16, length=4),  # CLIP (text_len)
        text_embedding_mask=_mask(prompt, batch, length=4),
        encoder_hidden_states_t5=_text(prompt, batch, 16, seed=3000),  # mT5 (text_len_t5)
        text_embedding_mask_t5=_mask(prompt, batch),
        image_meta_size=torch.tensor([[64.0, 64.0, 64.0, 64.0, 0.0, 0.0]]).repeat(batch, 1),
        style=torch.zeros(batch, dtype=torch.long),
        image_rotary_emb=_hunyuandit_rope(4, head_dim=8, patch=2),
        return_dict=False,
    )


def _auraflow_inputs(timestep, batch, prompt=0):
    # The pipeline zeroes the padded T5 positions (embeds * mask); the model prepends 8 register tokens.
    emb = _text(prompt, batch, 16) * _mask(prompt, batch).unsqueeze(-1)
    return dict(
        hidden_states=_latents(batch, 4, 16, 16),
        encoder_hidden_states=emb,
        timestep=(timestep / 1000).reshape(1).expand(batch).to(torch.float32),
        return_dict=False,
        attention_kwargs=None,
    )


def _dit_inputs(timestep, batch, prompt=0):
    # Class-conditional: prompt 1 is the null class (1000) the pipeline uses for the unconditional half.
    label = 1000 if prompt == 1 else 207 + prompt
    return dict(
        hidden_states=_latents(batch, 4, 8, 8),
        timestep=_t(timestep, batch),
        class_labels=torch.full((batch,), label, dtype=torch.long),
        return_dict=False,
    )


def _chroma_inputs(timestep, batch, prompt=0):
    # T5 mask with the first padding token unmasked, extended with ones over the image tokens.
    valid = _valid_len(prompt)
    txt_mask = (torch.arange(TEXT_LEN) <= valid).float().unsqueeze(0).repeat(batch, 1)
    return dict(
        hidden_states=_flux_pack(_latents(batch, 4, 8, 8)),
        timestep=_t(timestep, batch).to(torch.float32) / 1000,
        encoder_hidden_states=_text(prompt, batch, 16),
        txt_ids=torch.zeros(TEXT_LEN, 3),
        img_ids=_flux_image_ids(4, 4),
        attention_mask=torch.cat([txt_mask, torch.ones(batch, 16, dtype=torch.bool)], dim=1),
        joint_attention_kwargs=None,
        return_dict=False,
    )


def _hidream_inputs(timestep, batch, prompt=0):
    return dict(
        hidden_states=_latents(batch, 4, 8, 8),
        timesteps=_t(timestep, batch),
        # T5 and Llama tokens are concatenated in the double-stream blocks: 6 + 6 text vs 16 image tokens
        encoder_hidden_states_t5=_text(prompt, batch, 16, length=6),
        encoder_hidden_states_llama3=_randn((6, 1, 6, 16), seed=3000 + prompt).repeat(1, batch, 1, 1),  # 6 layers
        pooled_embeds=_pooled(prompt, batch, 8),
        attention_kwargs=None,
        return_dict=False,
    )


def _cosmos_inputs(timestep, batch, prompt=0):
    # Cosmos-Predict2 text2image: timestep = sigma / (sigma + 1) in [0, 1]; padding mask in pixels.
    return dict(
        hidden_states=_latents(batch, 4, 1, 8, 8),
        timestep=_t(timestep, batch).to(torch.float32) / 1000,
        encoder_hidden_states=_text(prompt, batch, 16),
        padding_mask=torch.zeros(1, 1, 64, 64),
        return_dict=False,
    )


def _easyanimate_inputs(timestep, batch, prompt=0):
    return dict(
        hidden_states=_latents(batch, 4, 2, 8, 8),
        timestep=timestep.repeat(batch),  # torch.tensor([t] * batch)
        encoder_hidden_states=_text(prompt, batch, 16),
        return_dict=False,
    )


def _zimage_inputs(timestep, batch, prompt=0):
    # Lists of per-sample (C, 1, H, W) latents and per-prompt caption features trimmed by the mask; t=0 is noise.
    # Z-Image pads image and caption tokens to multiples of 32: 64 image vs 32 caption tokens.
    latents = _latents(batch, 4, 16, 16).unsqueeze(2)
    return dict(
        x=list(latents.unbind(dim=0)),
        t=(1000 - timestep.expand(batch)) / 1000,
        cap_feats=[_randn((_valid_len(prompt), 16), seed=1000 + prompt)] * batch,
        joint_attention_kwargs=None,
        return_dict=False,
    )


def _extras() -> list[ZooEntry]:
    import diffusers as d

    return [
        ZooEntry(
            "mochi",
            _build(d.MochiTransformer3DModel, patch_size=2, num_attention_heads=2, attention_head_dim=16,
                   num_layers=3, pooled_projection_dim=16, in_channels=4, text_embed_dim=16, time_embed_dim=8,
                   max_sequence_length=TEXT_LEN),
            _mochi_inputs, "batched", blocks=("transformer_blocks",),  # reversed: 1000 - t
        ),
        ZooEntry(
            "allegro",
            _build(d.AllegroTransformer3DModel, patch_size=2, patch_size_t=1, num_attention_heads=2,
                   attention_head_dim=12, in_channels=4, out_channels=4, num_layers=3, cross_attention_dim=24,
                   sample_height=8, sample_width=8, sample_frames=2, caption_channels=16),
            _allegro_inputs, "batched", blocks=("transformer_blocks",),
        ),
        ZooEntry(
            "cogview4",
            _build(d.CogView4Transformer2DModel, patch_size=2, in_channels=4, out_channels=4, num_layers=3,
                   attention_head_dim=16, num_attention_heads=2, text_embed_dim=16, time_embed_dim=8,
                   condition_dim=4, pos_embed_max_size=16, sample_size=16, rope_axes_dim=(8, 8)),
            _cogview4_inputs, "separate", blocks=("transformer_blocks",),
        ),
        ZooEntry(
            "lumina2",
            _build(d.Lumina2Transformer2DModel, sample_size=8, patch_size=2, in_channels=4, hidden_size=32,
                   num_layers=3, num_refiner_layers=1, num_attention_heads=2, num_kv_heads=1, multiple_of=16,
                   axes_dim_rope=(4, 6, 6), axes_lens=(32, 32, 32), cap_feat_dim=16),
            _lumina2_inputs, "separate", timestep_scale=1e-3, blocks=("layers",),  # reversed: 1 - t/1000
        ),
        ZooEntry(
            "sana",
            _build(d.SanaTransformer2DModel, in_channels=4, out_channels=4, num_attention_heads=2,
                   attention_head_dim=16, num_layers=3, num_cross_attention_heads=2, cross_attention_head_dim=16,
                   cross_attention_dim=32, caption_channels=16, sample_size=8, patch_size=1),
            _sana_inputs, "batched", blocks=("transformer_blocks",),
        ),
        ZooEntry(
            "qwenimage",
            _build(d.QwenImageTransformer2DModel, patch_size=2, in_channels=16, out_channels=4, num_layers=3,
                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(4, 6, 6)),
            _qwenimage_inputs, "separate", timestep_scale=1e-3, blocks=("transformer_blocks",),
        ),
        ZooEntry(
            "hunyuandit",
            _build(d.HunyuanDiT2DModel, num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=2,
                   sample_size=8, hidden_size=16, num_layers=4, mlp_ratio=2.0, learn_sigma=False,
                   cross_attention_dim=16, cross_attention_dim_t5=16, pooled_projection_dim=8, text_len=4,
                   text_len_t5=TEXT_LEN),
            _hunyuandit_inputs, "batched", blocks=("blocks",),
        ),
        ZooEntry(
            "auraflow",
            _build(d.AuraFlowTransformer2DModel, sample_size=16, patch_size=2, in_channels=4, num_mmdit_layers=3,
                   num_single_dit_layers=3, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                   caption_projection_dim=16, out_channels=4, pos_embed_max_size=64),
            _auraflow_inputs, "batched", timestep_scale=1e-3,
            blocks=("joint_transformer_blocks", "single_transformer_blocks"),
        ),
        ZooEntry(
            "dit",
            _build(d.DiTTransformer2DModel, num_attention_heads=2, attention_head_dim=8, in_channels=4,
                   out_channels=4, num_layers=3, sample_size=8, patch_size=2),
            _dit_inputs, "batched", blocks=("transformer_blocks",),
        ),
        ZooEntry(
            "skyreelsv2",
            _build(d.SkyReelsV2Transformer3DModel, patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
                   in_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=3,
                   rope_max_seq_len=32),
            _wan_inputs, "separate", blocks=("blocks",),
        ),
        ZooEntry(
            "chroma",
            _build(d.ChromaTransformer2DModel, patch_size=1, in_channels=16, num_layers=3, num_single_layers=3,
                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(4, 6, 6),
                   approximator_num_channels=8, approximator_hidden_dim=16, approximator_layers=1),
            _chroma_inputs, "separate", timestep_scale=1e-3,
            blocks=("transformer_blocks", "single_transformer_blocks"),
        ),
        ZooEntry(
            "hidream",
            _build(d.HiDreamImageTransformer2DModel, patch_size=2, in_channels=4, out_channels=4, num_layers=3,
                   num_single_layers=3, attention_head_dim=16, num_attention_heads=2, caption_channels=[16, 16],
                   text_emb_dim=8, num_routed_experts=2, num_activated_experts=1, axes_dims_rope=(8, 4, 4),
                   max_resolution=(8, 8), llama_layers=[0, 1, 2, 3, 4, 5]),
            _hidream_inputs, "batched", blocks=("double_stream_blocks", "single_stream_blocks"),
        ),
        ZooEntry(
            "cosmos",
            _build(d.CosmosTransformer3DModel, in_channels=4, out_channels=4, num_attention_heads=2,
                   attention_head_dim=16, num_layers=3, mlp_ratio=2.0, text_embed_dim=16, adaln_lora_dim=8,
                   max_size=(4, 16, 16), patch_size=(1, 2, 2), rope_scale=(1.0, 4.0, 4.0),
                   concat_padding_mask=False, extra_pos_embed_type=None),
            _cosmos_inputs, "separate", timestep_scale=1e-3, blocks=("transformer_blocks",),
        ),
        ZooEntry(
            "easyanimate",
            _build(d.EasyAnimateTransformer3DModel, num_attention_heads=2, attention_head_dim=16, in_channels=4,
                   out_channels=4, patch_size=2, sample_width=8, sample_height=8, num_layers=3, mmdit_layers=3,
                   time_embed_dim=16, text_embed_dim=16),
            _easyanimate_inputs, "batched", blocks=("transformer_blocks",),
        ),
        ZooEntry(
            "zimage",
            _build(d.ZImageTransformer2DModel, in_channels=4, dim=32, n_layers=3, n_refiner_layers=1, n_heads=2,
                   n_kv_heads=2, cap_feat_dim=16, axes_dims=[4, 6, 6], axes_lens=[64, 32, 32]),
            _zimage_inputs, "batched", timestep_scale=1e-3, blocks=("layers",),  # reversed: (1000 - t)/1000
        ),
    ]


CORE = ("wan", "cogvideox", "hunyuanvideo", "ltx", "latte", "flux", "sd3", "pixart")
ZOO: dict[str, ZooEntry] = {e.name: e for e in _core() + _extras()}
