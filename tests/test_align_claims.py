"""End-to-end claims of mmlens.align (issue 21): each test fails under a plausible bug of the method as a whole.

- BDHS: with every image token hidden the rejected answers cannot depend on the image (the mask is applied while
  generating), and with none hidden they do (so the first check is not vacuous).
- DPO: a few steps on a consistent toy preference set raise the policy's log-ratio log pi(chosen) - log pi(rejected)
  and leave a positive implicit reward margin (chosen and rejected reach TRL the right way round).
- Online DPO: the pair trained as chosen is the judge's preferred sample.
- The image-dependence gap against an independent computation (the hidden-image forward pass done by hand).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmlens.align import (
    BDHSConfig,
    CallablePairwiseJudge,
    DPOSettings,
    FineTune,
    OnlineMode,
    PreferencePair,
    SFTExample,
    answer_logprobs,
    bdhs_pairs,
    generate_continuations,
    image_dependence_gap,
    train_dpo,
    train_online,
)
from mmlens.models.embed import HashingTextEmbedder
from mmlens.models.tiny import tiny_model


def _images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


def _solid(n: int, value: int) -> list[Image.Image]:
    return [Image.fromarray(np.full((32, 32, 3), value, dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def llava():
    return tiny_model("llava")


# --------------------------------------------------------------------------------------------------- BDHS
ANSWERS = ["a red square on the left. a blue circle.", "the shape is red.", "yes", "two stars and a box."]
PROMPTS = ["describe the image .", "what colour is the shape ?", "is there a star ?", "describe the image ."]


def _bdhs_rejects(vlm, images, rho: float) -> list[str]:
    examples = [SFTExample(im, PROMPTS[i], ANSWERS[i], frozenset(), str(i)) for i, im in enumerate(images)]
    config = BDHSConfig(rho=rho, max_tries=1, max_new_tokens=8, flip_probability=0.5, eps_s=2.0, seed=3)
    pairs, stats = bdhs_pairs(vlm, examples, config, embedder=HashingTextEmbedder(), progress=False)
    assert stats.accepted_by_try == [len(examples)]
    by_id = {p.meta["id"]: p.rejected for p in pairs}
    return [by_id.get(str(i), "") for i in range(len(examples))]


def test_bdhs_rejects_ignore_the_image_when_every_image_token_is_hidden(llava):
    """Same examples, two unrelated image sets, every random decision seeded per example: with rho = 1 every image
    token is hidden, so the rejected answers are identical; with rho = 0 nothing is hidden and they differ."""
    dark, bright = _solid(4, 0), _images(4, seed=7)
    assert _bdhs_rejects(llava, dark, rho=1.0) == _bdhs_rejects(llava, bright, rho=1.0)
    assert _bdhs_rejects(llava, dark, rho=0.0) != _bdhs_rejects(llava, bright, rho=0.0)


def test_masked_continuations_ignore_the_image_and_unmasked_ones_do_not(llava):
    """The primitive under BDHS: generate_continuations with every image token hidden (rho = 1) yields the same
    completions and zero visible tokens whatever the images; unmasked it yields different ones."""
    prompts, partials = PROMPTS, ["a", "", "the shape", "two"]
    outs = {}
    for name, images in (("dark", _solid(4, 0)), ("noise", _images(4, seed=7))):
        outs[name, "hidden"] = generate_continuations(llava, images, prompts, partials, rho=1.0, max_new_tokens=8)
        outs[name, "open"] = generate_continuations(llava, images, prompts, partials, max_new_tokens=8)
    assert outs["dark", "hidden"][0] == outs["noise", "hidden"][0]
    assert outs["dark", "hidden"][1] == [0, 0, 0, 0]
    assert outs["dark", "open"][0] != outs["noise", "open"][0]
    assert min(outs["dark", "open"][1]) > 0


# ---------------------------------------------------------------------------------------------------- DPO
def _toy_pairs(n: int = 8) -> list[PreferencePair]:
    """A consistent preference: always "red" over "blue" (both one word, so no length effect)."""
    return [PreferencePair(im, "what colour is the shape ?", "red", "blue") for im in _images(n, seed=0)]


def _log_ratio(vlm, pairs) -> np.ndarray:
    images, prompts = [p.image for p in pairs], [p.prompt for p in pairs]
    return answer_logprobs(vlm, images, prompts, [p.chosen for p in pairs]) - answer_logprobs(
        vlm, images, prompts, [p.rejected for p in pairs]
    )


@pytest.mark.parametrize("finetune", [FineTune.FULL, FineTune.LORA])
def test_dpo_raises_the_chosen_over_rejected_log_ratio(finetune):
    """After a few DPO steps the policy prefers the chosen answer more than the reference did, on every pair, and
    TRL's implicit reward margin (beta x log-ratio change) is positive with accuracy 1 at the last step."""
    pairs = _toy_pairs()
    vlm = tiny_model("llava")
    before = _log_ratio(vlm, pairs)
    trained, log = train_dpo(
        vlm, pairs, DPOSettings(steps=4, batch_size=4, learning_rate=2e-3, beta=0.1, finetune=finetune)
    )
    after = _log_ratio(trained, pairs)
    assert (after - before > 0.05).all(), (before, after)
    last = log["steps"][-1]
    assert last["rewards/margins"] > 0 and last["rewards/accuracies"] == 1.0
    assert last["rewards/chosen"] > last["rewards/rejected"]


