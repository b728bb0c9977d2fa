"""mmlens.concepts: activation capture on every tiny generative architecture, decomposers, grounding, metrics,
model comparison with its baselines, the CLI (offline, CPU, tiny models)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import re

import pytest
import torch
from PIL import Image

from mmlens.concepts import (
    CaptureConfig,
    PositionKind,
    PositionRule,
    capture_activations,
    common_samples,
    load_capture,
)
from mmlens.concepts import compare as compare_module
from mmlens.errors import InputError
from mmlens.models import VisionLanguageModel, capture_outputs, tiny_model
from mmlens.models import capture as capture_module
from mmlens.models.tiny import VISION_LANGUAGE_ARCHITECTURES

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

GENERATIVE_ARCHITECTURES = (*VISION_LANGUAGE_ARCHITECTURES, "llama")
PROMPTS = [
    "what colour is the shape in the middle of the image?",
    "describe it.",
    "is there a red square?",
    "how many objects are there?",
    "describe the image.",
]


def _images(n: int) -> list[Image.Image]:
    # Different sizes exercise resizing, tiling (Idefics3) and anyres (LLaVA-NeXT); prompts differ in length so
    # batches are padded.
    sizes = [(40, 30), (24, 56), (32, 32), (64, 20), (33, 33)]
    colours = ["red", "blue", "green", "yellow", "purple"]
    return [Image.new("RGB", sizes[i % 5], colours[i % 5]) for i in range(n)]


@pytest.fixture(scope="module", params=GENERATIVE_ARCHITECTURES)
def gen(request):
    model = tiny_model(request.param)
    images = _images(len(PROMPTS)) if isinstance(model, VisionLanguageModel) else None
    return request.param, model, images


def _first_word(texts: list[str]) -> tuple[int, str]:
    for i, text in enumerate(texts):
        for word in re.findall(r"[a-z]+|[?.:,]", text):
            return i, word
    raise AssertionError(f"no generated word in {texts}")


def _hooks_left(model) -> int:
    """Forward hooks on the decoder layers and final norm (transformers registers its own elsewhere)."""
    return sum(len(m._forward_hooks) for m in (*model.decoder_layers, model.final_norm))


# --------------------------------------------------------------------------------------------- capture
@pytest.mark.parametrize("kind", [PositionKind.LAST_PROMPT, PositionKind.GENERATED_MEAN, PositionKind.FIXED_INDEX])
def test_batched_capture_equals_batch_size_one(gen, kind):
    arch, model, images = gen
    rule = PositionRule(kind, index=2)
    config = CaptureConfig(layers=(0, -1), final_norm=True, position=rule, max_new_tokens=5, batch_size=5)
    batched = capture_activations(model, images, PROMPTS, config, progress=False)
    single = capture_activations(
        model,
        images,
        PROMPTS,
        CaptureConfig(layers=(0, -1), final_norm=True, position=rule, max_new_tokens=5, batch_size=1),
        progress=False,
    )
    n = model.num_layers
    assert set(batched.activations) == {"layer.0", f"layer.{n - 1}", "final_norm"}
    assert batched.sample_index.tolist() == single.sample_index.tolist() == list(range(len(PROMPTS)))
    assert batched.generated == single.generated
    for key in batched.activations:
        assert batched.activations[key].shape == (len(PROMPTS), model.lm_head.weight.shape[1])
        torch.testing.assert_close(batched.activations[key], single.activations[key], atol=1e-4, rtol=1e-4)
    assert _hooks_left(model) == 0


def test_token_of_interest_is_the_emitting_position(gen):
    """The captured vector is the residual that *predicts* the token of interest (greedy next token = TOI), and it
    equals the same position of an uncached forward pass over prompt + generated tokens."""
    arch, model, images = gen
    free = capture_activations(model, images, PROMPTS, CaptureConfig(max_new_tokens=6, batch_size=5), progress=False)
    row, word = _first_word(free.generated)
    config = CaptureConfig(
        layers=(0,),
        final_norm=True,
        position=PositionRule(PositionKind.TOKEN_OF_INTEREST, words=(word,)),
        max_new_tokens=6,
        batch_size=5,
    )
    result = capture_activations(model, images, PROMPTS, config, progress=False)
    assert row in result.sample_index.tolist()
    assert all(word in result.generated[i].lower() for i in result.sample_index.tolist())
    first_ids = {seq[0] for seq in capture_module.token_variants(model.tokenizer, word)}
    logits = model.lm_head(result.activations["final_norm"])
    assert set(logits.argmax(-1).tolist()) <= first_ids

    # Uncached reference: one forward over prompt + generated tokens of the first kept sample.
    r = result.sample_index.tolist().index(row)
    step = int(result.position[r])
    one = model.prepare([images[row]], [PROMPTS[row]]) if images is not None else model.prepare([PROMPTS[row]])
    one.pop("labels", None)
    reference_ids = _regenerate(model, one, 6)
    length = one["input_ids"].shape[1]
    full = dict(one)
    full["input_ids"] = torch.cat([one["input_ids"], reference_ids[:, :step]], dim=1)
    full["attention_mask"] = torch.ones_like(full["input_ids"])
    for name in ("token_type_ids", "mm_token_type_ids"):  # per-token types: generated tokens are plain text
        if name in one:  # (PaliGemma's "suffix" type 1 is causal text; Qwen's type 0 is text)
            fill = torch.full((1, step), int(name == "token_type_ids"), dtype=one[name].dtype)
            full[name] = torch.cat([one[name], fill], dim=1)
    with capture_outputs({"layer.0": model.decoder_layers[0]}) as acts, torch.no_grad():
        model.model(**full, use_cache=False)
    torch.testing.assert_close(
        acts["layer.0"][0][0, length - 1 + step], result.activations["layer.0"][r], atol=1e-4, rtol=1e-4
    )


def _regenerate(model, batch, max_new_tokens: int) -> torch.Tensor:
    tok = model.tokenizer
    with torch.no_grad():
        seq = model.model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return seq[:, batch["input_ids"].shape[1] :]


def test_last_prompt_without_generation_matches_generation(gen):
    arch, model, images = gen
    with_gen = capture_activations(
        model, images, PROMPTS, CaptureConfig(layers=(-1,), max_new_tokens=3, batch_size=5), progress=False
    )
    forward_only = capture_activations(
        model, images, PROMPTS, CaptureConfig(layers=(-1,), max_new_tokens=0, batch_size=5), progress=False
    )
    key = with_gen.keys[0]
    torch.testing.assert_close(with_gen.activations[key], forward_only.activations[key], atol=1e-4, rtol=1e-4)
    assert forward_only.generated == [""] * len(PROMPTS)


def test_filters_and_common_samples():
    model = tiny_model("llama")
    free = capture_activations(model, None, PROMPTS, CaptureConfig(max_new_tokens=6), progress=False)
    row, word = _first_word(free.generated)
    has = [bool(re.search(rf"\b{word}\b", t)) for t in free.generated]
    config = CaptureConfig(max_new_tokens=6, require_in_prediction=True, filter_words=(word,))
    pred = capture_activations(model, None, PROMPTS, config, progress=False)
    assert pred.sample_index.tolist() == [i for i, h in enumerate(has) if h]
    truths = [f"a {word}" if i % 2 == 0 else "nothing here" for i in range(len(PROMPTS))]
    gt = capture_activations(
        model,
        None,
        PROMPTS,
        CaptureConfig(max_new_tokens=6, require_in_ground_truth=True, filter_words=(word,)),
        ground_truths=truths,
        progress=False,
    )
    assert gt.sample_index.tolist() == [0, 2, 4]
    a, b = common_samples(pred, gt)
    expected = sorted(set(pred.sample_index.tolist()) & {0, 2, 4})
    assert a.sample_index.tolist() == b.sample_index.tolist() == expected
    torch.testing.assert_close(b.activations["layer.1"], gt.select(expected).activations["layer.1"])


def test_resume_after_interruption(tmp_path, monkeypatch):
    model = tiny_model("llava")
    images = _images(len(PROMPTS))
    config = CaptureConfig(
        layers=(0, 1),
        final_norm=True,
        position=PositionRule(PositionKind.GENERATED_MEAN),
        max_new_tokens=4,
        batch_size=2,
        shard_size=2,
    )
    full = capture_activations(model, images, PROMPTS, config, progress=False)

    real = capture_module._capture_batch
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # interrupted while the second shard runs
        return real(*args, **kwargs)

    monkeypatch.setattr(capture_module, "_capture_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        capture_activations(model, images, PROMPTS, config, out_dir=tmp_path / "cap", progress=False)
    assert _hooks_left(model) == 0
    manifest = json.loads((tmp_path / "cap" / "manifest.json").read_text())
    assert [s["shard"] for s in manifest["shards"]] == [0] and not manifest["complete"]
    assert CaptureConfig.from_dict(manifest["config"]) == config
    with pytest.raises(InputError, match="unfinished"):
        load_capture(tmp_path / "cap")
    monkeypatch.setattr(capture_module, "_capture_batch", real)
    resumed = capture_activations(model, images, PROMPTS, config, out_dir=tmp_path / "cap", progress=False)
    assert resumed.metadata["computed_inputs"] == len(PROMPTS) - 2  # the first shard was read back
    loaded = load_capture(tmp_path / "cap")
    for other in (resumed, loaded):
        assert other.sample_index.tolist() == full.sample_index.tolist()
        assert other.generated == full.generated
        for key in full.activations:
            torch.testing.assert_close(other.activations[key], full.activations[key])
    # Same folder, another config: refused rather than mixed.
    with pytest.raises(InputError, match="another model, inputs or config"):
        capture_activations(
            model,
            images,
            PROMPTS,
            CaptureConfig(layers=(0,), max_new_tokens=4),
            out_dir=tmp_path / "cap",
            progress=False,
        )


def test_capture_input_errors():
    model = tiny_model("llava")
    images = _images(2)
    with pytest.raises(InputError, match="empty"):
        capture_activations(model, [], [], CaptureConfig(), progress=False)
    with pytest.raises(InputError, match="images for"):
        capture_activations(model, images, PROMPTS, CaptureConfig(), progress=False)
    with pytest.raises(InputError, match="layer 7"):
        capture_activations(model, images, PROMPTS[:2], CaptureConfig(layers=(7,)), progress=False)
    with pytest.raises(InputError, match="unknown tokens"):
        capture_activations(
            model,
            images,
            PROMPTS[:2],
            CaptureConfig(position=PositionRule(PositionKind.TOKEN_OF_INTEREST, words=("zebra",))),
            progress=False,
        )
    with pytest.raises(InputError, match="max_new_tokens"):
        CaptureConfig(position=PositionRule(PositionKind.GENERATED_MEAN), max_new_tokens=0)
    with pytest.raises(InputError, match="needs non-empty words"):
        PositionRule(PositionKind.TOKEN_CLASS)
    with pytest.raises(InputError, match="ground_truths"):
        capture_activations(
            model, images, PROMPTS[:2], CaptureConfig(require_in_ground_truth=True, filter_words=("a",)), progress=False
        )
    assert _hooks_left(model) == 0


# ------------------------------------------------------------------------------------------ decomposers
import numpy as np  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

from mmlens.concepts import (  # noqa: E402
    CompareConfig,
    ConceptDictionary,
    DecomposerConfig,
    DecomposerKind,
    TextGrounder,
    TextGroundingConfig,
    attribute_purity,
    compare_models,
    concept_drift,
    concept_shift_vectors,
    disentanglement,
    mas_overlap,
    match_concepts,
    random_purity,
    t_overlap,
    top_samples,
)


def _clusters(n: int = 300, k: int = 5, d: int = 16, seed: int = 0, spread: float = 0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    labels = np.arange(n) % k
    return centres[labels] + rng.normal(size=(n, d)) * spread, labels, centres


@pytest.mark.parametrize("kind", list(DecomposerKind))
def test_decomposers_fit_transform_and_round_trip(kind, tmp_path):
    x, labels, _ = _clusters()
    dictionary = ConceptDictionary(DecomposerConfig(kind, n_concepts=5, max_iter=100)).fit(x)
    codes = dictionary.transform(x)
    assert codes.shape == (len(x), 5) and dictionary.components_.shape == (5, x.shape[1])
    if kind is DecomposerKind.SNMF:
        assert codes.min() >= 0  # non-negative codes, signed concepts
        assert dictionary.components_.min() < 0
        np.testing.assert_allclose(np.linalg.norm(dictionary.components_, axis=1), 1.0, atol=1e-6)
    if kind in (DecomposerKind.KMEANS, DecomposerKind.SNMF, DecomposerKind.DICTIONARY):
        assert adjusted_rand_score(labels, dictionary.assign(x)) > 0.9  # planted clusters are found
    path = dictionary.save(tmp_path / "d.safetensors")
    loaded = ConceptDictionary.load(path)
    assert loaded.config == dictionary.config
    np.testing.assert_allclose(loaded.transform(x), codes, rtol=1e-6, atol=1e-8)


def test_decomposer_input_errors(tmp_path):
    x, _, _ = _clusters(n=20)
    with pytest.raises(InputError, match="NaN"):
        ConceptDictionary().fit(np.where(np.eye(20, 16) > 0, np.nan, x))
    with pytest.raises(InputError, match="cannot give 20 concepts"):
        ConceptDictionary(DecomposerConfig(n_concepts=20)).fit(x[:5])
    with pytest.raises(InputError, match="no samples"):
        ConceptDictionary().fit(np.zeros((0, 4)))
    with pytest.raises(InputError, match="not fitted"):
        ConceptDictionary().transform(x)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="cannot read"):
        ConceptDictionary.load(tmp_path / "bad.safetensors")
    with pytest.raises(InputError, match="decomposer kind"):
        DecomposerConfig(kind="nmf")
    with pytest.raises(InputError, match="shift statistic"):
        CompareConfig(statistic="mode")


# ---------------------------------------------------------------------------------- grounding, metrics
def test_text_grounding_filters_words_and_ranks_by_logit():
    strings = ["the", "red", "circle", "a", "square", "?", "blue"]
    unembedding = torch.eye(len(strings))
    grounder = TextGrounder(unembedding, strings, None, TextGroundingConfig(top_tokens=6, keep=2))
    concept = np.array([[5.0, 4.0, 3.0, 2.5, 2.0, 1.5, 0.0]])
    assert grounder(concept) == [["red", "circle"]]  # "the" is a stop word, "a" and "?" are not words
    wide = TextGrounder(unembedding, strings, None, TextGroundingConfig(top_tokens=6, keep=10, stop_words=()))
    assert wide(concept) == [["the", "red", "circle", "square"]]  # "blue" is outside the top 6 tokens
    with pytest.raises(InputError, match="final norm"):
        TextGrounder(unembedding, strings, None, TextGroundingConfig(apply_final_norm=True))


def test_text_grounding_with_the_final_norm_of_a_model():
    model = tiny_model("llava")
    normed = TextGrounder.from_model(model, TextGroundingConfig(apply_final_norm=True, top_tokens=10, keep=3))
    plain = TextGrounder.from_model(model, TextGroundingConfig(top_tokens=10, keep=3))
    concepts = np.random.default_rng(0).normal(size=(4, model.lm_head.weight.shape[1]))
    with torch.no_grad():
        expected = model.lm_head(model.final_norm(torch.tensor(concepts, dtype=torch.float32))).numpy()
    np.testing.assert_allclose(normed.logits(concepts), expected, rtol=1e-4, atol=1e-4)
    words = normed(concepts)
    assert len(words) == 4 and all(len(w) <= 3 and all(t.isalpha() and len(t) >= 3 for t in w) for w in words)
    assert not np.allclose(plain.logits(concepts), normed.logits(concepts))


def test_metrics_and_purity():
    assert t_overlap(["a", "b", "c", "d"], ["b", "d", "x"]) == 50.0
    assert t_overlap([], ["a"]) == 0.0
    assert disentanglement([["a", "b"], ["a", "b"]]) == 1.0
    assert disentanglement([["a", "b"], ["c", "d"], ["e"]]) == 0.0
    np.testing.assert_allclose(
        mas_overlap(np.array([[0, 1, 2], [3, 4, 5]]), np.array([[2, 1, 9], [6, 7, 8]])), [2 / 3, 0.0]
    )
    codes = np.array([[0.9, 0.0], [0.8, 0.1], [0.1, 0.7], [0.0, 0.9], [0.2, 0.2]])
    top = top_samples(codes, 2)
    assert top.tolist() == [[0, 1], [3, 2]]
    purity = attribute_purity(top, {"colour": ["red", "red", "blue", "green", "red"]})
    np.testing.assert_allclose(purity["colour"], [1.0, 0.5])
    assert random_purity(5, 2, {"colour": ["red", "red", "blue", "green", "red"]})["colour"] < 1.0


# ------------------------------------------------------------------------------------------- comparison
def test_kmeans_shifted_concept_is_the_mean_of_b_over_the_cluster():
    """The circularity of the method: with converged k-means and alpha = 1, u_a + shift = mean of B's features
    over A's cluster, whatever B is."""
    a, _, _ = _clusters()
    b = np.random.default_rng(1).normal(size=a.shape)  # unrelated to A
    dictionary = ConceptDictionary(DecomposerConfig(DecomposerKind.KMEANS, n_concepts=5)).fit(a)
    assign = dictionary.assign(a)
    shifts = concept_shift_vectors(a, b, assign, 5)
    shifted = dictionary.components_ + shifts.vectors
    expected = np.stack([b[assign == k].mean(0) for k in range(5)])
    np.testing.assert_allclose(shifted, expected, atol=1e-8)


