"""MixCache (arXiv 2508.12691): hybrid step / CFG / block caching. Work in progress: the policy follows."""

from __future__ import annotations

DEPTH_FRACTIONS = (0.25, 0.5, 0.75)  # the paper's block candidates 10, 20, 30 of Wan's 40 blocks


def candidate_blocks(d) -> list[int]:
    """Block-level candidates as cuts i (0 < i < U): a block-level step reuses the streams leaving units [0, i)
    (Site("stream", 0, i)) and runs units i.. . The paper's 1/4, 1/2, 3/4 of the depth, snapped to valid cuts."""
    u = d.num_units
    cuts = {d.snap(round(u * f)) for f in DEPTH_FRACTIONS}
    return sorted(c for c in cuts if c is not None and 0 < c < u)