def test_online_dpo_trains_the_judges_preferred_sample_as_chosen(monkeypatch):
    """Online DPO: every pair handed to TRL has as chosen the sample the judge preferred (here: the shorter one)."""
    from mmlens.align import train

    seen: list[PreferencePair] = []
    real = train.pairs_to_dataset
    monkeypatch.setattr(train, "pairs_to_dataset", lambda pairs: seen.extend(pairs) or real(pairs))
    judged: list[tuple[str, str, int]] = []

    def shorter(ex, a, b):
        verdict = 0 if len(a) < len(b) else 1 if len(b) < len(a) else -1
        judged.append((a, b, verdict))
        return verdict

    examples = [
        SFTExample(im, PROMPTS[i % 4], ANSWERS[i % 4], frozenset(), str(i)) for i, im in enumerate(_images(4, seed=0))
    ]
    settings = DPOSettings(
        steps=2, batch_size=2, refresh_every=1, max_new_tokens=6, learning_rate=1e-3, sample_temperature=1.5
    )
    _, log = train_online(
        tiny_model("llava"), examples, OnlineMode.ONLINE, settings, judge=CallablePairwiseJudge(shorter)
    )
    assert seen and log["online_pairs"] == len(seen)
    for p in seen:
        assert len(p.chosen) < len(p.rejected), (p.chosen, p.rejected)
    decided = {(a, b) if v == 0 else (b, a) for a, b, v in judged if v != -1}
    assert {(p.chosen, p.rejected) for p in seen} <= decided


# --------------------------------------------------------------------------------------- image-dependence gap
def test_image_dependence_gap_against_a_hand_computation(llava):
    """The gap = mean [log p(answer | image) - log p(answer | image tokens' keys removed)], the second term computed
    here independently: the decoder run by hand on the prompt without the image positions, at their native position
    ids (what hiding image tokens from attention means), summing the answer tokens' log-probabilities."""
    images, prompts, answers = _images(2, seed=0), ["what colour is the shape ?"] * 2, ["red", "a blue star"]
    gap = image_dependence_gap(llava, images, prompts, answers)
    expected = []
    for image, prompt, answer in zip(images, prompts, answers):
        batch = llava.prepare([image], [prompt], answers=[answer])
        labels = batch.pop("labels")[0]
        embeds = []
        grab = llava.language_model.register_forward_pre_hook(
            lambda m, a, k, embeds=embeds: embeds.append(k["inputs_embeds"]), with_kwargs=True
        )
        try:
            with torch.no_grad():
                full = llava.forward(batch).logits[0].float()
        finally:
            grab.remove()
        keep = ~llava.image_token_mask(batch)[0]
        with torch.no_grad():
            out = llava.language_model(
                inputs_embeds=embeds[0][:, keep], position_ids=torch.arange(len(keep))[keep].unsqueeze(0)
            ).last_hidden_state
            blind = llava.lm_head(out)[0].float()
        answer_pos = (labels != -100).nonzero().flatten()  # predicted from the previous position (a text token)
        kept_index = torch.cumsum(keep.long(), 0) - 1  # position in the image-free sequence
        lp_full = sum(full[t - 1].log_softmax(-1)[labels[t]] for t in answer_pos)
        lp_blind = sum(blind[kept_index[t - 1]].log_softmax(-1)[labels[t]] for t in answer_pos)
        expected.append(float(lp_full - lp_blind))
    assert gap == pytest.approx(float(np.mean(expected)), abs=1e-4)
    assert abs(gap) > 1e-3  # the random model's answers do depend on the image


