"""A continuous-batching serving loop (step batching): requests at different denoising steps share one forward.

Each iteration admits the requests that have arrived (first come, first served) while the batch has room, runs ONE
denoising step for every request in the batch, and lets the finished ones leave. A step is two transformer calls,
conditional then unconditional (the WanPipeline CFG layout), each on the batch's rows: latents stacked, each row
with its own timestep (a `[B]` tensor), as vllm-omni's step batching does. The calls are made inside
`fxcache.context(requests=ids)`, one id per row, so that fxcache keeps each request's cache and decisions; a request
that finishes is released (`fxcache.release`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import fxcache

from .pipeline import initial_latents, make_scheduler

GUIDANCE = 5.0


@dataclass
class Request:
    rid: str
    cond: torch.Tensor  # [1, L, D] prompt embedding
    uncond: torch.Tensor
    steps: int
    seed: int
    arrival: int  # the loop iteration at which it arrives
    latent: torch.Tensor = None
    scheduler: object = None
    done: int = 0  # steps taken
    timeline: list = field(default_factory=list)  # (iteration, batch size) of each of its steps

    def start(self) -> None:
        self.latent = initial_latents(1, self.seed)
        self.scheduler = make_scheduler()
        self.scheduler.set_timesteps(self.steps)
        self.done = 0
        self.timeline = []

    @property
    def t(self) -> torch.Tensor:
        return self.scheduler.timesteps[self.done]


@torch.no_grad()
def serve(model, requests: list[Request], max_batch: int, *, release: bool = True,
          on_step=None) -> dict[str, torch.Tensor]:
    """Run every request to completion through `model`; returns {request id: final latent [1, C, F, H, W]}.
    `on_step(iteration, finished)` is called after each iteration."""
    waiting = sorted(requests, key=lambda r: r.arrival)
    for r in waiting:
        r.start()
    active: list[Request] = []
    out: dict[str, torch.Tensor] = {}
    it = 0
    while waiting or active:
        while waiting and waiting[0].arrival <= it and len(active) < max_batch:
            active.append(waiting.pop(0))
        if not active:  # nobody has arrived yet
            it = waiting[0].arrival
            continue
        x = torch.cat([r.latent for r in active])
        t = torch.stack([r.t for r in active]).float()
        ids = [r.rid for r in active]
        with fxcache.context(requests=ids):
            cond = model(hidden_states=x, timestep=t, encoder_hidden_states=torch.cat([r.cond for r in active]),
                         return_dict=False)[0]
            uncond = model(hidden_states=x, timestep=t,
                           encoder_hidden_states=torch.cat([r.uncond for r in active]), return_dict=False)[0]
        noise = uncond + GUIDANCE * (cond - uncond)
        leaving = []
        for k, r in enumerate(active):
            r.latent = r.scheduler.step(noise[k:k + 1], r.t, r.latent, return_dict=False)[0]
            r.timeline.append((it, len(active)))
            r.done += 1
            if r.done == r.steps:
                leaving.append(r)
        for r in leaving:
            active.remove(r)
            out[r.rid] = r.latent
        if release and leaving:
            fxcache.release(model, [r.rid for r in leaving])
        if on_step is not None:
            on_step(it, len(out))
        it += 1
    return out


def workload(encoder, prompts, n: int, steps: tuple[int, ...], gap: int, seed0: int = 0) -> list[Request]:
    """`n` requests: prompts and step counts cycled, a new seed each, one arriving every `gap` iterations."""
    cond, uncond = encoder.encode(prompts)
    return [Request(f"r{i}", cond[i % len(prompts)][None], uncond[i % len(prompts)][None], steps[i % len(steps)],
                    seed0 + i, i * gap) for i in range(n)]
