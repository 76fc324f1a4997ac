"""Offline calibration files (MagCache magnitude ratios; later TeaCache polynomials and MixCache thresholds)."""

from __future__ import annotations

import json
from pathlib import Path


def save_mag_ratios(path: str | Path, streams: dict[str, list[float]]) -> None:
    """Write {stream: [gamma_1..gamma_N]} as MagCache's calibration file (gamma_1 = 1: no previous step)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"method": "magcache", "num_steps": max((len(v) for v in streams.values()), default=0),
            "streams": streams}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