def test_matching_recovers_a_permutation():
    u = np.random.default_rng(0).normal(size=(6, 10))
    perm = np.array([3, 0, 5, 1, 4, 2])
    v = np.empty_like(u)
    v[perm] = u + 0.01
    match, cos = match_concepts(u, v)
    assert match.tolist() == perm.tolist() and cos.min() > 0.99


def _planted_shift(per_concept: bool, seed: int = 0):
    a, labels, _ = _clusters(n=400, k=5, d=16, seed=seed, spread=0.5)
    rng = np.random.default_rng(seed + 10)
    if per_concept:
        shifts = rng.normal(size=(5, 16)) * 2
        b = a + shifts[labels] + rng.normal(size=a.shape) * 0.1
    else:
        b = a + rng.normal(size=16) * 2 + rng.normal(size=a.shape) * 0.1
    return a, b


def test_per_concept_shifts_beat_the_baselines_when_shifts_differ():
    a, b = _planted_shift(per_concept=True)
    config = CompareConfig(decomposer=DecomposerConfig(DecomposerKind.KMEANS, n_concepts=5), n_baseline_draws=5)
    s = compare_models(a, b, config).summary()
    assert s["frac_improved"] == 1.0 and s["beats_every_baseline"]
    assert s["mean_gain"] > s["baseline_global_gain"] + 0.02
    assert s["mean_gain"] > s["baseline_permuted_gain"] + 0.02 and s["baseline_random_gain"] < s["mean_gain"]
    assert 0.8 <= s["alpha_peak"] <= 1.2
    assert s["split_half"]["beats_every_baseline"]
    assert s["per_concept"]["mean_mas_overlap"] > 0.9


