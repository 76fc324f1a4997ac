"""An automatic judge of a generated clip against its prompt: the object's color, its direction of motion and its
shape. It checks that the reference model really learned the task (so that caching has real structure to lose).

- color: mean color of the foreground (pixels far from the background), nearest of the palette;
- direction: slope of the foreground centroid over the frames, dominant axis and sign;
- shape: in the frame where the object is most central, the foreground mask against each shape rendered at the
  same centroid and area; the best intersection-over-union wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import BACKGROUND, COLORS, SHAPES, SIZE, Prompt, render


@dataclass
class Verdict:
    color: str | None
    direction: str | None
    shape: str | None
    color_ok: bool
    direction_ok: bool
    shape_ok: bool

    @property
    def ok(self) -> bool:
        return self.color_ok and self.direction_ok and self.shape_ok


def foreground(clip: torch.Tensor) -> torch.Tensor:
    """(3, F, H, W) -> (F, H, W) bool: pixels whose color is far from the background's."""
    return (clip.clamp(-1, 1) - BACKGROUND).norm(dim=0) > 0.6


def judge(clip: torch.Tensor, prompt: Prompt) -> Verdict:
    fg = foreground(clip)
    frames = fg.shape[0]
    area = fg.flatten(1).sum(1).float()
    if area.sum() < 10:
        return Verdict(None, None, None, False, False, False)
    rgb = (clip * fg[None]).flatten(1).sum(1) / fg.sum()
    names = list(COLORS)
    palette = torch.tensor(list(COLORS.values()))
    color = names[int((palette - rgb).norm(dim=1).argmin())]

    ys, xs = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32) + 0.5,
                            torch.arange(SIZE, dtype=torch.float32) + 0.5, indexing="ij")
    visible = area > 8
    cx = (fg * xs).flatten(1).sum(1) / area.clamp_min(1)
    cy = (fg * ys).flatten(1).sum(1) / area.clamp_min(1)
    direction = None
    if int(visible.sum()) >= 3:
        t = torch.arange(frames, dtype=torch.float32)[visible]
        t = t - t.mean()
        vx = float((t * cx[visible]).sum() / (t * t).sum())
        vy = float((t * cy[visible]).sum() / (t * t).sum())
        if max(abs(vx), abs(vy)) > 0.75:  # pixels per frame; the data moves 3-3.5
            if abs(vx) >= abs(vy):
                direction = "right" if vx > 0 else "left"
            else:
                direction = "down" if vy > 0 else "up"

    # Shape: the frame with the object nearest the centre (least clipped), among frames where it is visible.
    dist = ((cx - SIZE / 2) ** 2 + (cy - SIZE / 2) ** 2) + 1e6 * (~visible).float()
    f = int(dist.argmin())
    mask = fg[f]
    best, shape = -1.0, None
    for sid, name in enumerate(SHAPES):
        ious = []
        for r in torch.linspace(5.0, 11.0, 13):
            tmpl = render(torch.tensor([sid]), torch.tensor([0]), torch.tensor([0]),
                          torch.tensor([[float(cx[f]), float(cy[f])]]), r.view(1), torch.zeros(1))[0, 0, 0]
            tm = tmpl > (BACKGROUND + 0.5 * (COLORS["red"][0] - BACKGROUND))
            ious.append(float((tm & mask).sum()) / max(1.0, float((tm | mask).sum())))
        if max(ious) > best:
            best, shape = max(ious), name
    return Verdict(color, direction, shape, color == prompt.color, direction == prompt.direction,
                   shape == prompt.shape)


def score(clips: torch.Tensor, prompts: list[Prompt]) -> dict:
    """Fractions of clips judged right on each attribute and on all three."""
    verdicts = [judge(c, p) for c, p in zip(clips, prompts)]
    n = max(1, len(verdicts))
    return {"color": sum(v.color_ok for v in verdicts) / n, "direction": sum(v.direction_ok for v in verdicts) / n,
            "shape": sum(v.shape_ok for v in verdicts) / n, "all": sum(v.ok for v in verdicts) / n,
            "verdicts": verdicts}
