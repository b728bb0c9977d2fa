"""Benchmarks (mmlens.bench): the shift benchmark's world splits and the steering benchmark on the smoke zoo."""

from __future__ import annotations

import json

from mmlens.shift.data import load_split


def test_generate_world_splits_with_zoo_llava(tmp_path, monkeypatch, smoke_zoo_home):
    """The generator runs a zoo model over world splits (smoke budget: the pipeline, not the accuracy)."""
    monkeypatch.setenv("MMLENS_HOME", str(smoke_zoo_home))
    from mmlens.bench.world_sets import generate_world_splits
    from mmlens.shift.generate import GenerateConfig

    cfg = GenerateConfig(scenarios=((None, 0, None, 0), ("defocus_blur", 5, None, 0)))
    paths = generate_world_splits("zoo:mini-llava", tmp_path / "w", n=20, config=cfg, progress=False)
    clean, blurred = load_split(paths[0]), load_split(paths[1])
    assert len(clean) == 20 and len(blurred) == 20
    assert 0.0 <= clean.meta["accuracy"] <= 1.0
    assert clean.queries == blurred.queries  # a visual-only shift leaves the text queries untouched


def test_benchmark_runs_on_the_smoke_zoo_and_records_what_it_cannot_measure(smoke_zoo_home, monkeypatch):
    """The smoke zoo's one-layer mini-llava answers nothing correctly: every part that needs correct answers must
    say so in the result instead of failing the run; the overhead is still measured."""
    from mmlens.bench.steer import SteerBenchConfig, steer_benchmark

    monkeypatch.setenv("MMLENS_HOME", str(smoke_zoo_home))
    cfg = SteerBenchConfig(
        n_train=16,
        n_select=6,
        n_test=6,
        alphas=(1.0,),
        caption_alphas=(1.0,),
        select_alphas=(1.0,),
        seeds=(0,),
        n_boot=20,
        n_concepts=2,
        n_selected=1,
        caption_tokens=6,
        overhead_repeats=1,
        batch_size=64,
        threads=1,
    )
    result = steer_benchmark(cfg)
    for section in ("ungated", "gated"):
        for layer, row in result["yes_to_no"][section]["per_layer"].items():
            assert "error" in row or {"steer", "random", "shuffled", "logit_bias"} <= set(row), (section, layer)
            for arm in ("steer", "random", "shuffled", "logit_bias"):
                assert "error" in row or {"flip", "other_drop"} <= set(row[arm])
    assert "alpha_rule" in result and "gated" in result["yes_to_no"]
    assert "ADDITION" in result["yes_to_no"]["gated"]["what"]
    for part in ("colour_to_colour", "number_to_number", "caption_style"):
        assert "error" in result[part] or "selected" in result[part] or "after" in result[part], part
    assert result["overhead"]["plain_s"] > 0 and result["overhead"]["steered_s"] > 0
    json.dumps(result)  # JSON-ready
