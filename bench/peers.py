"""The competing caching methods, applied to the reference transformer the way their users run them.

Peers (eager, no torch.compile):

- diffusers 0.42 cache hooks (`transformer.enable_cache(config)` / `disable_cache()`):
  FasterCache, FirstBlockCache, Pyramid Attention Broadcast, MagCache, TaylorSeer, SeaCache (Wan only: its
  adapter reads WanPipeline's cache contexts).
- cache-dit (PyPI `cache-dit`, 1.5.x): DBCache ("Fn Bn" dual block cache), alone and with its TaylorSeer
  calibrator, through `cache_dit.enable_cache(transformer, ...)` / `cache_dit.disable_cache(transformer)`.

How each runs with `bench.pipeline.generate` (see `cfg_mode`):

- FirstBlockCache, MagCache, TaylorSeer and DBCache keep one state per CFG stream and run with
  cfg="separate" (two calls per step inside `cache_context("cond"/"uncond")`, as WanPipeline does).
- FasterCache needs cfg="batched": its denoiser hook splits the output batch into `[uncond; cond]`
  (`chunk(2)`) to approximate the unconditional branch; with separate calls of batch 1 it cannot unpack.
- PAB runs with cfg="batched" too: in diffusers 0.42.1 its per-layer state is not keyed by the cache
  context, so with separate calls the uncond call would reuse the cond call's attention of the same step.

Without editing `generate`, a forward pre-hook on the transformer records the timestep of the current call
(PAB's and FasterCache's `current_timestep_callback`; in a pipeline that is `pipe.current_timestep`, which
`generate` does not expose) and notices the start of a new generation (the timestep goes up) to reset the
cache state: diffusers' hooks as `DiffusionPipeline.maybe_free_model_hooks` does after every pipeline call
(`_reset_stateful_cache`; needed for cfg="batched", which is a loop of ours, harmless after WanPipeline's own
reset), cache-dit with `cache_dit.refresh_context`, as its pipeline wrapper does before every call. On the
transformer alone cache-dit keeps one persistent context and refreshes it only when its step counter passes
`num_inference_steps`; with separate CFG that check runs before the counter advances on the cond call, so
the first cond call of the next generation still uses the previous generation's cache (outputs of
consecutive generations differ) -- the explicit refresh avoids that.

`apply_peer(...)` returns a context manager; on exit the method's own disable function runs, then every
attribute it left on the transformer's modules is removed, so the transformer behaves (and looks) exactly as
before.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import os
from dataclasses import dataclass, field
from typing import Any

import torch

DIFFUSERS = "diffusers"
CACHEDIT = "cache-dit"
CACHEDIT_VERSION = "1.5"  # the series this module was written against


@dataclass(frozen=True)
class PeerSetting:
    provider: str  # "diffusers" or "cache-dit"
    method: str  # "fastercache", "fbcache", "pab", "magcache", "taylorseer", "dbcache", "dbcache+taylorseer"
    setting: str  # short human label
    params: dict = field(hash=False)  # the config kwargs (for cache-dit: {"cache_config": ..., "calibrator_config": ...})

    @property
    def name(self) -> str:
        return f"{self.provider}:{self.method}[{self.setting}]"


class Const:
    """A constant weight callback (`lambda _: value`) that prints and compares as a value."""

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def __call__(self, *_: Any) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"Const({self.value})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Const) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


# ---------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------

def _d(method: str, setting: str, **params) -> PeerSetting:
    return PeerSetting(DIFFUSERS, method, setting, params)


def _c(method: str, setting: str, cache_config: dict, calibrator_config: dict | None = None) -> PeerSetting:
    return PeerSetting(CACHEDIT, method, setting, {"cache_config": cache_config, "calibrator_config": calibrator_config})


def diffusers_settings(model: str = "wan") -> list[PeerSetting]:
    """Per method: diffusers' (or the method's published) default first, then more conservative / aggressive.
    `model`: the reference model ("wan" or "flux", bench/models.py) the settings are for."""
    if model == "flux":
        return _diffusers_flux_settings()
    fmt = "BCFHW"  # generate's latents are (B, C, F, H, W)
    return [
        # FasterCache. Default: the diffusers docs example (docs/source/en/optimization/cache.md, CogVideoX),
        # tensor_format set to our layout. Conservative: FasterCacheConfig's own defaults (uncond skipped only
        # below t=641, attention weight 0.5). Aggressive: both skip windows open up to t=901.
        _d("fastercache", "docs: attn<681 uncond<781 w=0.3", spatial_attention_block_skip_range=2,
           spatial_attention_timestep_skip_range=(-1, 681), attention_weight_callback=Const(0.3),
           unconditional_batch_skip_range=5, unconditional_batch_timestep_skip_range=(-1, 781), tensor_format=fmt),
        _d("fastercache", "config defaults: attn<681 uncond<641 w=0.5", tensor_format=fmt),
        _d("fastercache", "attn<901 uncond<901 w=0.3", spatial_attention_block_skip_range=2,
           spatial_attention_timestep_skip_range=(-1, 901), attention_weight_callback=Const(0.3),
           unconditional_batch_skip_range=5, unconditional_batch_timestep_skip_range=(-1, 901), tensor_format=fmt),
        # FirstBlockCache. Default: FirstBlockCacheConfig.threshold=0.05; 0.2 is the diffusers docs example
        # (Qwen-Image); 0.1 in between.
        _d("fbcache", "threshold=0.05", threshold=0.05),
        _d("fbcache", "threshold=0.1", threshold=0.1),
        _d("fbcache", "threshold=0.2", threshold=0.2),
        # PAB. Wan has one self-attention per block (no separate temporal attention) and a cross-attention.
        # Default: the diffusers docs example (spatial 2 in (100, 800)). Then VideoSys' PAB246 and PAB357
        # presets (spatial/temporal/cross broadcast ranges) without the temporal part.
        _d("pab", "spatial=2", spatial_attention_block_skip_range=2,
           spatial_attention_timestep_skip_range=(100, 800)),
        _d("pab", "spatial=2 cross=6", spatial_attention_block_skip_range=2, cross_attention_block_skip_range=6,
           spatial_attention_timestep_skip_range=(100, 800), cross_attention_timestep_skip_range=(100, 800)),
        _d("pab", "spatial=3 cross=7", spatial_attention_block_skip_range=3, cross_attention_block_skip_range=7,
           spatial_attention_timestep_skip_range=(100, 800), cross_attention_timestep_skip_range=(100, 800)),
        # MagCache (ratios from `calibrate_peer`). Default: MagCacheConfig's (E0.06 K3 R0.2); then the MagCache
        # repo's Wan2.1 settings: E0.12 K4 R0.2 (T2V 1.3B) and E0.24 K6 R0.2 (T2V 14B).
        _d("magcache", "E0.06 K3 R0.2", threshold=0.06, max_skip_steps=3, retention_ratio=0.2),
        _d("magcache", "E0.12 K4 R0.2", threshold=0.12, max_skip_steps=4, retention_ratio=0.2),
        _d("magcache", "E0.24 K6 R0.2", threshold=0.24, max_skip_steps=6, retention_ratio=0.2),
        # TaylorSeer. TaylorSeerCacheConfig's defaults (interval 5, warmup 3, order 1). Its default module
        # patterns are `re.fullmatch`ed and match `...attn` only, i.e. nothing in Wan (`blocks.N.attn1/attn2`),
        # so the patterns name Wan's attention and feed-forward outputs, the features the TaylorSeer paper
        # forecasts. Factors in float32 because the model is float32 (the docs' example uses the model's dtype).
        _d("taylorseer", "interval=5 order=1", cache_interval=5, disable_cache_before_step=3, max_order=1,
           taylor_factors_dtype=torch.float32, cache_identifiers=[r"blocks\.\d+\.(attn1|attn2|ffn)"]),
        _d("taylorseer", "interval=3 order=1", cache_interval=3, disable_cache_before_step=3, max_order=1,
           taylor_factors_dtype=torch.float32, cache_identifiers=[r"blocks\.\d+\.(attn1|attn2|ffn)"]),
        _d("taylorseer", "interval=8 order=1", cache_interval=8, disable_cache_before_step=3, max_order=1,
           taylor_factors_dtype=torch.float32, cache_identifiers=[r"blocks\.\d+\.(attn1|attn2|ffn)"]),
        # SeaCache (diffusers 0.42.1's own, with its Wan text-to-video adapter; WanPipeline passes the step, sigma
        # and step count it needs in each cache context). Default: SeaCacheConfig's 0.25; then 0.4.
        _d("seacache", "threshold=0.25", threshold=0.25),
        _d("seacache", "threshold=0.4", threshold=0.4),
    ]


def _diffusers_flux_settings() -> list[PeerSetting]:
    """On the Flux reference model: FirstBlockCache (its default 0.05; 0.1; 0.2), MagCache at MagCacheConfig's
    defaults and at MagCache's published FLUX.1-dev setting (Zehong-Ma/MagCache, MagCache4FLUX/README.md:
    E0.24 K5 R0.1, 2.8x on FLUX.1-dev), TaylorSeer at TaylorSeerCacheConfig's defaults with its default module
    patterns (they match Flux's `transformer_blocks.N.attn` and `single_transformer_blocks.N.attn`), the
    diffusers docs' Flux example. FasterCache and PAB are left out: their hooks assume a video layout."""
    return [
        _d("fbcache", "threshold=0.05", threshold=0.05),
        _d("fbcache", "threshold=0.1", threshold=0.1),
        _d("fbcache", "threshold=0.2", threshold=0.2),
        _d("magcache", "E0.06 K3 R0.2", threshold=0.06, max_skip_steps=3, retention_ratio=0.2),
        _d("magcache", "E0.24 K5 R0.1 (Flux)", threshold=0.24, max_skip_steps=5, retention_ratio=0.1),
        _d("taylorseer", "interval=5 order=1", cache_interval=5, disable_cache_before_step=3, max_order=1,
           taylor_factors_dtype=torch.float32),
        _d("taylorseer", "interval=3 order=1", cache_interval=3, disable_cache_before_step=3, max_order=1,
           taylor_factors_dtype=torch.float32),
    ]


def cachedit_settings(model: str = "wan") -> list[PeerSetting]:
    """DBCache: DBCacheConfig's defaults (R0.08, W8) except Fn: its default F8 is more blocks than this model
    has (6), so F1B0, the configuration cache-dit's examples and integrations (vLLM-Omni, SGLang) use; then
    R0.12 (those examples' threshold) and R0.24. With the TaylorSeer calibrator (order 1, its default) and with
    the FoCa calibrator (no parameters). On the Flux model `enable_separate_cfg=True`: cache-dit's Flux adapter
    assumes a guidance-distilled model (one call per step), and with FluxPipeline's true CFG it would compare each
    cond call's residual with the uncond call's before it (every residual difference near 0.7-1.0: no step ever
    cached); cache-dit's Wan adapter turns it on by itself."""
    separate = {"enable_separate_cfg": True} if model == "flux" else {}

    def db(r: float, **kw) -> dict:
        return dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=r, max_warmup_steps=8,
                    max_cached_steps=-1, max_continuous_cached_steps=-1, **separate, **kw)

    ts = dict(taylorseer_order=1)
    return [
        _c("dbcache", "F1B0 R0.08 W8", db(0.08)),
        _c("dbcache", "F1B0 R0.12 W8", db(0.12)),
        _c("dbcache", "F1B0 R0.24 W8", db(0.24)),
        _c("dbcache+taylorseer", "F1B0 R0.12 W8 O1", db(0.12), ts),
        _c("dbcache+taylorseer", "F1B0 R0.24 W8 O1", db(0.24), ts),
        _c("dbcache+foca", "F1B0 R0.12 W8", db(0.12), {}),
        _c("dbcache+foca", "F1B0 R0.24 W8", db(0.24), {}),
    ]


