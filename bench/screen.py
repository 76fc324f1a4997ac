"""Screen settings quickly: fidelity and the fraction of blocks computed (a speed proxy), no timing.

    python -m bench.screen --steps 50 30 --seeds 0 1 \\
        --options '[{"policy": "fbcache", "threshold": 0.06, "forecast": "taylor"}]'

Each setting runs under fxcache's eager inner compiler (no compile time) on the benchmark's 8 prompts (or, with
`--prompts heldout`, 16 prompts the benchmark never uses, every attribute value: how a default is chosen without
looking at the clips it is reported on; use other seeds than the benchmark's 0 and 1 too) and the given seeds,
on either reference model (`--model wan|flux`); it prints the per-clip PSNR against the uncached eager clips, then one line: blocks computed as a ratio
(all / computed), PSNR mean / worst, and `fxcache.stats` decision counts. Used to pick the default
(`bench/results/default-screen.log`); the chosen setting is then timed by `bench.quality`.
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch

from .models import REFERENCES, reference


def main(argv=None) -> None:
    import fxcache

    from .fidelity import psnr

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=tuple(REFERENCES), default="wan", help="the reference model")
    ap.add_argument("--steps", type=int, nargs="+", default=[50])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--options", required=True, help="a JSON list of fxcache option dicts")
    ap.add_argument("--cfg", choices=("separate", "batched"), default="separate")
    ap.add_argument("--prompts", choices=("benchmark", "heldout"), default="benchmark",
                    help="the benchmark's 8 prompts, or 16 prompts it does not use")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    ref = reference(args.model)
    model, encoder = ref.load()
    conditioning = ref.encode(encoder, ref.prompts if args.prompts == "benchmark" else ref.heldout)

    def generate(m, steps, seed):
        return ref.generate(m, conditioning, num_inference_steps=steps, guidance_scale=ref.guidance, seed=seed,
                            cfg=args.cfg)

    for steps in args.steps:
        refs = {s: generate(model, steps, s) for s in args.seeds}
        for options in json.loads(args.options):
            torch._dynamo.reset()
            cm = torch.compile(model, fullgraph=True, backend=fxcache.backend(compiler="eager", **options))
            p = []
            for s in args.seeds:
                out = generate(cm, steps, s)
                p += [float(psnr(out[i], refs[s][i])) for i in range(out.shape[0])]
            st = fxcache.stats(cm)
            ratio = (st.blocks_computed + st.blocks_skipped) / max(1, st.blocks_computed)
            print([round(x, 1) for x in p])
            print(steps, options, f"blocks {ratio:.2f}x", f"psnr {sum(p) / len(p):.1f} / {min(p):.1f}",
                  st.decision_counts, flush=True)


if __name__ == "__main__":
    main()
