"""mmlens.shift, issue 18: the authors' pipeline as ``--preset reference`` (on tiny random models of the same
transformers classes), the authors' CLUB checkpoint, the estimator statistics (deduplication, group early stopping,
seed ensembles in every interval, split-level correlation intervals, the English control) and the tier merge of
``mmlens bench shift``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import run_error, run_ok
from mmlens.cli import main as cli_main
from mmlens.errors import InputError
from mmlens.models.embed import ClipImageEmbedder, EmbeddingLayerTextEmbedder, lexical_embedder, reference_embedders
from mmlens.shift.analysis import (
    ShiftConfig,
    SplitEmbeddings,
    analyse_embeddings,
    emi_replicates,
    fit_estimator,
    split_correlation,
    training_pairs,
)
from mmlens.shift.data import assign_language_control, llava_bench_family, load_llava_bench_shift
from mmlens.shift.estimators import (
    EstimatorConfig,
    MIEnsemble,
    MIEstimator,
    _group_split,
    load_estimator,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OFFICIAL = SHARED / "emi-official" / "CLUB_global.pt"
FAST_CLUB = EstimatorConfig(kind="club", hidden=32, max_steps=150, patience=5)


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------- the official estimator
def official_forward(state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    """The formula of the checkpoint's README, written out with an explicit N x N mean (no shortcut)."""

    def mlp(prefix, v, last_tanh):
        h = torch.tanh(v @ state[f"{prefix}.0.weight"].T + state[f"{prefix}.0.bias"])
        out = h @ state[f"{prefix}.2.weight"].T + state[f"{prefix}.2.bias"]
        return torch.tanh(out) if last_tanh else out

    x, y = x.double(), y.double()
    state = {k: v.double() for k, v in state.items()}
    mu, logvar = mlp("p_mu", x, False), mlp("p_logvar", x, True)
    positive = (-((mu - y) ** 2) / 2 / logvar.exp()).sum(1)
    pairwise = ((y[None, :, :] - mu[:, None, :]) ** 2).mean(1)  # [i, d] = mean_j (y_jd - mu_id)^2
    negative = (-pairwise / 2 / logvar.exp()).sum(1)
    return float((positive - negative).mean())


def synthetic_official_state(dim: int = 768, hidden: int = 250, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"0.weight": (hidden, dim), "0.bias": (hidden,), "2.weight": (dim, hidden), "2.bias": (dim,)}
    return {
        f"{head}.{k}": torch.randn(*s, generator=g) * (0.5 if head == "p_mu" else 0.05)
        for head in ("p_mu", "p_logvar")
        for k, s in shapes.items()
    }


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    v = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm(dim=1, keepdim=True)


def test_official_checkpoint_layout_loads_and_matches_the_reference_forward(tmp_path):
    state = synthetic_official_state()
    torch.save(state, tmp_path / "CLUB_global.pt")
    est = MIEstimator.load(tmp_path / "CLUB_global.pt")
    assert est.dims_ == (768, 768) and est.config.hidden == 250 and est.config.logvar_activation == "tanh"
    x, y = _unit(60, 768, 1), _unit(60, 768, 2)
    y_dep = x + 0.3 * _unit(60, 768, 3)
    for yy in (y, y_dep):
        assert abs(est.estimate(x, yy) - official_forward(state, x, yy)) < 1e-5
    # the heads are not interchangeable: swapping them (a planted mapping bug) changes the estimate
    swapped = {
        k.replace("p_mu", "TMP").replace("p_logvar", "p_mu").replace("TMP", "p_logvar"): v for k, v in state.items()
    }
    assert abs(official_forward(swapped, x, y_dep) - official_forward(state, x, y_dep)) > 1e-3
    # an ensemble file reader takes it too, as a one-member ensemble
    ens = load_estimator(tmp_path / "CLUB_global.pt")
    assert len(ens) == 1 and abs(ens.estimate(x, y_dep) - est.estimate(x, y_dep)) < 1e-9


