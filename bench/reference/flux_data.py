"""Synthetic text-to-image task for the second reference model (Flux architecture): one colored shape of a
prompted size in a prompted quadrant of a plain background.

An image is 32x32 RGB in [-1, 1]. The prompt is (shape, color, position, size); the exact centre (jittered within
the quadrant) and radius (within the size's range) are random, so the flow the model learns is not a lookup table.
Shapes, colors and background are those of the video task (`data.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import BACKGROUND, COLORS, SHAPES, _sdf

SIZE = 32
POSITIONS = {"top left": (8.0, 8.0), "top right": (24.0, 8.0), "bottom left": (8.0, 24.0),
             "bottom right": (24.0, 24.0)}  # quadrant centres (x, y) in pixels
SIZES = {"small": (3.5, 4.5), "large": (6.0, 7.0)}  # radius ranges in pixels
JITTER = 2.5  # the centre moves up to this many pixels from its quadrant's centre, on each axis


@dataclass(frozen=True)
class ImagePrompt:
    shape: str
    color: str
    position: str
    size: str

    def __str__(self) -> str:
        return f"a {self.size} {self.color} {self.shape} at the {self.position}"

    def ids(self) -> tuple[int, int, int, int]:
        return (SHAPES.index(self.shape), list(COLORS).index(self.color), list(POSITIONS).index(self.position),
                list(SIZES).index(self.size))


def all_image_prompts() -> list[ImagePrompt]:
    return [ImagePrompt(s, c, p, z) for s in SHAPES for c in COLORS for p in POSITIONS for z in SIZES]


def render_images(shape_id, color_id, center_xy, radius) -> torch.Tensor:
    """Ids (B,) long, center_xy (B, 2), radius (B,). Returns (B, 3, H, W) in [-1, 1]."""
    b = shape_id.shape[0]
    coords = torch.arange(SIZE, dtype=torch.float32) + 0.5
    px = coords.view(1, 1, SIZE) - center_xy[:, 0].view(b, 1, 1)
    py = coords.view(1, SIZE, 1) - center_xy[:, 1].view(b, 1, 1)
    d = _sdf(shape_id.view(b, 1, 1), px, py, radius.view(b, 1, 1))
    alpha = (0.5 - d).clamp(0.0, 1.0)  # one-pixel anti-aliased edge
    rgb = torch.tensor(list(COLORS.values()))[color_id]
    return BACKGROUND + alpha[:, None] * (rgb.view(b, 3, 1, 1) - BACKGROUND)


def sample_images(batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and their prompt ids (B, 4) = (shape, color, position, size)."""
    g = generator
    ids = torch.stack([torch.randint(n, (batch_size,), generator=g)
                       for n in (len(SHAPES), len(COLORS), len(POSITIONS), len(SIZES))], dim=1)
    centre = torch.tensor(list(POSITIONS.values()))[ids[:, 2]]
    centre = centre + JITTER * (2 * torch.rand(batch_size, 2, generator=g) - 1)
    lo, hi = torch.tensor(list(SIZES.values())).T
    radius = lo[ids[:, 3]] + (hi - lo)[ids[:, 3]] * torch.rand(batch_size, generator=g)
    return render_images(ids[:, 0], ids[:, 1], centre, radius), ids
