"""The zoo table: for every family in tests/zoo.py, the blocks fxcache finds, how far policy "none" is from eager
(Inductor), and how many of the 20-step loop's model calls each caching policy skipped (the settings of
tests/test_engine.py), with the final output's relative L1 distance to the uncached loop.

    python -m tests.zoo_report [--families wan,flux] [--out bench/results/zoo.md]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import warnings
from pathlib import Path

import torch

import fxcache

from .loop import denoise, first
from .test_engine import CACHING, rel_l1
from .zoo import ZOO


def row(name: str) -> str:
    entry = ZOO[name]
    model = entry.build()
    torch._dynamo.reset()
    fullgraph = name not in ("lumina2", "hidream", "zimage")
    try:
        ref = denoise(model, entry)
    except Exception as e:  # noqa: BLE001 - reported in the table
        return f"| {name} | - | - | loop not supported by tests/loop.py: {type(e).__name__} |"
    kw = entry.inputs(torch.tensor(700.0), 1)
    cm = torch.compile(model, backend="fxcache", fullgraph=fullgraph, options={"policy": "none"})
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        diff = float((first(cm(**kw)) - first(model(**kw))).abs().max())
    runtimes = fxcache.runtimes_of(cm)
    lists = ", ".join(f"{k.split('.')[-1]} x{v}" for r in runtimes for k, v in r.discovery.block_lists().items())
    del cm, runtimes  # stats(model) counts every live runtime compiled from these parameters
    gc.collect()
    cells = [cell(model, entry, ref, options, fullgraph) for options in CACHING.values()]
    return (f"| {name} | {lists or 'none found (plain compile)'} | {'fullgraph' if fullgraph else 'graph breaks'} "
            f"| {diff:.1e} | " + " | ".join(cells) + " |")


def cell(model, entry, ref, options, fullgraph) -> str:
    """Skipped calls / all calls (relative L1 of the final output) for one policy setting."""
    options = dict(options)
    try:
        torch._dynamo.reset()
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if options["policy"] == "magcache":
                ratios = str(Path(tmp) / "r.json")
                denoise(torch.compile(model, backend="fxcache", fullgraph=fullgraph,
                                      options={"policy": "magcache", "calibrate": ratios, "compiler": "eager"}), entry)
                if not Path(ratios).exists():
                    return "not cached"
                options["ratios"] = ratios
                torch._dynamo.reset()
            c = torch.compile(model, backend="fxcache", fullgraph=fullgraph, options={**options, "compiler": "eager"})
            out = denoise(c, entry)
        s = fxcache.stats(c)
        del c
        gc.collect()
        return f"{s.skipped_steps}/{s.steps} ({rel_l1(out, ref):.3f})" if s.steps else "not cached"
    except Exception as e:  # noqa: BLE001 - reported in the table
        return f"error: {type(e).__name__}"


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(ZOO))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    head = ("| family | blocks found | graph | none vs eager, max abs (Inductor) | "
            + " | ".join(f"{k}: skipped/calls (rel L1)" for k in CACHING) + " |\n"
            + "|---" * (4 + len(CACHING)) + "|")
    lines = [head]
    for name in args.families.split(","):
        lines.append(row(name))
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    if args.out:
        args.out.write_text(f"# Zoo (`python -m tests.zoo_report`)\n\nTiny random-weight diffusers models, "
                            f"20-step flow-matching loops with CFG as each family's pipeline does it.\n\n{text}\n")
    return text


if __name__ == "__main__":
    main()