# ----------------------------------------------------------------------------------------------- the mask
def test_hidden_token_draws_follow_eq_6_and_share_groups_across_calls():
    """Eq. 6: a token stays visible iff its uniform draw is >= rho (the generator's own draws, reproduced here);
    rows of one group share a mask, also across calls given the same ``draws``; only image positions are hidden."""
    from mmlens.align import draw_hidden_image_tokens
    from mmlens.errors import InputError

    image_mask = torch.zeros(3, 9, dtype=torch.bool)
    image_mask[:, 1:7] = True
    hidden = draw_hidden_image_tokens(image_mask, None, rho=0.4, visible_tokens=None, rng=np.random.default_rng(5))
    expected_rng = np.random.default_rng(5)
    for row in range(3):
        keep = expected_rng.random(6) >= 0.4
        assert hidden[row, 1:7].tolist() == (~keep).tolist()
    assert not hidden[:, [0, 7, 8]].any()
    draws: dict = {}
    first = draw_hidden_image_tokens(
        image_mask[:2], ["x", "y"], rho=0.5, visible_tokens=3, rng=np.random.default_rng(0), draws=draws
    )
    again = draw_hidden_image_tokens(
        image_mask[:1], ["y"], rho=0.5, visible_tokens=3, rng=np.random.default_rng(99), draws=draws
    )
    assert torch.equal(again[0], first[1]) and (image_mask[:2] & ~first).sum(1).tolist() == [3, 3]
    few = draw_hidden_image_tokens(image_mask[:1], None, rho=0.5, visible_tokens=10, rng=np.random.default_rng(0))
    assert not few.any()  # more visible tokens asked than there are: all stay visible
    none_visible = draw_hidden_image_tokens(image_mask, None, rho=0.0, visible_tokens=0, rng=np.random.default_rng(0))
    assert torch.equal(none_visible, image_mask)  # visible_tokens=0 is valid: every image token hidden
    for kwargs, message in (
        (dict(rho=-0.1, visible_tokens=None), r"^rho=-0.1 must be in \[0, 1\]$"),
        (dict(rho=0.5, visible_tokens=-1), r"^visible_tokens=-1 must be >= 0$"),
    ):
        with pytest.raises(InputError, match=message):
            draw_hidden_image_tokens(image_mask, None, rng=np.random.default_rng(0), **kwargs)
    with pytest.raises(InputError, match=r"^got 2 group ids for 3 rows$"):
        draw_hidden_image_tokens(image_mask, [0, 1], rho=0.5, visible_tokens=None, rng=np.random.default_rng(0))


