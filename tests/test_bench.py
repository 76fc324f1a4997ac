"""The benchmark pipeline end to end (not its numbers), the reference model and its judge."""

import json

import pytest
import torch

from bench.pipeline import generate, initial_latents
from bench.reference.data import COLORS, DIRECTIONS, SHAPES, Prompt, all_prompts, sample_batch
from bench.reference.judge import score
from bench.reference.model import load


def test_judge_is_right_on_training_clips():
    clips, ids = sample_batch(64, torch.Generator().manual_seed(7))
    prompts = [Prompt(SHAPES[a], list(COLORS)[b], list(DIRECTIONS)[c]) for a, b, c in ids.tolist()]
    assert score(clips, prompts)["all"] == 1.0


def test_judge_rejects_wrong_prompts():
    clips, ids = sample_batch(32, torch.Generator().manual_seed(8))
    wrong = [Prompt(SHAPES[(a + 1) % 3], list(COLORS)[(b + 1) % 4], list(DIRECTIONS)[(c + 1) % 4])
             for a, b, c in ids.tolist()]
    s = score(clips, wrong)
    assert s["color"] == 0 and s["direction"] == 0 and s["shape"] == 0


@pytest.fixture(scope="module")
def reference():
    return load()


def test_wan_pipeline_matches_batched_loop(reference):
    """diffusers' WanPipeline (separate cond/uncond calls) and the batched-CFG loop compute the same thing. Batch 2
    and batch 4 take different fp32 GEMM paths, so 6 steps differ by ~1e-4 at most (measured 1.4e-4 in 1 of 49152
    elements); a real layout bug (halves swapped, wrong guidance) differs by O(1)."""
    model, encoder = reference
    cond, uncond = encoder.encode(all_prompts()[:2])
    a = generate(model, cond, uncond, num_inference_steps=6, seed=3, cfg="separate")
    b = generate(model, cond, uncond, num_inference_steps=6, seed=3, cfg="batched")
    assert a.shape == initial_latents(2, 3).shape
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


@pytest.fixture(scope="module")
def judged(reference):
    model, encoder = reference
    prompts = all_prompts()[::4]
    cond, uncond = encoder.encode(prompts)
    clips = generate(model, cond, uncond, num_inference_steps=30, guidance_scale=5.0, seed=0, cfg="batched")
    return score(clips, prompts)


def test_reference_model_learned_color_and_shape(judged):
    """The committed weights draw the prompted color and, well above chance (1/3), the shape."""
    assert judged["color"] >= 0.9
    assert judged["shape"] > 0.5


def test_reference_model_follows_direction(judged):
    """Direction is the hardest attribute: it came only after training on the sampler's shifted noise levels (chance
    is 1/4; `python -m bench.reference.evaluate` measured 79% on all 48 prompts)."""
    assert judged["direction"] > 0.5 and judged["all"] > 0.5


def test_quality_quick_runs_end_to_end(tmp_path):
    from bench import quality

    rows = quality.main(["--quick", "--quiet", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "quality.json").read_text())
    assert (tmp_path / "quality.md").exists() and (tmp_path / "pareto.png").exists()
    providers = {r["provider"] for r in data["records"]}
    assert {"none", "fxcache", "diffusers"} <= providers
    for r in data["records"]:
        for key in ("method", "provider", "setting", "time_median_s", "time_min_s", "time_max_s", "speedup",
                    "psnr_mean", "psnr_min", "ssim_mean", "rel_l1_mean", "full_steps_mean"):
            assert key in r
        assert r["time_min_s"] <= r["time_median_s"] <= r["time_max_s"]
        if r["provider"] in ("fxcache", "diffusers", "cache-dit"):  # every method's caches hold something
            assert r["cache_bytes"] and r["cache_bytes"] > 0, r
    assert len(rows) == len(data["records"])


def test_overhead_quick_runs():
    from bench import overhead

    for model in ("reference", "tiny"):
        result = overhead.main(["--quick", "--model", model])
        names = [r["method"] for r in result["rows"]]
        whole = ["fxcache full step (whole batch)", "fxcache skipped step (whole batch)"] if model == "reference" else []
        assert names == ["eager", "inductor", "fxcache none", "fxcache full step", "fxcache full step (threshold 0)",
                         "fxcache skipped step", *whole, "ideal skipped step"]
        assert [t["vs"] for t in result["per_request"]] == whole  # batch 2 (reference): per-request vs whole batch
        assert result["skipped_step_blocks"]["skipped"] > 0
        assert result["full_step_guesses"]["wrong"] > 0  # the realistic full step: a wrong "skip" guess each step
        assert [t["row"] for t in result["targets"]] == ["fxcache none", "fxcache full step", "fxcache skipped step"]


def test_soak_quick_runs():
    """The soak loop end to end on a few generations: interrupted, 1-step and CFG-off runs, size changes."""
    from bench import soak

    result = soak.main(["--quick", "--generations", "12", "--every", "6"])
    last = result["records"][-1]
    assert result["counts"]["interrupted"] == 1 and result["counts"]["one_step"] >= 1
    assert last["instances"] == last["graphs_compiled"]  # one model per graph here (their options differ)
    assert last["skipped_steps"] > 0 and last["decision_log"] <= 2 * 256


def test_faithful_quick_matches_diffusers_fbcache():
    """bench.faithful end to end on its quick setting: fxcache's FBCache against diffusers' at the same
    thresholds makes the same per-call decisions and the same clips."""
    from bench import faithful

    result = faithful.main(["--quick", "--only", "fbcache"])
    assert [p["peer"] for p in result["pairs"]] == ["diffusers:fbcache[threshold=0.05]",
                                                    "diffusers:fbcache[threshold=0.2]"]
    for pair in result["pairs"]:
        (clip,) = pair["clips"]
        assert clip["decisions_identical"] and clip["calls"] == 16, clip
        assert clip["psnr_fxcache_vs_peer"] == float("inf")
    assert result["pairs"][1]["clips"][0]["fxcache_blocks_run"] < 16 * 6  # 0.2 skips blocks on 8 steps


def test_serve_quick_runs(tmp_path):
    """The serving benchmark end to end on a few short requests: per-request decisions give each request what it
    gets alone uncached up to the cache's own error, and release every request's state."""
    import json

    from bench import serve

    serve.main(["--quick", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "serve-quick.json").read_text())
    modes = [(r["setting"], r["mode"]) for r in result["serving"]]
    assert modes[0] == ("none", "uncached") and ("fbcache 0.1", "request") in modes
    assert all(r["requests_live_after"] == 0 for r in result["serving"])
    assert {r["batch"] for r in result["static"]} == {2}
    assert (tmp_path / "serve-quick.png").exists() and (tmp_path / "serve-quick.md").exists()
