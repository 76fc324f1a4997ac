"""Synthetic text-to-video task: a colored shape moving across a plain background.

A clip is 8 frames of 32x32 RGB in [-1, 1], laid out as diffusers video latents (C, F, H, W). The prompt is the
triple (shape, color, direction); the start position, size and speed are random, so the model must learn a real
(non-straight) flow and caching has something to get wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SHAPES = ("square", "circle", "triangle")
COLORS = {  # RGB in [-1, 1]
    "red": (0.9, -0.8, -0.8),
    "green": (-0.8, 0.8, -0.8),
    "blue": (-0.8, -0.7, 0.9),
    "yellow": (0.9, 0.8, -0.8),
}
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}  # (dx, dy)
BACKGROUND = -0.6
FRAMES, SIZE = 8, 32
RADIUS = (7.0, 9.0)
SPEED = (3.0, 3.5)  # pixels per frame


@dataclass(frozen=True)
class Prompt:
    shape: str
    color: str
    direction: str

    def __str__(self) -> str:
        return f"a {self.color} {self.shape} moving {self.direction}"

    def ids(self) -> tuple[int, int, int]:
        return SHAPES.index(self.shape), list(COLORS).index(self.color), list(DIRECTIONS).index(self.direction)


def all_prompts() -> list[Prompt]:
    return [Prompt(s, c, d) for s in SHAPES for c in COLORS for d in DIRECTIONS]


def _sdf(shape_id: torch.Tensor, px: torch.Tensor, py: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance (pixels, negative inside) of each shape; all args broadcast to (B, F, H, W)."""
    circle = torch.sqrt(px * px + py * py) - r
    square = torch.maximum(px.abs(), py.abs()) - 0.85 * r
    # Equilateral triangle pointing up with circumradius r: max of the three edge half-plane distances.
    k = math.sqrt(3.0) / 2.0
    rt = 1.25 * r  # same visual area as the other shapes, roughly
    tri = torch.maximum(torch.maximum(-py - 0.5 * rt, k * px + 0.5 * py - 0.5 * rt), -k * px + 0.5 * py - 0.5 * rt)
    return torch.where(shape_id == 0, square, torch.where(shape_id == 1, circle, tri))


def render(shape_id, color_id, dir_id, start_xy, radius, speed) -> torch.Tensor:
    """Render clips. Ids are (B,) long tensors; start_xy (B, 2), radius and speed (B,). Returns (B, 3, F, H, W)."""
    b = shape_id.shape[0]
    dirs = torch.tensor(list(DIRECTIONS.values()))[dir_id]  # (B, 2)
    t = torch.arange(FRAMES, dtype=torch.float32)
    centers = start_xy[:, None, :] + dirs[:, None, :] * speed[:, None, None] * t[None, :, None]  # (B, F, 2)
    coords = torch.arange(SIZE, dtype=torch.float32) + 0.5
    px = coords.view(1, 1, 1, SIZE) - centers[..., 0].view(b, FRAMES, 1, 1)
    py = coords.view(1, 1, SIZE, 1) - centers[..., 1].view(b, FRAMES, 1, 1)
    d = _sdf(shape_id.view(b, 1, 1, 1), px, py, radius.view(b, 1, 1, 1))
    alpha = (0.5 - d).clamp(0.0, 1.0)  # one-pixel anti-aliased edge
    rgb = torch.tensor(list(COLORS.values()))[color_id]  # (B, 3)
    img = BACKGROUND + alpha[:, None] * (rgb.view(b, 3, 1, 1, 1) - BACKGROUND)
    return img


def sample_batch(batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random clips and their prompt ids (B, 3) = (shape, color, direction)."""
    g = generator
    shape_id = torch.randint(len(SHAPES), (batch_size,), generator=g)
    color_id = torch.randint(len(COLORS), (batch_size,), generator=g)
    dir_id = torch.randint(len(DIRECTIONS), (batch_size,), generator=g)
    radius = RADIUS[0] + (RADIUS[1] - RADIUS[0]) * torch.rand(batch_size, generator=g)
    speed = SPEED[0] + (SPEED[1] - SPEED[0]) * torch.rand(batch_size, generator=g)
    travel = speed * (FRAMES - 1)
    # Along the motion axis the centre starts where the whole path stays inside the frame (edges may clip);
    # across it, anywhere the shape fits. Both are uniform, so paths differ from clip to clip.
    along = 2.0 + (SIZE - 4.0 - travel) * torch.rand(batch_size, generator=g)
    across = radius + (SIZE - 2 * radius) * torch.rand(batch_size, generator=g)
    dirs = torch.tensor(list(DIRECTIONS.values()))[dir_id]
    moving_x = dirs[:, 0] != 0
    forward = (dirs.sum(1) > 0).float()  # right/down start low, left/up start high
    along = forward * along + (1 - forward) * (SIZE - along)
    start = torch.stack([torch.where(moving_x, along, across), torch.where(moving_x, across, along)], dim=1)
    clips = render(shape_id, color_id, dir_id, start, radius, speed)
    return clips, torch.stack([shape_id, color_id, dir_id], dim=1)
