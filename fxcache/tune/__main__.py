"""`python -m fxcache.tune`: the command line (what it does: `python -m fxcache.tune --help`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import __doc__ as DESCRIPTION
from .search import GRID, tune


def _floor(text: str) -> tuple[float, float]:
    try:
        mean, worst = (float(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--floor must be MEAN/WORST in dB, e.g. 35/30, got {text!r}") from None
    if worst > mean:
        raise argparse.ArgumentTypeError(f"--floor: the worst clip's floor ({worst}) is above the mean's ({mean})")
    return mean, worst


def _clips(text: str) -> list[tuple[int, int]]:
    """'0:0,2:0' -> [(prompt 0, seed 0), (prompt 2, seed 0)]."""
    try:
        return [(int(p), int(s)) for p, s in (c.split(":") for c in text.split(",") if c.strip())]
    except ValueError:
        raise argparse.ArgumentTypeError(f"clips must be PROMPT:SEED,... e.g. 0:0,2:0, got {text!r}") from None


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m fxcache.tune", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="module:callable returning a Target, as for fxcache.profile")
    ap.add_argument("--calibration", required=True, type=Path,
                    help="the model's calibration file: the choice is written into it (profiled first if missing)")
    ap.add_argument("--floor", type=_floor, default=(35.0, 30.0), help="MEAN/WORST PSNR in dB (default 35/30)")
    ap.add_argument("--steps", type=int, default=50, help="sampler steps (default 50)")
    ap.add_argument("--guidance", type=float, default=5.0, help="CFG scale (default 5.0)")
    ap.add_argument("--budget", type=float, default=900.0, help="seconds of search (default 900)")
    ap.add_argument("--tune-clips", type=_clips, default=None,
                    help="PROMPT:SEED,... of the tuning split (default: even prompts, seed 0)")
    ap.add_argument("--heldout-clips", type=_clips, default=None,
                    help="PROMPT:SEED,... of the held-out split (default: odd prompts, seed 1)")
    ap.add_argument("--compiler", choices=("eager", "inductor"), default="eager",
                    help="fxcache's inner compiler while searching (default eager: no compile time per setting)")
    ap.add_argument("--policies", default=None, help=f"comma-separated subset of {', '.join(GRID)}")
    ap.add_argument("--plot", type=Path, default=None, help="PNG (default: the calibration file's name + -tune.png)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.steps < 2 or args.budget <= 0:
        ap.error("--steps must be >= 2 and --budget > 0")
    policies = None
    if args.policies:
        policies = [p.strip() for p in args.policies.split(",")]
        unknown = [p for p in policies if p not in GRID]
        if unknown:
            ap.error(f"--policies: unknown {unknown}; choose from {', '.join(GRID)}")
    plot = args.plot or args.calibration.with_name(args.calibration.stem + "-tune.png")
    section = tune(args.target, floor=args.floor, steps=args.steps, guidance=args.guidance,
                   tune_clips=args.tune_clips, heldout_clips=args.heldout_clips, budget_s=args.budget,
                   calibration=args.calibration, compiler=args.compiler, policies=policies, plot=plot,
                   progress=not args.quiet)
    print(f"{len(section['searched'])} settings searched in {section['seconds']:.0f} s; wrote {args.calibration} "
          f"and {plot}")
    chosen = section["chosen"]
    if chosen is None:
        print(f"no setting held the floor {args.floor[0]:g} / {args.floor[1]:g} dB on both splits: the file now "
              f"says to cache nothing (policy 'none')")
    else:
        t, h = chosen["tuning"], chosen["heldout"]
        print(f"chosen: {t['label']}: tuning {t['speedup']:.2f}x at {t['psnr_mean']} / {t['psnr_worst']} dB; "
              f"held-out {h['speedup']:.2f}x at {h['psnr_mean']} / {h['psnr_worst']} dB")
        print(f'use it: torch.compile(model, backend="fxcache", options={{"calibration": "{args.calibration}"}})')
    return section


if __name__ == "__main__":
    main()
