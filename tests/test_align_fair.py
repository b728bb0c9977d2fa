"""Issue 15: the BDHS variants (two rejected answers, noise, no guidance), on-policy online DPO, checkpoint tuning,
the evaluation on the failure, intervals, eps_s calibration and the benchmark's selection rule. Each test fails
under a plausible bug of the piece it names."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from mmlens.align import (
    BDHSConfig,
    CallablePairwiseJudge,
    DPOSettings,
    FineTune,
    ImageCorruption,
    OnlineMode,
    PreferencePair,
    SFTExample,
    answer_logprobs,
    bdhs_pairs,
    generate_continuations,
    train_dpo,
    train_online,
)
from mmlens.errors import InputError
from mmlens.models.embed import HashingTextEmbedder
from mmlens.models.tiny import tiny_model
from mmlens.world import World, WorldConfig


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


def _examples(n: int = 4) -> list[SFTExample]:
    answers = ["a red square on the left. a blue circle.", "yes", "two stars and a box. nothing else.", "no"]
    prompts = ["describe the image .", "is there a star ?", "describe the image .", "is there a dog ?"]
    return [SFTExample(im, prompts[i % 4], answers[i % 4], frozenset(), str(i)) for i, im in enumerate(_images(n))]


# ------------------------------------------------------------------------------ two rejected answers (Eq. 5)
def test_two_rejected_rows_put_both_rejecteds_of_a_pair_in_the_same_batch():
    from mmlens.align.data import two_rejected_rows, with_second_rejected

    ims = _images(3)
    first = [PreferencePair(ims[i], "q", f"c{i}", f"r{i}", {"id": str(i)}) for i in range(3)]
    second = [PreferencePair(ims[i], "q", f"c{i}", f"s{i}", {"id": str(i)}) for i in range(3)]
    pairs = with_second_rejected(first, second)
    assert [(p.rejected, p.rejected_2) for p in pairs] == [("r0", "s0"), ("r1", "s1"), ("r2", "s2")]
    rows = two_rejected_rows(pairs, 16, seed=1)
    assert len(rows) == 16
    for k in range(0, 16, 2):  # every even-sized batch holds both rows of each of its pairs
        (i, a), (j, b) = rows[k], rows[k + 1]
        assert i == j and {a, b} == {pairs[i].rejected, pairs[i].rejected_2}
    with pytest.raises(InputError):
        train_dpo(tiny_model("llava"), pairs, DPOSettings(steps=1, batch_size=3))
    with pytest.raises(InputError):
        train_dpo(tiny_model("llava"), [pairs[0], first[1]], DPOSettings(steps=1, batch_size=2))


def _logp(vlm, images, answer: str) -> np.ndarray:
    return answer_logprobs(vlm, images, ["what colour is the shape ?"] * len(images), [answer] * len(images))


def test_dpo_with_two_rejected_answers_pushes_down_both():
    """Chosen "red", rejected "blue" and "green": with Eq. 5 both rejected answers lose probability against the
    reference; trained on "blue" alone, "green" loses far less (so a trainer that drops rejected_2 fails)."""
    ims = _images(8)
    two = [PreferencePair(im, "what colour is the shape ?", "red", "blue", {}, "green") for im in ims]
    one = [PreferencePair(im, "what colour is the shape ?", "red", "blue", {}) for im in ims]
    settings = DPOSettings(steps=6, batch_size=4, learning_rate=3e-3, beta=0.1, finetune=FineTune.FULL)
    base = tiny_model("llava")
    green0 = _logp(base, ims, "green")
    trained_two, log = train_dpo(tiny_model("llava"), two, settings)
    trained_one, _ = train_dpo(tiny_model("llava"), one, settings)
    drop_two = green0 - _logp(trained_two, ims, "green")
    drop_one = green0 - _logp(trained_one, ims, "green")
    assert log["n_rows"] == settings.steps * settings.batch_size
    assert drop_two.mean() > 0.5 and drop_two.mean() > 2 * max(drop_one.mean(), 0.0), (drop_two, drop_one)


# ------------------------------------------------------------------------------------------ BDHS variants
def test_unguided_bdhs_generates_whole_answers_every_try(monkeypatch):
    """Masking without guidance: no prefix of the chosen answer reaches the model, on any try; guided BDHS sends
    the ground-truth earlier sentences and a cut of the current one."""
    from mmlens.align import bdhs

    seen: dict[bool, list[str]] = {True: [], False: []}
    real = bdhs.generate_continuations
    vlm = tiny_model("llava")
    for guided in (True, False):

        def spy(vlm_, images, prompts, partials, _g=guided, **kw):
            seen[_g].extend(partials)
            return real(vlm_, images, prompts, partials, **kw)

        monkeypatch.setattr(bdhs, "generate_continuations", spy)
        config = BDHSConfig(rho=0.75, max_tries=3, eps_s=-1.0, max_new_tokens=4, guided=guided, seed=2)
        bdhs_pairs(vlm, _examples(), config, embedder=HashingTextEmbedder(), progress=False)
    assert seen[False] and all(p == "" for p in seen[False])
    assert any("a red square on the left." in p for p in seen[True])  # sentence 2 sees the true sentence 1


def test_noise_variant_diffuses_the_pixels_and_hides_no_token(monkeypatch):
    """BDHS_noise: the model receives diffused pixels (one noise draw per example, shared by its sentences,
    different between examples) and every image token stays visible; step 0 leaves the pixels almost clean."""
    vlm = tiny_model("llava")
    captured: list[torch.Tensor] = []
    real = vlm.model.generate

    def spy(**batch):
        captured.append(batch["pixel_values"].detach().clone())
        return real(**batch)

    monkeypatch.setattr(vlm.model, "generate", spy)
    ims = _images(2)
    clean = vlm.prepare(ims, ["q", "q"])["pixel_values"]
    _, visible = generate_continuations(
        vlm, [ims[0], ims[0], ims[1]], ["q"] * 3, ["a", "b", "c"], groups=[0, 0, 1], noise_step=999, max_new_tokens=2
    )
    noisy = captured[-1]
    n_image_tokens = int(vlm.image_token_mask(vlm.prepare(ims[:1], ["q"])).sum())
    assert visible == [n_image_tokens] * 3
    assert torch.equal(noisy[0], noisy[1]) and not torch.allclose(noisy[0], noisy[2])
    corr = np.corrcoef(noisy[0].flatten().numpy(), clean[0].flatten().numpy())[0, 1]
    assert abs(corr) < 0.8  # mostly noise (1.0 if the noise were not applied)
    generate_continuations(vlm, ims[:1], ["q"], ["a"], noise_step=0, max_new_tokens=2)
    assert torch.allclose(captured[-1][0], clean[0], atol=0.05)
    # through BDHS: the pair records every image token visible
    config = BDHSConfig(corruption=ImageCorruption.NOISE, noise_step=500, max_tries=1, eps_s=2.0, max_new_tokens=3)
    pairs, _ = bdhs_pairs(vlm, _examples(2), config, embedder=HashingTextEmbedder(), progress=False)
    assert pairs and all(p.meta["visible_image_tokens"] == n_image_tokens for p in pairs)
    with pytest.raises(InputError):
        BDHSConfig(noise_step=1000)


def test_bdhs_stats_report_acceptance_per_try():
    vlm = tiny_model("llava")
    config = BDHSConfig(rho=0.5, max_tries=3, eps_s=-1.0, max_new_tokens=3)  # nothing passes: all reach try 3
    _, stats = bdhs_pairs(vlm, _examples(4), config, embedder=HashingTextEmbedder(), progress=False)
    assert stats.tried_by_try == [4, 4, 4] and stats.accepted_by_try == [0, 0, 4]
    assert stats.acceptance_by_try == [0.0, 0.0, 1.0]


# ------------------------------------------------------------------------------------ on-policy online DPO
def _lora_fingerprint(model) -> float:
    return float(sum(p.detach().double().sum() for n, p in model.named_parameters() if "lora_B" in n))


@pytest.mark.parametrize("on_policy", [True, False])
def test_on_policy_online_dpo_samples_from_the_current_policy_for_every_batch(monkeypatch, on_policy):
    """On-policy: one sampling round per optimizer step, each from a different (updated) policy, and no pair is
    presented twice; refresh-every-3 samples once for 3 steps."""
    from mmlens.align import train

    fingerprints: list[float] = []
    real = train.generate_continuations

    def spy(policy, *args, **kw):
        fingerprints.append(_lora_fingerprint(policy.model))
        return real(policy, *args, **kw)

    monkeypatch.setattr(train, "generate_continuations", spy)
    judge = CallablePairwiseJudge(lambda ex, a, b: 0 if a <= b else 1)  # never a tie
    settings = DPOSettings(
        steps=3, batch_size=2, refresh_every=3, max_new_tokens=3, learning_rate=5e-3, on_policy=on_policy
    )
    _, log = train_online(tiny_model("llava"), _examples(6), OnlineMode.ONLINE, settings, judge=judge)
    policies = set(np.round(fingerprints, 10))
    if on_policy:  # (ties are resampled from the same policy, hence sets)
        assert log["refreshes"] == 3 and len(policies) == 3  # a new policy for each batch
        assert log["presentations_per_pair"] <= 1.0
    else:
        assert log["refreshes"] == 1 and len(policies) == 1
    assert len(log["steps"]) == 3 and log["sampling_s"] > 0 and log["training_s"] > 0


def test_checkpoints_equal_shorter_runs():
    """The tuning reads steps at checkpoints of one run: with a constant learning rate the policy after 2 steps of
    a 4-step run is the policy of a 2-step run."""
    ims = _images(8)
    pairs = [PreferencePair(im, "what colour is the shape ?", "red", "blue") for im in ims]
    settings = DPOSettings(steps=4, batch_size=4, learning_rate=2e-3, finetune=FineTune.LORA, seed=3)
    at: dict[int, np.ndarray] = {}
    train_dpo(
        tiny_model("llava"),
        pairs,
        settings,
        checkpoints=(2, 4),
        on_checkpoint=lambda step, policy: at.__setitem__(step, _logp(policy, ims, "red")),
    )
    short, _ = train_dpo(tiny_model("llava"), pairs, replace(settings, steps=2))
    assert set(at) == {2, 4}
    np.testing.assert_allclose(at[2], _logp(short, ims, "red"), rtol=1e-4, atol=1e-4)
    assert not np.allclose(at[2], at[4], atol=1e-4)
    with pytest.raises(InputError):
        train_dpo(tiny_model("llava"), pairs, DPOSettings(steps=2, batch_size=4), checkpoints=(3,))


# ------------------------------------------------------------------------------ evaluation on the failure
class _PriorVLM:
    """Says "yes" to the absent partner of a present anchor and to present objects, "no" otherwise; describes a
    scene by its objects plus the absent partner. A stand-in with a known failure for the metric plumbing."""

    def __init__(self, world, scenes):
        self.world = world
        self.by_image = {}
        self.scenes = scenes

    def generate(self, images, prompts, max_new_tokens=2, batch_size=1):
        out = []
        for im, q in zip(images, prompts):
            scene = self.by_image[id(im)]
            partners = self.world.absent_partners(scene)
            if q.startswith("describe"):
                out.append(" and ".join(sorted(scene.object_classes | partners)))
            else:
                named = self.world.mentioned_objects(q)
                out.append("yes" if named & (scene.object_classes | partners) else "no")
        return out


def test_evaluate_failure_measures_partner_false_yes_on_anchor_scenes(monkeypatch):
    from mmlens.align import eval as align_eval

    world = World(WorldConfig(), seed=0)
    fake = _PriorVLM(world, None)
    real_render = world.render

    def render(scene):
        im = real_render(scene)
        fake.by_image[id(im)] = scene
        return im

    monkeypatch.setattr(world, "render", render)
    monkeypatch.setattr(align_eval, "answer_logprobs", lambda vlm, ims, *a, **k: np.zeros(len(ims)))
    config = align_eval.FailureEvalConfig(n_anchor_scenes=12, n_ordinary_scenes=12, pope_per_image=2, split="val")
    res = align_eval.evaluate_failure(fake, world, config)
    m, items = res["metrics"], res["items"]
    assert m["partner_false_yes"] == 1.0 and m["other_false_yes"] == 0.0
    assert m["partner_mention_rate"] == 1.0 and m["chair_s"] == 1.0 and m["recall"] == 1.0
    assert m["pope_adversarial_acc"] < m["pope_random_acc"] <= 1.0
    assert m["pope_random_acc_ordinary"] > m["pope_adversarial_acc"]
    n_partner = len(items["partner_false_yes"][0])
    assert n_partner >= 12  # every anchor scene contributes its absent partner once
    # the items are fixed by the config: a second model answers the same items
    again = align_eval.evaluate_failure(fake, world, config)["items"]
    assert {k: len(v[0]) for k, v in again.items()} == {k: len(v[0]) for k, v in items.items()}


# -------------------------------------------------------------------------------------------- intervals
def test_intervals_resample_seeds_and_items_and_pair_arms():
    from mmlens.align.intervals import paired_difference, summarise, wilson

    rng = np.random.default_rng(0)
    base = rng.random(400) < 0.5
    better = base | (rng.random(400) < 0.1)  # the same items, a few more right
    arm_a = [{"acc": (better.astype(float), np.ones(400))}] * 3
    arm_b = [{"acc": (base.astype(float), np.ones(400))}] * 3
    sa, sb = summarise(arm_a, ["acc"]), summarise(arm_b, ["acc"])
    assert sa["acc"]["ci"][0] < sa["acc"]["mean"] < sa["acc"]["ci"][1]
    assert not (sa["acc"]["ci"][0] > sb["acc"]["ci"][1])  # the separate intervals overlap ...
    d = paired_difference(arm_a, arm_b, ["acc"])["acc"]
    assert d["excludes_0"] and d["ci"][0] > 0  # ... the paired one separates them
    # a ratio metric is sum(num) / sum(den), not a mean of ratios
    ratio = summarise([{"chair_i": ([1.0, 0.0], [1.0, 3.0])}], ["chair_i"])
    assert ratio["chair_i"]["mean"] == 0.25
    # seed variation widens the interval
    seeds = [{"acc": ((rng.random(400) < p).astype(float), np.ones(400))} for p in (0.2, 0.5, 0.8)]
    assert np.diff(summarise(seeds, ["acc"])["acc"]["ci"])[0] > 2 * np.diff(sa["acc"]["ci"])[0]
    lo, hi = wilson(0, 50)
    assert lo == 0.0 and 0.05 < hi < 0.09


# ------------------------------------------------------------------------------------------ calibration
def test_eps_calibration_separates_rewordings_from_one_object_changes():
    from mmlens.align.calibrate import calibrate_eps_s, world_calibration_pairs

    world = World(WorldConfig(), seed=0)
    same, changed = world_calibration_pairs(world, 30)
    assert same and changed
    assert all(world.mentioned_objects(a) == world.mentioned_objects(b) and a != b for a, b in same)
    assert all(world.mentioned_objects(a) != world.mentioned_objects(b) for a, b in changed)

    class Fixed:  # similarity 0.99 for rewordings, 0.9 for changes
        def embed(self, texts):
            return [[1.0, 0.0] if t.startswith("s") else [0.9, np.sqrt(1 - 0.81)] for t in texts]

    same_t = [("s", "s")] * 5
    changed_t = [("s", "c")] * 5
    cal = calibrate_eps_s(Fixed(), same_t, changed_t)
    assert 0.9 < cal.eps_s < 1.0 and cal.balanced_accuracy == 1.0
    assert cal.same_kept_out == 1.0 and cal.changed_accepted == 1.0


# ------------------------------------------------------------------------------------- benchmark protocol
def test_every_arm_gets_the_same_budget_and_one_selection_rule():
    from mmlens.bench.align import TuningGrid, _select

    grid = TuningGrid()
    plain, with_sft = grid.runs(False), grid.runs(True)
    assert len(plain) == len(with_sft) == 4
    for axis in ("beta", "learning_rate", "sft_weight"):  # the half fraction is balanced
        levels = [r[axis] for r in with_sft]
        assert sorted(levels) == sorted(list(getattr(grid, axis)) * 2)
    sft = {"recall": 0.9, "recall_ordinary": 0.9}

    def trial(steps, lr, acc, recall):
        return {
            "setting": {"steps": steps, "learning_rate": lr, "beta": 0.1},
            "metrics": {"pope_adversarial_acc": acc, "recall": recall, "recall_ordinary": 0.9},
        }

    trials = [trial(32, 1e-4, 0.95, 0.80), trial(64, 1e-4, 0.90, 0.89), trial(32, 4e-4, 0.90, 0.9)]
    chosen = _select(trials, sft, 0.02)  # the best POPE lost recall; of the two ties, fewer steps wins
    assert chosen["setting"] == {"steps": 32, "learning_rate": 4e-4, "beta": 0.1}
    fallback = _select([trial(32, 1e-4, 0.95, 0.5), trial(64, 1e-4, 0.6, 0.7)], sft, 0.02)
    assert fallback["setting"]["steps"] == 64 and "no setting" in fallback["rule"]
