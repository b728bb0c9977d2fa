"""mmlens.align: the image mask, BDHS, baselines, TRL training and the hallucination metrics, on tiny models."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from mmlens.align.bdhs import (
    BDHSConfig,
    bdhs_pairs,
    continuation_batch,
    first_sentence,
    flip_yes_no,
    same_tokens,
    split_sentences,
)
from mmlens.align.data import (
    PreferencePair,
    SFTExample,
    load_preference_pairs,
    load_sft_jsonl,
    pairs_to_dataset,
    write_pairs,
)
from mmlens.align.eval import (
    WorldEvalConfig,
    answer_logprobs,
    chair_metrics,
    evaluate_on_world,
    image_dependence_gap,
    pope_metrics,
    vocabulary_parser,
)
from mmlens.align.masking import block_image_tokens, draw_hidden_image_tokens
from mmlens.errors import InputError
from mmlens.models.embed import HashingTextEmbedder
from mmlens.models.tiny import VISION_LANGUAGE_ARCHITECTURES, tiny_model
from mmlens.world import World, WorldConfig

PROMPTS = ["what colour is the shape ?", "is there a yellow star in the image ?"]


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_vlms():
    return {arch: tiny_model(arch) for arch in VISION_LANGUAGE_ARCHITECTURES}


# --------------------------------------------------------------------------------------------- the mask
@pytest.mark.parametrize("arch", VISION_LANGUAGE_ARCHITECTURES)
def test_blocking_nothing_reproduces_the_unmasked_model_exactly(tiny_vlms, arch):
    vlm = tiny_vlms[arch]
    batch = vlm.prepare(_images(2), PROMPTS)
    nothing = torch.zeros_like(vlm.image_token_mask(batch))
    with torch.no_grad():
        logits = vlm.forward(batch).logits
        tokens = vlm.model.generate(**batch, max_new_tokens=6, do_sample=False)
        with block_image_tokens(vlm.decoder_layers, nothing):
            logits_0 = vlm.forward(batch).logits
            tokens_0 = vlm.model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert torch.equal(logits, logits_0)
    assert torch.equal(tokens, tokens_0)


@pytest.mark.parametrize("arch", VISION_LANGUAGE_ARCHITECTURES)
def test_blocking_every_image_token_makes_text_blind_to_the_image(tiny_vlms, arch):
    """100% blocked: text positions and every generated token are the same whatever the image is."""
    vlm = tiny_vlms[arch]
    a, b = vlm.prepare(_images(2, 0), PROMPTS), vlm.prepare(_images(2, 1), PROMPTS)
    image_mask = vlm.image_token_mask(a)
    assert torch.equal(image_mask, vlm.image_token_mask(b)) and image_mask.any()
    text = a["attention_mask"].bool() & ~image_mask
    with torch.no_grad():
        open_a, open_b = vlm.forward(a).logits, vlm.forward(b).logits
        with block_image_tokens(vlm.decoder_layers, image_mask):
            blind_a, blind_b = vlm.forward(a).logits, vlm.forward(b).logits
            gen_a = vlm.model.generate(
                **a, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
            gen_b = vlm.model.generate(
                **b, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
    assert (open_a - open_b)[text].abs().max() > 1e-4  # the image matters without the mask
    assert torch.allclose(blind_a[text], blind_b[text], atol=1e-5)
    assert torch.equal(gen_a.sequences, gen_b.sequences)
    for la, lb in zip(gen_a.logits, gen_b.logits):
        assert torch.allclose(la, lb, atol=1e-5)


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_masked_logits_equal_the_decoder_without_the_hidden_tokens(tiny_vlms, fraction):
    """LLaVA: hiding image tokens == running the decoder on the remaining positions only (hidden keys removed),
    at their original position ids; compared on every kept position."""
    vlm = tiny_vlms["llava"]
    batch = vlm.prepare(_images(1), PROMPTS[:1])
    image_mask = vlm.image_token_mask(batch)[0]
    cols = image_mask.nonzero().flatten()
    hidden = torch.zeros_like(image_mask)
    hidden[cols[: int(round(fraction * len(cols)))]] = True
    embeds = []
    grab = vlm.language_model.register_forward_pre_hook(
        lambda m, a, k: embeds.append(k["inputs_embeds"]), with_kwargs=True
    )
    try:
        with torch.no_grad(), block_image_tokens(vlm.decoder_layers, hidden.unsqueeze(0)):
            masked = vlm.forward(batch).logits[0]
    finally:
        grab.remove()
    keep = ~hidden
    with torch.no_grad():
        out = vlm.language_model(
            inputs_embeds=embeds[0][:, keep], position_ids=torch.arange(len(keep))[keep].unsqueeze(0)
        ).last_hidden_state
        reference = vlm.lm_head(out)[0]
    assert torch.allclose(masked[keep], reference, atol=1e-5)


def test_blocking_works_when_sdpa_gets_no_mask(tiny_vlms):
    """One unpadded prompt: SDPA layers receive attention_mask=None (implicit causal), prefill and decoding."""
    vlm = tiny_vlms["llava"]
    outs = []
    for image in _images(2):
        batch = vlm.prepare([image], PROMPTS[:1])
        with torch.no_grad(), block_image_tokens(vlm.decoder_layers, vlm.image_token_mask(batch)):
            outs.append(
                vlm.model.generate(
                    **batch, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
                )
            )
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(outs[0].logits, outs[1].logits))


def test_mask_keeps_native_positions(tiny_vlms):
    vlm = tiny_vlms["llava"]
    batch = vlm.prepare(_images(2), PROMPTS)
    seen = []

    def grab(module, args, kwargs):
        seen.append([t.clone() for t in kwargs["position_embeddings"]])

    handle = vlm.decoder_layers[0].self_attn.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            vlm.forward(batch)
            with block_image_tokens(vlm.decoder_layers, vlm.image_token_mask(batch)):
                vlm.forward(batch)
    finally:
        handle.remove()
    assert all(torch.equal(x, y) for x, y in zip(seen[0], seen[1]))
    assert not vlm.decoder_layers[0].self_attn._forward_pre_hooks  # the context removed its hooks


def test_draw_hidden_tokens_shares_one_mask_per_group_and_counts_visible():
    image_mask = torch.zeros(4, 10, dtype=torch.bool)
    image_mask[:, 2:8] = True
    rng = np.random.default_rng(0)
    hidden = draw_hidden_image_tokens(image_mask, [0, 0, 1, 1], rho=0.5, visible_tokens=2, rng=rng)
    assert torch.equal(hidden[0], hidden[1]) and torch.equal(hidden[2], hidden[3])
    assert ((image_mask & ~hidden).sum(1) == 2).all() and not (hidden & ~image_mask).any()
    assert draw_hidden_image_tokens(image_mask, None, rho=1.0, visible_tokens=None, rng=rng).equal(image_mask)
    assert not draw_hidden_image_tokens(image_mask, None, rho=0.0, visible_tokens=None, rng=rng).any()
    with pytest.raises(InputError):
        draw_hidden_image_tokens(image_mask, None, rho=1.5, visible_tokens=None, rng=rng)


# ------------------------------------------------------------------------------------------------ text
def test_sentences_yes_no_and_stops():
    assert split_sentences("A cat sits. It is e.g. red. Pi is 3.14 today!") == [
        "A cat sits.",
        "It is e.g. red.",
        "Pi is 3.14 today!",
    ]
    assert split_sentences("a red circle and a star") == ["a red circle and a star"]
    assert flip_yes_no("Yes, there is.") == "No, there is."
    assert flip_yes_no("  no") == "  yes"
    assert flip_yes_no("Not really.") is None and flip_yes_no("Nobody") is None
    assert flip_yes_no("Not really.", word_boundary=False) == "Yest really."
    assert first_sentence("a red star. then more") == "a red star."
    assert split_sentences("") == [] and split_sentences("  \n ") == []
    # a text that ends on an abbreviation keeps it in its last sentence; single letters ("J.") do not cut either
    assert split_sentences("It is red. Ask Dr.") == ["It is red.", "Ask Dr."]
    assert split_sentences("J. Smith drew it. Done") == ["J. Smith drew it.", "Done"]


@pytest.mark.parametrize("unit", ["word", "char"])
def test_pivot_cuts_are_random_prefixes_and_whole_only_when_allowed(unit):
    """BDHS cuts a chosen sentence at a random word or character: every cut is a prefix, the whole sentence only
    with keep_whole, and every cut point is drawn."""
    from mmlens.align.bdhs import _cut
    from mmlens.align.settings import PivotUnit

    sentence = "a red star sits left"
    pieces = sentence.split() if unit == "word" else list(sentence)
    join = " ".join if unit == "word" else "".join
    prefixes = [join(pieces[:j]) for j in range(len(pieces) + 1)]
    rng = np.random.default_rng(0)
    for keep_whole in (False, True):
        cuts = {_cut(sentence, PivotUnit(unit), keep_whole, rng, tok=None) for _ in range(400)}
        assert cuts == set(prefixes if keep_whole else prefixes[:-1])


# ------------------------------------------------------------------------------------------------ BDHS
def _examples(n: int = 4) -> list[SFTExample]:
    answers = ["yes", "a red square on the left. no dog.", "no", "the shape is red."]
    prompts = ["is there a star ?", "describe the image .", "is there a dog ?", "what colour is the shape ?"]
    return [
        SFTExample(im, prompts[i % 4], answers[i % 4], frozenset({"square"}), str(i)) for i, im in enumerate(_images(n))
    ]


@pytest.mark.parametrize("arch", VISION_LANGUAGE_ARCHITECTURES)
def test_bdhs_runs_on_every_architecture(tiny_vlms, arch, tmp_path):
    vlm = tiny_vlms[arch]
    examples = _examples()
    config = BDHSConfig(rho=0.9, max_tries=3, max_new_tokens=6, eps_s=0.999)
    pairs, stats = bdhs_pairs(vlm, examples, config, embedder=HashingTextEmbedder(), progress=False)
    assert sum(stats.accepted_by_try) == len(examples) == stats.n_pairs + stats.n_dropped
    assert len(stats.accepted_by_try) == 3
    for p in pairs:
        assert p.rejected.strip() and p.rejected != p.chosen and p.meta["try"] in (1, 2, 3)
    if arch == "llava" and pairs:
        path = write_pairs(pairs, tmp_path / "pairs", extra_files={"stats.json": stats.to_dict()})
        back = load_preference_pairs(tmp_path / "pairs")
        assert [(p.prompt, p.chosen, p.rejected) for p in back] == [(p.prompt, p.chosen, p.rejected) for p in pairs]
        assert json.loads(path.read_text().splitlines()[0])["images"][0].startswith("images/")
        from datasets import load_from_disk

        ds = load_from_disk(str(tmp_path / "pairs" / "dataset"))
        assert set(ds.column_names) >= {"images", "prompt", "chosen", "rejected"} and len(ds) == len(pairs)


def test_continuation_batch_appends_the_partial_answer(tiny_vlms):
    vlm = tiny_vlms["llava"]
    images = _images(2)
    batch = continuation_batch(vlm, images, PROMPTS, ["the shape", ""])
    base = vlm.prepare(images, PROMPTS)
    tok = vlm.tokenizer
    row0 = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    base0 = base["input_ids"][0][base["attention_mask"][0].bool()].tolist()
    assert row0 == base0 + tok("the shape", add_special_tokens=False)["input_ids"]
    row1 = batch["input_ids"][1][batch["attention_mask"][1].bool()].tolist()
    assert row1 == base["input_ids"][1][base["attention_mask"][1].bool()].tolist()


def test_bdhs_with_the_full_image_visible_and_no_flip_copies_then_retries(tiny_vlms):
    """Guided tries that keep the whole sentence cannot differ from it; the filter must send them to the next
    try, and the unguided last try is accepted regardless."""
    vlm = tiny_vlms["llava"]
    examples = _examples(2)
    config = BDHSConfig(rho=0.0, flip_probability=0.0, max_tries=2, max_new_tokens=4, eps_s=-1.0)
    _, stats = bdhs_pairs(vlm, examples, config, embedder=HashingTextEmbedder(), progress=False)
    assert stats.accepted_by_try == [0, 2]


def test_bdhs_input_errors(tiny_vlms):
    with pytest.raises(InputError):
        bdhs_pairs(tiny_vlms["llava"], [], embedder=HashingTextEmbedder())
    with pytest.raises(InputError):
        BDHSConfig(rho=2.0)
    with pytest.raises(InputError):
        bdhs_pairs(tiny_vlms["llava"], [SFTExample(_images(1)[0], "q", " ")], embedder=HashingTextEmbedder())


def test_load_sft_jsonl_errors(tmp_path):
    _images(1)[0].save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    good = tmp_path / "sft.jsonl"
    good.write_text(json.dumps({"image": "a.png", "prompt": "q ?", "answer": "yes", "objects": ["star"]}) + "\n")
    assert load_sft_jsonl(good)[0].objects == frozenset({"star"})
    for name, line in [
        ("missing.jsonl", {"image": "nope.png", "prompt": "q", "answer": "a"}),
        ("corrupt.jsonl", {"image": "bad.png", "prompt": "q", "answer": "a"}),
        ("noanswer.jsonl", {"image": "a.png", "prompt": "q"}),
    ]:
        (tmp_path / name).write_text(json.dumps(line) + "\n")
        with pytest.raises(InputError):
            load_sft_jsonl(tmp_path / name)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(InputError):
        load_sft_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(InputError):
        load_sft_jsonl(tmp_path / "absent.jsonl")


def test_a_world_export_serves_as_sft_pope_and_chair_data(tiny_vlms, tmp_path):
    """`mmlens world export` writes the data the README's align example feeds to bdhs/dpo (--data) and eval
    (--pope, --chair): per record its description and yes/no presence turns, its POPE probes, its objects."""
    from mmlens.align.eval import DESCRIBE_PROMPT, evaluate_files
    from mmlens.align.world_data import YES_NO_TEMPLATES
    from mmlens.world.export import export_world, read_jsonl

    folder = export_world(tmp_path / "w", World(WorldConfig(), seed=0), n=3, split="val")
    data = folder / "data.jsonl"
    records = [rec for _, rec in read_jsonl(data)]
    examples = load_sft_jsonl(data)
    expected = []
    for rec in records:
        expected.append((DESCRIBE_PROMPT, rec["caption"], frozenset(rec["objects"])))
        expected += [
            (q["question"], q["answer"], frozenset(rec["objects"]))
            for q in rec["vqa"]
            if q["template"] in YES_NO_TEMPLATES
        ]
    assert [(e.prompt, e.answer, e.objects) for e in examples] == expected
    assert any(e.answer in ("yes", "no") for e in examples) and len({e.example_id for e in examples}) == len(examples)
    assert examples[0].image.size == (32, 32)

    metrics = evaluate_files(tiny_vlms["llava"], pope=str(data), chair=str(data), max_new_tokens=3)
    for kind in ("random", "popular", "adversarial"):
        assert metrics[f"pope_{kind}_n"] == sum(p["kind"] == kind for rec in records for p in rec["pope"])
    assert "chair_i" in metrics and "image_gap" in metrics  # the caption is the reference description

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**records[0], "image": "w/" + records[0]["image"], "pope": [{"question": "q"}]}) + "\n")
    with pytest.raises(InputError, match="label"):
        evaluate_files(tiny_vlms["llava"], pope=str(bad))
    bad.write_text(json.dumps({**records[0], "image": "w/" + records[0]["image"], "objects": "star"}) + "\n")
    with pytest.raises(InputError, match="objects"):
        load_sft_jsonl(bad)


# ------------------------------------------------------------------------------------------- baselines
def test_substitution_and_noisy_image_pairs(tiny_vlms):
    from mmlens.align.baselines import noisy_image_pairs, substitution_pairs, world_substitutions

    world = World(WorldConfig(), seed=0)
    ims = _images(3)
    examples = [
        SFTExample(ims[0], "describe the image .", "a red star and two blue circles"),
        SFTExample(ims[1], "is there a star ?", "yes"),
        SFTExample(ims[2], "what colour is the star ?", "red"),
    ]
    pairs = substitution_pairs(examples, world_substitutions(world), seed=0)
    assert len(pairs) == 3
    words = pairs[0].rejected.split()
    assert words[2] in world.cfg.shapes and words[2] != "star" and words[5] != "circles"
    assert pairs[1].rejected == "no"
    assert pairs[2].rejected != "red" and pairs[2].rejected in world.cfg.colours
    noisy = noisy_image_pairs(tiny_vlms["llava"], examples[:2])
    tok = tiny_vlms["llava"].tokenizer
    assert all(not same_tokens(tok, p.rejected, p.chosen) for p in noisy)
    assert same_tokens(tok, "a red square, a star", "a red square , a star")


# ------------------------------------------------------------------------------------------ evaluation
def test_pope_and_chair_metrics_by_hand():
    m = pope_metrics(["Yes.", "no", "yes", "maybe"], ["yes", "yes", "no", "no"])
    assert m["acc"] == 0.25 and m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    assert m["yes_ratio"] == 0.5
    world = World(WorldConfig(), seed=0)
    c = chair_metrics(["a star and a box", "two circles"], [{"star"}, {"circle", "ring"}], world.mentioned_objects)
    assert c["chair_i"] == pytest.approx(1 / 3) and c["chair_s"] == 0.5 and c["recall"] == pytest.approx(0.75)
    assert vocabulary_parser(["dog", "traffic light"])("Two dogs near a traffic light.") == {"dog", "traffic light"}
    with pytest.raises(InputError):
        pope_metrics(["yes"], ["maybe"])


@pytest.mark.parametrize("arch", VISION_LANGUAGE_ARCHITECTURES)
def test_world_evaluation_runs_on_every_architecture(tiny_vlms, arch):
    world = World(WorldConfig(), seed=0)
    config = WorldEvalConfig(n_pope_scenes=3, pope_per_image=1, n_caption_scenes=3, n_gap_examples=3, max_new_tokens=4)
    out = evaluate_on_world(tiny_vlms[arch], world, config)
    for kind in ("random", "popular", "adversarial"):
        assert 0.0 <= out[f"pope_{kind}_acc"] <= 1.0 and 0.0 <= out[f"pope_{kind}_yes_ratio"] <= 1.0
    assert 0.0 <= out["chair_i"] <= 1.0 and 0.0 <= out["recall"] <= 1.0 and np.isfinite(out["image_gap"])


def test_anchor_without_partner_scenes_follow_the_specification():
    from mmlens.align.eval import EvalScenes, world_eval_scenes

    world = World(WorldConfig(), seed=0)
    chosen = world_eval_scenes(world, 20, "test", EvalScenes.ANCHOR_WITHOUT_PARTNER)
    assert len(chosen) == 20 and len({s.scene_id for s in chosen}) == 20
    assert all("triangle" in s.object_classes and "star" not in s.object_classes for s in chosen)
    held_out = world_eval_scenes(world, 20, "test")
    assert [s.scene_id for s in held_out] == [s.scene_id for s in world.sample_scenes(20, "test")]
    assert not all("triangle" in s.object_classes for s in held_out)
    # probes on those scenes: the absent partner leads the adversarial negatives
    adversarial = world.pope_probes(chosen, kind="adversarial", per_image=1, rng=0)
    assert all(p.object_class == "star" for p in adversarial if p.label == "no")
    with pytest.raises(InputError):
        world_eval_scenes(World(WorldConfig(bias_pairs=()), seed=0), 3, "test", EvalScenes.ANCHOR_WITHOUT_PARTNER)


def test_answer_logprobs_ignore_padding_and_the_hidden_image_term_ignores_the_image(tiny_vlms):
    vlm = tiny_vlms["llava"]
    ims = _images(2)
    alone = answer_logprobs(vlm, ims[:1], PROMPTS[:1], ["red"])
    padded = answer_logprobs(vlm, ims, [PROMPTS[0], PROMPTS[1] + " a b c"], ["red", "yes it is"])
    assert alone[0] == pytest.approx(padded[0], abs=1e-4)
    # The "image hidden" term cannot depend on the image; the "with image" term does, so the gap is not zero.
    other = _images(2, seed=1)
    answers = ["red", "yes"]
    blind = answer_logprobs(vlm, ims, PROMPTS, answers, hide_image=True)
    assert np.allclose(blind, answer_logprobs(vlm, other, PROMPTS, answers, hide_image=True), atol=1e-4)
    assert not np.allclose(
        answer_logprobs(vlm, ims, PROMPTS, answers), answer_logprobs(vlm, other, PROMPTS, answers), atol=1e-4
    )
    # (the gap itself is checked against a hand computation in test_align_claims, not against answer_logprobs)
    assert image_dependence_gap(vlm, ims, PROMPTS, answers) != image_dependence_gap(vlm, other, PROMPTS, answers)


# --------------------------------------------------------------------------------------------- training
def _pairs(n: int = 8) -> list[PreferencePair]:
    ims = _images(n)
    return [
        PreferencePair(ims[i], "is there a star ?", "yes" if i % 2 else "no", "no" if i % 2 else "yes")
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("loss", "first_loss"), [("sigmoid", np.log(2)), ("ipo", (1 / (2 * 0.1)) ** 2), ("hinge", 1.0)]
)
def test_trl_dpo_trains_the_tiny_model(loss, first_loss):
    """At step 1 the policy equals the reference, so TRL's loss is the loss at margin 0: log 2, (1/2beta)^2, 1."""
    from mmlens.align.train import DPOSettings, FineTune, LossType, train_dpo

    vlm = tiny_model("llava")
    before = {k: v.clone() for k, v in vlm.model.state_dict().items()}
    finetune = FineTune.FULL if loss == "sigmoid" else FineTune.LORA
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trained, log = train_dpo(
            vlm,
            _pairs(),
            DPOSettings(loss_type=LossType(loss), steps=2, batch_size=4, learning_rate=1e-3, finetune=finetune),
        )
    # TRL's use of a deprecated transformers property printed a FutureWarning in every `align dpo` run
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    assert log["steps"][0]["loss"] == pytest.approx(first_loss, rel=1e-3)
    after = trained.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)
    assert not any("lora" in k for k in after)  # LoRA merged back