def test_official_layout_with_wrong_shapes_is_a_clear_error(tmp_path):
    state = synthetic_official_state(dim=16, hidden=8)
    state["p_logvar.0.weight"] = torch.zeros(8, 12)  # inconsistent input size
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="official CLUB checkpoint"):
        MIEstimator.load(tmp_path / "bad.pt")


@pytest.mark.skipif(not OFFICIAL.is_file(), reason="the shared data (../shared) is not beside this clone")
def test_released_club_global_checkpoint():
    state = torch.load(OFFICIAL, map_location="cpu", weights_only=True)
    est = MIEstimator.load(OFFICIAL)
    assert est.dims_ == (768, 768) and est.config.hidden == 250
    x, y = _unit(90, 768, 4), _unit(90, 768, 5)
    assert abs(est.estimate(x, y) - official_forward(state, x, y)) < 1e-5
    _, logvar = est.conditional(x)
    # the released checkpoint's Tanh on log sigma^2 is near saturation at -1 (docs/methods/shift.md, section 2.4)
    assert -1 < logvar.min() < -0.95 and logvar.max() < 1


# --------------------------------------------------------------------------- estimator statistics
def test_group_split_keeps_every_group_on_one_side():
    groups = np.repeat(np.arange(30), 4)
    val, train = _group_split(groups, len(groups), 0.2, torch.Generator().manual_seed(0))
    assert set(groups[val.numpy()]).isdisjoint(groups[train.numpy()])
    assert len(set(groups[val.numpy()])) == 6
    with pytest.raises(InputError, match="one label per pair"):
        _group_split(groups[:5], len(groups), 0.2, torch.Generator())


