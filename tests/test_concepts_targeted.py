"""Issue 17, concepts: the concept-targeted fine-tune (does the shift analysis single out the concepts of the swapped
colours?), semi-NMF recovery on a comparable scale, and the sklearn DictionaryLearning(positive_code=True) variant."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from mmlens.concepts.compare import CompareConfig, ConceptScale, compare_models, concepts_in_feature_scale
from mmlens.concepts.decompose import ConceptDictionary, DecomposerConfig, DecomposerKind
from mmlens.errors import InputError

COLOURS = ("red", "green", "blue", "yellow", "purple", "white")


def _colour_clusters(n: int = 360, d: int = 16, seed: int = 0):
    """Samples in six colour clusters (a few shape/position directions inside each)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(COLOURS), d)) * 3
    colour = np.arange(n) % len(COLOURS)
    a = centres[colour] + rng.normal(size=(n, d)) * 0.4
    return a, np.array([COLOURS[c] for c in colour]), rng


# ------------------------------------------------------------------------------------------------ semi-NMF
def test_sklearn_semi_nmf_variant_has_positive_codes_and_bounded_concepts(tmp_path):
    x, colours, _ = _colour_clusters()
    dictionary = ConceptDictionary(DecomposerConfig(DecomposerKind.SNMF_SKLEARN, n_concepts=6, max_iter=200)).fit(x)
    codes = dictionary.transform(x)
    assert codes.min() >= 0 and dictionary.components_.min() < 0  # non-negative codes, signed concepts
    assert np.linalg.norm(dictionary.components_, axis=1).max() <= 1 + 1e-6
    assert adjusted_rand_score(colours, dictionary.assign(x)) > 0.9  # the planted clusters are its concepts
    loaded = ConceptDictionary.load(dictionary.save(tmp_path / "d.safetensors"))
    np.testing.assert_allclose(loaded.transform(x), codes, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", [DecomposerKind.SNMF, DecomposerKind.SNMF_SKLEARN])
def test_activation_scale_makes_unit_norm_concepts_recover_like_centroids(kind):
    """Each cluster moves its own way. Unit-norm semi-NMF concepts plus a shift in feature units are swamped by
    the shift; on the activation scale the shifted concepts recover B's concepts (gain > 0, above global)."""
    a, colours, rng = _colour_clusters(seed=1)
    own = rng.normal(size=(len(COLOURS), a.shape[1])) * 2
    b = a + own[[COLOURS.index(c) for c in colours]] + rng.normal(size=a.shape) * 0.1
    dec = DecomposerConfig(kind, n_concepts=6, max_iter=200)
    scaled = CompareConfig(decomposer=dec, concept_scale="activation", n_baseline_draws=3, split_half=False)
    fitted = CompareConfig(decomposer=dec, concept_scale=ConceptScale.AS_FITTED, n_baseline_draws=3, split_half=False)
    on_scale, unit = compare_models(a, b, scaled).summary(), compare_models(a, b, fitted).summary()
    assert on_scale["mean_gain"] > 0.05 and on_scale["mean_gain"] > on_scale["baseline_global_gain"] + 0.02
    assert on_scale["frac_improved"] >= 0.8
    assert on_scale["mean_gain"] > unit["mean_gain"] + 0.05
    # the scale is the concept's mean code over its samples: its norm is that of the cluster's centre
    d = ConceptDictionary(dec).fit(a)
    norms = np.linalg.norm(concepts_in_feature_scale(d, a), axis=1)
    centre_norms = np.linalg.norm([a[colours == c].mean(0) for c in COLOURS], axis=1)
    assert np.allclose(np.sort(norms), np.sort(centre_norms), rtol=0.25)
    k = ConceptDictionary(DecomposerConfig(DecomposerKind.KMEANS, n_concepts=6)).fit(a)
    np.testing.assert_array_equal(concepts_in_feature_scale(k, a), k.concepts)  # centroids are left as fitted
    with pytest.raises(InputError, match="concept scale"):
        CompareConfig(concept_scale="log")


# ------------------------------------------------------------------------------------------ targeted scores
def _swap_pair(targeted_shift: bool = True):
    a, colours, rng = _colour_clusters(seed=2)
    targeted = np.isin(colours, ("red", "blue"))
    if targeted_shift:  # the fine-tune moves only the swapped colours' samples (plus a little everywhere)
        b = a + 0.05 * rng.normal(size=a.shape)
        b[targeted] += rng.normal(size=a.shape[1]) * 1.5
    else:  # a fine-tune that moves everything alike (the wrong pair for this question)
        b = a + rng.normal(size=a.shape[1]) * 1.5 + 0.3 * rng.normal(size=a.shape)
    return a, b, targeted, colours


def test_targeted_scores_single_out_the_changed_concepts():
    from mmlens.bench.concepts import targeted_finetune_scores

    a, b, targeted, colours = _swap_pair()
    placebo = {"green+yellow": np.isin(colours, ("green", "yellow"))}
    res = targeted_finetune_scores(a, b, targeted, n_concepts=8, seeds=(0, 1, 2), fraction=0.9, placebo=placebo)
    assert res["auroc_changed_vs_unchanged"]["magnitude"]["mean"] >= 0.99
    assert res["auroc_changed_vs_unchanged"]["drift"]["mean"] > 0.5
    ranks = res["rank_of_targeted"]["magnitude"]
    for seed_ranks, n_changed in zip(ranks["per_seed"], res["n_changed"]):
        assert n_changed >= 2 and seed_ranks == list(range(1, n_changed + 1))  # the changed concepts come first
    assert res["placebo_auroc_magnitude"]["green+yellow"]["mean"] < 0.5
    lo, hi = res["auroc_changed_vs_unchanged"]["magnitude"]["ci"]
    assert lo <= res["auroc_changed_vs_unchanged"]["magnitude"]["mean"] <= hi and res["n_seeds"] == 3
    with pytest.raises(InputError, match="same samples"):
        targeted_finetune_scores(a, b, targeted[:-1], n_concepts=8, seeds=(0,), fraction=0.9)


def test_targeted_scores_do_not_find_changed_concepts_a_uniform_fine_tune_did_not_make():
    from mmlens.bench.concepts import targeted_finetune_scores

    a, b, targeted, _ = _swap_pair(targeted_shift=False)
    res = targeted_finetune_scores(a, b, targeted, n_concepts=8, seeds=(0, 1, 2), fraction=0.9)
    assert res["auroc_changed_vs_unchanged"]["magnitude"]["mean"] < 0.9


# ------------------------------------------------------------------------- the benchmark's wiring, end to end
def _fake_capture(items, spec: str, d: int = 16) -> object:
    """Features of ``items`` under the model at ``spec``: colour clusters (the same noise for every model);
    mini-llava-swap moves the red and blue samples, mini-llava-colour moves everything alike and emits no shape
    word (as the rebuilt zoo model does), checkpoints move a growing share of a global shift."""
    from mmlens.models.capture import CaptureResult

    rng = np.random.default_rng(0)
    centres = {c: rng.normal(size=d) * 3 for c in COLOURS}
    glob, swap = rng.normal(size=d) * 1.5, rng.normal(size=d) * 1.5
    noise = np.random.default_rng(1).normal(size=(len(items), d)) * 0.4
    x = np.stack([centres[it.attributes["colour"]] for it in items]) + noise
    keep = np.arange(len(items))
    if spec.endswith("mini-llava-swap"):
        x[[it.attributes["colour"] in ("red", "blue") for it in items]] += swap
    elif spec.endswith("mini-llava-colour"):
        keep = keep[:0]
    elif "step-" in spec:
        x = x + glob * int(spec.rsplit("-", 1)[1]) / 10
    feats = torch.tensor(x[keep], dtype=torch.float32)
    return CaptureResult(
        {"layer.0": feats, "final_norm": feats},
        torch.tensor(keep, dtype=torch.long),
        [],
        ["circle"] * len(keep),
        torch.zeros(len(keep), dtype=torch.long),
        {"model_fingerprint": spec},
    )


def test_benchmark_scores_the_swap_fine_tune_against_the_base_model(smoke_zoo_home, monkeypatch):
    """The whole analysis of `mmlens bench concepts` on planted features: the targeted section must read the
    mini-llava / mini-llava-swap pair (scoring another pair, e.g. the colour fine-tune, loses the AUROC), the
    colour fine-tune that emits no shape word is reported and the swap fine-tune analysed instead."""
    import mmlens.bench.concepts as bench
    from mmlens.concepts.grounding import TextGrounder, TextGroundingConfig

    monkeypatch.setenv("MMLENS_HOME", str(smoke_zoo_home))
    monkeypatch.setattr(bench, "_load", lambda spec: SimpleNamespace(spec=spec))
    monkeypatch.setattr(bench, "_capture", lambda model, items, config: _fake_capture(items, model.spec))
    throughput = {"batched_per_s": 10.0, "batch1_per_s": 1.0, "plain_per_s": 10.0, "speedup_vs_batch1": 10.0}
    monkeypatch.setattr(bench, "_throughput", lambda *args: {**throughput, "ratio_to_plain": 1.0})
    words = [*COLOURS, "circle", "square", "black", "gray", "object", "shape"]
    unembedding = torch.tensor(np.random.default_rng(3).normal(size=(len(words), 16)), dtype=torch.float32)
    monkeypatch.setattr(
        TextGrounder, "from_model", classmethod(lambda cls, model, config: cls(unembedding, words, None, config))
    )
    cfg = bench.ConceptsBenchConfig(
        n_scenes=500,
        n_concepts=8,
        gain_seeds=(0, 1, 2),
        n_boot=200,
        min_common=20,
        text=TextGroundingConfig(top_tokens=8, keep=4),
        threads=1,
    )
    result = bench.concepts_benchmark(cfg, log=lambda m: None)
    json.dumps(result)
    targeted = result["targeted_finetune"]
    assert targeted["models"]["tuned"].endswith("mini-llava-swap") and targeted["swapped_colours"] == ["red", "blue"]
    assert targeted["auroc_changed_vs_unchanged"]["magnitude"]["mean"] >= 0.9
    assert {"auroc_changed_vs_unchanged", "rank_of_targeted", "placebo_auroc_magnitude"} <= set(targeted)
    assert result["shift_finetune"] == "swap" and "why_not" in result["by_finetune"]["tuned"]
    assert result["by_finetune"]["tuned"]["n_common"] == 0 and result["by_finetune"]["swap"]["analysed"]
    assert {"final_norm/kmeans", "final_norm/snmf", "final_norm/snmf_sklearn"} <= set(result["recovery_detail"])
    row = next(t for t in result["targets"] if t["target"].startswith("targeted fine-tune"))
    assert row["met"] is True


def test_swapped_colours_come_from_the_fine_tune_record(tmp_path):
    from mmlens.bench.concepts import _swapped_colours

    (tmp_path / "metrics.json").write_text(json.dumps({"config": {"steps": 3}}))
    with pytest.raises(InputError, match="no swapped colours"):
        _swapped_colours(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"config": {"swap": ["red", "blue"]}}))
    assert _swapped_colours(tmp_path) == ("red", "blue")