def test_length_bias_remedies_reach_trl():
    """The SFT term adds weight x (mean NLL of the chosen tokens) to the step-1 loss (policy == reference, so the DPO
    part is log 2): doubling the weight doubles the excess. LD-DPO leaves step 1 at log 2. Bad values are refused."""
    from mmlens.align.train import DPOSettings, FineTune, train_dpo
    from mmlens.errors import InputError

    def first_loss(**kw) -> float:
        settings = DPOSettings(steps=1, batch_size=8, learning_rate=1e-3, finetune=FineTune.LORA, **kw)
        return train_dpo(tiny_model("llava"), _pairs(), settings)[1]["steps"][0]["loss"]

    half, full = first_loss(sft_weight=0.5) - np.log(2), first_loss(sft_weight=1.0) - np.log(2)
    assert half > 0.1 and full == pytest.approx(2 * half, rel=1e-3)
    assert first_loss(ld_alpha=0.5) == pytest.approx(np.log(2), rel=1e-3)
    with pytest.raises(InputError):
        DPOSettings(sft_weight=-1.0)
    with pytest.raises(InputError):
        DPOSettings(ld_alpha=1.5)


def test_online_and_mixed_dpo_through_trl():
    from mmlens.align.judges import CallablePairwiseJudge
    from mmlens.align.train import DPOSettings, OnlineMode, train_online

    vlm = tiny_model("llava")
    examples = _examples(4)
    judge = CallablePairwiseJudge(lambda ex, a, b: 0 if len(a) < len(b) else 1 if len(b) < len(a) else -1)
    settings = DPOSettings(steps=2, batch_size=2, refresh_every=1, max_new_tokens=4, learning_rate=1e-3)
    _, log = train_online(vlm, examples, OnlineMode.ONLINE, settings, judge=judge)
    assert log["judged"] >= 4 and log["online_pairs"] + log["ties"] >= 4
    _, log = train_online(
        tiny_model("llava"), examples, OnlineMode.MIXED, settings, judge=judge, offline_pairs=_pairs(4)
    )
    assert log["offline_pairs"] + log["online_pairs"] > 0
    from mmlens.align.judges import OracleJudge

    oracle = OracleJudge(vocabulary_parser(["square", "dog"]))
    ex = _examples(2)[1]  # "a red square on the left. no dog." with objects {"square"}
    assert oracle.judge([ex, ex], ["a square.", "a dog and a square."], ["a dog and a square.", "a square."]) == [0, 1]
    assert oracle.judge([_examples(1)[0]], ["yes"], ["Yes."]) == [-1]
    with pytest.raises(InputError):
        train_online(tiny_model("llava"), examples, OnlineMode.MIXED, settings, judge=judge)