def _splits(n=60, copies=3, seed=0, d=8):
    """``copies`` splits with the same queries and references (as visual-only shifts without images are) and
    their own responses, plus one split that is an exact copy of the ID split."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, d)).astype(np.float32)
    ref = (q + 0.5 * rng.standard_normal((n, d))).astype(np.float32)
    out = []
    for k in range(copies):
        resp = (q * (1 - 0.3 * k) + 0.5 * rng.standard_normal((n, d))).astype(np.float32)
        out.append(SplitEmbeddings(f"s{k}", q, q, resp, ref, item_ids=list(range(n)), meta={"family": "text"}))
    first = out[0]
    out.append(
        SplitEmbeddings("copy_of_id", first.query, first.text, first.response, first.reference, item_ids=list(range(n)))
    )
    return out


def test_training_pairs_are_deduplicated_and_grouped_by_item():
    embs = _splits()
    x, y, groups, counts = training_pairs(embs, ShiftConfig())
    # 4 splits x 2 kinds x 60 pairs; the reference pairs are one set, the ID copy adds no response pairs
    assert counts == {"pairs": 480, "unique_pairs": 60 * 3 + 60}
    assert len(x) == len(y) == len(groups) == 240 and set(groups) == {str(i) for i in range(60)}
    _, _, _, raw = training_pairs(embs, ShiftConfig(dedup_pairs=False))
    assert raw["unique_pairs"] == 480


def test_ensemble_members_use_their_own_seeds_and_the_spread_enters_the_intervals():
    embs = _splits()
    cfg = ShiftConfig(estimator=FAST_CLUB, n_estimators=5, n_permutations=0, n_bootstrap=40)
    ens = fit_estimator(embs, cfg)
    assert isinstance(ens, MIEnsemble) and len(ens) == 5
    hist = ens.history_
    assert hist["seeds"] == [0, 1, 2, 3, 4] and hist["early_stopping_split"] == "group" and hist["dedup"] is True
    values = ens.estimates(embs[0].query, embs[0].response)
    assert np.ptp(values) > 0  # different seeds, different estimators
    assert abs(ens.estimate(embs[0].query, embs[0].response) - values.mean()) < 1e-9


class _ConstantEstimator:
    """A stand-in whose I(x; response) is ``c`` and I(x; reference) is 0 (responses are ones, references zeros)."""

    def __init__(self, c):
        self.c, self.dims_ = c, (2, 2)

    def estimate(self, x, y):
        return self.c * float(np.mean(y))


def test_replicates_cycle_through_the_members_and_are_paired_across_splits():
    n = 20
    e = SplitEmbeddings("a", np.zeros((n, 2)), np.zeros((n, 2)), np.ones((n, 2)), np.zeros((n, 2)))
    reps = emi_replicates(MIEnsemble([_ConstantEstimator(0.0), _ConstantEstimator(1.0)]), e, np.arange(n), 10, 0)
    assert list(reps) == [0.0, 1.0] * 5  # member b mod K: the seed spread is in the replicates
    # the same resample of items in two splits whose rows come in different orders (pairing by item id)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((n, 2)).astype(np.float32)
    r = rng.standard_normal((n, 2)).astype(np.float32)
    ids = list(range(n))
    est = MIEnsemble([MIEstimator(FAST_CLUB).fit(np.vstack([q, q]), np.vstack([r, q]))])
    a = SplitEmbeddings("a", q, q, r, q, item_ids=ids)
    perm = rng.permutation(n)
    b = SplitEmbeddings("b", q[perm], q[perm], r[perm], q[perm], item_ids=[ids[i] for i in perm])
    reps_a = emi_replicates(est, a, np.arange(n), 8, 3)
    assert np.allclose(reps_a, emi_replicates(est, b, np.arange(n), 8, 3))
    # the fast path (CLUB conditionals computed once) equals the plain EMI of the replicate's rows
    from mmlens.shift.analysis import emi

    order = np.argsort([str(i) for i in ids], kind="stable")  # rows in item-id order
    draw = order[np.random.default_rng([3, 0]).integers(0, n, n)]
    assert reps_a[0] == pytest.approx(emi(est.members[0], a, draw)["emi"], abs=1e-9)


def test_copy_of_the_id_split_is_a_control_not_a_shift():
    embs = _splits()
    cfg = ShiftConfig(estimator=FAST_CLUB, n_estimators=2, n_permutations=0, n_bootstrap=20)
    res = analyse_embeddings(embs, cfg, progress=False)
    row = res.row("copy_of_id")
    assert row["control"] and row["family"] == "control" and row["emid"] == 0
    assert res.correlations == {} or all(c["n"] == 2 for c in res.correlations.values())
    assert not res.row("s1").get("control")


def test_translations_are_measured_against_the_english_control(tmp_path):
    from mmlens.shift.data import ShiftSplit

    q = [f"question {i}" for i in range(6)]

    def mk(name, qs):
        return ShiftSplit(name, qs, [f"answer {i}" for i in range(6)], [f"ref {i}" for i in range(6)])

    splits = [
        mk("coco", q),
        mk("coco_English", q),
        mk("coco_German", [f"Frage {i}" for i in range(6)]),
        mk("coco_sr_4", q),
    ]
    assert assign_language_control(splits, "coco") == "coco_English"
    assert splits[1].meta["family"] == "control" and splits[2].meta["emid_against"] == "coco_English"
    assert "emid_against" not in splits[3].meta
    with pytest.raises(InputError, match="not among"):
        assign_language_control(splits, "coco", "coco_French")
    assert llava_bench_family("llava_bench_coco_English") == "control"


@pytest.mark.skipif(not (SHARED / "llava-bench-shift").is_dir(), reason="../shared is not beside this clone")
def test_llava_bench_loader_marks_the_english_control():
    splits = {s.name: s for s in load_llava_bench_shift(SHARED / "llava-bench-shift")}
    assert splits["llava_bench_coco_English"].meta["family"] == "control"
    assert splits["llava_bench_coco_Korean"].meta["emid_against"] == "llava_bench_coco_English"
    assert splits["llava_bench_coco_frost_3_sr_7"].meta["visual_severity"] == 3


def test_split_correlation_interval_carries_the_replicates():
    names = [f"s{i}" for i in range(12)]
    x = {n: float(i) for i, n in enumerate(names)}
    y = {n: float(i) for i, n in enumerate(names)}
    tight = split_correlation(x, y, n_bootstrap=300)
    assert tight["spearman"] == pytest.approx(1.0) and tight["spearman_ci"][0] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = {n: x[n] + rng.normal(0, 6.0, 50) for n in names}  # replicates much wider than the spacing
    wide = split_correlation(x, y, replicates=noisy, n_bootstrap=300)
    assert wide["spearman"] == pytest.approx(1.0) and wide["spearman_ci"][0] < 0.5
    assert "replicates" in wide["interval"]


# --------------------------------------------------------------------------------------- embedders
def _tiny_xlmr():
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from mmlens.models.tiny import TINY_CORPUS
    from mmlens.models.tokenizers import train_word_tokenizer

    tok = train_word_tokenizer(
        [*TINY_CORPUS, "frage bitte antworte auf englisch"],
        extra_special_tokens=(),
        chat_template=None,
        add_bos_eos=True,
    )
    tok.padding_side = "right"
    config = XLMRobertaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=80,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    return XLMRobertaModel(config).eval(), tok


def _tiny_clip_vision():
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    from mmlens.models.tokenizers import make_image_processor

    vision = dict(
        hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    full = CLIPModel(
        CLIPConfig(
            text_config=dict(
                hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1, vocab_size=50
            ),
            vision_config=vision,
            projection_dim=16,
        )
    ).eval()
    tower = CLIPVisionModel(CLIPVisionConfig(**vision)).eval()
    getattr(tower, "vision_model", tower).load_state_dict(full.vision_model.state_dict())
    return full, tower, make_image_processor(32)


def _images(n=3):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


def test_reference_text_features_are_the_embedding_layer_mean_without_bos():
    model, tok = _tiny_xlmr()
    texts = ["what colour is the shape?", "a photo of a red square on the left.", "no"]
    emb = EmbeddingLayerTextEmbedder(model=model, tokenizer=tok, progress=False).embed(texts)
    assert emb.shape == (3, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    for k, t in enumerate(texts):
        ids = tok(t, return_tensors="pt")["input_ids"]
        assert ids[0, 0] == tok.bos_token_id and ids[0, -1] == tok.eos_token_id
        with torch.no_grad():
            layer0 = model.embeddings(input_ids=ids)[0]  # word + position embeddings after LayerNorm
        manual = layer0[1:].mean(0)  # <s> dropped, </s> kept
        assert np.allclose(emb[k], (manual / manual.norm()).numpy(), atol=1e-5)
        # padding in a batch changes nothing (the mask), and dropping <s> is not a no-op
        with_bos = layer0.mean(0)
        assert not np.allclose(emb[k], (with_bos / with_bos.norm()).numpy(), atol=1e-3)
    alone = EmbeddingLayerTextEmbedder(model=model, tokenizer=tok, progress=False).embed([texts[2]])
    assert np.allclose(alone[0], emb[2], atol=1e-5)


def test_embedding_layer_shortcut_equals_the_full_forwards_hidden_states_0():
    """The embedding-layer features stop the forward after the embeddings module; on padded batches of a tiny
    XLM-R and a tiny BERT (token types) that output is exactly ``hidden_states[0]`` of the full forward, and the
    encoder layers above it do not run."""
    from transformers import BertConfig, BertModel

    from mmlens.models.embed import _embedding_layer_output

    model, tok = _tiny_xlmr()
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=80,
            type_vocab_size=2,
            pad_token_id=tok.pad_token_id,
        )
    ).eval()
    texts = ["what colour is the shape?", "a photo of a red square on the left.", "no"]
    batch = tok(texts, padding=True, return_tensors="pt")
    for m in (model, bert):
        inputs = dict(batch)
        if m is bert:
            inputs["token_type_ids"] = (
                (torch.arange(batch["input_ids"].shape[1]) > 2).long().expand_as(batch["input_ids"])
            )
        layers_run = []
        hook = m.encoder.layer[0].register_forward_hook(lambda *a, seen=layers_run: seen.append(1))
        with torch.no_grad():
            fast = _embedding_layer_output(m, inputs)
            assert layers_run == []
            full = m(**inputs, output_hidden_states=True).hidden_states[0]
        hook.remove()
        assert layers_run == [1]
        assert torch.equal(fast, full)


def test_reference_image_features_are_the_patch_mean_of_the_last_hidden_state():
    full, tower, proc = _tiny_clip_vision()
    images = _images()
    a = ClipImageEmbedder(full, processor=proc, progress=False).embed(images)
    b = ClipImageEmbedder(tower, processor=proc, progress=False).embed(images)
    assert a.shape == (3, 32) and np.allclose(a, b, atol=1e-5)  # CLIPModel and CLIPVisionModel agree
    pixels = proc(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = tower(pixel_values=pixels).last_hidden_state
    assert hidden.shape[1] == 1 + (32 // 8) ** 2
    manual = hidden[:, 1:].mean(1)  # CLS dropped, before the post-layernorm
    assert np.allclose(a, (manual / manual.norm(dim=1, keepdim=True)).numpy(), atol=1e-5)
    cls_in = hidden.mean(1)
    assert not np.allclose(a, (cls_in / cls_in.norm(dim=1, keepdim=True)).numpy(), atol=1e-3)
    with pytest.raises(InputError, match="image processor"):
        ClipImageEmbedder(tower, progress=False)


def test_reference_embedders_from_loaded_models_fuse_by_average():
    from mmlens.shift.analysis import fuse

    model, tok = _tiny_xlmr()
    full, _, proc = _tiny_clip_vision()
    text, image = reference_embedders(full, model, image_processor=proc, tokenizer=tok, progress=False)
    t = text.embed(["a photo of a red square", "what colour is it?", "no"])
    v = image.embed(_images())
    assert np.allclose(fuse(v, t, "average"), (v + t) / 2)


def test_lexical_features_are_weightless_and_see_typos_less_than_translations():
    emb = lexical_embedder()
    base, typo, other = emb.embed(
        [
            "What is the color of the two suitcases in the image?",
            "What is the colr of the two suitcasse in the image?",
            "Welche Farbe haben die beiden Koffer auf dem Bild?",
        ]
    )
    assert base.shape == (768,) and emb.name.startswith("hashing:768")
    assert base @ typo > 0.8 > base @ other
    assert np.array_equal(emb.embed(["same"]), lexical_embedder().embed(["same"]))


# ---------------------------------------------------------------------------------------------- CLI
def _write_split(path: Path, prompts, responses, refs, images=None):
    with path.open("w") as f:
        for i, (p, r, ref) in enumerate(zip(prompts, responses, refs)):
            rec = {"question_id": i, "prompt": p, "text": r, "reference": ref}
            if images:
                rec["image"] = images[i]
            f.write(json.dumps(rec) + "\n")


def _cli_splits(tmp_path, n=24):
    rng = np.random.default_rng(0)
    words = "red blue green square circle triangle left right middle photo shape colour".split()
    prompts = [" ".join(rng.choice(words, 5)) + "?" for _ in range(n)]
    refs = [" ".join(rng.choice(words, 8)) for _ in range(n)]
    resp = [r if i % 3 else " ".join(rng.choice(words, 8)) for i, r in enumerate(refs)]
    (tmp_path / "img").mkdir()
    for i, im in enumerate(_images(n)):
        im.save(tmp_path / "img" / f"{i}.png")
    images = [f"img/{i}.png" for i in range(n)]
    _write_split(tmp_path / "coco.jsonl", prompts, resp, refs, images)
    _write_split(tmp_path / "coco_English.jsonl", prompts, resp, refs, images)
    _write_split(tmp_path / "coco_German.jsonl", ["frage " + p for p in prompts], list(reversed(resp)), refs, images)
    _write_split(tmp_path / "coco_sr_4.jsonl", [p.replace("red", "crimson") for p in prompts], resp[::-1], refs, images)
    return [tmp_path / f"coco_{k}.jsonl" for k in ("English", "German", "sr_4")]


def test_cli_preset_reference_on_tiny_models_with_the_official_layout(tmp_path, capsys):
    model, tok = _tiny_xlmr()
    _, tower, proc = _tiny_clip_vision()
    model.save_pretrained(tmp_path / "xlmr")
    tok.save_pretrained(tmp_path / "xlmr")
    tower.save_pretrained(tmp_path / "clip")
    proc.save_pretrained(tmp_path / "clip")
    ood = _cli_splits(tmp_path)
    common = [
        "shift",
        "emi",
        "--id",
        str(tmp_path / "coco.jsonl"),
        *[a for p in ood for a in ("--ood", str(p))],
        "--preset",
        "reference",
        "--text-model",
        str(tmp_path / "xlmr"),
        "--image-model",
        str(tmp_path / "clip"),
        "--permutations",
        "5",
        "--bootstrap",
        "20",
    ]
    # the authors' checkpoint layout, sized to the tiny models' 32-d features
    torch.save(synthetic_official_state(dim=32, hidden=16), tmp_path / "club.pt")
    run_ok([*common, "--out", str(tmp_path / "r"), "--estimator-file", str(tmp_path / "club.pt")])
    data = json.loads((tmp_path / "r" / "data.json").read_text())
    rows = {r["split"]: r for r in data["rows"]}
    assert data["embedders"]["text"].startswith("embedding-layer:") and "patch_mean" in data["embedders"]["image"]
    assert data["config"]["fusion"] == "average" and data["estimator"]["source"].startswith("official")
    assert rows["coco_English"]["control"] and rows["coco_German"]["emid_against"] == "coco_English"
    assert rows["coco_sr_4"]["emid_against"] == "coco" and rows["coco_sr_4"]["terms"]["J_v"] is not None
    # the estimator seeds of a trained run, saved as one file and read back
    run_ok(
        [*common, "--out", str(tmp_path / "r2"), "--estimator-seeds", "2", "--save-estimator", str(tmp_path / "ens.pt")]
    )
    assert len(load_estimator(tmp_path / "ens.pt")) == 2
    err = run_error([*common, "--out", str(tmp_path / "r3"), "--fusion", "concat"], capsys)
    assert "average fusion" in err


# ------------------------------------------------------------------------------------- bench merge
def test_bench_shift_merges_tiers_into_the_existing_file_with_their_provenance(tmp_path, monkeypatch, capsys):
    import mmlens.bench.shift as bench

    monkeypatch.setattr(bench, "ground_truth_tier", lambda seed=0, **kw: {"value": 1})
    monkeypatch.setattr(bench, "mini_world_tier", lambda seed=0, **kw: {"value": 2})
    out = tmp_path / "shift.json"
    run_ok(["bench", "shift", "--out", str(out), "--tiers", "ground_truth"])
    first = json.loads(out.read_text())
    assert first["ground_truth"] == {"value": 1} and set(first["tier_runs"]) == {"ground_truth"}
    run_ok(["bench", "shift", "--out", str(out), "--tiers", "mini_world"])
    merged = json.loads(out.read_text())
    assert merged["ground_truth"] == {"value": 1} and merged["mini_world"] == {"value": 2}
    for tier in ("ground_truth", "mini_world"):
        run = merged["tier_runs"][tier]
        assert {"commit", "finished", "seconds", "command"} <= run.keys()
    assert merged["tier_runs"]["ground_truth"] == first["tier_runs"]["ground_truth"]
    # a file without per-tier provenance is not merged into (it was not written by this command)
    out.write_text(json.dumps({"ground_truth": {"value": 0}}))
    assert "provenance" in run_error(["bench", "shift", "--out", str(out), "--tiers", "mini_world"], capsys)
    run_ok(["bench", "shift", "--out", str(out), "--tiers", "mini_world", "--fresh"])
    assert set(json.loads(out.read_text())["tier_runs"]) == {"mini_world"}


def test_bench_shift_resumes_an_interrupted_run_from_its_checkpoint(tmp_path, monkeypatch, capsys):
    """An interrupted run keeps its finished parts in OUT.checkpoint.json; the same command on the same code takes
    them from there (not recomputed), writes the same result as an uninterrupted run and removes the checkpoint;
    other code (another src tree, or uncommitted changes) starts over."""
    import mmlens.bench.shift as bench

    calls: list[str] = []
    interrupt = {"at": "nwj"}

    def fake_estimator(kind, *args):
        if kind == interrupt["at"]:
            raise RuntimeError("interrupted")
        calls.append(str(kind))
        return {"mean_abs_error_mi_le2_dim_le16": {"club": 0.3, "infonce": 0.1, "nwj": 0.2}[str(kind)], "rows": []}

    monkeypatch.setattr(bench, "_gt_estimator", fake_estimator)
    for name in ("rjsd_checks", "emi_noise_check", "synthetic_scenarios"):
        monkeypatch.setattr(bench, name, lambda seed=0, name=name: calls.append(name) or {"check": name})
    code = {"commit": "c0", "src_tree": "t0", "dirty": False}
    monkeypatch.setattr(bench, "_git_commit", lambda: dict(code))
    out = tmp_path / "shift.json"
    ckpt = tmp_path / "shift.json.checkpoint.json"
    cmd = ["bench", "shift", "--out", str(out), "--tiers", "ground_truth", "--fresh"]
    with pytest.raises(RuntimeError, match="interrupted"):
        cli_main(cmd)
    assert calls == ["club", "infonce"] and not out.exists()
    assert set(json.loads(ckpt.read_text())["units"]) == {"ground_truth/club", "ground_truth/infonce"}

    interrupt["at"] = None
    calls.clear()
    run_ok(cmd)
    assert calls == ["nwj", "rjsd_checks", "emi_noise_check", "synthetic_scenarios"]  # club, infonce reused
    resumed = json.loads(out.read_text())
    assert not ckpt.exists()
    assert resumed["ground_truth"]["best_estimator"] == "infonce"
    assert resumed["tier_runs"]["ground_truth"]["resumed_parts"] == ["ground_truth/club", "ground_truth/infonce"]
    calls.clear()
    run_ok([*cmd[:-1], "--fresh", "--out", str(tmp_path / "whole.json")])
    assert len(calls) == 6
    whole = json.loads((tmp_path / "whole.json").read_text())
    assert whole["ground_truth"] == resumed["ground_truth"]

    # another code version does not resume; neither does a tree with uncommitted changes
    for changed in ({"src_tree": "t1"}, {"dirty": True}):
        interrupt["at"] = "nwj"
        code.update({"src_tree": "t0", "dirty": False})
        with pytest.raises(RuntimeError):
            cli_main(cmd)
        interrupt["at"] = None
        code.update(changed)
        calls.clear()
        run_ok(cmd)
        assert calls[:2] == ["club", "infonce"], changed
        assert json.loads(out.read_text())["tier_runs"]["ground_truth"]["resumed_parts"] == []


def test_ensemble_refuses_unfitted_members():
    from mmlens.shift.estimators import MIEnsemble, MIEstimator

    with pytest.raises(InputError, match="fitted"):
        MIEnsemble([MIEstimator()])
