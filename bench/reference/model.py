"""The reference model: a small diffusers WanTransformer3DModel plus a learned prompt table (the text encoder's
stand-in). `load()` returns both from the committed weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .data import COLORS, DIRECTIONS, SHAPES, Prompt

WEIGHTS = Path(__file__).parent / "weights"
TEXT_DIM = 32

# 1.76 M parameters: 6 blocks of width 128. Patch (2, 4, 4) turns an 8x32x32 clip into 4x8x8 = 256 tokens.
CONFIG = dict(
    patch_size=(2, 4, 4),
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=3,
    out_channels=3,
    text_dim=TEXT_DIM,
    freq_dim=64,
    ffn_dim=512,
    num_layers=6,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=32,
)


class PromptEncoder(nn.Module):
    """Embeds (shape, color, direction) ids into 3 tokens of TEXT_DIM. Index -1 in every slot is the null prompt
    used for the unconditional branch of classifier-free guidance."""

    def __init__(self) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n + 1, TEXT_DIM) for n in (len(SHAPES), len(COLORS), len(DIRECTIONS)))
        for t in self.tables:
            nn.init.normal_(t.weight, std=1.0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, 3) long, -1 = null. Returns (B, 3, TEXT_DIM)."""
        tokens = []
        for slot, table in enumerate(self.tables):
            i = ids[:, slot]
            tokens.append(table(torch.where(i < 0, table.num_embeddings - 1, i)))
        return torch.stack(tokens, dim=1)

    @torch.no_grad()
    def encode(self, prompts: list[Prompt]) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds, negative_prompt_embeds) for a list of prompts, as a text encoder would return them."""
        ids = torch.tensor([p.ids() for p in prompts], dtype=torch.long)
        return self(ids), self(torch.full_like(ids, -1))


def fp32_rope(model: nn.Module) -> nn.Module:
    """Wan builds its RoPE tables in float64 on the CPU, which makes every attention slow; float32 is plenty here."""
    rope = getattr(model, "rope", None)
    if rope is not None:
        rope.freqs_cos = rope.freqs_cos.float()
        rope.freqs_sin = rope.freqs_sin.float()
    return model


def build_transformer(seed: int = 0):
    """A freshly initialised transformer with adaLN-zero style init: zero output projection, time projection and
    gates, so every block starts as the identity and training is stable at a high learning rate."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**CONFIG)
    with torch.no_grad():
        nn.init.zeros_(model.proj_out.weight)
        nn.init.zeros_(model.proj_out.bias)
        nn.init.zeros_(model.condition_embedder.time_proj.weight)
        nn.init.zeros_(model.condition_embedder.time_proj.bias)
        for block in model.blocks:
            block.scale_shift_table[:, 2].zero_()  # gate_msa
            block.scale_shift_table[:, 5].zero_()  # c_gate_msa
    return fp32_rope(model)


def save_weights(transformer: nn.Module, encoder: nn.Module, out: Path, config: dict, meta: dict | None) -> None:
    """A reference model's weights folder: transformer, prompt encoder and config.json (both models' layout)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in transformer.state_dict().items()}, str(out / "transformer.safetensors"))
    save_file(encoder.state_dict(), str(out / "prompt_encoder.safetensors"))
    (out / "config.json").write_text(json.dumps({"transformer": config, **(meta or {})}, indent=2) + "\n")


def load_weights(path: Path, transformer_cls, encoder: nn.Module, tuples: tuple[str, ...], train: str):
    """(transformer, encoder) of a weights folder, both in eval mode; `tuples`: config keys JSON made lists."""
    from safetensors.torch import load_file

    if not (path / "transformer.safetensors").exists():
        raise FileNotFoundError(f"no reference weights in {path}; train them with `{train}`")
    cfg = json.loads((path / "config.json").read_text())["transformer"]
    cfg |= {k: tuple(cfg[k]) for k in tuples}
    model = transformer_cls(**cfg)
    model.load_state_dict(load_file(str(path / "transformer.safetensors")))
    encoder.load_state_dict(load_file(str(path / "prompt_encoder.safetensors")))
    return model.eval(), encoder.eval()


def save(transformer: nn.Module, encoder: PromptEncoder, out: Path = WEIGHTS, meta: dict | None = None) -> None:
    save_weights(transformer, encoder, out, CONFIG, meta)


def load(path: Path = WEIGHTS) -> tuple[nn.Module, PromptEncoder]:
    """The trained reference transformer (eval, fp32) and its prompt encoder."""
    from diffusers import WanTransformer3DModel

    model, encoder = load_weights(path, WanTransformer3DModel, PromptEncoder(), ("patch_size",),
                                  "python -m bench.reference.train")
    return fp32_rope(model), encoder