def test_mixed_dpo_takes_the_offline_pair_of_the_drawn_example(monkeypatch):
    """Eq. 4: an example drawn offline contributes its own offline pair (matched by id), not any pair."""
    from mmlens.align import train
    from mmlens.align.judges import CallablePairwiseJudge

    examples = _examples(4)
    offline = [
        PreferencePair(e.image, e.prompt, e.answer, f"wrong {e.example_id}", {"id": e.example_id}) for e in examples
    ]
    seen: list[list[PreferencePair]] = []
    real = train.pairs_to_dataset
    monkeypatch.setattr(train, "pairs_to_dataset", lambda pairs: seen.append(list(pairs)) or real(pairs))
    settings = train.DPOSettings(steps=1, batch_size=2, refresh_every=1, mix_probability=1.0, learning_rate=1e-3)
    _, log = train.train_online(
        tiny_model("llava"),
        examples,
        train.OnlineMode.MIXED,
        settings,
        judge=CallablePairwiseJudge(lambda ex, a, b: -1),
        offline_pairs=offline[::-1],
    )
    drawn = np.random.default_rng(settings.seed).permutation(len(examples))[:2]  # train_online's first draw
    assert log["offline_pairs"] == 2 and log["online_pairs"] == 0
    assert sorted(p.rejected for p in seen[0]) == sorted(f"wrong {examples[i].example_id}" for i in drawn)


