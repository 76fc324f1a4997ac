"""Judge a reference model on every prompt: how often its outputs have the prompted attributes (Wan: color,
shape and direction of 48 clips; Flux: color, shape, position and size of 96 images).

    python -m bench.reference.evaluate                # the committed Wan weights
    python -m bench.reference.evaluate --model flux   # the committed Flux weights
    python -m bench.reference.evaluate --ckpt         # the EMA weights of the training checkpoint (while it trains)

Prints the fractions per attribute beside chance, and a confusion table of the hardest attribute (prompted ->
judged), the quickest way to see what the model has and has not learned.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from .data import COLORS, DIRECTIONS, SHAPES
from .flux_data import POSITIONS, SIZES

# chance level of each attribute: one value out of how many
CHANCE = {"wan": {"color": 1 / len(COLORS), "shape": 1 / len(SHAPES), "direction": 1 / len(DIRECTIONS)},
          "flux": {"color": 1 / len(COLORS), "shape": 1 / len(SHAPES), "position": 1 / len(POSITIONS),
                   "size": 1 / len(SIZES)}}


def load_ckpt(model_name: str = "wan"):
    from . import flux_model, model as wan_model
    from .train import FAMILIES

    family = FAMILIES[model_name]
    ck = torch.load(family["ckpt"] / "last.pt", weights_only=False)
    encoder = (wan_model.PromptEncoder if model_name == "wan" else flux_model.ImagePromptEncoder)().eval()
    model = family["module"].build_transformer().eval()
    model.load_state_dict(ck["ema_model"])
    encoder.load_state_dict(ck["ema_encoder"])
    return model, encoder, ck["step"]


@torch.no_grad()
def evaluate(model, encoder, seeds=(0,), steps: int = 30, guidance: float | None = None, batch: int = 16,
             name: str = "wan") -> dict:
    """Every prompt of reference model `name` once per seed, batched CFG (the same arithmetic as the pipelines'
    separate calls), judged."""
    from ..models import REFERENCES

    ref = REFERENCES[name]
    prompts = list(ref.every)
    outputs, judged = [], []
    for seed in seeds:
        for i in range(0, len(prompts), batch):
            chunk = prompts[i:i + batch]
            outputs.append(ref.generate(model, ref.encode(encoder, chunk), num_inference_steps=steps,
                                        guidance_scale=guidance or ref.guidance, seed=seed * 1000 + i,
                                        cfg="batched"))
            judged += chunk
    return ref.score(torch.cat(outputs), judged) | {"prompts": judged}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("wan", "flux"), default="wan", help="which reference model")
    ap.add_argument("--ckpt", action="store_true", help="judge the training checkpoint's EMA weights")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=None, help="CFG scale (default: wan 5, flux 4)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    flux = args.model == "flux"
    args.guidance = args.guidance or (4.0 if flux else 5.0)
    if args.ckpt:
        model, encoder, step = load_ckpt(args.model)
        what = f"{args.model} checkpoint EMA at step {step}"
    else:
        from . import flux_model, model as wan_model

        model, encoder = (flux_model if flux else wan_model).load()
        what = f"committed {args.model} weights"
    s = evaluate(model, encoder, seeds=range(args.seeds), steps=args.steps, guidance=args.guidance,
                 name=args.model)
    n = len(s["verdicts"])
    chance = CHANCE[args.model]
    print(f"{what}: {n} {'images' if flux else 'clips'}, {args.steps} steps, CFG {args.guidance}")
    print(" ".join(f"{k} {s[k]:.0%} (chance {chance[k]:.0%})" for k in chance) + f"; all {s['all']:.0%}")
    if flux:
        prompted = [p.position for p in s["prompts"]]
        judged = [v.judged["position"] for v in s["verdicts"]]
        names = list(POSITIONS)
    else:
        prompted = [p.direction for p in s["prompts"]]
        judged = [v.direction for v in s["verdicts"]]
        names = list(DIRECTIONS)
    confusion = Counter(zip(prompted, judged))
    print("prompted \\ judged " + " ".join(f"{str(d):>12}" for d in names + [None]))
    for d in names:
        print(f"{d:>17} " + " ".join(f"{confusion[(d, j)]:>12}" for j in names + [None]))


if __name__ == "__main__":
    main()
