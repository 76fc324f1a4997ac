"""`python -m fxcache.profile`: the command line of a profile (what it measures: `python -m fxcache.profile --help`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import __doc__ as DESCRIPTION
from .run import profile


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fxcache.profile", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True,
                    help="module:callable returning a Target (e.g. bench.profiling:reference)")
    ap.add_argument("--prompts", type=int, default=4, help="prompt indices 0..N-1 (default 4)")
    ap.add_argument("--seeds", default="1234", help="comma-separated seeds (default 1234)")
    ap.add_argument("--steps", type=int, default=50, help="sampler steps (default 50)")
    ap.add_argument("--guidance", type=float, default=5.0, help="CFG scale g (default 5.0)")
    ap.add_argument("--out", required=True, type=Path, help="calibration JSON to write")
    ap.add_argument("--plot", type=Path, default=None, help="PNG to write (default: --out with .png)")
    ap.add_argument("--no-plot", action="store_true", help="write no plot")
    ap.add_argument("--stable-tol", type=float, default=0.1,
                    help="D_step is stable once it differs by at most this fraction from each of the previous "
                         "five steps (default 0.1)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    plot = None if args.no_plot else (args.plot or args.out.with_suffix(".png"))
    data = profile(args.target, prompts=args.prompts, seeds=seeds, steps=args.steps, guidance=args.guidance,
                   out=args.out, plot=plot, stable_tol=args.stable_tol, progress=not args.quiet)
    mix = data["mixcache"]
    print(f"wrote {args.out}" + (f" and {plot}" if plot else ""))
    print(f"theta {mix['theta']:.4g}  delta1 {mix['delta1']:.4g}  delta2 {mix['delta2']:.4g}  "
          f"I_step {mix['impact']['step']:.4g}  I_cfg {mix['impact']['cfg']:.4g}  blocks {mix['blocks']}")


if __name__ == "__main__":
    main()