def peer_settings(model: str = "wan") -> list[PeerSetting]:
    """Every peer setting; the cache-dit ones only when `cachedit_status() == "ok"`."""
    out = diffusers_settings(model)
    if cachedit_status() == "ok":
        out += cachedit_settings(model)
    return out


def cfg_mode(peer: PeerSetting) -> str:
    """How `generate` must be called for this peer (see the module docstring)."""
    return "batched" if peer.provider == DIFFUSERS and peer.method in ("fastercache", "pab") else "separate"


# ---------------------------------------------------------------------------------------------------------
# Run tracking: current timestep + new-generation detection
# ---------------------------------------------------------------------------------------------------------

class StepTracker:
    """Forward pre-hook on the transformer: the timestep it was last called with, the number of calls and of
    generations seen. A generation starts when the timestep goes up (the scheduler counts down)."""

    def __init__(self, on_new_run=None) -> None:
        self.timestep: float | None = None
        self.calls = 0
        self.runs = 0
        self.on_new_run = on_new_run

    def __call__(self, module, args, kwargs):
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if torch.is_tensor(t):
            t = float(t.reshape(-1)[0])
        elif t is not None:
            t = float(t)
        if t is not None:
            if self.timestep is None or t > self.timestep:
                if self.runs and self.on_new_run is not None:
                    self.on_new_run()
                self.runs += 1
            self.timestep = t
        self.calls += 1
        return None

    def current_timestep(self) -> float:
        if self.timestep is None:
            raise RuntimeError("the transformer has not been called yet")
        return self.timestep


