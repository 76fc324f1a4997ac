"""Where a video's frames are inside a module's output: the layout AdaCache's motion regularisation (MoReg) reads,
found from the graph's shapes (the latent input and the module's outputs), not from model names."""

from __future__ import annotations

import math

from .nodes import shape


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def frame_layout(d, site, stride: int, tokens_per_frame: int | None = None) -> tuple[int, int] | str:
    """(output index j, tokens per latent frame S along its token axis) of module site `site`: the longest output
    that holds more than `stride` latent frames as (B, frames * S, D) or (B * S, frames, D); for it, the smallest
    temporal patch, frame axis 2 before 1, then the smallest spatial patch. `tokens_per_frame` sets S for
    (B, L, D) outputs. A string says why there is none."""
    latent = shape(d.placeholders[d.hidden]) if d.hidden is not None else None
    if latent is None:
        return "no latent input was found in the graph"
    if len(latent) != 5:
        return (f"the latent input is {len(latent)}-D; MoReg needs a video model (a 5-D latent, (B, C, F, H, W) or "
                f"(B, F, C, H, W))")
    outs = [shape(o) for o in d.modules[site].outputs]
    if not all(isinstance(x, int) for x in latent) or not all(
            s is not None and all(isinstance(x, int) for x in s) for s in outs):
        return "the graph has symbolic (dynamic) shapes; MoReg's frame layout is fixed at compile time"
    found = _layout(latent, outs, stride, tokens_per_frame)
    if found is None:
        return (f"the probe {site} (outputs {outs}) does not hold the latent's frames ({latent}) in a layout MoReg "
                f"knows; it needs more than {stride} latent frames and tokens in (B, frames * S, D) or "
                f"(B * S, frames, D) order (option 'tokens_per_frame' sets S for (B, L, D) outputs)")
    return found


def _layout(latent: tuple, outs: list, stride: int, tokens_per_frame: int | None) -> tuple[int, int] | None:
    b, h, w = latent[0], latent[-2], latent[-1]
    order = sorted((j for j, s in enumerate(outs) if s is not None and len(s) == 3), key=lambda j: (-outs[j][1], j))
    for j in order:
        n0, length = outs[j][0], outs[j][1]
        if tokens_per_frame is not None:
            if n0 == b and length % tokens_per_frame == 0 and length // tokens_per_frame > stride:
                return j, tokens_per_frame
            continue
        for pt in range(1, max(latent[1], latent[2]) + 1):
            for axis in (2, 1):
                frames = latent[axis]
                if frames % pt or frames // pt <= stride:
                    continue
                f = frames // pt
                for p in _divisors(math.gcd(h, w)):
                    s = (h // p) * (w // p)
                    if n0 == b and length == f * s:
                        return j, s
                    if n0 == b * s and length == f:  # a temporal block: (B * S, frames, D)
                        return j, 1
    return None