def test_one_global_shift_gives_no_per_concept_advantage():
    a, b = _planted_shift(per_concept=False)
    config = CompareConfig(decomposer=DecomposerConfig(DecomposerKind.KMEANS, n_concepts=5), n_baseline_draws=5)
    s = compare_models(a, b, config).summary()
    # Every concept moved by the same vector: the per-concept shifts carry nothing beyond the global one.
    assert abs(s["mean_gain"] - s["baseline_global_gain"]) < 0.01
    assert abs(s["mean_gain"] - s["baseline_permuted_gain"]) < 0.01


def test_shift_statistics_and_input_errors():
    a, b = _planted_shift(per_concept=True)
    assign = np.arange(len(a)) % 5
    b_outlier = b.copy()
    b_outlier[0] += 1000.0
    mean = concept_shift_vectors(a, b_outlier, assign, 5)
    median = concept_shift_vectors(a, b_outlier, assign, 5, statistic=compare_module.ShiftStatistic.MEDIAN)
    trimmed = concept_shift_vectors(a, b_outlier, assign, 5, statistic=compare_module.ShiftStatistic.TRIMMED_MEAN)
    assert mean.magnitude[0] > 5 * median.magnitude[0] and trimmed.magnitude[0] < 2 * median.magnitude[0]
    assert np.all(mean.consistency <= 1.0)
    with pytest.raises(InputError, match="same samples"):
        compare_models(a, b[:-1])