class _ModuleSnapshot:
    """The instance attributes and torch hooks of every module, to undo whatever a cache library leaves behind."""

    _HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_forward_hooks_with_kwargs",
                   "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")

    def __init__(self, root: torch.nn.Module) -> None:
        self.root = root
        self.modules = dict(root.named_modules(remove_duplicate=False))
        self.keys = {id(m): set(vars(m)) for m in self.modules.values()}
        self.hooks = {id(m): {k: dict(getattr(m, k, {})) for k in self._HOOK_DICTS} for m in self.modules.values()}

    def restore(self) -> None:
        now = dict(self.root.named_modules(remove_duplicate=False))
        if set(now) != set(self.modules) or any(now[k] is not v for k, v in self.modules.items()):
            raise RuntimeError("the cache library changed the module tree and did not restore it")
        for m in self.modules.values():
            for key in set(vars(m)) - self.keys[id(m)]:
                delattr(m, key)
            for k, before in self.hooks[id(m)].items():
                d = getattr(m, k, None)
                if d is not None:
                    for hid in set(d) - set(before):
                        del d[hid]
        reg = getattr(self.root, "_diffusers_hook", None)
        if reg is not None:  # the root registry predates us (cache_context made it): drop its child cache
            reg.invalidate_child_registries_cache()


