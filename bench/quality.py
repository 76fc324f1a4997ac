"""Speed and fidelity of every caching method on the trained reference model, side by side in one run.

    python -m bench.quality            # 50 steps, 8 prompts x 2 seeds, 3 timed repeats -> bench/results/quality.*
    python -m bench.quality --model flux   # the Flux image model -> bench/results/quality-flux.*
    python -m bench.quality --quick    # CI-sized subset (< 3 min): checks the pipeline end to end, not the numbers

Methods: fxcache's policies at three settings each (Inductor, warm: the first generation compiles and is reported
apart as `warmup_s`); diffusers' cache hooks and cache-dit, eager, as their users run them (bench/peers.py).
Speedup is against the uncached run in the same execution mode and CFG layout, in the same process: fxcache
against uncached `torch.compile` (Inductor), peers against uncached eager (`speedup_vs_eager` puts everything
on the eager scale). Fidelity (PSNR, SSIM, relative L1 per clip, then averaged) is against the uncached eager
clips of the same prompt and seed. Timed repeats are interleaved across methods, so noise hits all alike; the
table gives the median and the min-max.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import time
from pathlib import Path

import torch

from .harness import (Method, default_method, frontier_table, fxcache_method, markdown_table, measure, plot_pareto, rows,
                      uncached_method)
from .models import REFERENCES, Reference, reference
from .overhead import machine

RESULTS = Path(__file__).parent / "results"
PROMPTS = list(REFERENCES["wan"].prompts)  # 8 prompts: every shape, color and direction


def flux_fxcache_methods(compiler: str, calibration: str, steps: int) -> list[Method]:
    """On the Flux model: the default, each probing policy at its published default and around it, with and
    without a forecast, the calibrated ones with this model's calibration, and the schedule policies at their
    defaults (a smaller list than Wan's: the settings people run, not every ablation)."""
    return [
        default_method(compiler),
        fxcache_method("fbcache", "threshold=0.05", compiler, threshold=0.05),
        fxcache_method("fbcache", "threshold=0.1", compiler, threshold=0.1),
        fxcache_method("fbcache", "threshold=0.2", compiler, threshold=0.2),
        fxcache_method("fbcache", "threshold=0.1 taylor O1", compiler, threshold=0.1, forecast="taylor"),
        fxcache_method("teacache", "threshold=0.1", compiler, threshold=0.1),
        fxcache_method("teacache", "threshold=0.2", compiler, threshold=0.2),
        fxcache_method("teacache", "threshold=0.1 taylor O1", compiler, threshold=0.1, forecast="taylor"),
        fxcache_method("teacache", "threshold=0.2 taylor O1", compiler, threshold=0.2, forecast="taylor"),
        fxcache_method("magcache", "0.06/K3/0.2", compiler, calibration=calibration, threshold=0.06, max_skips=3,
                       retention=0.2),
        fxcache_method("magcache", "0.24/K5/0.1 (Flux)", compiler, calibration=calibration, threshold=0.24,
                       max_skips=5, retention=0.1),
        fxcache_method("magcache", "0.24/K5/0.1 (Flux) taylor O1", compiler, calibration=calibration,
                       threshold=0.24, max_skips=5, retention=0.1, forecast="taylor"),
        fxcache_method("taylorseer", "interval=5 order=1", compiler),
        fxcache_method("taylorseer", "interval=3 order=1", compiler, interval=3),
        fxcache_method("fora", "interval=3", compiler),
        fxcache_method("dbcache", "F1B0 R0.08 W8", compiler, Fn=1, threshold=0.08),
        fxcache_method("dbcache", "F1B0 R0.24 W8", compiler, Fn=1, threshold=0.24),
        fxcache_method("dbcache", "F1B0 R0.24 W8 taylor O1", compiler, Fn=1, threshold=0.24, forecast="taylor"),
        fxcache_method("mixcache", "eff (paper defaults)", compiler),
        fxcache_method("fastercache", "config defaults: attn<681 uncond<641 w=0.5", compiler),
        # EasyCache (issue 25; SeaCache's filter needs a video or image latent, Flux's is packed tokens)
        fxcache_method("easycache", "tau=0.05 R=10 (official default)", compiler, num_steps=steps),
        fxcache_method("easycache", "tau=0.025", compiler, num_steps=steps, threshold=0.025),
        fxcache_method("easycache", "tau=0.1", compiler, num_steps=steps, threshold=0.1),
    ]


def fxcache_methods(compiler: str, steps: int = 50, model: str = "wan") -> list[Method]:
    calibration = str(REFERENCES[model].calibration)  # from `python -m fxcache.profile` (bench/profiling.py)
    if model == "flux":
        return flux_fxcache_methods(compiler, calibration, steps)
    m = [
        default_method(compiler),  # no policy named: fxcache.DEFAULT_POLICY with fxcache.DEFAULT_OPTIONS
        fxcache_method("fbcache", "threshold=0.05", compiler, threshold=0.05),
        fxcache_method("fbcache", "threshold=0.1", compiler, threshold=0.1),
        fxcache_method("fbcache", "threshold=0.2", compiler, threshold=0.2),
        fxcache_method("teacache", "threshold=0.1", compiler, threshold=0.1),
        fxcache_method("teacache", "threshold=0.2", compiler, threshold=0.2),
        fxcache_method("teacache", "threshold=0.3", compiler, threshold=0.3),
        # DynamicCache (issue 9): its defaults, the paper's Latte threshold, and Open-Sora's (too coarse here)
        fxcache_method("dynamiccache", "output, default 0.02", compiler),
        fxcache_method("dynamiccache", "output, preset latte 0.03", compiler, preset="latte"),
        fxcache_method("dynamiccache", "timestep, default 0.05", compiler, indicator="timestep"),
        fxcache_method("dynamiccache", "timestep, preset latte 0.03", compiler, indicator="timestep", preset="latte"),
        fxcache_method("dynamiccache", "output, 0.2 (Open-Sora's; not usable here)", compiler, threshold=0.2),
        fxcache_method("magcache", "0.06/K3/0.2", compiler, calibration=calibration, threshold=0.06, max_skips=3,
                       retention=0.2),
        fxcache_method("magcache", "0.12/K2/0.2 (Wan)", compiler, calibration=calibration),
        fxcache_method("magcache", "0.24/K6/0.2", compiler, calibration=calibration, threshold=0.24, max_skips=6,
                       retention=0.2),
    ]
    batched = fxcache_method("fbcache", "threshold=0.1", compiler, threshold=0.1)
    batched.cfg = "batched"
    # FasterCache's CFG-Cache on [uncond; cond] calls (the cond half alone), beside diffusers' (batched only)
    batched_faster = fxcache_method("fastercache", "config defaults: attn<681 uncond<641 w=0.5", compiler)
    batched_faster.cfg = "batched"
    # Block-level policies (issue 8): published defaults first, then a small sweep.
    blocks = [
        # FasterCache at the peers' three settings (bench/peers.py), on WanPipeline's separate cond/uncond calls
        fxcache_method("fastercache", "config defaults: attn<681 uncond<641 w=0.5", compiler),
        fxcache_method("fastercache", "docs: attn<681 uncond<781 w=0.3", compiler, attention_weight=0.3,
                       uncond_window=(-1, 781)),
        fxcache_method("fastercache", "attn<901 uncond<901 w=0.3", compiler, attention_weight=0.3,
                       attention_window=(-1, 901), uncond_window=(-1, 901)),
        fxcache_method("fora", "interval=3", compiler),
        fxcache_method("fora", "interval=2", compiler, interval=2),
        fxcache_method("pab", "spatial=2 cross=6", compiler, spatial_range=2, cross_range=6, temporal_range=None),
        fxcache_method("pab", "spatial=3 cross=7", compiler, spatial_range=3, cross_range=7, temporal_range=None),
        fxcache_method("taylorseer", "interval=5 order=1", compiler),
        fxcache_method("taylorseer", "interval=3 order=1", compiler, interval=3),
        fxcache_method("taylorseer", "interval=3 order=2", compiler, interval=3, order=2),
        fxcache_method("tgate", "gate=10 sp=5", compiler),
        fxcache_method("tgate", "gate=25 sp=5", compiler, gate_step=25),
        fxcache_method("deltadit", "interval=3", compiler),
        fxcache_method("deltadit", "interval=2", compiler, interval=2),
        fxcache_method("blockdance", "i=L/2 N=2 t<600", compiler),
        fxcache_method("blockdance", "i=L/2 N=3 t<600", compiler, interval=3),
        fxcache_method("dbcache", "F1B0 R0.08 W8", compiler, Fn=1, threshold=0.08),
        fxcache_method("dbcache", "F1B0 R0.12 W8 taylor O1", compiler, Fn=1, threshold=0.12, forecast="taylor"),
        fxcache_method("dbcache", "F2B1 R0.12 W8", compiler, Fn=2, Bn=1, threshold=0.12),
        fxcache_method("fbcache", "threshold=0.1 taylor O1", compiler, threshold=0.1, forecast="taylor"),
        fxcache_method("teacache", "threshold=0.1 taylor O1", compiler, threshold=0.1, forecast="taylor"),
        fxcache_method("magcache", "0.12/K2/0.2 (Wan) taylor O1", compiler, calibration=calibration, forecast="taylor"),
        # forecasts on the step-level policies: more aggressive thresholds, and FoCa (cache-dit's calibrator)
        fxcache_method("teacache", "threshold=0.15 taylor O1", compiler, threshold=0.15, forecast="taylor"),
        fxcache_method("teacache", "threshold=0.2 taylor O1", compiler, threshold=0.2, forecast="taylor"),
        fxcache_method("teacache", "threshold=0.1 foca", compiler, threshold=0.1, forecast="foca"),
        fxcache_method("teacache", "threshold=0.2 foca", compiler, threshold=0.2, forecast="foca"),
        fxcache_method("magcache", "0.24/K6/0.2 taylor O1", compiler, calibration=calibration, threshold=0.24,
                       max_skips=6, retention=0.2, forecast="taylor"),
        fxcache_method("magcache", "0.12/K2/0.2 (Wan) foca", compiler, calibration=calibration, forecast="foca"),
        fxcache_method("fbcache", "threshold=0.2 taylor O1", compiler, threshold=0.2, forecast="taylor"),
        fxcache_method("fbcache", "threshold=0.1 foca", compiler, threshold=0.1, forecast="foca"),
        fxcache_method("dbcache", "F1B0 R0.12 W8 foca", compiler, Fn=1, threshold=0.12, forecast="foca"),
        fxcache_method("dbcache", "F1B0 R0.24 W8 foca", compiler, Fn=1, threshold=0.24, forecast="foca"),
    ]
    # The seed methods of issue 9: MixCache (the paper's two intervals, uncalibrated and with the profiled
    # calibration; the ablations of its Table 2) and AdaCache (its codebooks, MoReg).
    mix = [
        fxcache_method("mixcache", "eff (paper defaults)", compiler),
        fxcache_method("mixcache", "acc (paper defaults)", compiler, interval="acc"),
        fxcache_method("mixcache", "eff calibrated", compiler, calibration=calibration),
        fxcache_method("mixcache", "acc calibrated", compiler, interval="acc", calibration=calibration),
        fxcache_method("mixcache", "ablation: step only + N_eff", compiler, granularities=("step",)),
        fxcache_method("mixcache", "ablation: cfg only + N_eff", compiler, granularities=("cfg",)),
        fxcache_method("mixcache", "ablation: block only + N_eff", compiler, granularities=("block",)),
        fxcache_method("mixcache", "ablation: hybrid + N=4", compiler, interval=4),
        fxcache_method("mixcache", "ablation: eff without penalty", compiler, penalty=False),
        fxcache_method("adacache", "auto (30-slow rescaled)", compiler, num_steps=steps),
        fxcache_method("adacache", "30-fast", compiler, num_steps=steps, codebook="30-fast"),
        fxcache_method("adacache", "30-fast + MoReg", compiler, num_steps=steps, codebook="30-fast", moreg=True),
        fxcache_method("adacache", "100", compiler, num_steps=steps, codebook="100"),
    ]
    # The calibration-free methods of issue 25: SeaCache (diffusers' defaults, then 0.4) and EasyCache (the
    # official defaults, then the thresholds its help text names for ~2x and ~3x); both told the step count, as
    # their pipelines are.
    free = [
        fxcache_method("seacache", "threshold=0.25 (diffusers default)", compiler, num_steps=steps),
        fxcache_method("seacache", "threshold=0.4", compiler, num_steps=steps, threshold=0.4),
        fxcache_method("easycache", "tau=0.05 R=10 (official default)", compiler, num_steps=steps),
        fxcache_method("easycache", "tau=0.025 (fxcache.tune's choice)", compiler, num_steps=steps,
                       threshold=0.025),
        fxcache_method("easycache", "tau=0.1", compiler, num_steps=steps, threshold=0.1),
        fxcache_method("easycache", "tau=0.2", compiler, num_steps=steps, threshold=0.2),
    ]
    batched_mix = fxcache_method("mixcache", "eff (paper defaults)", compiler)
    batched_mix.cfg = "batched"
    return m + [batched, batched_faster] + blocks + mix + free + [batched_mix]


def peer_methods(transformer, steps: int, guidance: float, quick: bool, ref: Reference) -> list[Method]:
    from .peers import (CACHEDIT, REGIONAL, REGIONAL_SETTINGS, apply_peer, apply_peer_own, apply_peer_regional,
                        calibrate_peer, cfg_mode, peer_settings)

    out = []
    calibrations: dict = {}
    settings = peer_settings(ref.name)
    if quick:  # one of each provider
        settings = [next(p for p in settings if p.provider == prov) for prov in ("diffusers", "cache-dit")
                    if any(p.provider == prov for p in settings)]
    for peer in settings:
        if peer.method == "magcache" and "magcache" not in calibrations:
            conditioning = ref.encode(ref.load()[1], ref.calibration_prompts)  # the prompts fxcache calibrates on

            def generate_one(t, cfg, conditioning=conditioning):
                return ref.generate(t, conditioning, num_inference_steps=steps, guidance_scale=guidance, cfg=cfg)

            calibrations["magcache"] = calibrate_peer(transformer, peer, generate_one, num_inference_steps=steps)

        def enter(t, peer=peer):
            return _yielding(apply_peer(t, peer, num_inference_steps=steps,
                                        calibration=calibrations.get(peer.method)), t)

        def enter_own(t, counter, peer=peer):  # cache-dit: on its own copy (see apply_peer_own)
            return apply_peer_own(t, peer, num_inference_steps=steps, counter=counter, probe=ref.probe)

        if peer.provider == CACHEDIT:
            out.append(Method(peer.method, peer.provider, peer.setting, enter_own, cfg=cfg_mode(peer),
                              counted=True))
        else:
            out.append(Method(peer.method, peer.provider, peer.setting, enter, cfg=cfg_mode(peer),
                              persistent=False))
        if (peer.method, peer.setting) in REGIONAL_SETTINGS and peer.provider == "diffusers" and not quick:

            def enter_regional(t, counter, peer=peer):
                return apply_peer_regional(t, peer, num_inference_steps=steps,
                                           calibration=calibrations.get(peer.method), counter=counter,
                                           probe=ref.probe)

            out.append(Method(peer.method, peer.provider, peer.setting + REGIONAL, enter_regional,
                              cfg=cfg_mode(peer), counted=True))
    return out


@contextlib.contextmanager
def _yielding(ctx, transformer):
    """The peer's hooks live on the transformer itself: the pipeline calls the transformer."""
    with ctx:
        yield transformer


def run(args) -> list[dict]:
    ref = reference(args.model)
    transformer, encoder = ref.load()
    prompts = list(ref.prompts[:2] if args.quick else ref.prompts)
    conditioning = ref.encode(encoder, prompts)
    compiler = "eager" if args.quick else args.compiler
    baselines = []  # uncached, in each execution mode and CFG layout; the first is the fidelity reference
    for mode in ("eager",) + ((compiler,) if compiler != "eager" else ()):
        for cfg in ("separate", "batched"):
            b = uncached_method(mode)
            b.cfg = cfg
            baselines.append(b)
    methods = baselines + (fxcache_methods(compiler, args.steps, args.model) if not args.quick else
                           [fxcache_method("fbcache", "threshold=0.1", compiler, threshold=0.1)])
    if args.only:  # a subset: these fxcache methods (and peers of these names), with their own baselines
        names = set(args.only.split(","))
        methods = baselines + [m for m in methods[len(baselines):] if m.name in names]
        methods += [m for m in peer_methods(transformer, args.steps, args.guidance, args.quick, ref)
                    if m.name in names]
        if args.match:
            methods = baselines + [m for m in methods[len(baselines):] if re.search(args.match, m.label)]
    else:
        methods += peer_methods(transformer, args.steps, args.guidance, args.quick, ref)
    used = {m.cfg for m in methods[len(baselines):]} | {"separate"}  # no baseline for a layout nothing uses
    methods = [m for m in baselines if m.cfg in used] + methods[len(baselines):]
    baselines = [b for b in baselines if b.cfg in used]
    if not ref.calibration.exists() and any(m.name == "magcache" and m.provider == "fxcache" for m in methods):
        from .profiling import calibrate

        calibrate(model=args.model)

    print_ = print if not args.quiet else (lambda *_: None)
    print_(f"{len(methods)} methods, {len(prompts)} prompts x {len(args.seeds)} seeds, {args.steps} steps, "
        f"{args.repeats} timed repeats (seed {args.seeds[0]}), {torch.get_num_threads()} threads")
    log = print if not args.quiet else (lambda *_: None)
    outputs, times, full, warmup, cache_bytes = measure(methods, transformer, ref, conditioning, seeds=args.seeds,
                                                        steps=args.steps, guidance=args.guidance,
                                                        repeats=args.repeats, log=log)
    return rows(methods, outputs, times, full, warmup, baselines, compiler, args.steps, args.seeds, cache_bytes)


def _speedup_note(meta: dict) -> str:
    if meta.get("compiler", "inductor") == "eager":
        return ("Speedup: every method vs uncached eager, same CFG layout (fxcache with its eager inner compiler: "
                "no Inductor; the peers' regional rows compile their blocks).")
    return "Speedup: fxcache vs uncached torch.compile, peers vs uncached eager, same CFG layout."


def report_markdown(meta: dict, records: list[dict]) -> str:
    """quality.md: the setting, each provider's place on the frontier, then every method."""
    m, n = meta["machine"], len(meta["prompts"])
    return (f"# Speed and fidelity on the {meta.get('model_title', 'reference Wan DiT')} (`{meta['command']}`)\n\n"
            f"{m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, no GPU; torch {m['torch']}; "
            f"{meta['date']}. {meta['steps']} steps, CFG {meta['guidance']}, {n} prompts x {len(meta['seeds'])} "
            f"seeds; times are whole generations of the {n} prompts (seed {meta['timed_seed']}), median [min-max] of "
            f"{meta['repeats']} interleaved repeats ({meta.get('pipeline', 'WanPipeline')}). {_speedup_note(meta)} "
            f"Fidelity vs the uncached eager clips. cache-dit: {meta['cache_dit']}.\n\n"
            f"{frontier_table(records)}\n\n{markdown_table(records)}\n")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=tuple(REFERENCES), default="wan",
                    help="the reference model: the Wan video DiT or the Flux image DiT (bench/models.py)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's, wan 5, flux 4)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compiler", choices=("inductor", "eager"), default="inductor",
                    help="fxcache's inner compiler (eager: no compile time, for debugging)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--only", default=None,
                    help="comma-separated method names (e.g. fora,pab): only these, with their own uncached "
                         "baselines, written to quality-<name>.{json,md} beside the full run's files")
    ap.add_argument("--name", default="subset", help="with --only: the name of the subset's files")
    ap.add_argument("--match", default=None,
                    help="with --only: keep only the methods whose label ('provider:method (setting)') matches "
                         "this regular expression")
    args = ap.parse_args(argv)
    ref = reference(args.model)
    args.guidance = args.guidance or ref.guidance
    if args.quick:
        args.steps, args.seeds, args.repeats = 6, [0], 1
    out = args.out or (Path("out/quality-quick") if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    records = run(args)
    transformer, encoder = ref.load()
    judged = None
    if not args.quick:
        clips = ref.generate(transformer, ref.encode(encoder, ref.prompts), num_inference_steps=args.steps,
                             guidance_scale=args.guidance, seed=args.seeds[0])
        judged = {k: v for k, v in ref.score(clips, list(ref.prompts)).items() if k != "verdicts"}
    from .peers import cachedit_status

    meta = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "steps": args.steps,
            "guidance": args.guidance, "compiler": "eager" if args.quick else args.compiler, "model": args.model,
            "model_title": ref.title, "pipeline": ref.pipeline,
            "prompts": [str(p) for p in (ref.prompts[:2] if args.quick else ref.prompts)],
            "seeds": args.seeds, "repeats": args.repeats, "timed_seed": args.seeds[0],
            "cache_dit": cachedit_status(), "judge_uncached": judged, "wall_s": time.time() - t0,
            "command": "python -m bench.quality" + (" --quick" if args.quick else "")
                       + (f" --compiler {args.compiler}" if args.compiler != "inductor" else "")
                       + (f" --model {args.model}" if args.model != "wan" else "")}
    suffix = "" if args.model == "wan" else f"-{args.model}"
    stem = f"quality{suffix}" if not args.only else f"quality{suffix}-{args.name}"
    meta["command"] += f" --only {args.only}" if args.only else ""
    meta["command"] += f" --match '{args.match}'" if args.match else ""
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "records": records}, indent=2) + "\n")
    (out / f"{stem}.md").write_text(report_markdown(meta, records))
    plot_pareto(records, out / (f"pareto{suffix}.png" if not args.only else f"pareto{suffix}-{args.name}.png"),
                f"{ref.title}, {args.steps} steps: speedup vs fidelity")
    print(frontier_table(records) + "\n\n" + markdown_table(records))
    print(f"wrote {out}/{stem}.json, {stem}.md and the plot in {time.time() - t0:.0f} s")
    return records


if __name__ == "__main__":
    main()
