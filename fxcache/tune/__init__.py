"""`python -m fxcache.tune`: the caching counterpart of kernel autotuning. Given a model (the same `--target
module:callable` as `python -m fxcache.profile`), a fidelity floor, a step count and a time budget, it finds the
fastest caching setting that keeps the floor on this model, checks it on clips it was not chosen on, and writes it
into the model's calibration file, so that

    torch.compile(transformer, backend="fxcache", options={"calibration": "calibration.json"})

with no policy named runs the chosen setting.

    python -m fxcache.tune --target bench.profiling:reference --floor 35/30 --steps 50 --budget 900 \\
        --calibration bench/reference/weights/calibration.json     # + calibration-tune.png next to it

1. references: every clip of the tuning split (prompts x seeds) and of the held-out split, uncached;
2. search, with a progress bar, within the budget: policies x thresholds, forecast off and on (the calibrated
   policies only where the file has their constants); per candidate one untimed warm-up generation, then the
   tuning clips, timed, against the uncached generations timed the same way with the same inner compiler; a
   candidate holds the floor when its mean PSNR and its worst clip's PSNR (against the uncached clip of the same
   prompt and seed) are at or above it. Within one policy and forecast, thresholds are tried from the most
   cautious up and the rest are skipped once one fails the floor (more skipping does not improve fidelity);
3. choice: the fastest candidate that holds the floor on the tuning split and then on the held-out split (tried in
   order of speed until one holds both); none: the file says so and no policy is set;
4. output: the file's "tuned" section (the chosen options, the floor, the step count, every searched point with
   its figures, the held-out figures), and a Pareto plot of the searched points with the chosen one marked.

PSNR is 10 log10(R^2 / MSE) with R the target's `data_range` (the peak-to-peak of the uncached output when the
target gives none). Speed is wall time, which on a busy machine is noisy: the figures are ratios measured
side by side, and the held-out check repeats the chosen candidate's timing.
"""

from .search import Candidate, candidates, tune

__all__ = ["Candidate", "candidates", "tune"]