# ---------------------------------------------------------------------------------------------------------
# diffusers peers
# ---------------------------------------------------------------------------------------------------------

def _current_diffusers_context(transformer):
    from diffusers.hooks.hooks import StateManager

    reg = getattr(transformer, "_diffusers_hook", None)
    if reg is None:
        return None
    for child in (reg, *reg._get_child_registries()):
        for hook in child.hooks.values():
            for attr in vars(hook).values():
                if isinstance(attr, StateManager) and attr._context is not None:
                    return attr._context
    return None


def reset_diffusers_cache(transformer) -> None:
    """What a diffusers pipeline does after each call (`_reset_stateful_cache`), keeping the cache context
    that `generate` has already entered for the current call."""
    from diffusers.hooks.hooks import _set_cache_context

    ctx = _current_diffusers_context(transformer)
    transformer._reset_stateful_cache()
    if ctx is not None:
        _set_cache_context(transformer, ctx)


def _diffusers_config(peer: PeerSetting, tracker: StepTracker, num_inference_steps: int, calibration: dict | None):
    import diffusers

    p = dict(peer.params)
    if peer.method == "fastercache":
        return diffusers.FasterCacheConfig(current_timestep_callback=tracker.current_timestep, **p)
    if peer.method == "fbcache":
        return diffusers.FirstBlockCacheConfig(**p)
    if peer.method == "pab":
        return diffusers.PyramidAttentionBroadcastConfig(current_timestep_callback=tracker.current_timestep, **p)
    if peer.method == "magcache":
        if not calibration or "mag_ratios" not in calibration:
            raise ValueError("magcache needs the mag ratios from calibrate_peer(...) as `calibration`")
        return diffusers.MagCacheConfig(mag_ratios=list(calibration["mag_ratios"]),
                                        num_inference_steps=num_inference_steps, **p)
    if peer.method == "magcache-calibrate":
        return diffusers.MagCacheConfig(calibrate=True, num_inference_steps=num_inference_steps)
    if peer.method == "taylorseer":
        return diffusers.TaylorSeerCacheConfig(**p)
    if peer.method == "seacache":
        return diffusers.SeaCacheConfig(**p)
    raise ValueError(f"unknown diffusers peer method {peer.method!r}")


