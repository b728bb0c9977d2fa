"""The real_lm tier of `mmlens bench concepts` (bench/real_lm_concepts.py): sentiment purity of concept
dictionaries, the best sentiment concept's cosine with the steering vector, the tier plumbing and the merge."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmlens.concepts import DecomposerKind
from mmlens.errors import InputError


def _planted(seed: int = 0):
    """Negative reviews at +v, positive ones at -v (each with its own two sub-clusters), other prompts far off:
    a dictionary with enough concepts has pure sentiment concepts along the steering direction v."""
    rng = np.random.default_rng(seed)
    d = 16
    v = rng.normal(size=d)
    v /= np.linalg.norm(v)
    base = rng.normal(size=d) * 2
    off = rng.normal(size=(4, d))
    rows, sentiment, kind = [], [], []
    for label, sign in (("negative", 1.0), ("positive", -1.0)):
        for j in range(2):
            rows.append(base + sign * 4 * v + off[j] * 0.5 + rng.normal(size=(30, d)) * 0.1)
            sentiment += [label] * 30
            kind += ["review"] * 30
    for j, k in ((2, "capital"), (3, "antonym")):
        rows.append(base + off[j] * 8 + rng.normal(size=(20, d)) * 0.1)
        sentiment += ["none"] * 20
        kind += [k] * 20
    feats = np.concatenate(rows)
    steer = feats[np.array(sentiment) == "negative"].mean(0) - feats[np.array(sentiment) == "positive"].mean(0)
    return feats, sentiment, kind, steer


@pytest.mark.parametrize("kind", [DecomposerKind.KMEANS, DecomposerKind.SNMF])
def test_planted_sentiment_concepts_are_pure_and_point_along_the_steering_vector(kind):
    from mmlens.bench.real_lm_concepts import sentiment_concepts, summarise

    feats, sentiment, kinds, steer = _planted()
    runs = [
        sentiment_concepts(feats, sentiment, kinds, steer, decomposer=kind, n_concepts=6, n_top=10, seed=s)
        for s in (0, 1, 2)
    ]
    for r in runs:
        assert r["best"] is not None and r["best"]["purity"] == 1.0
        assert r["sentiment_purity"] > r["random_sentiment_purity"] + 0.3
    if kind is DecomposerKind.KMEANS:  # centroid minus the reviews' mean: along +-v
        assert all(r["best"]["aligned_cosine"] > 0.8 for r in runs)
    res = summarise(runs)
    assert res["review_minus_random"]["ci"][0] > 0 and res["verdict"].startswith("review concepts are more")
    assert res["n_seeds_with_a_sentiment_concept"] == 3


def test_shuffled_labels_leave_no_sentiment_purity_above_random():
    """The planted bug 'labels shuffled': the same features with labels in random order are no purer than random."""
    from mmlens.bench.real_lm_concepts import sentiment_concepts, summarise

    feats, sentiment, kinds, steer = _planted()
    rng = np.random.default_rng(5)
    order = rng.permutation(len(sentiment))
    shuffled = [sentiment[i] for i in order]
    runs = [
        sentiment_concepts(
            feats, shuffled, kinds, steer, decomposer=DecomposerKind.KMEANS, n_concepts=6, n_top=10, seed=s
        )
        for s in (0, 1, 2)
    ]
    res = summarise(runs)
    assert res["sentiment_minus_random"]["mean"] < 0.2 and not res["verdict"].startswith("review concepts are more")
    with pytest.raises(InputError, match="samples"):
        sentiment_concepts(
            feats, sentiment[:-1], kinds, steer, decomposer=DecomposerKind.KMEANS, n_concepts=6, n_top=10, seed=0
        )


def test_tier_on_a_tiny_random_llama_reads_the_right_layer_and_labels():
    """The whole tier on a tiny random Llama (its numbers mean nothing). The steering vector it records at each
    layer must equal one computed independently from that layer's capture of the fit reviews by their labels: a
    wrong layer, a shuffled label or a misaligned row breaks it."""
    from mmlens.bench.real_lm_concepts import RealLMConceptsConfig, real_lm_concepts_tier, tier_samples
    from mmlens.models import tiny_model
    from mmlens.steer.build import capture_examples

    lm = tiny_model("llama")
    cfg = RealLMConceptsConfig(n_reviews_per_label=4, layers=(0, -1), seeds=(0, 1, 2), n_concepts=4, n_top=4)
    res = real_lm_concepts_tier(lm, cfg)
    json.dumps(res)
    assert res["layers"] == [0, lm.num_layers - 1]
    assert res["data"]["n_samples"] == 3 * (2 * 4 + 20) and res["data"]["n_steering_samples"] == 8
    items, sentiment, _, fit_mask = tier_samples(cfg)
    fit = [e for e, m in zip(items, fit_mask) if m]
    assert {e.answer for e in fit} == {"positive", "negative"}
    for layer in res["layers"]:
        cap = capture_examples(lm, fit, [layer], max_new_tokens=0, progress=False)
        acts = cap.layer(layer).double().numpy()
        neg = np.array([e.answer == "negative" for e in fit])
        expected = np.linalg.norm(acts[neg].mean(0) - acts[~neg].mean(0))
        got = res["per_layer"][str(layer)]["steering_vector_norm"]
        assert got == pytest.approx(expected, rel=1e-4)
        for kind in cfg.kinds:
            assert len(res["per_layer"][str(layer)][kind]["per_seed"]) == 3
    # the two layers' vectors differ, so the check above tells them apart
    norms = [res["per_layer"][str(layer)]["steering_vector_norm"] for layer in res["layers"]]
    assert norms[0] != pytest.approx(norms[1], rel=1e-3)


def test_concepts_tiers_merge_and_read_a_pre_tier_file_as_the_mini_llava_tier():
    from mmlens.bench.concepts import merge_concepts_tiers, run_concepts_tiers

    old = {"command": "mmlens bench concepts", "benchmark": "concepts", "run": {"commit": "a"}, "gain": 1}
    new = {"real_lm": {"x": 2}, "tier_runs": {"real_lm": {"keys": ["real_lm"], "commit": "c"}}}
    merged = merge_concepts_tiers(old, new)
    assert merged["gain"] == 1 and merged["real_lm"] == {"x": 2}
    assert merged["tier_runs"]["mini_llava"]["commit"] == "a" and "gain" in merged["tier_runs"]["mini_llava"]["keys"]
    again = merge_concepts_tiers(merged, {"real_lm": {"x": 3}, "tier_runs": {"real_lm": {"keys": ["real_lm"]}}})
    assert again["real_lm"] == {"x": 3} and again["gain"] == 1
    with pytest.raises(InputError, match="tier_runs"):
        merge_concepts_tiers({"a": 1}, new)
    with pytest.raises(InputError, match="unknown"):
        run_concepts_tiers(("nope",))


def test_bench_concepts_refuses_an_unknown_tier_before_any_work(tmp_path, capsys):
    from mmlens.cli import main

    out = tmp_path / "concepts.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "concepts", "--tiers", "nope", "--out", str(out)])
    assert exit_info.value.code == 2 and "unknown tiers" in capsys.readouterr().err and not out.exists()
