"""Which published model family a graph comes from, only to pick the papers' per-family constants
(TeaCache coefficients, MagCache thresholds). Discovery itself never depends on this."""

from __future__ import annotations

from .passes.nodes import shape

# block module type (or block list name) -> family
_BY_BLOCK = {
    "WanTransformerBlock": "wan",
    "CogVideoXBlock": "cogvideox",
    "HunyuanVideoTransformerBlock": "hunyuanvideo",
    "HunyuanVideoSingleTransformerBlock": "hunyuanvideo",
    "FluxTransformerBlock": "flux",
    "FluxSingleTransformerBlock": "flux",
    "LTXVideoTransformerBlock": "ltx",
    "MochiTransformerBlock": "mochi",
    "JointTransformerBlock": "sd3",
}


def family(discovery) -> str | None:
    lists = {u.list_name for u in discovery.units}
    if any("temporal_transformer_blocks" in name for name in lists):
        return "latte"
    for u in discovery.units:
        name = u.module_type.split(".")[-1]
        if name in _BY_BLOCK:
            fam = _BY_BLOCK[name]
            if fam == "cogvideox":  # 5B has width 3072, 2B 1920
                width = shape(discovery.streams[0][0]) if discovery.streams[0] else None
                return "cogvideox-5b" if width is not None and width[-1] >= 3072 else "cogvideox-2b"
            return fam
    return None