class PeerContext:
    """Enables a peer on the transformer for the duration of a `with` block."""

    def __init__(self, transformer, peer: PeerSetting, num_inference_steps: int, calibration: dict | None) -> None:
        self.transformer = transformer
        self.peer = peer
        self.num_inference_steps = num_inference_steps
        self.calibration = calibration
        self.tracker = StepTracker(on_new_run=self.reset)
        self._snapshot: _ModuleSnapshot | None = None
        self._handle = None
        self.active = False

    # -- provider specific -------------------------------------------------------------------------------
    def _enable(self) -> None:
        if self.peer.provider == DIFFUSERS:
            if self.transformer.is_cache_enabled:
                raise RuntimeError("a diffusers cache is already enabled on this transformer")
            cfg = _diffusers_config(self.peer, self.tracker, self.num_inference_steps, self.calibration)
            self.transformer.enable_cache(cfg)
        elif self.peer.provider == CACHEDIT:
            try:
                cache_dit = _import_cache_dit()
            except ImportError as e:
                raise RuntimeError(f"cache-dit cannot run here: {e}") from e
            cc = dict(self.peer.params["cache_config"])
            cc.setdefault("num_inference_steps", self.num_inference_steps)
            kwargs = {"cache_config": cache_dit.DBCacheConfig(**cc)}
            if self.peer.params.get("calibrator_config") is not None:
                config = (cache_dit.FoCaCalibratorConfig if self.peer.method == "dbcache+foca"
                          else cache_dit.TaylorSeerCalibratorConfig)
                kwargs["calibrator_config"] = config(**self.peer.params["calibrator_config"])
            cache_dit.enable_cache(self.transformer, **kwargs)
        else:
            raise ValueError(f"unknown provider {self.peer.provider!r}")

    def _disable(self) -> None:
        if self.peer.provider == DIFFUSERS:
            if self.transformer.is_cache_enabled:
                self.transformer.disable_cache()
        else:
            cache_dit = _import_cache_dit()
            cache_dit.disable_cache(self.transformer)

    def reset(self) -> None:
        """Start a fresh generation (called automatically when the timestep goes up)."""
        if self.peer.provider == DIFFUSERS:
            reset_diffusers_cache(self.transformer)
        else:
            cache_dit = _import_cache_dit()
            cache_dit.refresh_context(self.transformer, num_inference_steps=self.num_inference_steps)

    # -- context manager ---------------------------------------------------------------------------------
    def __enter__(self) -> "PeerContext":
        if self.active:
            raise RuntimeError("already entered")
        self._snapshot = _ModuleSnapshot(self.transformer)
        try:
            self._handle = self.transformer.register_forward_pre_hook(self.tracker, with_kwargs=True, prepend=True)
            self._enable()
        except BaseException:
            self._cleanup()
            raise
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        self._cleanup()
        return None

    def _cleanup(self) -> None:
        try:
            self._disable()
        finally:
            if self._handle is not None:
                self._handle.remove()
                self._handle = None
            if self._snapshot is not None:
                self._snapshot.restore()
                self._snapshot = None
            self.active = False


