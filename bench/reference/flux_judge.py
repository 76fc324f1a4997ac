"""An automatic judge of a generated image against its prompt, like the video judge (`judge.py`): the object's
color, shape, position (quadrant) and size. It checks that the Flux reference model learned the task.

- color: mean color of the foreground (pixels far from the background), nearest of the palette;
- position: the quadrant of the foreground's centroid;
- shape: the foreground mask against each shape rendered at the same centroid over a range of radii; the best
  intersection-over-union wins;
- size: the best-fitting radius of that shape against the boundary between the two size ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import BACKGROUND, COLORS, SHAPES
from .flux_data import SIZE, SIZES, ImagePrompt, render_images

ATTRIBUTES = ("color", "shape", "position", "size")
SIZE_BOUNDARY = (SIZES["small"][1] + SIZES["large"][0]) / 2  # radius between the two ranges
RADII = torch.linspace(2.5, 9.0, 27)


@dataclass
class ImageVerdict:
    judged: dict  # attribute -> judged value (None: no object found)
    right: dict  # attribute -> bool

    @property
    def ok(self) -> bool:
        return all(self.right.values())


def foreground(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) -> (H, W) bool: pixels whose color is far from the background's."""
    return (image.clamp(-1, 1) - BACKGROUND).norm(dim=0) > 0.6


def judge_image(image: torch.Tensor, prompt: ImagePrompt) -> ImageVerdict:
    fg = foreground(image)
    if fg.sum() < 6:
        return ImageVerdict(dict.fromkeys(ATTRIBUTES), dict.fromkeys(ATTRIBUTES, False))
    rgb = (image * fg).flatten(1).sum(1) / fg.sum()
    palette = torch.tensor(list(COLORS.values()))
    color = list(COLORS)[int((palette - rgb).norm(dim=1).argmin())]
    ys, xs = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    cx, cy = float((fg * xs).sum() / fg.sum()), float((fg * ys).sum() / fg.sum())
    position = ("top" if cy < SIZE / 2 else "bottom") + " " + ("left" if cx < SIZE / 2 else "right")
    best, shape, radius = -1.0, None, 0.0
    n = len(RADII)
    for sid, name in enumerate(SHAPES):
        tmpl = render_images(torch.full((n,), sid), torch.zeros(n, dtype=torch.long),
                             torch.tensor([[cx, cy]]).expand(n, 2), RADII)[:, 0]
        masks = tmpl > (BACKGROUND + 0.5 * (COLORS["red"][0] - BACKGROUND))
        iou = (masks & fg).flatten(1).sum(1) / (masks | fg).flatten(1).sum(1).clamp_min(1)
        k = int(iou.argmax())
        if float(iou[k]) > best:
            best, shape, radius = float(iou[k]), name, float(RADII[k])
    size = "large" if radius > SIZE_BOUNDARY else "small"
    judged = dict(color=color, shape=shape, position=position, size=size)
    return ImageVerdict(judged, {k: judged[k] == getattr(prompt, k) for k in ATTRIBUTES})


def score_images(images: torch.Tensor, prompts: list[ImagePrompt]) -> dict:
    """Fractions of images judged right on each attribute and on all four."""
    verdicts = [judge_image(x, p) for x, p in zip(images, prompts)]
    n = max(1, len(verdicts))
    out = {k: sum(v.right[k] for v in verdicts) / n for k in ATTRIBUTES}
    return out | {"all": sum(v.ok for v in verdicts) / n, "verdicts": verdicts}
