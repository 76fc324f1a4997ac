"""Train a reference DiT with flow matching on the CPU: the Wan video model (default) or the Flux image model.

    python -m bench.reference.train                 # full run (resumes from bench/reference/ckpt/last.pt)
    python -m bench.reference.train --steps 200     # a short run, e.g. to try a change
    python -m bench.reference.train --model flux    # the Flux image model (bench/reference/ckpt-flux/)

Deterministic from --seed: step s draws its batch, noise and timesteps from a generator seeded by (seed, s), so a
run resumed from a checkpoint continues exactly as an uninterrupted one would. Every --export-every steps the EMA
weights, the loss curve and a sample grid are written to bench/reference/weights/.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..pipeline_flux import SHIFT as FLUX_SHIFT
from . import flux_model
from . import model as wan_model
from .data import sample_batch
from .flux_data import sample_images

CKPT = Path(__file__).parent / "ckpt"
CKPT_FLUX = Path(__file__).parent / "ckpt-flux"


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def training_step(model, encoder, batch_size: int, gen: torch.Generator, p_uncond: float,
                  shift: float = 1.0) -> torch.Tensor:
    x0, ids = sample_batch(batch_size, gen)
    drop = torch.rand(batch_size, generator=gen) < p_uncond
    ids = torch.where(drop[:, None], torch.full_like(ids, -1), ids)
    noise = torch.randn(x0.shape, generator=gen)
    sigma = torch.sigmoid(torch.randn(batch_size, generator=gen))  # logit-normal(0, 1) noise levels
    # Shifted the way the sampler's FlowMatchEulerDiscreteScheduler(shift=...) shifts its sigmas, so training sees
    # the high noise levels where sampling spends its first steps and the clip's layout and motion are decided.
    sigma = shift * sigma / (1 + (shift - 1) * sigma)
    s = sigma.view(-1, 1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    pred = model(hidden_states=xt, timestep=sigma * 1000, encoder_hidden_states=encoder(ids), return_dict=False)[0]
    return F.mse_loss(pred, noise - x0)  # flow-matching velocity target, as FlowMatchEulerDiscreteScheduler expects


def training_step_flux(model, encoder, batch_size: int, gen: torch.Generator, p_uncond: float,
                       shift: float = 1.0) -> torch.Tensor:
    """The same flow-matching objective on the Flux model's packed tokens; the timestep is sigma in [0, 1], as
    FluxPipeline passes it (the model scales it by 1000 itself)."""
    x0, ids = sample_images(batch_size, gen)
    drop = torch.rand(batch_size, generator=gen) < p_uncond
    ids = torch.where(drop[:, None], torch.full_like(ids, -1), ids)
    noise = torch.randn(x0.shape, generator=gen)
    sigma = torch.sigmoid(torch.randn(batch_size, generator=gen))
    sigma = shift * sigma / (1 + (shift - 1) * sigma)
    s = sigma.view(-1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    text, pooled = encoder(ids)
    img_ids, txt_ids = flux_model.position_ids()
    pred = model(hidden_states=flux_model.pack(xt), timestep=sigma, encoder_hidden_states=text,
                 pooled_projections=pooled, img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]
    return F.mse_loss(pred, flux_model.pack(noise - x0))


# What differs between the two reference models; everything else in a run is shared.
FAMILIES = {
    "wan": dict(module=wan_model, step=training_step, ckpt=CKPT, steps=12000, shift=3.0),
    "flux": dict(module=flux_model, step=training_step_flux, ckpt=CKPT_FLUX, steps=6000, shift=FLUX_SHIFT),
}


@torch.no_grad()
def ema_update(ema: torch.nn.Module, live: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), live.parameters()):
        e.lerp_(p, 1 - decay)


def export(ema_model, ema_encoder, history: list[tuple[int, float]], step: int, args) -> None:
    from .report import plot_loss, sample_grid, sample_image_grid

    out = Path(args.out)
    meta = {"trained_steps": step, "seed": args.seed, "batch": args.batch, "lr": args.lr, "ema": args.ema,
            "shift": args.shift}
    old = out / "config.json"
    if old.exists():  # the hand-written account of how the run was scheduled outlives each export
        note = json.loads(old.read_text()).get("schedule_note")
        meta |= {"schedule_note": note} if note else {}
    FAMILIES[args.model]["module"].save(ema_model, ema_encoder, out, meta=meta)
    plot_loss(history, out / "loss.png", title=f"reference {args.model.capitalize()} DiT training")
    grid = sample_grid if args.model == "wan" else sample_image_grid
    grid(ema_model, ema_encoder, out / "samples.png", title=f"EMA weights after {step} steps")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=tuple(FAMILIES), default="wan", help="which reference model to train")
    ap.add_argument("--steps", type=int, default=None, help="total training steps (wan 12000, flux 6000)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1.2e-3)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--p-uncond", type=float, default=0.1, help="prompt dropout for classifier-free guidance")
    ap.add_argument("--shift", type=float, default=None, help="timestep shift of the training noise levels, as "
                    "the sampler shifts them (wan 3; flux e^0.5 = 1.65, FluxPipeline's shift at 256 tokens)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--export-every", type=int, default=1000)
    ap.add_argument("--ckpt-dir", default=None, help="where checkpoints and loss.csv go (default: the model's)")
    ap.add_argument("--out", default=None, help="where the exported weights, loss curve and samples go "
                    "(default: the model's committed weights folder)")
    ap.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    ap.add_argument("--export-only", action="store_true", help="write weights, loss curve and samples of the "
                    "checkpoint, then stop")
    args = ap.parse_args(argv)
    family = FAMILIES[args.model]
    args.steps = args.steps or family["steps"]
    args.shift = args.shift or family["shift"]
    args.ckpt_dir = args.ckpt_dir or str(family["ckpt"])
    args.out = args.out or str(family["module"].WEIGHTS)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = family["module"].build_transformer(args.seed).train()
    torch.manual_seed(args.seed)
    encoder = (wan_model.PromptEncoder if args.model == "wan" else flux_model.ImagePromptEncoder)()
    params = list(model.parameters()) + list(encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    ema_model, ema_encoder = copy.deepcopy(model).eval(), copy.deepcopy(encoder).eval()
    history: list[tuple[int, float]] = []
    step = 0
    ckpt = Path(args.ckpt_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    last = ckpt / "last.pt"
    if last.exists() and not args.fresh:
        ck = torch.load(last, weights_only=False)
        model.load_state_dict(ck["model"]); encoder.load_state_dict(ck["encoder"])
        ema_model.load_state_dict(ck["ema_model"]); ema_encoder.load_state_dict(ck["ema_encoder"])
        opt.load_state_dict(ck["opt"])
        step, history = ck["step"], ck["history"]
        print(f"resumed at step {step}")
    if args.export_only:
        export(ema_model, ema_encoder, history, step, args)
        return

    log = (ckpt / "loss.csv").open("a", newline="")
    writer = csv.writer(log)
    bar = tqdm(total=args.steps, initial=step, desc="train", mininterval=10)
    t0 = time.time()
    while step < args.steps:
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        loss = family["step"](model, encoder, args.batch, gen, args.p_uncond, args.shift)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        ema_update(ema_model, model, decay)
        ema_update(ema_encoder, encoder, decay)
        step += 1
        history.append((step, loss.item()))
        writer.writerow([step, f"{loss.item():.5f}", f"{time.time() - t0:.1f}"])
        bar.update(1)
        bar.set_postfix(loss=f"{sum(l for _, l in history[-50:]) / len(history[-50:]):.4f}")
        if step % args.ckpt_every == 0 or step == args.steps:
            log.flush()
            torch.save({"model": model.state_dict(), "encoder": encoder.state_dict(),
                        "ema_model": ema_model.state_dict(), "ema_encoder": ema_encoder.state_dict(),
                        "opt": opt.state_dict(), "step": step, "history": history}, ckpt / "tmp.pt")
            (ckpt / "tmp.pt").replace(last)
        if step % args.export_every == 0 or step == args.steps:
            export(ema_model, ema_encoder, history, step, args)
    bar.close()


if __name__ == "__main__":
    main()