def apply_peer(transformer, peer: PeerSetting, *, num_inference_steps: int, calibration: dict | None = None):
    """A context manager that enables `peer` on `transformer` inside the `with` block and restores it after.
    State is reset automatically at the start of every generation (see `StepTracker`)."""
    return PeerContext(transformer, peer, num_inference_steps, calibration)


# Peers that keep the most of diffusers: hooks plus regional compilation of the repeated blocks, the way the
# diffusers docs pair them. `fullgraph=True` fails on the hooks' `torch.compiler.disable`.
REGIONAL_SETTINGS = (("fbcache", "threshold=0.05"), ("fbcache", "threshold=0.1"), ("fbcache", "threshold=0.2"),
                     ("magcache", "E0.06 K3 R0.2"), ("magcache", "E0.12 K4 R0.2"), ("magcache", "E0.24 K6 R0.2"),
                     ("taylorseer", "interval=5 order=1"), ("taylorseer", "interval=3 order=1"),
                     ("pab", "spatial=2 cross=6"), ("fastercache", "docs: attn<681 uncond<781 w=0.3"),
                     ("magcache", "E0.24 K5 R0.1 (Flux)"), ("seacache", "threshold=0.25"),
                     ("seacache", "threshold=0.4"))
REGIONAL = " + compile_repeated_blocks"


@contextlib.contextmanager
def apply_peer_regional(transformer, peer: PeerSetting, *, num_inference_steps: int,
                        calibration: dict | None = None, counter=None, probe=None):
    """`peer` on a copy of `transformer`, whose repeated blocks are then compiled
    (`compile_repeated_blocks(fullgraph=False)`). The copy is the peer's own for as long as the `with` block
    lasts: Dynamo guards on the hooks, so hooks entered and left around each generation would recompile each
    time. `counter(module, args)`, if given, becomes a forward pre-hook of `probe(copy)` (default: the last Wan
    block's self-attention query projection), registered before compiling so that it does not invalidate the
    compiled code."""
    import copy

    own = copy.deepcopy(transformer)
    probe = probe or (lambda t: t.blocks[-1].attn1.to_q)
    handle = probe(own).register_forward_pre_hook(counter) if counter is not None else None
    with apply_peer(own, peer, num_inference_steps=num_inference_steps, calibration=calibration):
        own.compile_repeated_blocks(fullgraph=False)
        yield own
    if handle is not None:
        handle.remove()


@contextlib.contextmanager
def apply_peer_own(transformer, peer: PeerSetting, *, num_inference_steps: int, calibration: dict | None = None,
                   counter=None, probe=None):
    """`peer` on its own copy of `transformer` for the whole `with` block (no compilation). cache-dit runs this
    way: on a Flux transformer it leaves state behind after `disable_cache` that breaks diffusers'
    FirstBlockCache enabled on the same module later (its tail block finds no head output), so it must not share
    the transformer with the diffusers peers. `counter` and `probe` as in `apply_peer_regional`."""
    import copy

    own = copy.deepcopy(transformer)
    probe = probe or (lambda t: t.blocks[-1].attn1.to_q)
    handle = probe(own).register_forward_pre_hook(counter) if counter is not None else None
    with apply_peer(own, peer, num_inference_steps=num_inference_steps, calibration=calibration):
        yield own
    if handle is not None:
        handle.remove()


