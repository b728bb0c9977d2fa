"""mmlens.models on tiny random models of every supported transformers class (offline, CPU, seconds)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from mmlens.errors import InputError, ModelLoadError
from mmlens.models import (
    IGNORE_INDEX,
    CausalLanguageModel,
    ContrastiveModel,
    VisionLanguageModel,
    load_model,
    make_llava_processor,
    tiny_model,
    train_word_tokenizer,
)
from mmlens.models.tiny import CONTRASTIVE_ARCHITECTURES, TINY_CORPUS, VISION_LANGUAGE_ARCHITECTURES

# PaliGemma's processor builds numpy labels from tensors (a transformers-internal DeprecationWarning).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

GENERATIVE_ARCHITECTURES = (*VISION_LANGUAGE_ARCHITECTURES, "llama")
PROMPTS = ["what colour is the shape in the middle of the image?", "describe it."]


def _images(n: int = 2) -> list[Image.Image]:
    # Different sizes and aspect ratios exercise resizing, tiling (Idefics3) and anyres (LLaVA-NeXT).
    sizes = [(40, 30), (24, 56), (32, 32), (64, 20)]
    colours = ["red", "blue", "green", "yellow"]
    return [Image.new("RGB", sizes[i % 4], colours[i % 4]) for i in range(n)]


@pytest.fixture(scope="module", params=GENERATIVE_ARCHITECTURES)
def gen(request):
    return request.param, tiny_model(request.param)


@pytest.fixture(scope="module", params=CONTRASTIVE_ARCHITECTURES)
def con(request):
    return request.param, tiny_model(request.param)


def _prepare(model, prompts, images=None, answers=None):
    if isinstance(model, VisionLanguageModel):
        return model.prepare(images if images is not None else _images(len(prompts)), prompts, answers=answers)
    return model.prepare(prompts, answers=answers)


def _generate(model, prompts, images=None, **kw):
    if isinstance(model, VisionLanguageModel):
        return model.generate(images if images is not None else _images(len(prompts)), prompts, **kw)
    return model.generate(prompts, **kw)


# --------------------------------------------------------------------------------------------- tokenizers
def test_word_tokenizer_specials_decoding_and_template():
    tok = train_word_tokenizer(["The red square, on the LEFT.", "a blue circle"], extra_special_tokens=("<image>",))
    for name in ("pad", "bos", "eos", "unk"):
        assert getattr(tok, f"{name}_token") is not None
    ids = tok("the red <image><image> circle zebra.", add_special_tokens=False)["input_ids"]
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens == ["the", "red", "<image>", "<image>", "circle", "<unk>", "."]
    assert tok.decode(tok("the red square, on the left.")["input_ids"]) == "the red square, on the left."
    assert "##" not in tok.decode(ids)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a red square"}]}]
    with_prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    without = tok.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    assert with_prompt.startswith(tok.bos_token) and with_prompt.count("<image>") == 1
    assert with_prompt.rstrip().endswith("assistant :") and not without.rstrip().endswith("assistant :")


def test_word_tokenizer_rejects_empty_corpus():
    with pytest.raises(InputError):
        train_word_tokenizer([])


def test_make_llava_processor_matches_model():
    tok = train_word_tokenizer(TINY_CORPUS)
    proc = make_llava_processor(tok, image_size=32, patch_size=8)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=len(tok),
            pad_token_id=tok.pad_token_id,
        ),
        image_token_id=proc.image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    texts = [
        proc.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for p in PROMPTS
    ]
    batch = proc(images=_images(2), text=texts, padding=True, return_tensors="pt", add_special_tokens=False)
    assert ((batch["input_ids"] == proc.image_token_id).sum(1) == (32 // 8) ** 2).all()
    assert batch["pixel_values"].shape == (2, 3, 32, 32)  # resized, not cropped
    with torch.no_grad():
        assert model(**batch).logits.shape[:2] == batch["input_ids"].shape
        out = model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (2, batch["input_ids"].shape[1] + 3)


# ------------------------------------------------------------------------------------------ generative
def test_forward_shapes(gen):
    arch, model = gen
    batch = _prepare(model, PROMPTS)
    with torch.no_grad():
        logits = model.forward(batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(logits).all()
    assert (batch["attention_mask"][:, 0] == 0).any(), "prompts of different length must be left-padded"
    assert (batch["attention_mask"][:, -1] == 1).all()


def test_generate_left_padding_is_consistent(gen):
    arch, model = gen
    images = _images(2)
    batched = _generate(model, PROMPTS, images, max_new_tokens=4)
    alone = [_generate(model, [p], [im], max_new_tokens=4)[0] for p, im in zip(PROMPTS, images)]
    assert len(batched) == 2 and all(isinstance(t, str) for t in batched)
    assert batched == alone
    # Batching across generate calls (batch_size=1 -> two batches) must not change anything either.
    assert _generate(model, PROMPTS, images, max_new_tokens=4, batch_size=1) == batched


def test_generate_strips_prompt_and_specials(gen):
    arch, model = gen
    out = _generate(model, PROMPTS, max_new_tokens=3)
    tok = model.tokenizer
    for text in out:
        assert tok.bos_token not in text and tok.pad_token not in text
        assert "<image>" not in text and "assistant :" not in text
        assert len(text.split()) <= 3 * 3  # at most 3 new tokens (a <loc> token may decode to a few chars)


def test_layer_handles(gen):
    arch, model = gen
    text_config = model.config.get_text_config()
    assert isinstance(model.decoder_layers, torch.nn.ModuleList)
    assert len(model.decoder_layers) == text_config.num_hidden_layers
    assert isinstance(model.final_norm, torch.nn.Module)
    batch = _prepare(model, PROMPTS)
    with torch.no_grad():
        logits = model.forward(batch).logits
        hidden = torch.randn(1, text_config.hidden_size)
        assert model.lm_head(hidden).shape[-1] == logits.shape[-1]


def test_image_token_mask_marks_where_image_features_go(gen):
    arch, model = gen
    batch = _prepare(model, PROMPTS)
    mask = model.image_token_mask(batch)
    assert mask.shape == batch["input_ids"].shape and mask.dtype == torch.bool
    if isinstance(model, CausalLanguageModel):
        assert not mask.any()
        return
    assert (mask.sum(1) > 0).all()
    # The positions whose input embedding is not the token embedding are exactly the masked ones.
    captured = {}

    def grab(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"]

    handle = model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model.forward(batch)
    finally:
        handle.remove()
    with torch.no_grad():
        token_embeds = model.language_model.get_input_embeddings()(batch["input_ids"])
    replaced = ~torch.isclose(captured["embeds"], token_embeds).all(-1)
    assert torch.equal(replaced, mask)


def test_text_only_prompts_have_no_image_tokens(gen):
    arch, model = gen
    if arch == "paligemma":
        with pytest.raises(InputError):
            model.prepare(None, PROMPTS)
        return
    batch = model.prepare(None, PROMPTS) if isinstance(model, VisionLanguageModel) else model.prepare(PROMPTS)
    assert not model.image_token_mask(batch).any()
    with torch.no_grad():
        assert torch.isfinite(model.forward(batch).logits).all()


def test_prepare_with_answers_masks_everything_but_the_answer(gen):
    arch, model = gen
    answers = ["red", "a small purple circle above a square"]
    batch = _prepare(model, PROMPTS, answers=answers)
    labels, ids = batch["labels"], batch["input_ids"]
    assert labels.shape == ids.shape
    tok = model.tokenizer
    for row, answer in enumerate(answers):
        kept = labels[row][labels[row] != IGNORE_INDEX]
        assert tok.decode(kept, skip_special_tokens=True).strip() == answer
        assert kept[-1].item() == tok.eos_token_id
        # The answer is the tail of the row, and it is unmasked contiguously.
        n = len(kept)
        assert torch.equal(labels[row, -n:], ids[row, -n:])
        assert (labels[row, :-n] == IGNORE_INDEX).all()
    with torch.no_grad():
        loss = model.forward(batch).loss
    assert torch.isfinite(loss)


def test_prepare_rejects_mismatched_images(gen):
    arch, model = gen
    if not isinstance(model, VisionLanguageModel):
        pytest.skip("text-only")
    with pytest.raises(InputError):
        model.prepare(_images(3), PROMPTS)
    with pytest.raises(InputError):
        model.generate(_images(1), PROMPTS)


def test_image_token_count_mismatch_is_explained(gen):
    arch, model = gen
    if not isinstance(model, VisionLanguageModel):
        pytest.skip("text-only")
    batch = _prepare(model, PROMPTS)
    ids = batch["input_ids"].clone()
    first = model.image_token_mask(batch)[0].nonzero()[0, 0]
    ids[0, first] = model.tokenizer.convert_tokens_to_ids("red")  # one placeholder fewer than image features
    batch["input_ids"] = ids
    with pytest.raises(InputError, match="image-token count"):
        with torch.no_grad():
            model.forward(batch)


def test_save_and_load_round_trip(gen, tmp_path_factory):
    arch, model = gen
    path = tmp_path_factory.mktemp(arch)
    model.save_pretrained(path)
    loaded = load_model(str(path))
    assert type(loaded) is type(model)
    assert type(loaded.model) is type(model.model)
    batch = _prepare(model, PROMPTS)
    again = _prepare(loaded, PROMPTS)
    assert torch.equal(batch["input_ids"], again["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward(again).logits, model.forward(batch).logits)
    assert _generate(loaded, PROMPTS, max_new_tokens=3) == _generate(model, PROMPTS, max_new_tokens=3)


# ------------------------------------------------------------------------------------------- loading
def test_unknown_hub_id_offline_is_a_model_load_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache"):
        load_model("mmlens-test/definitely-not-a-model")


def test_missing_local_path_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError):
        load_model(str(tmp_path))  # exists, but has no config.json


def test_zoo_spec(monkeypatch, tmp_path):
    import mmlens.zoo.registry as registry  # the `zoo` model source (an entry point) resolves through it

    built = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(built)
    monkeypatch.setattr(registry, "is_built", lambda name: name == "tiny-llama")
    monkeypatch.setattr(registry, "model_dir", lambda name: tmp_path / name)
    assert isinstance(load_model("zoo:tiny-llama"), CausalLanguageModel)
    with pytest.raises(ModelLoadError, match="mmlens zoo build other"):
        load_model("zoo:other")


def test_expected_adapter_kind_is_checked_before_loading(tmp_path, monkeypatch):
    tiny_model("clip").save_pretrained(tmp_path / "clip")
    assert isinstance(load_model(tmp_path / "clip", expect=ContrastiveModel), ContrastiveModel)
    with pytest.raises(ModelLoadError, match="is not a vision-language model"):
        load_model(tmp_path / "clip", expect=VisionLanguageModel)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert isinstance(load_model("~/clip"), ContrastiveModel)  # a quoted "~" path is expanded


def test_unknown_tiny_architecture():
    with pytest.raises(ModelLoadError):
        tiny_model("gpt-17")


# ----------------------------------------------------------------------------------------- contrastive
TEXTS = ["a photo of a red square", "a blue circle on the right", "a green triangle", "two objects"]


def test_embeddings_are_normalised_and_batched(con):
    arch, model = con
    images = _images(4)
    img = model.embed_images(images)
    txt = model.embed_texts(TEXTS)
    assert img.shape[0] == 4 and txt.shape == img.shape
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(model.embed_images(images, batch_size=3), img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.embed_texts(TEXTS, batch_size=3), txt, atol=1e-5, rtol=1e-5)
    sim = model.similarity(images, TEXTS[:3])
    assert sim.shape == (4, 3) and (sim.abs() <= 1 + 1e-5).all()


def test_loss_matches_the_models_own_loss(con):
    arch, model = con
    images = _images(4)
    loss = model.contrastive_loss(images, TEXTS)
    assert torch.isfinite(loss) and loss.requires_grad
    pixel_values = model.image_inputs(images)["pixel_values"]
    with torch.no_grad():
        reference = model.model(pixel_values=pixel_values, **model.text_inputs(TEXTS), return_loss=True).loss
    torch.testing.assert_close(loss.detach(), reference, atol=1e-5, rtol=1e-5)
    per_pair = model.per_pair_loss(model.embed_images(images), model.embed_texts(TEXTS))
    assert per_pair.shape == (4,)
    torch.testing.assert_close(per_pair.mean(), reference, atol=1e-5, rtol=1e-5)


def test_clip_loss_equals_hand_computation():
    model = tiny_model("clip")
    images = _images(3)
    img, txt = model.embed_images(images), model.embed_texts(TEXTS[:3])
    scale = model.logit_scale.item()
    logits = scale * img @ txt.T
    expected = 0
    for i in range(3):  # symmetric InfoNCE written out: -log softmax of the matching pair, both directions
        expected += -(logits[i, i] - logits[i].logsumexp(0)) / 2
        expected += -(logits[i, i] - logits[:, i].logsumexp(0)) / 2
    torch.testing.assert_close(model.contrastive_loss(images, TEXTS[:3]).detach(), expected / 3)
    assert model.logit_bias is None


def test_siglip_has_bias_and_sigmoid_loss():
    from mmlens.models import LossKind

    model = tiny_model("siglip")
    assert model.loss_kind is LossKind.SIGMOID and model.logit_bias is not None


def test_parameter_groups(con):
    arch, model = con
    groups = model.parameter_groups(k=1)
    assert set(groups) == {"projection", "last_k_layers", "all"}
    assert all(groups.values())
    all_names = set(groups["all"])
    assert set(groups["projection"]) < all_names and set(groups["last_k_layers"]) < all_names
    assert not set(groups["projection"]) & set(groups["last_k_layers"])
    # Both towers contribute to the last layers.
    assert any("vision" in n for n in groups["last_k_layers"]) and any("text" in n for n in groups["last_k_layers"])
    with pytest.raises(ModelLoadError, match="lora"):
        model.parameter_group("lora")
    with pytest.raises(InputError):
        model.parameter_group("nonsense")


def test_lora_group_appears_after_attaching_peft():
    from peft import LoraConfig, get_peft_model

    model = tiny_model("clip")
    before = model.embed_texts(TEXTS)
    model.model = get_peft_model(model.model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    groups = model.parameter_groups()
    assert groups["lora"] and all("lora_" in n for n in groups["lora"])
    assert set(groups["lora"]) < set(groups["all"])
    assert groups["projection"] and groups["last_k_layers"]
    # LoRA B starts at zero: embeddings are unchanged, and the loss has gradients on the LoRA parameters.
    torch.testing.assert_close(model.embed_texts(TEXTS), before)
    model.contrastive_loss(_images(4), TEXTS).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in groups["lora"].values())


def test_contrastive_round_trip(con, tmp_path_factory):
    arch, model = con
    path = tmp_path_factory.mktemp(arch)
    model.save_pretrained(path)
    loaded = load_model(path)
    assert isinstance(loaded, ContrastiveModel)
    torch.testing.assert_close(loaded.embed_images(_images(2)), model.embed_images(_images(2)))
    torch.testing.assert_close(loaded.embed_texts(TEXTS), model.embed_texts(TEXTS))


def test_contrastive_rejects_mismatched_pairs(con):
    arch, model = con
    with pytest.raises(InputError):
        model.contrastive_loss(_images(3), TEXTS)


# ----------------------------------------------------------------------------------------------- hooks
def test_capture_and_steer_hooks_remove_themselves(gen):
    from mmlens.models import add_to_output, capture_outputs

    arch, model = gen
    batch = _prepare(model, PROMPTS)
    layers = model.decoder_layers
    hidden = model.config.get_text_config().hidden_size
    with torch.no_grad():
        base = model.forward(batch).logits
        with capture_outputs({"first": layers[0], "last": layers[-1]}) as acts:
            model.forward(batch)
        assert [a.shape for a in acts["last"]] == [(*batch["input_ids"].shape, hidden)]
        with add_to_output(layers[0], torch.ones(hidden), scale=5.0):
            steered = model.forward(batch).logits
        assert not torch.allclose(steered, base)
        # Only non-image positions steered: image positions' layer-0 output equals the unsteered one.
        keep = ~model.image_token_mask(batch)
        with (
            add_to_output(layers[0], torch.ones(hidden), scale=5.0, positions=keep),
            capture_outputs({"first": layers[0]}) as steered_acts,
        ):
            model.forward(batch)
        delta = (steered_acts["first"][0] - acts["first"][0]).abs().sum(-1)
        assert (delta[~keep] == 0).all() and (delta[keep] > 0).all()
        with pytest.raises(RuntimeError):
            with capture_outputs({"first": layers[0]}), add_to_output(layers[0], torch.ones(hidden)):
                raise RuntimeError("boom")
        assert not layers[0]._forward_hooks
        torch.testing.assert_close(model.forward(batch).logits, base)


def test_tiny_model_seed_controls_weights():
    a, b, c = tiny_model("llama", seed=0), tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    wa, wb, wc = (m.lm_head.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_causal_lm_without_chat_template_uses_plain_continuation():
    model = tiny_model("llama")
    model.tokenizer.chat_template = None
    batch = model.prepare(["the red square", "a blue circle on the"], answers=["left", "right"])
    for row, answer in enumerate(["left", "right"]):
        kept = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        assert model.tokenizer.decode(kept, skip_special_tokens=True).strip() == answer
    assert len(model.generate(["the red square", "a"], max_new_tokens=2)) == 2


def test_load_in_bfloat16_casts_pixel_values(tmp_path):
    tiny_model("llava").save_pretrained(tmp_path)
    model = load_model(tmp_path, torch_dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    batch = model.prepare(_images(2), PROMPTS)
    assert batch["pixel_values"].dtype == torch.float32  # cast happens when moved to the model
    with torch.no_grad():
        assert torch.isfinite(model.forward(batch).logits.float()).all()
    assert len(model.generate(_images(2), PROMPTS, max_new_tokens=2)) == 2


def test_several_images_per_prompt(gen):
    arch, model = gen
    if not isinstance(model, VisionLanguageModel):
        pytest.skip("text-only")
    a, b = _images(2)
    one = model.image_token_mask(model.prepare([a, b], PROMPTS)).sum(1)
    batch = model.prepare([[a, a], b], PROMPTS)
    two = model.image_token_mask(batch).sum(1)
    assert two[0] == 2 * one[0] and two[1] == one[1]
    with torch.no_grad():
        assert torch.isfinite(model.forward(batch).logits).all()


def test_hook_scope_removes_kept_hooks_also_when_a_later_registration_fails():
    from mmlens.models.hooks import hook_scope

    layer = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="second registration"):
        with hook_scope() as keep:
            keep(layer.register_forward_hook(lambda m, a, o: o * 0))
            assert len(layer._forward_hooks) == 1
            raise RuntimeError("second registration failed")
    assert len(layer._forward_hooks) == 0
