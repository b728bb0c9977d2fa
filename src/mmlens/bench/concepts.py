"""``mmlens bench concepts``: mini-llava against mini-llava-colour and its checkpoints, with a shape word as the
token of interest ("what shape is the <colour> object ?" -> "circle").

Measured in one run: recovery of the fine-tuned concepts by the shifted ones against the three baselines (and a
split half), the alpha sweep, consistency; concept drift over the fine-tuning checkpoints; attribute purity of
the concepts' most-activating samples against random sets; capture throughput batched, with batch size 1 and
plain generation without capture.

The shift analysis needs samples on which both models emit the shape word. The fine-tunes are tried in the order
of ``ConceptsBenchConfig.finetunes`` (mini-llava-colour first, then mini-llava-swap) and the first that keeps at
least ``min_common`` common samples is analysed; the others record why not (``by_finetune``). The checkpoints'
drift uses the longest run of checkpoints from step 0 that keeps ``min_common`` samples in common.

``targeted_finetune``: mini-llava against mini-llava-swap, whose fine-tune swapped two colour names (read from
its metrics.json, never from the shifts). A sample is *targeted* when the object its question names has one of the
swapped colours; a concept of mini-llava's dictionary is *changed* when at least half of the samples assigned to
it (argmax activation, base model only) are targeted. Both definitions use ground truth and the base model only,
so the scores they judge (shift magnitude ||Delta_k|| and drift 1 - cos(u_a, matched u_b)) cannot leak into them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from mmlens.concepts.compare import CompareConfig, ShiftAnalysis, compare_models, concept_drift
from mmlens.concepts.decompose import (
    ConceptDictionary,
    DecomposerConfig,
    DecomposerKind,
)
from mmlens.concepts.grounding import (
    TextGrounder,
    TextGroundingConfig,
    attribute_purity,
    random_sets,
    top_samples,
)
from mmlens.concepts.metrics import disentanglement
from mmlens.concepts.world_data import ATTRIBUTES, ShapeItem, shape_question_items
from mmlens.errors import InputError, ModelLoadError
from mmlens.models.capture import (
    CaptureConfig,
    CaptureResult,
    PositionKind,
    PositionRule,
    capture_activations,
)


@dataclass(frozen=True)
class ConceptsBenchConfig:
    word: str = "circle"  # the token of interest: a shape word
    n_scenes: int = 4000  # test-split scenes; about one circle question per 4 scenes
    layers: tuple[int, ...] = (1, 2, 3)
    headline_key: str = "final_norm"  # the method's layer for concept and shift analysis
    n_concepts: int = 20
    max_new_tokens: int = 3
    batch_size: int = 64
    n_top: int = 10
    # The zoo's vocabulary has 68 tokens: 20 candidates, 10 kept (the reference: 50 of ~32k, 10 kept).
    text: TextGroundingConfig = field(default_factory=lambda: TextGroundingConfig(top_tokens=20, keep=10))
    gain_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # per seed: the sample order/subsample and the dictionary seed
    gain_fraction: float = 0.9  # share of the common samples each seed's analysis uses
    n_boot: int = 2000
    throughput_items: int = 512
    batch1_items: int = 64
    throughput_repeats: int = 7
    seed: int = 0
    threads: int = 2
    #: fine-tunes of mini-llava tried for the shift analysis, in order (see the module docstring)
    finetunes: tuple[str, ...] = ("tuned", "swap")  # tuned = mini-llava-colour, swap = ``swap_model``
    min_common: int = 100  # fewest samples common to both models for a shift analysis
    swap_model: str = "mini-llava-swap"  # the concept-targeted fine-tune
    changed_share: float = 0.5  # a concept is changed when at least this share of its samples is targeted


def _load(spec: str):
    from mmlens.models import VisionLanguageModel, load_model

    return load_model(spec, expect=VisionLanguageModel)


def _capture(model, items: list[ShapeItem], config: CaptureConfig) -> CaptureResult:
    return capture_activations(
        model,
        [it.image for it in items],
        [it.prompt for it in items],
        config,
        ground_truths=[it.answer for it in items],
        progress=False,
    )


def _swapped_colours(model_dir) -> tuple[str, ...]:
    """The two colours a concept-swap fine-tune exchanged (its metrics.json ``config.swap``)."""
    import json
    from pathlib import Path

    path = Path(model_dir) / "metrics.json"
    try:
        swap = json.loads(path.read_text())["config"]["swap"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} records no swapped colours ({err}): is it a concept-swap fine-tune?") from None
    return tuple(str(c) for c in swap)


def _intersect(results: list[CaptureResult]) -> list[CaptureResult]:
    shared = sorted(set.intersection(*(set(r.sample_index.tolist()) for r in results)))
    return [r.select(shared) for r in results]


def _throughput(model, items: list[ShapeItem], config: CaptureConfig, cfg: ConceptsBenchConfig) -> dict[str, Any]:
    """Samples per second: capture batched, capture with batch size 1 (the reference code's way), and plain
    batched generation without hooks; repeats interleaved, median kept (the cores are shared)."""
    many = items[: cfg.throughput_items]
    few = items[: cfg.batch1_items]
    images, prompts = [it.image for it in many], [it.prompt for it in many]

    def timed(fn: Callable[[], Any], n: int) -> float:
        t0 = time.perf_counter()
        fn()
        return n / (time.perf_counter() - t0)

    batched, plain, single = [], [], []
    one = replace(config, batch_size=1)

    def run_plain() -> None:
        plain.append(
            timed(
                lambda: model.generate(images, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size),
                len(many),
            )
        )

    def run_capture() -> None:
        batched.append(timed(lambda: _capture(model, many, config), len(many)))

    for repeat in range(cfg.throughput_repeats):
        # Alternate the order so neither side always runs on a warmer (or busier) machine.
        for run in (run_plain, run_capture) if repeat % 2 == 0 else (run_capture, run_plain):
            run()
        single.append(timed(lambda: _capture(model, few, one), len(few)))
    out: dict[str, Any] = {
        "batched_per_s": float(np.median(batched)),
        "batch1_per_s": float(np.median(single)),
        "plain_per_s": float(np.median(plain)),
    }
    out["speedup_vs_batch1"] = out["batched_per_s"] / out["batch1_per_s"]
    # Paired ratios: each capture run against the plain run beside it (the shared cores' load drifts).
    out["ratio_to_plain"] = float(np.median(np.array(batched) / np.array(plain)))
    out.update(
        n_batched=len(many),
        n_batch1=len(few),
        batch_size=cfg.batch_size,
        repeats=cfg.throughput_repeats,
        raw={"batched": batched, "batch1": single, "plain": plain},
    )
    return out


def _purity(
    dictionary: ConceptDictionary, feats: np.ndarray, attrs: dict[str, list[str]], n_top: int, seed: int
) -> dict[str, Any]:
    top = top_samples(dictionary.transform(feats), n_top)
    per = attribute_purity(top, attrs)
    best = np.max(np.stack([per[a] for a in attrs]), axis=0)  # each concept's purest attribute
    # the random sets of random_purity (same seed, same draws), kept per set for the best-attribute baseline
    rand_per = attribute_purity(random_sets(len(feats), n_top, seed=seed), attrs)
    rand = {a: float(v.mean()) for a, v in rand_per.items()}
    rand_best = float(np.max(np.stack([rand_per[a] for a in attrs]), axis=0).mean())
    return {
        "mean_best_purity": float(best.mean()),
        "random_best_purity": rand_best,
        "per_attribute": {a: float(per[a].mean()) for a in attrs},
        "random_per_attribute": rand,
        "mean_purity": float(np.mean([per[a].mean() for a in attrs])),
        "random_mean_purity": float(np.mean(list(rand.values()))),
        "top_rows": top,
    }


def _colour_mass(grounder: TextGrounder, concepts: np.ndarray, colours: set[str]) -> np.ndarray:
    """Per concept, the softmax probability of W_U u on colour words."""
    logits = grounder.logits(concepts)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    is_colour = np.array([t in colours for t in grounder.token_strings])
    return probs[:, is_colour].sum(1)


def gain_over_seeds(
    a: np.ndarray,
    b: np.ndarray,
    *,
    n_concepts: int,
    seeds: tuple[int, ...],
    fraction: float,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """Per-concept shift against the global / permuted / random baselines over seeds, with 95 % intervals.

    Each seed draws a ``fraction`` subsample of the samples in a new order and fits both k-means dictionaries with
    that seed. ``per_concept`` and ``global`` are the mean cosine gains over concepts (per concept: cos(u_b, u_s) -
    cos(u_b, u_a)); their intervals and the paired difference's are percentile bootstraps over seeds and concepts;
    ``permuted`` and ``random`` (each already averaged over draws within a seed) get a bootstrap over seeds."""
    from mmlens.concepts.compare import recovery

    per_seed: list[dict[str, Any]] = []
    own, glob = [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        rows = rng.permutation(len(a))[: max(n_concepts + 1, int(round(fraction * len(a))))]
        a_s, b_s = a[rows], b[rows]
        analysis = compare_models(
            a_s,
            b_s,
            CompareConfig(
                decomposer=DecomposerConfig(DecomposerKind.KMEANS, n_concepts=n_concepts, seed=seed),
                split_half=False,
                seed=seed,
            ),
        )
        u_a = analysis.dictionary_a.concepts
        u_b = analysis.dictionary_b.concepts[analysis.match]
        global_gain = recovery(u_a, u_a + (b_s - a_s).mean(0), u_b).cos_gain
        own.append(np.asarray(analysis.recovery.cos_gain, dtype=float))
        glob.append(np.asarray(global_gain, dtype=float))
        per_seed.append(
            {
                "seed": seed,
                "per_concept": float(np.mean(own[-1])),
                "global": float(np.mean(glob[-1])),
                "permuted": float(analysis.baselines["permuted"]["mean_gain"]),
                "random": float(analysis.baselines["random"]["mean_gain"]),
            }
        )
    own_m, glob_m = np.stack(own), np.stack(glob)  # (seeds, concepts)
    rng = np.random.default_rng(0)
    n_s, n_k = own_m.shape
    boot: dict[str, list[float]] = {"per_concept": [], "global": [], "difference": []}
    for _ in range(n_boot):
        si, ki = rng.integers(0, n_s, n_s), rng.integers(0, n_k, n_k)
        o, g = own_m[np.ix_(si, ki)].mean(), glob_m[np.ix_(si, ki)].mean()
        boot["per_concept"].append(o)
        boot["global"].append(g)
        boot["difference"].append(o - g)

    def ci(values) -> list[float]:
        return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]

    def seed_boot(key: str) -> dict[str, Any]:
        vals = np.array([p[key] for p in per_seed])
        means = [vals[rng.integers(0, len(vals), len(vals))].mean() for _ in range(n_boot)]
        return {"mean": float(vals.mean()), "ci": ci(means)}

    diff_ci = ci(boot["difference"])
    diff: dict[str, Any] = {"mean": float(own_m.mean() - glob_m.mean()), "ci": diff_ci}
    lo, hi = diff_ci
    wording = (
        f"per-concept shift beats the global shift (difference {diff['mean']:.4f}, 95 % interval [{lo:.4f}, {hi:.4f}])"
        if lo > 0
        else f"no measurable difference between per-concept and global shift (difference {diff['mean']:.4f}, "
        f"95 % interval [{lo:.4f}, {hi:.4f}])"
        if hi >= 0
        else f"the global shift beats per-concept shifts (difference {diff['mean']:.4f}, 95 % interval "
        f"[{lo:.4f}, {hi:.4f}])"
    )
    return {
        "per_concept": {"mean": float(own_m.mean()), "ci": ci(boot["per_concept"])},
        "global": {"mean": float(glob_m.mean()), "ci": ci(boot["global"])},
        "permuted": seed_boot("permuted"),
        "random": seed_boot("random"),
        "per_concept_minus_global": diff,
        "verdict": wording,
        "per_seed": per_seed,
        "n_seeds": n_s,
        "n_concepts": n_k,
        "interval": f"percentile bootstrap, {n_boot} resamples: over seeds and concepts (per_concept, global, the "
        "difference, paired), over seeds (permuted, random)",
        "metric": "mean over concepts of cos(u_b, shifted) - cos(u_b, u_a), k-means, the headline layer",
    }


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else float("nan")


def _changed_concepts(
    mask: np.ndarray, owner: np.ndarray, n_concepts: int, share: float
) -> tuple[np.ndarray, np.ndarray]:
    """(changed, used) per concept: used = some sample is assigned to it; changed = at least ``share`` of its
    samples are in ``mask`` (``owner[m]``: the concept of sample m)."""
    used = np.array([np.any(owner == k) for k in range(n_concepts)])
    frac = np.array([mask[owner == k].mean() if used[k] else 0.0 for k in range(n_concepts)])
    return frac >= share, used


def targeted_finetune_scores(
    a: np.ndarray,
    b: np.ndarray,
    targeted: np.ndarray,
    *,
    n_concepts: int,
    seeds: tuple[int, ...],
    fraction: float,
    changed_share: float = 0.5,
    placebo: dict[str, np.ndarray] | None = None,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """Does the shift analysis of A -> B single out the concepts tied to known targeted samples?

    ``a`` / ``b``: features of the same samples in the two models; ``targeted[m]``: sample m is affected by the
    fine-tune by construction (ground truth). Per seed (subsample and dictionary seed, as :func:`gain_over_seeds`):
    k-means dictionaries, A's concepts labelled *changed* when at least ``changed_share`` of their samples are
    targeted (A's assignment only), scored by shift magnitude ||Delta_k|| and by drift 1 - cos(u_a, matched u_b);
    AUROC of changed vs unchanged and the rank of each changed concept (1 = largest score). ``placebo`` masks (other
    sample groups the fine-tune did not target) are labelled and scored the same way, by magnitude."""
    targeted = np.asarray(targeted, dtype=bool)
    if len(targeted) != len(a) or a.shape != b.shape:
        raise InputError("a, b and targeted must describe the same samples")
    per_seed: list[dict[str, Any]] = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        rows = rng.permutation(len(a))[: max(n_concepts + 1, int(round(fraction * len(a))))]
        analysis = compare_models(
            a[rows],
            b[rows],
            CompareConfig(
                decomposer=DecomposerConfig(DecomposerKind.KMEANS, n_concepts=n_concepts, seed=seed),
                split_half=False,
                n_baseline_draws=1,
                seed=seed,
            ),
        )
        owner = analysis.dictionary_a.assign(a[rows])
        scores = {"magnitude": analysis.shifts.magnitude, "drift": 1.0 - analysis.match_cos}

        changed, used = _changed_concepts(targeted[rows], owner, n_concepts, changed_share)
        row: dict[str, Any] = {
            "seed": seed,
            "n_changed": int(changed[used].sum()),
            "n_unchanged": int((~changed[used]).sum()),
        }
        for name, score in scores.items():
            order = np.argsort(-score[used], kind="stable")
            rank = np.empty(int(used.sum()), dtype=int)
            rank[order] = np.arange(1, int(used.sum()) + 1)
            row[name] = {
                "auroc": _auroc(changed[used], score[used]),
                "ranks_of_changed": sorted(rank[changed[used]].tolist()),
            }
        row["placebo_auroc"] = {}
        for name, mask in (placebo or {}).items():
            p_changed, p_used = _changed_concepts(np.asarray(mask, dtype=bool)[rows], owner, n_concepts, changed_share)
            row["placebo_auroc"][name] = _auroc(p_changed[p_used], scores["magnitude"][p_used])
        per_seed.append(row)

    rng = np.random.default_rng(0)

    def summary(values: list[float]) -> dict[str, Any]:
        vals = np.array([v for v in values if np.isfinite(v)])
        if not len(vals):
            return {"mean": float("nan"), "ci": [float("nan"), float("nan")]}
        means = [vals[rng.integers(0, len(vals), len(vals))].mean() for _ in range(n_boot)]
        return {"mean": float(vals.mean()), "ci": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]}

    placebo_names = sorted(placebo or {})
    return {
        "auroc_changed_vs_unchanged": {
            name: summary([r[name]["auroc"] for r in per_seed]) for name in ("magnitude", "drift")
        },
        "rank_of_targeted": {
            name: {
                "per_seed": [r[name]["ranks_of_changed"] for r in per_seed],
                "mean_rank": float(
                    np.mean([np.mean(r[name]["ranks_of_changed"]) for r in per_seed if r[name]["ranks_of_changed"]])
                )
                if any(r[name]["ranks_of_changed"] for r in per_seed)
                else float("nan"),
                "best_possible_mean_rank": float(np.mean([(r["n_changed"] + 1) / 2 for r in per_seed])),
            }
            for name in ("magnitude", "drift")
        },
        "placebo_auroc_magnitude": {
            name: summary([r["placebo_auroc"][name] for r in per_seed]) for name in placebo_names
        },
        "n_changed": [r["n_changed"] for r in per_seed],
        "n_unchanged": [r["n_unchanged"] for r in per_seed],
        "per_seed": per_seed,
        "n_seeds": len(per_seed),
        "interval": f"percentile bootstrap over seeds, {n_boot} resamples",
    }


def concepts_benchmark(cfg: ConceptsBenchConfig | None = None, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole benchmark; returns the JSON-ready result (layout of issue 5)."""
    from mmlens import zoo
    from mmlens.zoo.colour import checkpoint_dirs

    cfg = cfg or ConceptsBenchConfig()
    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    base_dir, tuned_dir = zoo.resolve_model("mini-llava"), zoo.resolve_model("mini-llava-colour")
    if not checkpoint_dirs(tuned_dir):  # the shipped copy leaves them out (zoo.SHIP_EXCLUDE)
        raise ModelLoadError(
            f"mini-llava-colour at {tuned_dir} has no checkpoints/ (the shipped zoo leaves them out): build it "
            "locally with `mmlens zoo build --force mini-llava-colour` (mini-llava is reused)"
        )
    swap_dir = zoo.resolve_model(cfg.swap_model)
    swap_colours = _swapped_colours(swap_dir)
    world = zoo.world_of(base_dir)
    items = shape_question_items(world, cfg.n_scenes, split="test", shape=cfg.word)
    log(f"{len(items)} '{cfg.word}' questions from {cfg.n_scenes} test scenes")
    capture_cfg = CaptureConfig(
        layers=cfg.layers,
        final_norm=True,
        position=PositionRule(PositionKind.TOKEN_OF_INTEREST, words=(cfg.word,)),
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        require_in_ground_truth=True,
    )
    ckpts = checkpoint_dirs(tuned_dir)
    steps = [int(d.name.split("-")[1]) for d in ckpts]
    specs = {
        "base": str(base_dir),
        "tuned": str(tuned_dir),
        "swap": str(swap_dir),
        **{f"step-{s}": str(d) for s, d in zip(steps, ckpts)},
    }
    captures: dict[str, CaptureResult] = {}
    grounders: dict[str, TextGrounder] = {}
    accuracy: dict[str, float] = {}
    throughput: dict[str, Any] = {}
    for name, spec in specs.items():
        model = _load(spec)
        captures[name] = _capture(model, items, capture_cfg)
        grounders[name] = TextGrounder.from_model(model, cfg.text)
        accuracy[name] = len(captures[name]) / len(items)
        log(f"captured {name}: {len(captures[name])}/{len(items)} samples emit '{cfg.word}'")
        if name == "base":
            throughput = _throughput(model, items, capture_cfg, cfg)
            log(
                f"throughput: {throughput['batched_per_s']:.0f}/s batched, {throughput['batch1_per_s']:.0f}/s "
                f"batch 1, {throughput['plain_per_s']:.0f}/s plain generation"
            )
        del model

    # ---- recovery: base vs the first fine-tune that keeps enough common samples
    by_finetune: dict[str, Any] = {}
    chosen: str | None = None
    for key in cfg.finetunes:
        n = len(_intersect([captures["base"], captures[key]])[0])
        by_finetune[key] = {"model": specs[key], "n_common": n, "analysed": False}
        if chosen is None and n >= cfg.min_common:
            chosen = key
            by_finetune[key]["analysed"] = True
        elif n < cfg.min_common:
            by_finetune[key]["why_not"] = (
                f"only {n} samples on which both models emit '{cfg.word}' (fewer than {cfg.min_common})"
            )
    if chosen is None:
        raise InputError(f"no fine-tune keeps {cfg.min_common} samples in common with mini-llava: {by_finetune}")
    log(f"shift analysis on {chosen} ({specs[chosen]}): {by_finetune[chosen]['n_common']} common samples")
    a_res, b_res = _intersect([captures["base"], captures[chosen]])
    n_common = len(a_res)
    attrs_all = {a: [it.attributes[a] for it in items] for a in ATTRIBUTES}
    rows_common = a_res.sample_index.tolist()
    attrs = {a: [v[i] for i in rows_common] for a, v in attrs_all.items()}
    kmeans = DecomposerConfig(DecomposerKind.KMEANS, n_concepts=cfg.n_concepts, seed=cfg.seed)
    snmf = DecomposerConfig(DecomposerKind.SNMF, n_concepts=cfg.n_concepts, seed=cfg.seed)
    snmf_sklearn = DecomposerConfig(DecomposerKind.SNMF_SKLEARN, n_concepts=cfg.n_concepts, seed=cfg.seed)
    per_setting: dict[str, Any] = {}
    headline: ShiftAnalysis | None = None
    keys = [cfg.headline_key] + [k for k in a_res.keys if k != cfg.headline_key]
    for key in keys:
        for dec in (kmeans, snmf, snmf_sklearn) if key == cfg.headline_key else (kmeans,):
            analysis = compare_models(
                a_res.activations[key],
                b_res.activations[key],
                CompareConfig(decomposer=dec, n_top_samples=cfg.n_top, seed=cfg.seed),
                ground_a=grounders["base"],
                ground_b=grounders[chosen],
            )
            summary = analysis.summary()
            per_setting[f"{key}/{dec.kind.value}"] = summary
            log(
                f"recovery {key}/{dec.kind.value}: frac_improved {summary['frac_improved']:.2f}, gain "
                f"{summary['mean_gain']:.3f} vs global {summary['baseline_global_gain']:.3f}, permuted "
                f"{summary['baseline_permuted_gain']:.3f}, random {summary['baseline_random_gain']:.3f}"
            )
            if key == cfg.headline_key and dec is kmeans:
                headline = analysis
    if headline is None:
        raise InputError(f"headline_key {cfg.headline_key!r} is not among the captured layers")
    head = headline.summary()
    recovery = headline.headline()

    # ---- per-concept vs global over seeds, with intervals
    log(f"gain over {len(cfg.gain_seeds)} seeds (sample order/subsample and dictionary seed)")
    gain = gain_over_seeds(
        a_res.activations[cfg.headline_key].double().numpy(),
        b_res.activations[cfg.headline_key].double().numpy(),
        n_concepts=cfg.n_concepts,
        seeds=cfg.gain_seeds,
        fraction=cfg.gain_fraction,
        n_boot=cfg.n_boot,
    )
    log(gain["verdict"])

    # ---- grounding quality: purity of the base concepts' top samples
    feats_a = a_res.activations[cfg.headline_key].double().numpy()
    grounding = _purity(headline.dictionary_a, feats_a, attrs, cfg.n_top, cfg.seed)
    words_a = headline.words_a
    grounding["disentanglement"] = disentanglement(words_a or [])
    grounding["words"] = words_a

    # ---- targeted fine-tune: does the analysis single out the concepts of the swapped colours?
    a_t, b_t = _intersect([captures["base"], captures["swap"]])
    colour_of = [items[i].attributes["colour"] for i in a_t.sample_index.tolist()]
    others = [c for c in world.cfg.colours if c not in swap_colours]
    log(f"targeted fine-tune: {len(a_t)} common samples, swapped colours {swap_colours}")
    targeted = targeted_finetune_scores(
        a_t.activations[cfg.headline_key].double().numpy(),
        b_t.activations[cfg.headline_key].double().numpy(),
        np.array([c in swap_colours for c in colour_of]),
        n_concepts=cfg.n_concepts,
        seeds=cfg.gain_seeds,
        fraction=cfg.gain_fraction,
        changed_share=cfg.changed_share,
        placebo={f"{x}+{y}": np.array([c in (x, y) for c in colour_of]) for x, y in combinations(others, 2)},
        n_boot=cfg.n_boot,
    )
    targeted = {
        "models": {"base": specs["base"], "tuned": specs["swap"]},
        "swapped_colours": list(swap_colours),
        "layer": cfg.headline_key,
        "n_samples": len(a_t),
        "n_targeted_samples": int(sum(c in swap_colours for c in colour_of)),
        "definition": (
            "sample targeted = the object its question names has a swapped colour (the swap read from the "
            f"fine-tune's metrics.json); concept changed = at least {cfg.changed_share:.0%} of the samples mini-llava's "
            "k-means dictionary assigns to it (argmax activation) are targeted; scores: shift magnitude ||Delta_k|| "
            "and drift 1 - cos(u_a, matched u_b); placebo = the same labelling for each pair of unswapped colours"
        ),
        **targeted,
    }
    log(
        "targeted fine-tune AUROC (magnitude) "
        f"{targeted['auroc_changed_vs_unchanged']['magnitude']['mean']:.3f}, drift "
        f"{targeted['auroc_changed_vs_unchanged']['drift']['mean']:.3f}"
    )

    # ---- drift over checkpoints: the longest run from step 0 that keeps min_common samples in common
    step_names: list[str] = []
    for s in steps:
        if len(_intersect([captures[n] for n in [*step_names, f"step-{s}"]])[0]) < cfg.min_common:
            break
        step_names.append(f"step-{s}")
    dropped_steps = steps[len(step_names) :]
    steps = steps[: len(step_names)]
    if len(step_names) < 2:
        raise InputError(f"fewer than two checkpoints keep {cfg.min_common} common samples (kept {step_names})")
    aligned = _intersect([captures[n] for n in step_names])
    base_feats = aligned[0].activations[cfg.headline_key].double().numpy()
    base_dict = ConceptDictionary(kmeans).fit(base_feats)
    rows_drift = aligned[0].sample_index.tolist()
    # Colour-related = the half of the original concepts that put the most unembedding probability on colour
    # words (ground-truth purity cannot tell: the question names the colour, so every concept's top samples
    # share one colour).
    colour_mass = _colour_mass(
        grounders[step_names[0]], base_dict.concepts, set(world.cfg.colours) | set(world.cfg.backgrounds)
    )
    colour_mask = colour_mass > np.median(colour_mass)
    drift = concept_drift(
        base_feats,
        [r.activations[cfg.headline_key].double().numpy() for r in aligned],
        steps,
        grounders[step_names[0]],
        [grounders[n] for n in step_names],
        kmeans,
        base_dictionary=base_dict,
        groups={"colour": colour_mask, "other": ~colour_mask},
    )
    rho = float(spearmanr(steps, drift.t_overlap)[0]) if len(set(drift.t_overlap)) > 1 else float("nan")
    drift_out = {
        "steps": steps,
        "dropped_steps": dropped_steps,
        "t_overlap": drift.t_overlap,
        "colour_vs_other": [[c, o] for c, o in zip(drift.groups["colour"], drift.groups["other"])],
        "colour_vs_other_columns": ["colour-related concepts", "other concepts"],
        "colour_vs_other_mean_after_step_0": [
            float(np.mean(drift.groups[g][1:])) if len(steps) > 1 else float("nan") for g in ("colour", "other")
        ],
        "n_colour_concepts": int(colour_mask.sum()),
        "colour_mass": colour_mass.tolist(),
        "n_samples": len(rows_drift),
        "spearman_step_t_overlap": rho,
        "match_cos": drift.match_cos,
    }

    colour_final, other_final = drift.groups["colour"][-1], drift.groups["other"][-1]
    split: dict[str, Any] = head["split_half"]
    best_baseline = max(
        recovery["baseline_global_gain"], recovery["baseline_random_gain"], recovery["baseline_permuted_gain"]
    )
    auroc = targeted["auroc_changed_vs_unchanged"]["magnitude"]
    checks = [  # (target, measured, met)
        (
            "targeted fine-tune: changed concepts found by shift magnitude (AUROC >= 0.9, mean over seeds)",
            auroc,
            auroc["mean"] >= 0.9,
        ),
        (
            "per-concept shift beats the global shift over seeds (95 % interval of the difference above 0)",
            gain["per_concept_minus_global"],
            gain["per_concept_minus_global"]["ci"][0] > 0,
        ),
        (
            "per-concept shifts beat every baseline in mean cosine gain",
            {"per_concept": recovery["mean_gain"], "best_baseline": best_baseline},
            head["beats_every_baseline"],
        ),
        ("frac_improved >= 0.75", recovery["frac_improved"], recovery["frac_improved"] >= 0.75),
        ("alpha peak in [0.75, 1.25]", recovery["alpha_peak"], 0.75 <= recovery["alpha_peak"] <= 1.25),
        ("consistency correlation > 0", recovery["consistency_pearson"], recovery["consistency_pearson"] > 0),
        (
            "T-overlap falls with fine-tuning steps (Spearman < 0 and last < first)",
            {"spearman": rho, "first": drift.t_overlap[0], "last": drift.t_overlap[-1]},
            rho < 0 and drift.t_overlap[-1] < drift.t_overlap[0],
        ),
        (
            "colour-related concepts drift more (lower T-overlap at the last step than the other half)",
            {"colour": colour_final, "other": other_final},
            colour_final < other_final,
        ),
        (
            "split half: per-concept shifts still beat every baseline",
            {
                "per_concept": split["mean_gain"],
                "best_baseline": max(
                    split["baseline_global_gain"], split["baseline_random_gain"], split["baseline_permuted_gain"]
                ),
            },
            split["beats_every_baseline"],
        ),
        (
            "purity of the concepts' top samples above random sets",
            {"concepts": grounding["mean_best_purity"], "random": grounding["random_best_purity"]},
            grounding["mean_best_purity"] > grounding["random_best_purity"],
        ),
        ("batched capture >= 5x batch size 1", throughput["speedup_vs_batch1"], throughput["speedup_vs_batch1"] >= 5),
        (
            "batched capture within 15% of plain generation (ratio >= 0.85)",
            throughput["ratio_to_plain"],
            throughput["ratio_to_plain"] >= 0.85,
        ),
    ]
    grounding.pop("top_rows")
    import datetime
    import os

    from mmlens.bench.shift import _git_commit

    return {
        "benchmark": "concepts",
        "seconds": round(time.perf_counter() - t_start, 1),
        "run": {
            **_git_commit(),
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "cpu_count": os.cpu_count(),
        },
        "setup": {
            "token_of_interest": cfg.word,
            "prompt": "what shape is the <colour> object ?",
            "n_scenes": cfg.n_scenes,
            "n_items": len(items),
            "n_common_base_tuned": n_common,
            "kept_fraction": accuracy,
            "layer": cfg.headline_key,
            "decomposer": "kmeans",
            "concept_scale": "activation: shifts are added to semi-NMF concepts times the mean code of their "
            "samples (k-means centroids as fitted)",
            "n_concepts": cfg.n_concepts,
            "n_top_samples": cfg.n_top,
            "text_grounding": {
                "top_tokens": cfg.text.top_tokens,
                "keep": cfg.text.keep,
                "apply_final_norm": cfg.text.apply_final_norm,
            },
            "models": specs,
            "model_fingerprints": {n: c.metadata["model_fingerprint"] for n, c in captures.items()},
        },
        "shift_finetune": chosen,
        "by_finetune": by_finetune,
        "gain": gain,
        "targeted_finetune": targeted,
        "recovery": recovery,
        "recovery_detail": per_setting,
        "drift": drift_out,
        "grounding": grounding,
        "throughput": throughput,
        "targets": [{"target": name, "measured": measured, "met": bool(ok)} for name, measured, ok in checks],
    }


# ----------------------------------------------------------------------------------------------- the tiers
TIERS = ("mini_llava", "real_lm")
# the keys of a file concepts_benchmark wrote before the command had tiers (all its keys are the mini_llava tier's)
_STAMP_KEYS = ("command", "written", "benchmark", "tier_runs")


def run_concepts_tiers(
    tiers: tuple[str, ...],
    cfg: ConceptsBenchConfig | None = None,
    *,
    log: Callable[[str], None] = print,
    command: str | None = None,
    real_lm: Any = None,
) -> dict[str, Any]:
    """Run the chosen tiers into one JSON-ready dict. ``mini_llava`` puts :func:`concepts_benchmark`'s keys at the
    top level; ``real_lm`` (:mod:`mmlens.bench.real_lm_concepts`, SmolLM2 from its wheel unless a model is given)
    goes under ``real_lm``; a real tier that cannot run records its error. ``tier_runs[tier]`` holds the commit, the
    finish time, the seconds, the command and the top-level keys the tier wrote (what a later merge replaces)."""
    import datetime
    import os

    from mmlens.bench.real_lm_concepts import RealLMConceptsConfig, real_lm_concepts_tier
    from mmlens.bench.shift import _git_commit
    from mmlens.errors import MMLensError

    cfg = cfg or ConceptsBenchConfig()
    unknown = [t for t in tiers if t not in TIERS]
    if unknown or not tiers:
        raise InputError(f"unknown concepts tiers {unknown}: use {', '.join(TIERS)}")
    out: dict[str, Any] = {"benchmark": "concepts", "tier_runs": {}}
    code = _git_commit()
    for tier in tiers:
        t = time.perf_counter()
        if tier == "mini_llava":
            part = concepts_benchmark(cfg, log=log)
            model = "zoo:mini-llava"
        else:
            real_cfg = RealLMConceptsConfig(seed=cfg.seed)
            model = real_cfg.model
            try:
                if real_lm is None:
                    from mmlens.models.gguf import load_smollm2

                    log("real LM: loading SmolLM2-135M-Instruct (plain copy of the wheel's GGUF)")
                    real_lm = load_smollm2()
                torch.set_num_threads(cfg.threads)
                part = {"real_lm": _round(real_lm_concepts_tier(real_lm, real_cfg, log=log))}
            except MMLensError as err:
                part = {"real_lm": {"error": f"{type(err).__name__}: {err}"}}
        part.pop("benchmark", None)
        out.update(part)
        out["tier_runs"][tier] = {
            **code,
            "model": model,
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - t, 1),
            "command": command,
            "keys": sorted(part),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "cpu_count": os.cpu_count(),
        }
    return out


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def merge_concepts_tiers(existing: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``existing`` (a file this command wrote) with the tiers of ``new`` replacing their old keys; the other tiers
    are kept with their own provenance. A file from before the tiers (``benchmark: concepts`` with its ``run``) is
    read as the mini_llava tier, its provenance taken from its ``run`` and ``command``; anything else was not
    written by this command."""
    runs = existing.get("tier_runs")
    if runs is None and existing.get("benchmark") == "concepts" and isinstance(existing.get("run"), dict):
        keys = sorted(k for k in existing if k not in _STAMP_KEYS)
        runs = {"mini_llava": {**existing["run"], "command": existing.get("command"), "keys": keys}}
    if not isinstance(runs, dict):
        raise InputError("the existing concepts result has no tier_runs (an older or hand-edited file): use --fresh")
    merged = {**existing, "tier_runs": runs}
    for tier, run in new["tier_runs"].items():
        for key in runs.get(tier, {}).get("keys", []):
            merged.pop(key, None)
        for key in run["keys"]:
            merged[key] = new[key]
        merged["tier_runs"] = {**merged["tier_runs"], tier: run}
    return merged