def calibrate_peer(transformer, peer: PeerSetting, generate_one, *, num_inference_steps: int) -> dict | None:
    """MagCache: diffusers' own calibration run (`MagCacheConfig(calibrate=True)`, an uncached run that prints
    the ratios gamma_k = mean over tokens of ||r_k|| / ||r_{k-1}||, r = residual of the whole block stack, one
    array per cache context). diffusers takes one array for both streams; its docs say to use the first,
    the conditional one: that is `mag_ratios`; the unconditional one is returned as `mag_ratios_uncond`.
    `generate_one(transformer, cfg)` runs the calibration generation in the given CFG layout. Other peers: None."""
    if peer.method != "magcache":
        return None
    calib = PeerSetting(DIFFUSERS, "magcache-calibrate", "calibrate", {})
    buf = io.StringIO()
    with apply_peer(transformer, calib, num_inference_steps=num_inference_steps), contextlib.redirect_stdout(buf):
        generate_one(transformer, cfg_mode(peer))
    arrays = []
    for line in buf.getvalue().splitlines():
        line = line.strip()
        if line.startswith("[") and not line.startswith("[MagCache]"):
            arrays.append([float(x) for x in ast.literal_eval(line)])
    if not arrays:
        raise RuntimeError(f"MagCache calibration printed no ratios: {buf.getvalue()!r}")
    out = {"mag_ratios": arrays[0], "num_inference_steps": num_inference_steps}
    if len(arrays) > 1:
        out["mag_ratios_uncond"] = arrays[1]
    return out


# ---------------------------------------------------------------------------------------------------------
# cache-dit
# ---------------------------------------------------------------------------------------------------------

def _import_cache_dit():
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "warning")  # its INFO logs print per-run stats tables
    import cache_dit

    return cache_dit


@functools.lru_cache(maxsize=1)
def cachedit_status() -> str:
    """"ok" when cache-dit imports and caches a tiny Wan transformer on this machine, else the reason."""
    try:
        cache_dit = _import_cache_dit()
    except Exception as e:  # noqa: BLE001 - the reason is the result
        return f"cache-dit is not importable: {type(e).__name__}: {e} (install with `pip install --no-deps cache-dit`)"
    version = getattr(cache_dit, "__version__", "unknown")
    if not str(version).startswith(CACHEDIT_VERSION):
        return f"cache-dit {version} is installed; this module targets {CACHEDIT_VERSION}.x"
    try:
        from diffusers import WanTransformer3DModel

        torch.manual_seed(0)
        tiny = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=3,
                                     out_channels=3, text_dim=8, freq_dim=16, ffn_dim=32, num_layers=3,
                                     rope_max_seq_len=16).eval()
        pe, lat = torch.randn(1, 2, 8), torch.randn(1, 3, 2, 4, 4)
        calls = [0]
        tiny.blocks[1].attn1.to_q.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))

        @torch.no_grad()
        def loop() -> torch.Tensor:  # 4 steps of separate cond / uncond calls, as WanPipeline makes them
            outs = []
            for t in (999.0, 750.0, 500.0, 250.0):
                for name, emb in (("cond", pe), ("uncond", -pe)):
                    with tiny.cache_context(name):
                        outs.append(tiny(hidden_states=lat, timestep=torch.tensor([t]), encoder_hidden_states=emb,
                                         return_dict=False)[0])
            return torch.stack(outs)

        ref = loop()
        peer = _c("dbcache", "smoke", dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=10.0,
                                           max_warmup_steps=1))
        calls[0] = 0
        with apply_peer(tiny, peer, num_inference_steps=4):
            out = loop()
        cached_calls = calls[0]
        after = loop()
        if not torch.isfinite(out).all():
            return "cache-dit produced non-finite output on a tiny Wan transformer"
        if cached_calls >= 8:
            return "cache-dit skipped no block on a tiny Wan transformer"
        if not torch.equal(after, ref):
            return "cache-dit's disable_cache did not restore the uncached output"
    except Exception as e:  # noqa: BLE001
        return f"cache-dit fails on a tiny Wan transformer on the CPU: {type(e).__name__}: {e}"
    return "ok"
