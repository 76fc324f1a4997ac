"""FasterCache's per-family step schedules from the official code's sample scripts (Vchitect/FasterCache), as
`preset=` options of policies/fastercache.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Preset:
    """A family's schedule from the official FasterCache code, on the call index k (1-based;
    Mochi's 0-based `cnt`): when the uncond branch is rebuilt, the band scale factors per rebuilt call, when
    self-attention is extrapolated and with which weight."""

    families: tuple
    uncond: Callable[[int], bool]
    low: Callable[[int], float]
    high: Callable[[int], float]
    attention: Callable[[int], bool]
    weight: Callable[[int], float]
    zero_based: bool = False


PRESETS = {
    "latte": Preset(("latte",), lambda k: k >= 18 and k % 5 != 0, lambda k: 1.1 if k < 45 else 1.0,
                    lambda k: 1.1 if k >= 45 else 1.0, lambda k: k >= 16 and k % 2 == 0, lambda k: 0.5),
    "cogvideox": Preset(("cogvideox-2b", "cogvideox-5b"), lambda k: k >= 18 and k % 5 != 0,
                        lambda k: 1.1 if k <= 40 else 1.0, lambda k: 1.1 if k >= 30 else 1.0,
                        lambda k: k >= 18 and k % 3 != 0, lambda k: 0.3),
    "mochi": Preset(("mochi",), lambda c: c >= 22 and c % 5 != 0 and c != 63, lambda c: 1.15 if c <= 50 else 1.0,
                    lambda c: 1.25 if c >= 30 else 1.0, lambda c: c >= 20 and c % 2 == 0,
                    lambda c: max(0.5, c / 63), zero_based=True),
}
