"""The memorised tier of ``mmlens bench influence``: models from the zoo recipe, their pairs rebuilt exactly, the
statistics, confident learning, the stepwise edit, resumable units and the merged result file."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from mmlens.bench import influence_memorised as mem
from mmlens.bench.influence import TIERS, merge_result, peer_settings
from mmlens.errors import ConvergenceError
from mmlens.influence import FitArguments, HeadTask, InfluenceAnalyzer, InfluenceArguments, NegForm
from mmlens.influence.baselines import detection_metrics
from mmlens.models import ContrastiveModel, load_model

TINY = mem.MemorisedConfig(
    kinds=("confusable",),
    rates=(0.25,),
    seeds=(0,),
    n_train_scenes=48,
    steps=3,
    train_batch_size=16,
    vision_hidden=32,
    text_hidden=32,
    projection_dim=32,
    batch_size=16,
    # The tier's l2 = 10 on this nearly untrained 48-pair model: a retraining without a random 10 % converged to no
    # point (measured: the risk's infimum lies where one caption's projected embedding collapses to ~0, a singular
    # point of the normalisation; L-BFGS ends at a per-pair gradient of 17.6, Newton-CG at 0.13-0.35), which the tier
    # rightly refuses. A stronger prior keeps this test's fits and retrainings smooth (each converges to <= 1e-11).
    l2=100.0,
    n_val=16,
    n_trace=3,
    n_test=40,
    edit_steps=2,
    run_peer=False,
    n_boot=50,
)


@pytest.fixture(scope="module")
def tiny_unit_model(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench-influence")
    folder, _ = mem.trained_model(TINY, "confusable", 0.25, 0, work, lambda s: None)
    return work, folder


# ------------------------------------------------------------------------------------------- statistics
def test_row_metrics_match_sklearn_and_the_detection_metrics():
    rng = np.random.default_rng(0)
    labels = rng.random((5, 300)) < 0.2
    scores = rng.normal(size=(5, 300)) + labels * 1.0
    auroc = mem._auroc_rows(labels, scores)
    auprc = mem._auprc_rows(labels, scores)
    patk = mem._precision_at_k_rows(labels, scores)
    for r in range(5):
        assert auroc[r] == pytest.approx(roc_auc_score(labels[r], scores[r]))
        assert auprc[r] == pytest.approx(average_precision_score(labels[r], scores[r]))
        assert patk[r] == pytest.approx(detection_metrics(labels[r], scores[r])["precision_at_k"], abs=1e-4)
    # ties get average ranks, as sklearn does
    tied = np.round(scores, 0)
    assert mem._auroc_rows(labels[:1], tied[:1])[0] == pytest.approx(roc_auc_score(labels[0], tied[0]))


def test_bootstrap_intervals_and_paired_verdicts():
    rng = np.random.default_rng(1)
    units = []
    for _ in range(3):
        noisy = rng.random(400) < 0.2
        units.append({"is_noisy": noisy, "good": noisy + rng.normal(0, 0.3, 400), "random": rng.normal(size=400)})
    res = mem.bootstrap_detection(units, ["good", "random"], n_boot=200)
    good, rand = res["good"]["auroc"], res["random"]["auroc"]
    assert good["ci"][0] <= good["mean"] <= good["ci"][1] and good["mean"] > 0.9
    assert rand["ci"][0] < 0.5 < rand["ci"][1]
    assert len(good["per_seed"]) == 3
    diff = mem.paired_score_difference(res, "good", "random")
    assert diff["ci"][0] > 0 and diff["verdict"] == "good beats random"
    same = mem.paired_score_difference(res, "random", "random")
    assert same["verdict"] == "no measurable difference"


# --------------------------------------------------------------------------------- models and their pairs
def test_unit_pairs_are_the_pairs_the_zoo_recipe_trained_on(tiny_unit_model):
    """The benchmark trains through mini_clip.build and rebuilds the noisy pairs with the recipe's own function:
    the flags and the flagged captions equal those the build saved."""
    _, folder = tiny_unit_model
    saved = json.loads((folder / "noise_flags.json").read_text())
    pairs = mem.training_pairs(TINY, "confusable", 0.25, 0)
    assert list(np.flatnonzero(pairs.is_noisy)) == saved["flagged"]
    assert saved["kind"] == "confusable" and len(pairs.train) == TINY.n_train_scenes
    for i in saved["flagged"]:
        named = mem.caption_shapes(pairs.train.captions[i], pairs.world.cfg.shapes)
        truth = pairs.scenes[i].object_classes
        assert named != truth  # a confusable shape renamed in the caption
        assert mem.caption_shapes(saved["captions"][str(i)], pairs.world.cfg.shapes) == named
    clean = np.flatnonzero(~pairs.is_noisy)
    assert all(
        mem.caption_shapes(pairs.train.captions[i], pairs.world.cfg.shapes) == pairs.scenes[i].object_classes
        for i in clean
    )


def test_twin_test_set_renames_one_confusable_shape():
    from mmlens.zoo.mini_clip import build_world

    world = build_world(mem.recipe(TINY, "confusable", 0.25, 0))
    test = mem.test_set(world, "confusable", 30, 0, "objects")
    assert len(test.images) == len(test.twin_captions) == 30
    for cap, twin, rename in zip(test.captions, test.twin_captions, test.renames):
        old, new = rename.split("->")
        shapes = mem.caption_shapes(cap, world.cfg.shapes)
        assert old in shapes and new in mem.caption_shapes(twin, world.cfg.shapes)
    random_set = mem.test_set(world, "random", 30, 0, "objects")
    assert not random_set.twin_captions and len(random_set.images) == 30


# ---------------------------------------------------------------------------------------- confident learning
def test_cleanlab_score_ranks_a_caption_that_names_other_shapes_first():
    """Images of class A whose captions name class B get the highest confident-learning scores."""
    from mmlens.zoo.mini_clip import build_world

    world = build_world(mem.recipe(TINY, "confusable", 0.25, 0))
    rng = np.random.default_rng(0)
    n = 60
    names = ["a red circle", "a blue square", "a green star"]
    given = rng.integers(3, size=n)
    true = given.copy()
    noisy = np.zeros(n, bool)
    noisy[:8] = True
    true[:8] = (given[:8] + 1) % 3
    protos = torch.nn.functional.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    img = torch.nn.functional.normalize(protos[true] + 0.1 * torch.randn(n, 16), dim=1)
    txt = torch.nn.functional.normalize(protos[given] + 0.05 * torch.randn(n, 16), dim=1)
    from PIL import Image

    from mmlens.influence import PairData

    blank = Image.new("RGB", (4, 4))
    pairs = mem._Pairs(world, [], PairData((blank,) * n, tuple(names[g] for g in given)), noisy, [], None)
    score, info = mem.cleanlab_score(pairs, img, txt, scale=20.0)
    assert roc_auc_score(noisy, score) > 0.95
    assert info["n_classes"] == 3 and info["recall_of_flagged"] > 0.5


# --------------------------------------------------------------------------------------------- the edit
def test_stepwise_edit_one_step_is_the_ecif_edit(tiny_unit_model):
    from mmlens.models import ContrastiveModel, load_model

    _, folder = tiny_unit_model
    pairs = mem.training_pairs(TINY, "confusable", 0.25, 0)
    task = HeadTask(load_model(folder, expect=ContrastiveModel))
    an = InfluenceAnalyzer(
        task, pairs.train, fit_args=FitArguments(batch_size=16, l2=1.0), args=InfluenceArguments(solver="explicit")
    )
    an.fit()
    removed = np.flatnonzero(pairs.is_noisy)
    one = mem.stepwise_edit(an, removed, 1)
    # one step = the ECIF edit, up to the fit's own residual gradient: theta - H^-1 grad R_r(theta_hat) =
    # theta_hat + H^-1 sum grad (Pos + Neg_exact) - H^-1 grad R(theta_hat)
    _, residual = an.risk_and_grad(an.fitted.params)
    expected = an.removal_edit(removed, NegForm.EXACT) - an.inverse().apply(residual.unsqueeze(0))[0]
    assert torch.allclose(one, expected, atol=1e-8)
    # Measured, not asserted: on this tiny model the 4-step edit ended farther from retraining than the one-step
    # edit (parameter distance 4.58 vs 1.43), so "steps approach retraining" is not an invariant; the benchmark
    # reports the accuracy each recovers.


# ------------------------------------------------------------------------------------ units and the file
def test_a_unit_runs_saves_resumes_and_summarises(tiny_unit_model, monkeypatch):
    work, _ = tiny_unit_model
    logs: list[str] = []
    status = mem.run_units(TINY, work, logs.append)
    assert status == {"done": ["confusable-0.25-s0"], "left": []}
    unit = mem.load_unit(mem.unit_path(work, "confusable", 0.25, 0))
    arrays, facts = unit["arrays"], unit["facts"]
    for name in ("ecif_both_exact", "ecif_relative", "ecif_self_influence", "clipscore", "lemon", "cleanlab"):
        assert arrays[name].shape == (TINY.n_train_scenes,) and np.isfinite(arrays[name]).all()
    assert facts["cost"]["fit_s"] >= 0 and facts["n_noisy"] == int(arrays["is_noisy"].sum())
    assert len(arrays["correct_noisy"]) == TINY.n_test
    # a rerun finds the unit and does not run it again
    monkeypatch.setattr(mem, "run_unit", lambda *a, **k: pytest.fail("a finished unit was run again"))
    assert mem.run_units(TINY, work, logs.append)["done"] == ["confusable-0.25-s0"]
    summary = mem.summarise_memorised_tier(TINY, work)
    det = summary["detection"]["mini-clip-noisy-confusable"]["confusable"]["0.25"]
    assert {"auroc", "auprc", "precision_at_k"} <= set(det["clipscore"])
    assert "_draws" not in det["clipscore"]
    assert summary["removal"]["mini-clip-noisy-confusable"]["0.25"]["n_test"] == TINY.n_test
    # a deadline in the past starts nothing new
    later = replace(TINY, seeds=(0, 1))
    assert mem.run_units(later, work, logs.append, deadline=0.0)["left"] == ["confusable-0.25-s1"]


def test_a_unit_whose_fit_did_not_converge_is_refused_not_scored(tiny_unit_model, tmp_path):
    """The tier scores only a fit that reached its stated tolerance: an L-BFGS capped at 2 iterations without the
    Newton stage does not, so the unit raises and nothing is saved; with the stage the same fit converges."""
    work, folder = tiny_unit_model
    capped = replace(TINY, max_iter=2, newton_max_iter=0)
    unit_work = tmp_path / "work"
    (unit_work / "models").mkdir(parents=True)
    (unit_work / "models" / folder.name).symlink_to(folder)
    with pytest.raises(ConvergenceError, match="did not converge"):
        mem.run_units(capped, unit_work, lambda s: None)
    assert not mem.unit_path(unit_work, "confusable", 0.25, 0).exists()
    pairs = mem.training_pairs(TINY, "confusable", 0.25, 0)
    task = HeadTask(load_model(folder, expect=ContrastiveModel))
    fit = InfluenceAnalyzer(task, pairs.train, fit_args=mem.fit_arguments(replace(TINY, max_iter=2), 0)).fit()
    assert fit.converged
    mem.require_converged(fit, "the fit")  # does not raise


def test_merge_keeps_other_tiers_with_their_provenance():
    old = {"detection": {"x": 1}, "fidelity": {}, "removal": {}, "cost": {}, "config": {}, "seconds": 5.0}
    merged = merge_result(old, "memorised", {"memorised": {"m": 2}}, {"commit": "abc"})
    assert merged["detection"] == {"x": 1} and merged["memorised"] == {"m": 2}
    assert merged["tier_runs"]["memorised"] == {"commit": "abc"}
    assert merged["tier_runs"]["clean_trained"]["commit"] is None
    again = merge_result(merged, "memorised", {"memorised": {"m": 3}}, {"commit": "def"})
    assert again["memorised"] == {"m": 3} and again["tier_runs"]["clean_trained"]["commit"] is None
    assert set(TIERS) == {"memorised", "fidelity_towers", "clean_trained"}
    for tier in TIERS:  # every tier owns its keys
        assert merge_result(None, tier, {}, {"commit": "x"})["tier_runs"] == {tier: {"commit": "x"}}


def test_peer_damping_is_ecif_prior_in_kronfluence_scale():
    settings = peer_settings(l2=10.0, n_pairs=2000, batch_size=64)
    assert settings["kronfluence_peer"]["damping_factor"] == pytest.approx(10.0 / 2000)


# ------------------------------------------------------------------------------- fidelity inside the towers
def test_epoch_partitions_sum_each_pair_over_its_batches(tiny_unit_model):
    """Seg: the risk over 2 recorded epochs is the sum of the two single-partition risks; a pair's score is the sum
    of its slots, and it predicts leave-one-out retraining (removing the pair from both epochs)."""
    from mmlens.bench import influence_fidelity as fid
    from mmlens.models import ContrastiveModel, load_model

    _, folder = tiny_unit_model
    pairs = mem.training_pairs(TINY, "confusable", 0.25, 0)
    train, val = pairs.train.subset(range(32)), pairs.val
    task = HeadTask(load_model(folder, expect=ContrastiveModel))
    args = InfluenceArguments(solver="explicit")
    two = fid.epoch_analyzer(task, train, 2, 8, 1.0, 0, args)
    theta = two.theta0 + 0.01
    singles = [fid.epoch_analyzer(task, train, 1, 8, 1.0, 1000 * e, args) for e in range(2)]
    assert float(two.loss(theta)) == pytest.approx(sum(float(a.loss(theta)) for a in singles), rel=1e-10)
    assert float(two.loss(theta, remove=fid.pair_slots([3], 32, 2))) == pytest.approx(
        sum(float(a.loss(theta, remove=[3])) for a in singles), rel=1e-10
    )
    assert list(fid.per_pair(np.arange(64.0), 32, 2)[:2]) == [32.0, 34.0]
    cfg = fid.FidelityConfig(n_loo=12, n_lds=4, batch_size=8, l2=1.0, n_boot=50)
    res = fid.group_fidelity(task, train, val, cfg, 2, lambda s: None)
    assert res["methods"]["ecif_both_exact"]["loo_spearman"]["mean"] > 0.8
    assert res["epochs"] == 2 and res["cost"]["retrain_s"] > 0