def test_online_bdhs_regenerates_rejects():
    from mmlens.align.train import DPOSettings, OnlineMode, train_online

    settings = DPOSettings(steps=2, batch_size=2, refresh_every=1, learning_rate=1e-3)
    from mmlens.align import train

    seen: list[PreferencePair] = []
    real = train.pairs_to_dataset
    examples = _examples(4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "pairs_to_dataset", lambda pairs: seen.extend(pairs) or real(pairs))
        _, log = train_online(
            tiny_model("llava"),
            examples,
            OnlineMode.ONLINE_BDHS,
            settings,
            bdhs=BDHSConfig(max_tries=2, max_new_tokens=4),
            embedder=HashingTextEmbedder(),
        )
    assert log["bdhs_pairs"] == len(seen) > 0 and len(log["steps"]) == settings.steps
    # every trained pair: chosen = the example's SFT answer, rejected = a BDHS answer generated for that example
    answer_of = {e.example_id: e.answer for e in examples}
    for p in seen:
        assert p.meta["source"] == "bdhs" and p.chosen == answer_of[p.meta["id"]] and p.rejected != p.chosen


def test_pairs_dataset_is_trl_conversational():
    ds = pairs_to_dataset(_pairs(2))
    row = ds[0]
    assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert len(row["images"]) == 1
    with pytest.raises(InputError):
        pairs_to_dataset([])
