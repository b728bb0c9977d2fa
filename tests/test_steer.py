"""mmlens.steer: application on every tiny generative architecture (exactness, positions, batching, KV cache,
clean-up), vectors and their files, baselines, evaluation, selection score, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmlens.errors import InputError
from mmlens.models import CausalLanguageModel, capture_outputs, tiny_model
from mmlens.models.tiny import TINY_ARCHITECTURES
from mmlens.steer import (
    FlipTarget,
    LogitBias,
    SteerConfig,
    Steering,
    SteeringVector,
    SteerPositions,
    VectorKind,
    VQAExample,
    choose_alpha,
    coarse_vector,
    concept_vectors,
    evaluate_vectors,
    finetuning_shift_vectors,
    generate_answers,
    load_vectors,
    logit_bias,
    logit_bias_direction,
    random_like,
    save_vectors,
    selection_score,
    shuffled_vector,
    steer,
    steering_effect,
    vector_from_labels,
)

GENERATIVE = [a for a in TINY_ARCHITECTURES if a not in ("clip", "siglip", "vision-text-dual-encoder")]
PROMPTS = ["what colour is it ?", "a", "is there a red circle in the image ?"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_MODELS: dict[str, object] = {}


def _model(arch: str):
    if arch not in _MODELS:  # built once per session: the tests below only read the weights
        _MODELS[arch] = tiny_model(arch)
    return _MODELS[arch]


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8")) for _ in range(n)]


def _generate(model, prompts, **kwargs) -> list[str]:
    kwargs.setdefault("max_new_tokens", 4)
    kwargs.setdefault("min_new_tokens", 4)  # decoding steps must exist for the position rules
    if isinstance(model, CausalLanguageModel):
        return model.generate(prompts, **kwargs)
    return model.generate(_images(len(prompts)), prompts, **kwargs)


def _prepare(model, prompts):
    return (
        model.prepare(prompts)
        if isinstance(model, CausalLanguageModel)
        else model.prepare(_images(len(prompts)), prompts)
    )


def _vector(model, layer: int = -1, scale: float = 8.0, seed: int = 0) -> SteeringVector:
    hidden = model.lm_head.weight.shape[1]
    gen = torch.Generator().manual_seed(seed)
    return SteeringVector(torch.randn(hidden, generator=gen) * scale, layer % model.num_layers, VectorKind.CUSTOM)


def _no_hooks_left(model) -> bool:
    modules = [model.base_model, *model.decoder_layers, model.lm_head]
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in modules)


# ------------------------------------------------------------------------------------------ application
@pytest.mark.parametrize("arch", GENERATIVE)
def test_alpha_zero_is_plain_generation_and_steering_changes_logits(arch):
    model = _model(arch)
    vec = _vector(model)
    plain = _generate(model, PROMPTS)
    with steer(model, vec, SteerConfig(alpha=0.0)):
        assert _generate(model, PROMPTS) == plain
    batch = _prepare(model, PROMPTS)
    with torch.no_grad():
        base_logits = model.forward(batch).logits
        with steer(model, vec, SteerConfig(alpha=0.0)):
            zero_logits = model.forward(batch).logits
        with steer(model, vec, SteerConfig(alpha=2.0)):
            steered_logits = model.forward(batch).logits
    assert torch.equal(base_logits, zero_logits)
    assert not torch.allclose(base_logits, steered_logits)
    assert _no_hooks_left(model)


@pytest.mark.parametrize("arch", GENERATIVE)
def test_batched_equals_unbatched_and_cached_equals_uncached(arch):
    model = _model(arch)
    vec = _vector(model, scale=4.0)
    for rule in (SteerPositions.ALL, SteerPositions.FROM_LAST_PROMPT, SteerPositions.TEXT_ONLY):
        config = SteerConfig(alpha=1.0, positions=rule)
        with steer(model, vec, config):
            batched = _generate(model, PROMPTS)
            alone = [_generate(model, [p])[0] for p in PROMPTS]
            uncached = _generate(model, PROMPTS, use_cache=False)
        assert batched == alone, rule
        assert batched == uncached, rule


@pytest.mark.parametrize("arch", GENERATIVE)
def test_position_rules_hit_the_right_positions_across_decoding_steps(arch):
    model = _model(arch)
    layer = model.num_layers - 1
    vec = _vector(model, layer)
    batch = _prepare(model, PROMPTS[:2])
    valid = batch["attention_mask"].bool()
    image = model.image_token_mask(batch)
    length = valid.shape[1]
    last = torch.zeros_like(valid)
    last[:, -1] = True  # left padding: every row's last prompt token is the last column
    expected_prefill = {
        SteerPositions.ALL: valid,
        SteerPositions.PROMPT_ONLY: valid,
        SteerPositions.GENERATED_ONLY: torch.zeros_like(valid),
        SteerPositions.FROM_LAST_PROMPT: last,
        SteerPositions.TEXT_ONLY: valid & ~image,
    }
    expected_step = {SteerPositions.PROMPT_ONLY: False}
    for rule, prefill in expected_prefill.items():
        with steer(model, vec, SteerConfig(1.0, rule), record=True) as trace:
            _generate(model, PROMPTS[:2], max_new_tokens=3, min_new_tokens=3)
        masks = trace.masks(layer)
        assert len(masks) == 3  # prefill + 2 cached decoding steps
        assert masks[0].shape == (2, length)
        assert torch.equal(masks[0], prefill), rule
        for step in masks[1:]:
            assert step.shape == (2, 1)
            assert bool(step.all()) == expected_step.get(rule, True), rule
    if image.any():
        assert not torch.equal(expected_prefill[SteerPositions.TEXT_ONLY], valid)  # image tokens really skipped


@pytest.mark.parametrize("arch", ["llava", "llama"])
def test_hook_adds_alpha_times_vector_exactly_where_the_rule_says(arch):
    model = _model(arch)
    layer = 0
    vec = _vector(model, layer, scale=1.0)
    batch = _prepare(model, PROMPTS)
    with torch.no_grad(), capture_outputs({"h": model.decoder_layers[layer]}) as plain:
        model.forward(batch)
    for rule in SteerPositions:
        # registered after the steering hook, the capture sees the steered output
        with (
            torch.no_grad(),
            steer(model, vec, SteerConfig(2.5, rule), record=True) as trace,
            capture_outputs({"h": model.decoder_layers[layer]}) as steered,
        ):
            model.forward(batch)
        mask = trace.masks(layer)[0]
        diff = steered["h"][0] - plain["h"][0]
        expected = mask.unsqueeze(-1).float() * 2.5 * vec.vector
        assert torch.allclose(diff, expected, atol=1e-5), rule


def test_uncached_generation_tracks_positions_of_generated_tokens():
    model = _model("llava")
    vec = _vector(model, scale=4.0)
    for rule in (SteerPositions.GENERATED_ONLY, SteerPositions.PROMPT_ONLY):
        with steer(model, vec, SteerConfig(1.0, rule), record=True) as trace:
            _generate(model, PROMPTS[:2], max_new_tokens=3, min_new_tokens=3, use_cache=False)
        masks = trace.masks(vec.layer)
        prompt_len = masks[0].shape[1]
        assert [m.shape[1] for m in masks] == [prompt_len, prompt_len + 1, prompt_len + 2]
        tails = [m[:, prompt_len:] for m in masks[1:]]
        if rule is SteerPositions.GENERATED_ONLY:
            assert not masks[0].any() and all(t.all() for t in tails)
        else:
            assert all(not t.any() for t in tails)


def test_generated_only_never_changes_the_first_answer_token():
    model = _model("llama")
    vec = _vector(model, scale=50.0)
    batch = model.prepare(PROMPTS)
    with torch.no_grad():
        plain = model.forward(batch).logits[:, -1]
        with steer(model, vec, SteerConfig(1.0, SteerPositions.GENERATED_ONLY)):
            generated_only = model.forward(batch).logits[:, -1]
        with steer(model, vec, SteerConfig(1.0, SteerPositions.FROM_LAST_PROMPT)):
            from_last_prompt = model.forward(batch).logits[:, -1]
    # the prompt's forward pass (which predicts the first answer token) is untouched by GENERATED_ONLY
    assert torch.equal(plain, generated_only)
    assert not torch.allclose(plain, from_last_prompt)


def test_hooks_are_removed_on_error_and_vectors_on_one_layer_add_up():
    model = _model("llava")
    v1, v2 = _vector(model, 0, seed=1), _vector(model, 0, seed=2)
    with pytest.raises(RuntimeError, match="boom"), steer(model, [v1, v2], SteerConfig(1.0)):
        raise RuntimeError("boom")
    assert _no_hooks_left(model)
    with pytest.raises(RuntimeError, match="boom"), logit_bias(model, v1):
        raise RuntimeError("boom")
    assert _no_hooks_left(model)
    batch = _prepare(model, PROMPTS)
    summed = SteeringVector(v1.vector + v2.vector, 0, VectorKind.CUSTOM)
    with torch.no_grad():
        with steer(model, [v1, v2]):
            both = model.forward(batch).logits
        with steer(model, summed):
            once = model.forward(batch).logits
    assert torch.allclose(both, once, atol=1e-5)


def test_steering_errors_are_clear():
    model = _model("llava")
    hidden = model.lm_head.weight.shape[1]
    with (
        pytest.raises(InputError, match="hidden size"),
        steer(model, SteeringVector(torch.ones(hidden + 1), 0, VectorKind.CUSTOM)),
    ):
        pass
    with (
        pytest.raises(InputError, match="decoder layers"),
        steer(model, SteeringVector(torch.ones(hidden), 99, VectorKind.CUSTOM)),
    ):
        pass
    with pytest.raises(InputError, match="position rule"):
        SteerConfig(1.0, "sideways")
    with pytest.raises(InputError, match="NaN"):
        SteeringVector(torch.tensor([1.0, float("nan")]), 0, VectorKind.CUSTOM)
    with pytest.raises(InputError, match="no steering vectors"), steer(model, []):
        pass
    assert _no_hooks_left(model)


def test_logit_bias_adds_the_unembedded_vector_to_every_logit():
    model = _model("llama")
    vec = coarse_vector(torch.randn(5, 32), torch.randn(6, 32) + 1.0, layer=1)
    bias = logit_bias_direction(model, vec)
    with torch.no_grad():
        norm, head = model.final_norm, model.lm_head
        expected = (
            head(norm((vec.reference + vec.vector)[None, None]))[0, 0] - head(norm(vec.reference[None, None]))[0, 0]
        )
    assert torch.allclose(bias, expected, atol=1e-5)
    batch = model.prepare(PROMPTS)
    with torch.no_grad():
        plain = model.forward(batch).logits
        with logit_bias(model, vec, 3.0):
            biased = model.forward(batch).logits
    assert torch.allclose(biased - plain, 3.0 * bias.expand_as(plain), atol=1e-4)


# ---------------------------------------------------------------------------------------------- vectors
def test_coarse_concept_shift_and_control_vectors():
    gen = torch.Generator().manual_seed(0)
    src, tgt = torch.randn(10, 8, generator=gen), torch.randn(12, 8, generator=gen) + 2.0
    vec = coarse_vector(src, tgt, layer=1, source="yes", target="no")
    assert torch.allclose(vec.vector, tgt.mean(0) - src.mean(0))
    assert vec.name == "coarse:yes->no@L1" and vec.info == {"n_source": 10, "n_target": 12}
    acts = torch.cat([src, tgt])
    labels = ["yes"] * 10 + ["no"] * 12
    assert torch.allclose(vector_from_labels(acts, labels, "yes", "no", layer=1).vector, vec.vector)
    shuffled = shuffled_vector(acts, labels, "yes", "no", layer=1, seed=0)
    assert shuffled.kind is VectorKind.SHUFFLED and shuffled.norm < vec.norm
    rnd = random_like(vec, seed=3)
    assert rnd.kind is VectorKind.RANDOM and rnd.norm == pytest.approx(vec.norm, rel=1e-5)
    assert abs(float(torch.cosine_similarity(rnd.vector, vec.vector, dim=0))) < 0.9
    # concept differences: "i->j" is u_j - u_i (the reference code stores the opposite sign under that name)
    concepts = torch.eye(3, 8)
    pairs = concept_vectors(concepts, layer=0, names=["red", "blue", "green"])
    assert len(pairs) == 6
    red_to_blue = next(p for p in pairs if p.source == "red" and p.target == "blue")
    assert torch.equal(red_to_blue.vector, concepts[1] - concepts[0])
    # shift vectors: global mean of b - a, and per concept over the samples assigned to it
    a = torch.randn(20, 8, generator=gen)
    b = a + torch.cat([torch.full((10, 8), 1.0), torch.full((10, 8), -2.0)])
    shifts = finetuning_shift_vectors(a, b, layer=2, assignments=[0] * 10 + [1] * 10)
    assert torch.allclose(shifts[0].vector, torch.full((8,), -0.5), atol=1e-6)
    assert torch.allclose(shifts[1].vector, torch.ones(8)) and torch.allclose(shifts[2].vector, torch.full((8,), -2.0))
    with pytest.raises(InputError, match="empty"):
        coarse_vector(torch.zeros(0, 8), tgt, layer=0)
    with pytest.raises(InputError, match="NaN"):
        coarse_vector(torch.full((2, 8), float("nan")), tgt, layer=0)
    with pytest.raises(InputError, match="no activation is labelled"):
        vector_from_labels(acts, labels, "yes", "maybe", layer=0)
    with pytest.raises(InputError, match="same samples"):
        finetuning_shift_vectors(a, b[:5], layer=0)


def test_vectors_round_trip_through_safetensors_with_metadata(tmp_path):
    vec = coarse_vector(
        torch.randn(4, 8), torch.randn(4, 8), layer=3, source="yes", target="no", model="zoo:x", position="last_prompt"
    )
    rnd = random_like(vec)
    path = save_vectors(tmp_path / "v.safetensors", [vec, rnd])
    loaded = load_vectors(path)
    assert [v.name for v in loaded] == [vec.name, rnd.name]
    assert torch.equal(loaded[0].vector, vec.vector) and torch.equal(loaded[0].reference, vec.reference)
    assert loaded[0].model == "zoo:x" and loaded[0].position == "last_prompt" and loaded[0].layer == 3
    assert loaded[1].kind is VectorKind.RANDOM and loaded[1].info["matched"] == vec.name
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert "mmlens.steer.vectors" in f.metadata()  # readable without mmlens
    with pytest.raises(InputError, match="not found"):
        load_vectors(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a readable"):
        load_vectors(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(InputError, match="no mmlens steering metadata"):
        load_vectors(tmp_path / "foreign.safetensors")


# ------------------------------------------------------------------------------------------- evaluation
def _ex(question: str, answer: str, answer_type: str) -> VQAExample:
    return VQAExample(None, question, answer, answer_type)


def test_steering_effect_counts_flips_and_other_type_accuracy():
    examples = [
        _ex("q1", "yes", "yes/no"),
        _ex("q2", "no", "yes/no"),
        _ex("q3", "yes", "yes/no"),
        _ex("q4", "two", "number"),
        _ex("q5", "red", "other"),
    ]
    baseline = ["yes", "no", "yes", "two", "red"]
    steered = ["no", "no", "yes", "two", "no"]
    eff = steering_effect(examples, baseline, steered, FlipTarget("yes", "no", "yes/no"))
    assert eff["flip_rate"] == 0.5 and eff["n_source"] == 2
    assert eff["other_types_acc_drop"] == pytest.approx(0.5)  # 2/2 correct -> 1/2
    assert eff["changed_rate"] == pytest.approx(0.4)
    assert eff["target_count_delta"] == 1 and eff["source_count_delta"] == -1
    with pytest.raises(InputError):
        steering_effect(examples, baseline[:2], steered, FlipTarget("yes", "no"))
    rows = [
        {"alpha": 1.0, "steer": {"flip_rate": 0.5, "other_types_acc_drop": 0.0}},
        {"alpha": 2.0, "steer": {"flip_rate": 0.9, "other_types_acc_drop": 0.01}},
        {"alpha": 4.0, "steer": {"flip_rate": 1.0, "other_types_acc_drop": 0.3}},
    ]
    assert choose_alpha(rows, max_drop=0.02) == 2.0
    assert choose_alpha(rows[2:], max_drop=0.02) == 4.0  # none qualifies: the smallest alpha


def test_selection_score_prefers_a_clean_single_target():
    baseline = ["red"] * 5 + ["blue"] * 5 + ["green"] * 5
    clean = ["yellow"] * 9 + ["blue"] * 3 + ["green"] * 3  # yellow +9, others fall
    mixed = ["yellow"] * 4 + ["purple"] * 4 + ["blue"] * 4 + ["green"] * 3
    nothing = list(baseline)
    s_clean, s_mixed = selection_score(baseline, clean), selection_score(baseline, mixed)
    # top deltas: yellow +9 | blue -2, green -2, red -5; falling answers count as 0 (issue 17: the source's own
    # drop must not drive the score): score = min(primary) - max(secondary) = 9 - 0
    assert s_clean.primary == ("yellow",) and s_clean.score == pytest.approx(9.0)
    assert set(s_mixed.primary) == {"yellow", "purple"} and s_mixed.score < s_clean.score
    assert selection_score(baseline, nothing).score == 0.0


@pytest.mark.parametrize("arch", ["llava", "llama"])
def test_evaluate_vectors_runs_the_baselines_on_vlm_and_text_only(arch):
    model = _model(arch)
    images = _images(6) if arch == "llava" else [None] * 6
    examples = [
        VQAExample(im, q, a, t)
        for im, (q, a, t) in zip(
            images,
            [
                ("is there a star ?", "yes", "yes/no"),
                ("is there a ring ?", "no", "yes/no"),
                ("how many stars ?", "two", "number"),
                ("what colour is it ?", "red", "other"),
                ("is there a circle ?", "yes", "yes/no"),
                ("how many rings ?", "one", "number"),
            ],
        )
    ]
    plain = generate_answers(model, examples, max_new_tokens=2)
    source = plain[0]
    vec = _vector(model, scale=6.0)
    result = evaluate_vectors(
        model, examples, [vec], FlipTarget(source, "no", "yes/no"), alphas=(0.0, 1.0), max_new_tokens=2, progress=False
    )
    row0 = result["vectors"][0]["sweep"][0]
    assert row0["alpha"] == 0.0 and row0["steer"]["changed_rate"] == 0.0  # alpha 0 = the plain model
    assert set(row0) >= {"steer", "random", "logit_bias"}
    assert result["examples"] and result["examples"][0]["before"] == source


def test_interventions_describe_themselves():
    model = _model("llava")
    vec = _vector(model)
    assert Steering((vec,), SteerConfig(2.0)).describe()["alpha"] == 2.0
    assert LogitBias(vec, 3.0).describe()["kind"] == "logit_bias"


# ------------------------------------------------------------------------ source-concept condition, saved dictionaries


@pytest.mark.parametrize("arch", ["llava", "qwen2-vl", "llama"])
def test_source_concept_condition_steers_only_the_samples_nearest_the_source(arch):
    model = _model(arch)
    layer = 0
    batch = _prepare(model, PROMPTS[:2])
    with torch.no_grad(), capture_outputs({"h": model.decoder_layers[layer]}) as acts:
        plain = model.forward(batch).logits
    last = acts["h"][0][:, -1]  # left padding: the last prompt position of both rows
    direction = torch.randn(last.shape[1], generator=torch.Generator().manual_seed(0)) * 8
    # row 0 sits exactly on the source concept, row 1 exactly on the contrast
    vec = SteeringVector(direction, layer, VectorKind.COARSE, reference=last[0], contrasts=last[1:2])
    conditional = SteerConfig(1.0, condition="source_concept")
    with torch.no_grad():
        with steer(model, vec, conditional):
            gated = model.forward(batch).logits
        with logit_bias(model, vec, 1.0, condition=conditional.condition):
            gated_bias = model.forward(batch).logits
    assert not torch.allclose(gated[0], plain[0]) and torch.allclose(gated[1], plain[1])
    assert not torch.allclose(gated_bias[0], plain[0]) and torch.allclose(gated_bias[1], plain[1])
    # the decision holds for the generated tokens of each row, with and without the KV cache
    with steer(model, vec, conditional):
        cached = _generate(model, PROMPTS[:2])
        uncached = _generate(model, PROMPTS[:2], use_cache=False)
    assert cached == uncached
    assert _generate(model, PROMPTS[1:2]) == cached[1:]  # row 1 is not steered: its plain answer
    with (
        pytest.raises(InputError, match="contrasts"),
        steer(model, SteeringVector(direction, layer, VectorKind.CUSTOM), conditional),
    ):
        pass
    assert _no_hooks_left(model)


def test_concept_vectors_from_a_saved_concepts_dictionary(tmp_path):
    from mmlens.concepts import ConceptDictionary, DecomposerConfig

    gen = torch.Generator().manual_seed(0)
    samples = torch.cat([torch.randn(20, 16, generator=gen) + 4 * torch.eye(16)[c] for c in range(3)])
    dictionary = ConceptDictionary(DecomposerConfig(kind="kmeans", n_concepts=3)).fit(samples.numpy())
    path = dictionary.save(tmp_path / "dict.safetensors")
    vectors = concept_vectors(path, layer=2)
    centres = torch.from_numpy(dictionary.components_).float()
    assert len(vectors) == 6 and all(v.layer == 2 for v in vectors)
    first = vectors[0]
    assert torch.allclose(first.vector, centres[1] - centres[0]) and first.contrasts.shape == (1, 16)