def test_masking_only_the_chosen_layers_and_clear_errors(llava):
    """``layers`` restricts the mask: hiding every image token in no layer at all is the plain model; in every
    layer the text is blind to the image; a layer index out of range or a batch of another size is an error."""
    from mmlens.align import block_image_tokens
    from mmlens.errors import InputError

    a = llava.prepare(_images(2, seed=0), PROMPTS[:2])
    b = llava.prepare(_images(2, seed=1), PROMPTS[:2])
    image_mask = llava.image_token_mask(a)
    text = a["attention_mask"].bool() & ~image_mask
    n = len(llava.decoder_layers)
    with torch.no_grad():
        plain = llava.forward(a).logits
        with block_image_tokens(llava.decoder_layers, image_mask, layers=[]):
            none = llava.forward(a).logits
        with block_image_tokens(llava.decoder_layers, image_mask, layers=[-n, n - 1]):
            both_a, both_b = llava.forward(a).logits, llava.forward(b).logits
        with block_image_tokens(llava.decoder_layers, image_mask, layers=[n - 1]):
            last_a, last_b = llava.forward(a).logits, llava.forward(b).logits
    assert torch.equal(plain, none)
    if n == 2:
        assert torch.allclose(both_a[text], both_b[text], atol=1e-5)
    assert (last_a - last_b)[text].abs().max() > 1e-4  # the first layer still sees the image
    with pytest.raises(InputError, match=rf"^mask layer {n} out of range for {n} decoder layers$"):
        with block_image_tokens(llava.decoder_layers, image_mask, layers=[n]):
            pass
    with pytest.raises(InputError, match=r"^the image mask has 1 rows but the model runs 2$"):
        with torch.no_grad(), block_image_tokens(llava.decoder_layers, image_mask[:1]):
            llava.forward(a)
    assert not any(layer.self_attn._forward_pre_hooks for layer in llava.decoder_layers)
    with pytest.raises(InputError, match=rf"^mask layer {-n - 1} out of range for {n} decoder layers$"):
        with block_image_tokens(llava.decoder_layers, image_mask, layers=[-n - 1]):
            pass
    with pytest.raises(InputError, match=r"^decoder layer 0 \(Linear\) has no self_attn module to mask$"):
        with block_image_tokens(torch.nn.ModuleList([torch.nn.Linear(2, 2)]), image_mask):
            pass


def test_the_layer_mask_hides_exactly_the_hidden_keys_from_every_other_query():
    """The rewritten attention mask, for the three forms a layer can receive (none = implicit causal, boolean,
    additive float), during prefill (Q = K) and a decoding step (Q = 1, K = prompt + generated): a hidden prompt key is
    blocked for every query but itself, generated keys are never hidden, everything else is unchanged."""
    from mmlens.align.masking import _combine

    hidden = torch.tensor([[False, True, True, False], [True, False, False, False]])
    low = torch.finfo(torch.float32).min
    for q_len, k_len in ((4, 4), (1, 6)):
        query_pos = torch.arange(k_len - q_len, k_len)
        causal = torch.arange(k_len)[None, :] <= query_pos[:, None]  # [Q, K]
        expected_allowed = torch.zeros(2, 1, q_len, k_len, dtype=torch.bool)
        for row in range(2):
            for qi, q in enumerate(query_pos.tolist()):
                for k in range(k_len):
                    blocked = k < 4 and bool(hidden[row, k]) and k != q
                    expected_allowed[row, 0, qi, k] = bool(causal[qi, k]) and not blocked
        implicit = _combine(None, hidden, q_len, k_len, torch.float32)
        assert implicit.shape == (2, 1, q_len, k_len) and implicit.dtype == torch.float32
        assert torch.equal(implicit == 0, expected_allowed) and torch.equal(implicit != 0, ~expected_allowed)
        assert (implicit[~expected_allowed] == low).all()
        boolean = _combine(causal[None, None].expand(2, 1, q_len, k_len), hidden, q_len, k_len, torch.float32)
        assert boolean.dtype == torch.bool and torch.equal(boolean, expected_allowed)
        additive = torch.zeros(2, 1, q_len, k_len).masked_fill(~causal, low)
        additive[0, 0, :, -1] = -3.0  # an existing bias elsewhere is kept
        out = _combine(additive, hidden, q_len, k_len, torch.float32)
        blocked = causal[None, None] & ~expected_allowed
        assert (out[blocked] == low).all() and torch.equal(out[~blocked], additive[~blocked])
    double = _combine(None, hidden, 4, 4, torch.float64)  # the implicit mask takes the hidden states' dtype
    assert double.dtype == torch.float64 and double.min() == torch.finfo(torch.float64).min
    nothing = torch.zeros(2, 4, dtype=torch.bool)
    float_mask = torch.randn(2, 1, 4, 4)
    assert torch.equal(_combine(float_mask, nothing, 4, 4, torch.float32), float_mask)
