"""Faithfulness: fxcache's policy against the peer's implementation of the same method, at the same settings, on
the reference model.

    python -m bench.faithful            # 50 steps, 2 prompts -> bench/results/faithful.{json,md}
    python -m bench.faithful --model flux   # the Flux model, the peers that support it -> faithful-flux.*
    python -m bench.faithful --quick    # 8 steps, 1 prompt, nothing written (tests)

Both sides run eagerly (fxcache with `compiler="eager"`), so what remains between them is the method, not
Inductor's float reordering. Per pair it reports the PSNR of fxcache's clip against the peer's (and each against
the uncached clip), and whether the per-call decisions are identical. A decision is, per transformer call, the
number of blocks that ran and the number of cached modules (attention / feed-forward) that ran inside them: for
fxcache from `fxcache.stats(model).decisions`, for the peer from forward pre-hooks on every block's first norm and
on the first Linear of every module the method caches (a block or module whose output is reused or forecast does
not reach them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

from .fidelity import psnr
from .overhead import machine
from .models import REFERENCES, Reference, reference, rows_of
from .peers import CACHEDIT, apply_peer, cachedit_settings, cachedit_status, calibrate_peer, cfg_mode, \
    diffusers_settings

RESULTS = Path(__file__).parent / "results"
MODULES = ("attn1", "attn2", "ffn")  # the reference model's (Wan) cached modules per block

# (fxcache options, the peer's (method, setting) in bench/peers.py, which modules the method caches[, fxcache's
# CFG layout where it differs from the peer's])
PAIRS = [
    # diffusers' FasterCache needs batched CFG (its hook splits the batch). fxcache's runs both layouts: batched,
    # as diffusers does, and the separate calls of WanPipeline (the same arithmetic up to the float rounding of
    # batch 2 vs batch 1 kernels).
    ({"policy": "fastercache"}, ("fastercache", "config defaults: attn<681 uncond<641 w=0.5"), ("attn1",),
     "batched"),
    ({"policy": "fastercache"}, ("fastercache", "config defaults: attn<681 uncond<641 w=0.5"), ("attn1",),
     "separate"),
    ({"policy": "fbcache", "threshold": 0.05}, ("fbcache", "threshold=0.05"), ()),
    ({"policy": "fbcache", "threshold": 0.2}, ("fbcache", "threshold=0.2"), ()),
    ({"policy": "pab", "spatial_range": 2, "temporal_range": None, "cross_range": 6, "window": (100, 800)},
     ("pab", "spatial=2 cross=6"), ("attn1", "attn2")),
    ({"policy": "taylorseer", "interval": 5, "order": 1, "warmup_steps": 3},
     ("taylorseer", "interval=5 order=1"), MODULES),
    ({"policy": "magcache", "threshold": 0.06, "max_skips": 3, "retention": 0.2},
     ("magcache", "E0.06 K3 R0.2"), ()),
    ({"policy": "dbcache", "Fn": 1, "Bn": 0, "threshold": 0.08, "warmup_steps": 8},
     ("dbcache", "F1B0 R0.08 W8"), ()),
    ({"policy": "dbcache", "Fn": 1, "Bn": 0, "threshold": 0.24, "warmup_steps": 8},
     ("dbcache", "F1B0 R0.24 W8"), ()),
    ({"policy": "dbcache", "Fn": 1, "Bn": 0, "threshold": 0.24, "warmup_steps": 8, "forecast": "taylor",
      "order": 1}, ("dbcache+taylorseer", "F1B0 R0.24 W8 O1"), ()),
    ({"policy": "dbcache", "Fn": 1, "Bn": 0, "threshold": 0.24, "warmup_steps": 8, "forecast": "foca"},
     ("dbcache+foca", "F1B0 R0.24 W8"), ()),
    # SeaCache: fxcache is told the step count (num_steps, filled in per run), which diffusers reads from
    # WanPipeline's cache contexts.
    ({"policy": "seacache"}, ("seacache", "threshold=0.25"), ()),
    ({"policy": "seacache", "threshold": 0.4}, ("seacache", "threshold=0.4"), ()),
]
NEEDS_STEPS = {"seacache", "easycache"}


# On the Flux model: the step-level methods whose peers support Flux (diffusers' FirstBlockCache and MagCache at
# its published FLUX.1-dev setting, cache-dit's DBCache).
PAIRS_FLUX = [
    ({"policy": "fbcache", "threshold": 0.05}, ("fbcache", "threshold=0.05"), ()),
    ({"policy": "fbcache", "threshold": 0.2}, ("fbcache", "threshold=0.2"), ()),
    ({"policy": "magcache", "threshold": 0.24, "max_skips": 5, "retention": 0.1},
     ("magcache", "E0.24 K5 R0.1 (Flux)"), ()),
    ({"policy": "dbcache", "Fn": 1, "Bn": 0, "threshold": 0.08, "warmup_steps": 8},
     ("dbcache", "F1B0 R0.08 W8"), ()),
    ({"policy": "dbcache", "Fn": 1, "Bn": 0, "threshold": 0.24, "warmup_steps": 8},
     ("dbcache", "F1B0 R0.24 W8"), ()),
]


def blocks_of(transformer) -> list:
    """Every repeated block, in call order (Flux: the dual-stream blocks, then the single-stream ones)."""
    if hasattr(transformer, "blocks"):
        return list(transformer.blocks)
    return list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)


class ComputeLog:
    """Per transformer call: how many blocks ran, and how many of the listed modules inside them ran."""

    def __init__(self, transformer, modules) -> None:
        self.calls: list[list[int]] = []  # [blocks run, modules run, block samples, module samples]
        self.handles = [transformer.register_forward_pre_hook(lambda *_: self.calls.append([0, 0, 0, 0]))]
        for block in blocks_of(transformer):
            # Not the block itself: a peer's hook on a block replaces its forward, and the block's own pre-hooks
            # still fire when that forward returns cached values. Its first norm runs only when the block does.
            norm = next(m for n, m in block.named_children() if n.startswith("norm"))
            self.handles.append(norm.register_forward_pre_hook(lambda m, args: self._add(0, args)))
            for name in modules:
                linear = next(m for m in getattr(block, name).modules() if isinstance(m, torch.nn.Linear))
                self.handles.append(linear.register_forward_pre_hook(lambda m, args: self._add(1, args)))

    def _add(self, i: int, args) -> None:
        if self.calls:
            self.calls[-1][i] += 1
            self.calls[-1][2 + i] += args[0].shape[0]  # samples that ran (a peer may drop the uncond half)

    def close(self, per_branch: bool = False) -> list[tuple[int, int]]:
        """(blocks, modules) run per call; `per_branch`: counted once per sample they ran on (a batched-CFG call
        of one prompt: 2 with both branches, 1 with the cond half only), to compare with two separate calls per
        step of one sample each."""
        for h in self.handles:
            h.remove()
        return [(bs, ms) if per_branch else (b, m) for b, m, bs, ms in self.calls]


def _peer(method: str, setting: str, model: str = "wan"):
    for p in diffusers_settings(model) + cachedit_settings(model):
        if (p.method, p.setting) == (method, setting):
            return p
    raise KeyError((method, setting))


def fxcache_decisions(stats, modules_per_block: int) -> list[tuple[int, int]]:
    """(blocks run, cached modules run) per call; `sites` also counts forecast residuals, which are no modules:
    for a method that caches no module (modules_per_block 0) the second number is 0."""
    return [(r["blocks"], r["blocks"] * modules_per_block - r["sites"] if modules_per_block else 0)
            for r in stats.decisions]


def run_pair(transformer, ref: Reference, conditioning, n: int, options, peer, modules, steps: int,
             ratios_path: Path, fx_cfg: str | None = None) -> dict:
    """One (fxcache options, peer) pair on `n` prompts of `conditioning`, one generation per prompt."""
    import fxcache

    cfg = cfg_mode(peer)
    fx_cfg = fx_cfg or cfg
    kw = dict(num_inference_steps=steps, guidance_scale=ref.guidance, cfg=cfg)
    calibration = calibrate_peer(transformer, peer, lambda t, c: ref.generate(t, conditioning, **{**kw, "cfg": c}),
                                 num_inference_steps=steps)
    options = dict(options)
    if options["policy"] in NEEDS_STEPS:
        options.setdefault("num_steps", steps)
    if options["policy"] == "magcache":
        # the same ratios on both sides: diffusers' calibration, one list for both streams (as diffusers uses it)
        ratios_path.write_text(json.dumps({"streams": {"*": calibration["mag_ratios"]}}))
        options["ratios"] = str(ratios_path)
    record = {"fxcache": options, "peer": peer.name, "cfg": cfg if fx_cfg == cfg else f"{fx_cfg} / {cfg}",
              "clips": []}
    ref_clips, peer_clips, fx_clips, peer_dec, fx_dec = [], [], [], [], []
    for i in range(n):
        one = rows_of(conditioning, slice(i, i + 1))
        ref_clips.append(ref.generate(transformer, one, **kw))
        with apply_peer(transformer, peer, num_inference_steps=steps, calibration=calibration):
            log = ComputeLog(transformer, modules)
            peer_clips.append(ref.generate(transformer, one, **kw))
            peer_dec.append(log.close(per_branch=fx_cfg != cfg))
        torch._dynamo.reset()
        compiled = torch.compile(transformer, fullgraph=True,
                                 backend=fxcache.backend(compiler="eager", decision_log=4 * steps, **options))
        fx_clips.append(ref.generate(compiled, one, **{**kw, "cfg": fx_cfg}))
        fx_dec.append(fxcache_decisions(fxcache.stats(compiled), len(modules)))
        torch._dynamo.reset()
    if fx_cfg != cfg:  # two fxcache calls per step against one batched peer call: compare per step
        fx_dec = [[tuple(map(sum, zip(a, b))) for a, b in zip(d[::2], d[1::2])] for d in fx_dec]
    for ref, pc, fc, pd, fd in zip(ref_clips, peer_clips, fx_clips, peer_dec, fx_dec):
        first = next((k for k, (a, b) in enumerate(zip(pd, fd)) if a != b), None)
        record["clips"].append({
            "psnr_fxcache_vs_peer": psnr(fc, pc), "psnr_fxcache_vs_uncached": psnr(fc, ref),
            "psnr_peer_vs_uncached": psnr(pc, ref), "max_abs_diff": float((fc - pc).abs().max()),
            "decisions_identical": pd == fd and len(pd) == len(fd), "first_difference": first,
            "peer_blocks_run": sum(b for b, _ in pd), "fxcache_blocks_run": sum(b for b, _ in fd),
            "peer_modules_run": sum(m for _, m in pd), "fxcache_modules_run": sum(m for _, m in fd),
            "calls": len(fd),
            "peer_decisions": pd if first is not None else None, "fxcache_decisions": fd if first is not None else None,
        })
    return record


def render(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Faithfulness: fxcache vs the peer's implementation (bench/faithful.py)", "",
             f"{result.get('model_title', 'reference Wan DiT')}, {result['steps']} steps, {result['prompts']} prompts, both eager; {m['cpu']}, "
             f"{m['cores']} cores, torch {m['torch']}; {result['date']}. PSNR in dB (inf: identical). A decision is "
             "(blocks run, cached modules run) per transformer call.", "",
             "| fxcache | peer | CFG | PSNR fxcache vs peer (worst) | vs uncached: fxcache / peer | decisions identical |"
             " blocks run fx / peer | modules run fx / peer |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["pairs"]:
        clips = r["clips"]
        opts = ", ".join(f"{k}={v}" for k, v in r["fxcache"].items() if k not in ("ratios",))
        worst = min(c["psnr_fxcache_vs_peer"] for c in clips)
        same = sum(c["decisions_identical"] for c in clips)
        fx_ref = min(c["psnr_fxcache_vs_uncached"] for c in clips)
        peer_ref = min(c["psnr_peer_vs_uncached"] for c in clips)
        lines.append(f"| {opts} | {r['peer']} | {r['cfg']} | {worst:.1f} | {fx_ref:.1f} / {peer_ref:.1f} | "
                     f"{same}/{len(clips)} | {sum(c['fxcache_blocks_run'] for c in clips)} / "
                     f"{sum(c['peer_blocks_run'] for c in clips)} | {sum(c['fxcache_modules_run'] for c in clips)}"
                     f" / {sum(c['peer_modules_run'] for c in clips)} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=tuple(REFERENCES), default="wan", help="the reference model")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma-separated fxcache policy names to run")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--quick", action="store_true", help="8 steps, 1 prompt, nothing written")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.prompts = 8, 1
    from tqdm.auto import tqdm

    ref = reference(args.model)
    transformer, encoder = ref.load()
    everything = ref.prompts + ref.heldout
    prompts = everything[:: max(1, len(everything) // args.prompts)][: args.prompts]
    if args.model == "wan":  # the prompts of the committed Wan results
        from .reference.data import all_prompts

        prompts = all_prompts()[:: max(1, len(all_prompts()) // args.prompts)][: args.prompts]
    conditioning = ref.encode(encoder, prompts)
    have_cachedit = cachedit_status() == "ok"
    pairs = [p for p in (PAIRS if args.model == "wan" else PAIRS_FLUX)
             if (args.only is None or p[0]["policy"] in args.only.split(","))
             and (have_cachedit or _peer(*p[1], args.model).provider != CACHEDIT)]
    out = {"machine": machine(), "model": args.model, "model_title": ref.title, "steps": args.steps,
           "prompts": args.prompts, "date": time.strftime("%Y-%m-%d"), "cache_dit": cachedit_status(), "pairs": []}
    stem = "faithful" if args.model == "wan" else f"faithful-{args.model}"
    ratios = (args.out / f"{stem}_magcache_ratios.json" if not args.quick
              else Path(f"/tmp/fxcache_{stem}_ratios.json"))
    args.out.mkdir(parents=True, exist_ok=True)
    for options, (method, setting), modules, *layout in tqdm(pairs, desc="faithful", unit="pair"):
        out["pairs"].append(run_pair(transformer, ref, conditioning, len(prompts), options,
                                     _peer(method, setting, args.model), modules, args.steps, ratios, *layout))
    old = args.out / f"{stem}.json"
    if args.only and not args.quick and old.exists():  # a re-run of some policies: keep the others' rows
        only = args.only.split(",")
        kept = [r for r in json.loads(old.read_text())["pairs"] if r["fxcache"]["policy"] not in only]
        out["pairs"] = kept + out["pairs"]
    table = render(out)
    print(table)
    if not args.quick:
        (args.out / f"{stem}.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
        (args.out / f"{stem}.md").write_text(table + "\n")
    return out


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
