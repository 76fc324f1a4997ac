"""Judge the reference model on every prompt: how often its clips have the prompted color, shape and direction.

    python -m bench.reference.evaluate                # the committed weights
    python -m bench.reference.evaluate --ckpt         # the EMA weights of the training checkpoint (while it trains)

Prints the fractions per attribute and a direction confusion table (prompted -> judged), the quickest way to see
what the model has and has not learned.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from .data import DIRECTIONS, all_prompts
from .judge import score


def load_ckpt():
    from .model import PromptEncoder, build_transformer
    from .train import CKPT

    ck = torch.load(CKPT / "last.pt", weights_only=False)
    model, encoder = build_transformer().eval(), PromptEncoder().eval()
    model.load_state_dict(ck["ema_model"])
    encoder.load_state_dict(ck["ema_encoder"])
    return model, encoder, ck["step"]


@torch.no_grad()
def evaluate(model, encoder, seeds=(0,), steps: int = 30, guidance: float = 5.0, batch: int = 16) -> dict:
    from ..pipeline import generate

    prompts = all_prompts()
    clips, judged = [], []
    for seed in seeds:
        for i in range(0, len(prompts), batch):
            chunk = prompts[i:i + batch]
            cond, uncond = encoder.encode(chunk)
            clips.append(generate(model, cond, uncond, num_inference_steps=steps, guidance_scale=guidance,
                                  seed=seed * 1000 + i, cfg="batched"))
            judged += chunk
    return score(torch.cat(clips), judged) | {"prompts": judged}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", action="store_true", help="judge the training checkpoint's EMA weights")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ckpt:
        model, encoder, step = load_ckpt()
        what = f"checkpoint EMA at step {step}"
    else:
        from .model import load

        model, encoder = load()
        what = "committed weights"
    s = evaluate(model, encoder, seeds=range(args.seeds), steps=args.steps, guidance=args.guidance)
    n = len(s["verdicts"])
    print(f"{what}: {n} clips, {args.steps} steps, CFG {args.guidance}")
    print(" ".join(f"{k} {s[k]:.0%}" for k in ("color", "shape", "direction", "all")))
    confusion = Counter((p.direction, v.direction) for p, v in zip(s["prompts"], s["verdicts"]))
    names = list(DIRECTIONS) + [None]
    print("prompted \\ judged " + " ".join(f"{str(d):>6}" for d in names))
    for d in DIRECTIONS:
        print(f"{d:>17} " + " ".join(f"{confusion[(d, j)]:>6}" for j in names))


if __name__ == "__main__":
    main()