def test_drift_falls_as_features_move():
    strings = [f"w{chr(97 + i)}x" for i in range(16)]
    grounder = TextGrounder(torch.eye(16), strings, None, TextGroundingConfig(top_tokens=4, keep=4, stop_words=()))
    base, _, _ = _clusters(n=200, k=4, d=16)
    rng = np.random.default_rng(3)
    steps = [0, 10, 20]
    checkpoints = [base, base + rng.normal(size=base.shape) * 2, base + rng.normal(size=base.shape) * 8]
    drift = concept_drift(
        base,
        checkpoints,
        steps,
        grounder,
        [grounder] * 3,
        DecomposerConfig(DecomposerKind.KMEANS, n_concepts=4),
        groups={"first": np.array([True, True, False, False]), "rest": np.array([False, False, True, True])},
    )
    assert drift.t_overlap[0] == 100.0
    assert drift.t_overlap[0] > drift.t_overlap[2] and drift.match_cos[1] > drift.match_cos[2]
    assert set(drift.groups) == {"first", "rest"} and len(drift.groups["first"]) == 3


# ---------------------------------------------------------------------------------------------------------- world data


def test_world_shape_questions_have_exact_answers():
    from mmlens.concepts.world_data import shape_question_items
    from mmlens.world import World, WorldConfig

    world = World(WorldConfig(), seed=0)
    items = shape_question_items(world, 40)
    circles = shape_question_items(world, 40, shape="circle")
    assert items and circles and all(it.answer == "circle" for it in circles)
    scenes = world.sample_scenes(40, "test")
    for it in items:
        scene = scenes[it.scene_index]
        colour = it.prompt.split()[4]
        assert colour == it.attributes["colour"] and scene.count_colour(colour) == 1
        assert next(o.shape for o in scene.objects if o.colour == colour) == it.answer
