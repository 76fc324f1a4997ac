"""The second reference model: a small diffusers FluxTransformer2DModel (2 dual-stream and 4 single-stream blocks)
plus a learned prompt table standing in for Flux's two text encoders. `load()` returns both from the committed
weights.

Images are 32x32 RGB with no VAE: diffusers' FluxPipeline packs each 2x2 patch of the 3-channel "latent" into one
12-channel token (`FluxPipeline._pack_latents`), so an image is 16x16 = 256 tokens, with 4 text tokens beside them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .data import COLORS, SHAPES
from .flux_data import POSITIONS, SIZES, ImagePrompt
from .model import load_weights, save_weights

WEIGHTS = Path(__file__).parent / "weights-flux"
TEXT_DIM = 32
LATENT_CHANNELS, LATENT_SIZE = 3, 32
# FluxPipeline derives the latent size from pixel sizes through its absent VAE's default factor 8:
# 256x256 pixels are the 32x32 latent the model works on.
PIPELINE_GEOMETRY = dict(height=256, width=256)

# 2.29 M parameters at width 128 (4 heads of 32); the rotary axes (8, 12, 12) split a head's 32 dims over
# (text/frame, row, column) as Flux's (16, 56, 56) splits 128.
CONFIG = dict(
    patch_size=1,
    in_channels=4 * LATENT_CHANNELS,
    num_layers=2,
    num_single_layers=4,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=TEXT_DIM,
    pooled_projection_dim=TEXT_DIM,
    guidance_embeds=False,
    axes_dims_rope=(8, 12, 12),
)


class ImagePromptEncoder(nn.Module):
    """Embeds (shape, color, position, size) ids into 4 tokens of TEXT_DIM and a pooled vector (their mean), the
    pair Flux's T5 and CLIP encoders return. Index -1 in every slot is the null (negative) prompt."""

    def __init__(self) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n + 1, TEXT_DIM)
                                    for n in (len(SHAPES), len(COLORS), len(POSITIONS), len(SIZES)))
        for t in self.tables:
            nn.init.normal_(t.weight, std=1.0)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids: (B, 4) long, -1 = null. Returns tokens (B, 4, TEXT_DIM) and pooled (B, TEXT_DIM)."""
        tokens = torch.stack([table(torch.where(ids[:, k] < 0, table.num_embeddings - 1, ids[:, k]))
                              for k, table in enumerate(self.tables)], dim=1)
        return tokens, tokens.mean(1)

    @torch.no_grad()
    def encode(self, prompts: list[ImagePrompt]) -> dict[str, torch.Tensor]:
        """FluxPipeline's embedding arguments for a list of prompts, negative prompt = the null prompt."""
        ids = torch.tensor([p.ids() for p in prompts], dtype=torch.long)
        cond, pooled = self(ids)
        neg, neg_pooled = self(torch.full_like(ids, -1))
        return dict(prompt_embeds=cond, pooled_prompt_embeds=pooled, negative_prompt_embeds=neg,
                    negative_pooled_prompt_embeds=neg_pooled)


def pack(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, 32, 32) -> (B, 256, 12), FluxPipeline's token layout."""
    from diffusers import FluxPipeline

    b, c, h, w = images.shape
    return FluxPipeline._pack_latents(images, b, c, h, w)


def unpack(tokens: torch.Tensor) -> torch.Tensor:
    """(B, 256, 12) -> (B, 3, 32, 32)."""
    b = tokens.shape[0]
    h = w = LATENT_SIZE // 2
    x = tokens.view(b, h, w, LATENT_CHANNELS, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE)


def position_ids() -> tuple[torch.Tensor, torch.Tensor]:
    """(img_ids (256, 3), txt_ids (4, 3)) as FluxPipeline builds them."""
    from diffusers import FluxPipeline

    img = FluxPipeline._prepare_latent_image_ids(1, LATENT_SIZE // 2, LATENT_SIZE // 2, "cpu", torch.float32)
    return img, torch.zeros(len(ImagePrompt.__dataclass_fields__), 3)


def build_transformer(seed: int = 0):
    """A freshly initialised transformer with adaLN-zero style init (zero modulation and output projection), so
    every block starts as the identity and training is stable at a high learning rate."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**CONFIG)
    with torch.no_grad():
        zero = [model.proj_out, model.norm_out.linear]
        zero += [m for b in model.transformer_blocks for m in (b.norm1.linear, b.norm1_context.linear)]
        zero += [b.norm.linear for b in model.single_transformer_blocks]
        for m in zero:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def save(transformer: nn.Module, encoder: ImagePromptEncoder, out: Path = WEIGHTS, meta: dict | None = None) -> None:
    save_weights(transformer, encoder, out, CONFIG, meta)


def load(path: Path = WEIGHTS) -> tuple[nn.Module, ImagePromptEncoder]:
    """The trained Flux reference transformer (eval, fp32) and its prompt encoder."""
    from diffusers import FluxTransformer2DModel

    return load_weights(path, FluxTransformer2DModel, ImagePromptEncoder(), ("axes_dims_rope",),
                        "python -m bench.reference.train --model flux")
