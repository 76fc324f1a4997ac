"""`make demo`: the trained reference video DiT through diffusers' WanPipeline, uncached and with fxcache policies
(`--model flux`: the Flux image DiT through FluxPipeline).

Prints a table (wall time, speedup, PSNR / SSIM against the uncached clips, full steps) and writes
out/demo.png (the clips side by side) and out/pareto.png (speedup against PSNR). Every method is compiled with
Inductor; the first generation of each compiles it (reported apart), then the timed repeats are interleaved.

    python -m bench.demo [--model wan|flux] [--steps 30] [--repeats 2] [--compiler inductor|eager]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .harness import default_method, fxcache_method, markdown_table, measure, plot_pareto, rows, uncached_method
from .models import REFERENCES, reference
from .reference.data import Prompt
from .reference.flux_data import ImagePrompt
from .reference.report import clips_to_rows, images_to_grid

PROMPTS = [Prompt("circle", "red", "right"), Prompt("square", "blue", "down"),
           Prompt("triangle", "yellow", "left"), Prompt("square", "green", "up")]
IMAGE_PROMPTS = [ImagePrompt("circle", "red", "top left", "large"), ImagePrompt("square", "blue", "bottom right",
                                                                                 "small"),
                 ImagePrompt("triangle", "yellow", "top right", "large"), ImagePrompt("square", "green",
                                                                                      "bottom left", "large")]
DEMO_PROMPTS = {"wan": PROMPTS, "flux": IMAGE_PROMPTS}


def methods(compiler: str, model: str = "wan"):
    calibration = str(REFERENCES[model].calibration)
    return [
        uncached_method(compiler),
        default_method(compiler),  # what `backend="fxcache"` does with no policy named
        fxcache_method("mixcache", "paper defaults", compiler),
        fxcache_method("teacache", "threshold=0.1", compiler, threshold=0.1),
        fxcache_method("magcache", "calibrated", compiler, calibration=calibration),
    ]


def save_grid(methods, outputs, table, path: Path, prompts=PROMPTS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    video = outputs[0][0].ndim == 5
    fig, axes = plt.subplots(1, len(methods), figsize=((3.3 if video else 2.6) * len(methods),
                                                       (2.2 if video else 1.0) + 0.55 * len(prompts)))
    for ax, m, out, row in zip(axes, methods, outputs, table):
        img = clips_to_rows(out[0], scale=2) if video else images_to_grid(out[0], cols=1, scale=2)
        ax.imshow(img)
        ax.set_xticks([])
        ax.set_yticks([])
        psnr = "" if row["provider"] == "none" else f"\n{row['psnr_mean']:.1f} dB, {row['speedup']:.2f}x"
        label = m.label if video else m.label.replace(" (", "\n(")
        ax.set_title(f"{label}{psnr}", fontsize=7)
    axes[0].set_yticks([(i + 0.5) * img.shape[0] / len(prompts) for i in range(len(prompts))],
                       [str(p) for p in prompts], fontsize=7)
    fig.suptitle("8 frames per clip, left to right; uncached first" if video else "uncached first", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=tuple(REFERENCES), default="wan",
                    help="the reference model: the Wan video DiT (default) or the Flux image DiT")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's, wan 5, flux 4)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compiler", choices=("inductor", "eager"), default="inductor")
    ap.add_argument("--out", type=Path, default=Path("out"))
    args = ap.parse_args(argv)
    ref = reference(args.model)
    prompts = DEMO_PROMPTS[args.model]
    args.guidance = args.guidance or ref.guidance
    args.out.mkdir(parents=True, exist_ok=True)
    if not ref.calibration.exists():
        from .profiling import calibrate

        calibrate(model=args.model)
    t_start = time.time()
    model, encoder = ref.load()
    conditioning = ref.encode(encoder, prompts)
    print(f"{ref.title}, {len(prompts)} prompts, {args.steps} steps, CFG {args.guidance} "
          f"(diffusers {ref.pipeline}, separate cond/uncond calls), {torch.get_num_threads()} threads")
    import fxcache

    print(f"default (backend='fxcache' with no policy): {fxcache.DEFAULT_POLICY} "
          f"{fxcache.DEFAULT_OPTIONS}: {fxcache.DEFAULT_WHY}")
    ms = methods(args.compiler, args.model)
    outputs, times, full, warmup, cache_bytes = measure(ms, model, ref, conditioning, seeds=[0], steps=args.steps,
                                                        guidance=args.guidance, repeats=args.repeats)
    table = rows(ms, outputs, times, full, warmup, ms[:1], args.compiler, args.steps, [0], cache_bytes)
    default = next(r for r in table if r["setting"].startswith("default"))
    print(f"\ndefault: {default['speedup']:.2f}x over uncached torch.compile at {default['psnr_mean']:.1f} / "
          f"{default['psnr_min']:.1f} dB (mean / worst clip); the other rows, fastest first:")
    print(markdown_table(table))
    judged = ref.score(outputs[0][0], prompts)
    print("\njudge on the uncached outputs: " + ", ".join(f"{k} {judged[k]:.0%}" for k in ref.attributes))
    from .overhead import machine

    record = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "model": args.model, "steps": args.steps,
              "repeats": args.repeats,
              "compiler": args.compiler, "default": {"policy": fxcache.DEFAULT_POLICY, **fxcache.DEFAULT_OPTIONS},
              "rows": table}
    (args.out / "demo.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    m = record["machine"]
    (args.out / "demo.md").write_text(
        f"# make demo (python -m bench.demo{'' if args.model == 'wan' else ' --model ' + args.model})\n\n"
        f"{ref.title}. {m['cpu']}, {m['cores']} cores, torch {m['torch']}, no GPU; "
        f"{record['date']}. {len(prompts)} prompts, {args.steps} steps, CFG {args.guidance}, {args.repeats} timed "
        f"repeats (median), speedup against uncached torch.compile.\n\n" + markdown_table(table) + "\n")
    save_grid(ms, outputs, table, args.out / "demo.png", prompts)
    plot_pareto(table, args.out / "pareto.png", f"{ref.title}, {args.steps} steps, {len(prompts)} prompts")
    print(f"wrote {args.out / 'demo.png'} and {args.out / 'pareto.png'} in {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
