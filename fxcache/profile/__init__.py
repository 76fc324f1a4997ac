"""Offline profiling: run a model uncached over a few prompts and seeds and write ONE calibration file
(fxcache/calibration.py) that every policy reads through `options={"calibration": path}`.

    python -m fxcache.profile --target bench.profiling:reference --prompts 4 --seeds 1234 --steps 50 \\
        --out bench/reference/weights/calibration.json          # + calibration.png next to it

A target is `module:callable`; the callable takes no arguments and returns a `Target` (or a tuple
`(model, generate[, cfg])`): the transformer and a function `generate(model, prompt, seed, steps, guidance)` that
runs one whole generation of prompt index `prompt` from `seed`, calling `model` the way its pipeline does.
`cfg` says how: "separate" (two calls per step, cond first, then uncond) or "batched" (one call on
`[uncond; cond]`). Every generation is uncached; `generate` is called with the compiled model (pass 1) or with the
plain model carrying forward hooks (passes 2 and 3):

1. measure (fxcache's own engine, a recording policy, compiler "eager"): every call computes everything and
   writes and measures every site the policies read, so the numbers are the distances they see online:
   relative L1 vs the previous step of the model output (D_step, per stream), of the indicators TeaCache reads
   ("modulated_input", "timestep"), of the streams leaving units [0, i) for MixCache's block candidates i
   (`fxcache.policies.mixcache_algorithm.candidate_blocks`), of every block's self-attention output (AdaCache's probe); the
   uncond output vs the cond output of the same step (D_cfg); MagCache's magnitude ratio of the stack residual.
2. statistics (forward hooks): the "distance tensor between the real output and the cached output" of each
   MixCache granularity, per step: step O_t - O_{t-1} (both streams pooled); cfg uncond_t - (cond_t + Delta_{t-1})
   with Delta = uncond - cond of the previous step; block i the streams leaving units [0, i) at t minus at t-1
   (cond pass). Per step its mean mu_t and std sigma_t.
3. impact (forward hooks): at every step t the granularity's value is perturbed with Gaussian noise
   N(mu-hat, sigma-hat), and I_t is the relative L1 between the perturbed and the unperturbed *guided*
   prediction uncond + g (cond - uncond) of that step: step, noise on both outputs; cfg, on the uncond output;
   block i, on the streams entering unit i in an extra cond forward (the uncond output then being the perturbed
   cond + this step's true Delta, as MixCache's block mode rebuilds it). The generation itself goes on unperturbed.

What is derived (prompts, seeds and, where a stream is named, streams pooled; "steps after warm-up" are the last
80 % of the steps, the paper's last 40 of 50):
- teacache[indicator]: TeaCache's own fit, np.polyfit(deg=4) of the per-step D_step (y) against the per-step
  relative L1 of the indicator (x), pooled over steps 2..N-1 of every generation and stream; "output" is the
  identity [1, 0]. The last step is left out: TeaCache always computes it, and a flow-matching sampler's jump to
  sigma = 0 there (D_step ~ 0.6 on the reference model, ten times any other step) would bend the whole fit.
- magcache[stream]: gamma_k averaged over generations, gamma_1 = 1.
- mixcache.theta / delta1 / delta2, the paper's section 3.5 as read here: per generation and stream, D_step
  (steps 2..N-1: the last step's jump is left out as above) is *stable* from the first step k whose value differs
  by at most `stable_tol` * D_step_k from each of the previous five (the steps after warm-up if that never
  happens); theta = the mean of D_step from k on; the deviations from theta from k on give a = theta - min and b = max - theta; delta1 = min(a, b),
  delta2 = max(a, b) (delta1 <= delta2, as the N-scaling rule needs). Each is averaged over generations/streams.
- mixcache.mu / sigma per granularity ("step", "cfg", "block:i"): mu-hat = the mean over steps of mu_t,
  sigma-hat = the mean of sigma_t over the steps after warm-up (averaged over generations first).
- mixcache.impact: "step" and "cfg" constants (the mean of I_t over the steps after warm-up), "block" one list
  per candidate cut i (one value per step, averaged over generations).
  The paper does not say whether the perturbed and the original outputs are compared at the perturbed step or at
  the end of the generation; this is the cheap, per-step reading (no generation is re-run from the perturbed
  step), and it measures how much a granularity's error moves the guided prediction of that step.
- adacache: per step the mean / 10th / 50th / 90th percentile / max of the self-attention probe distance over
  blocks, streams and generations, and the mean per block, to place AdaCache's codebook thresholds.
- curves: the per-step series the plot shows (null where a step has no value, e.g. step 1's distances).

The plot (matplotlib, PNG next to the JSON unless --plot says otherwise): distances per step (D_step, D_cfg, the
candidate blocks, the indicators, theta), MagCache ratios, the impact per granularity, and TeaCache's fits.
Numbers in the file are rounded to 6 significant digits, so that a rerun reproduces the file.
"""

from __future__ import annotations

# recording.py: the target and pass 1; perturbation.py: passes 2 and 3; rules.py: each method's section;
# run.py: `profile` (the passes, the rules, the file); plot.py; __main__.py: the command line.
from .plot import save_plot
from .recording import Target, load_target
from .run import fingerprint, profile

__all__ = ["Target", "fingerprint", "load_target", "profile", "save_plot"]
