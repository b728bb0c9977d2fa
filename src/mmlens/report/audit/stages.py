"""One function per audit stage. Each calls the analysis's own public API (the code paths of its CLI), writes the
analysis's own report page into ``page_dir`` (first: a report writer replaces its folder), and returns a
:class:`StageOutcome`: the key numbers, plain-language findings, and the pages it wrote.

``scratch`` is a work folder kept between runs (keyed by the stage's fingerprint): intermediate results that can
resume (concept captures) live there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmlens.errors import InputError, MMLensError
from mmlens.report.audit.config import AuditConfig, ModelKind, Stage
from mmlens.report.audit.data import AuditData
from mmlens.report.html import CardLine, HtmlReport, ImageCard
from mmlens.report.io import write_jsonl_atomic

#: Level of the intervals behind the summary's words: a difference is called a difference only when its interval at
#: this level excludes 0.
INTERVAL_LEVEL = 0.95
#: Resamples of the paired bootstrap intervals.
N_BOOTSTRAP = 1000
#: Fewest images (one question each) the shift stage scores: below this the EMI estimates are meaningless.
MIN_SHIFT_IMAGES = 4


class NotApplicable(MMLensError):
    """Raised by a stage that finds, once running, that the model gives it nothing to work on: the stage is
    recorded as skipped with this reason."""


@dataclass(frozen=True)
class Finding:
    """One sentence of the summary page, linking to the page (relative to the stage folder) that shows it."""

    text: str
    page: str = "index.html"


@dataclass(frozen=True)
class StageOutcome:
    summary: dict[str, Any]  # the key numbers (audit.json)
    findings: tuple[Finding, ...]
    pages: tuple[str, ...] = ("index.html",)  # every page written, relative to the stage folder


@dataclass
class StageContext:
    """What every stage reads: the plan, the validated data, the loaded model(s)."""

    config: AuditConfig
    data: AuditData
    model: Any
    kind: ModelKind
    finetuned: Any = None
    _questions: list[dict[str, Any]] | None = field(default=None, repr=False)

    def questions(self, n: int) -> list[dict[str, Any]]:
        """Up to ``n`` VQA items in a seeded order that mixes records (the same for every stage)."""
        if self._questions is None:
            items = self.data.questions()
            order = np.random.default_rng(self.config.seed).permutation(len(items))
            self._questions = [items[i] for i in order]
        return self._questions[:n]

    def image(self, record: int):
        return self.data.records[record]["image"]


def skip_reason(stage: Stage, ctx_kind: ModelKind, data: AuditData, config: AuditConfig) -> str | None:
    """Why ``stage`` does not apply to this model and data (None: it applies)."""
    vlm = ctx_kind is ModelKind.VISION_LANGUAGE
    if stage not in config.stages:
        return "not requested (--stages)"
    if stage is Stage.INFLUENCE:
        if vlm:
            return "not a contrastive model: ECIF scores the image-caption training pairs of CLIP-style models"
        if not data.has_captions:
            return "not every record has a caption: influence needs image-caption pairs"
        if len(data) < 8:
            return f"only {len(data)} records: influence needs at least 8 pairs (training and held-out)"
        return None
    if not vlm:
        what = {Stage.SHIFT: "shift analyses the answers a vision-language model generates",
                Stage.CONCEPTS: "concept dictionaries are learned over a generative model's hidden states",
                Stage.STEERING: "steering changes what a generative model answers",
                Stage.HALLUCINATION: "hallucination probes ask a vision-language model questions"}[stage]
        return f"not a vision-language model: {what}"
    if stage in (Stage.SHIFT, Stage.CONCEPTS) and not data.questions():
        return "the records have no VQA questions ('vqa' lists)"
    if stage is Stage.SHIFT and len({q["record"] for q in data.questions()}) < MIN_SHIFT_IMAGES:
        return f"shift needs VQA questions on at least {MIN_SHIFT_IMAGES} different images"
    if stage is Stage.STEERING and not data.has_yes_no:
        return "the records have no yes/no questions (answers 'yes' and 'no'): no yes->no vector to build"
    if stage is Stage.HALLUCINATION and not (data.has_pope or data.has_objects):
        return "the records have no object lists ('objects') and no POPE probes ('pope'): no POPE/CHAIR"
    return None


# ------------------------------------------------------------------------------------------------- influence
def run_influence(ctx: StageContext, page_dir: Path, scratch: Path) -> StageOutcome:
    from mmlens.influence import (
        FitArguments,
        HeadTask,
        InfluenceAnalyzer,
        NoiseKind,
        PairData,
        detection_metrics,
        inject_noise,
    )

    cfg = ctx.config.influence
    records = ctx.data.records[: cfg.max_pairs]
    ids = tuple(str(r.get("scene_id", i)) for i, r in enumerate(records))
    pairs = PairData(tuple(r["image"] for r in records), tuple(r["caption"] for r in records), ids=ids)
    order = np.random.default_rng(ctx.config.seed).permutation(len(pairs))
    n_val = max(2, round(cfg.val_fraction * len(pairs)))
    val, train = pairs.subset(sorted(order[:n_val])), pairs.subset(sorted(order[n_val:]))
    truth = None
    if cfg.inject_swap_rate > 0:
        noisy = inject_noise(train, cfg.inject_swap_rate, NoiseKind.RANDOM_SWAP, seed=ctx.config.seed)
        train, truth = noisy.data, noisy.is_noisy
        if not truth.any():  # too few pairs to swap (or swapped captions that were equal): nothing to detect
            truth = None
    analyzer = InfluenceAnalyzer(HeadTask(ctx.model), train,
                                 fit_args=FitArguments(batch_size=min(cfg.batch_size, len(train)), l2=cfg.l2,
                                                       seed=ctx.config.seed))
    fit = analyzer.fit()
    value = analyzer.value(val, seed=ctx.config.seed).role()  # delta_val_loss_if_removed (both roles, exact form)
    self_influence = analyzer.self_influence()
    k = max(1, round(cfg.flag_fraction * len(train)))
    flagged = np.argsort(-self_influence, kind="stable")[:k]
    # the same seeded measurement batches as the value, so the first-order prediction and the refit are comparable
    loss_before = analyzer.validation_loss(fit.params, val, seed=ctx.config.seed)
    loss_after = analyzer.validation_loss(analyzer.retrain(remove=flagged.tolist()), val, seed=ctx.config.seed)
    summary: dict[str, Any] = {
        "n_train": len(train), "n_val": len(val), "n_flagged": int(k), "n_harmful": int((value < 0).sum()),
        "val_loss": loss_before, "val_loss_without_flagged": loss_after,
        "predicted_val_loss_change": float(value[flagged].sum()),
        "fit_seconds": fit.seconds, "injected_swap_rate": cfg.inject_swap_rate,
    }
    if cfg.inject_swap_rate > 0:
        summary["n_injected"] = 0 if truth is None else int(truth.sum())
    if truth is not None:
        summary["flagged_precision"] = float(truth[flagged].mean())
        summary["auroc_self_influence"] = detection_metrics(truth, self_influence)["auroc"]
        summary["auroc_value"] = detection_metrics(truth, -value)["auroc"]

    rows = [{"rank": rank, "index": int(i), "id": train.ids[i], "caption": train.captions[i],
             "self_influence": float(self_influence[i]), "delta_val_loss_if_removed": float(value[i]),
             **({"injected_swap": bool(truth[i])} if truth is not None else {})}
            for rank, i in enumerate(np.argsort(-self_influence, kind="stable"), 1)]
    report = HtmlReport("Suspicious training pairs (ECIF influence)",
                        subtitle=f"{ctx.config.model}: {len(train)} training pairs, {len(val)} held out; projection "
                                 "heads refit by L-BFGS, exact negative form")
    sec = report.section("What this shows")
    sec.text("Self-influence = g^T H^-1 g of a pair's own loss gradient: pairs the model had to bend to fit (often "
             "mislabelled) score high. delta_val_loss_if_removed = predicted change of the held-out loss if the pair "
             "were removed; negative = harmful.", note=True)
    sec.table([summary])
    cards = []
    for row in rows[: cfg.cards]:
        lines = [CardLine(row["caption"]), CardLine(f"self-influence {row['self_influence']:.3g}"),
                 CardLine(f"delta_val_loss_if_removed {row['delta_val_loss_if_removed']:.3g}",
                          ok=row["delta_val_loss_if_removed"] >= 0)]
        if truth is not None:
            lines.append(CardLine("injected swap" if row["injected_swap"] else "clean pair",
                                  ok=not row["injected_swap"]))
        cards.append(ImageCard(train.images[row["index"]], f"#{row['rank']} pair {row['id']}", tuple(lines)))
    report.section(f"The {len(cards)} pairs with the highest self-influence").images(cards)
    report.section("Self-influence of every training pair").figure(
        _influence_figure(self_influence, value, truth), "Self-influence against the held-out value of each pair"
        + (" (red: injected caption swaps)." if truth is not None else "."))
    report.section("Ranking (top 60)").table(rows[:60])
    report.data = {"summary": summary, "rows": rows}
    report.write(page_dir)

    findings = [Finding(
        f"The {k} of {len(train)} training pairs with the highest self-influence (the pairs the model had to bend "
        f"most to fit, where mislabelled captions tend to rank) are flagged; refitting the projection heads without "
        f"them changes the summed held-out loss from {loss_before:.2f} to {loss_after:.2f} ({loss_after - loss_before:+.2f}; "
        f"first-order prediction {summary['predicted_val_loss_change']:+.2f}). To first order, removing any one of "
        f"{summary['n_harmful']} pairs alone would lower the held-out loss (delta_val_loss_if_removed < 0).")]
    if cfg.inject_swap_rate > 0 and truth is None:
        findings.append(Finding(f"No caption was swapped at rate {cfg.inject_swap_rate:g} on {len(train)} training "
                                "pairs (a swap needs two chosen pairs with different captions): no detection check."))
    if truth is not None:
        findings.append(Finding(
            f"Against the {summary['n_injected']} injected caption swaps: self-influence AUROC "
            f"{summary['auroc_self_influence']:.3f}, held-out value AUROC {summary['auroc_value']:.3f}; "
            f"{summary['flagged_precision']:.0%} of the flagged pairs are real swaps."))
    return StageOutcome(summary, tuple(findings))


def _influence_figure(self_influence: np.ndarray, value: np.ndarray, truth: np.ndarray | None):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    colours = np.where(truth, "#c0392b", "#2e6f9e") if truth is not None else "#2e6f9e"
    ax.scatter(value, self_influence, c=colours, s=12, alpha=0.8)
    ax.set_xlabel("delta_val_loss_if_removed (< 0 harmful)")
    ax.set_ylabel("self-influence")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------- shift
def _one_question_per_record(ctx: StageContext, n: int) -> list[dict[str, Any]]:
    chosen, seen = [], set()
    for q in ctx.questions(len(ctx.data.questions())):
        if q["record"] not in seen:
            seen.add(q["record"])
            chosen.append(q)
            if len(chosen) == n:
                break
    return chosen


def run_shift(ctx: StageContext, page_dir: Path, scratch: Path) -> StageOutcome:
    from threadpoolctl import threadpool_limits

    from mmlens.shift.analysis import ShiftConfig, analyse
    from mmlens.shift.data import load_splits
    from mmlens.shift.embed import ClipImageEmbedder, text_embedder
    from mmlens.shift.estimators import EstimatorConfig
    from mmlens.shift.generate import GenerateConfig, generate_responses
    from mmlens.shift.report import write_report
    from mmlens.zoo.mini_llava import normalise

    cfg = ctx.config.shift
    items = _one_question_per_record(ctx, cfg.n_items)
    if len(items) < MIN_SHIFT_IMAGES:
        raise InputError(f"shift needs at least {MIN_SHIFT_IMAGES} questions on different images, got {len(items)} "
                         f"(n_items {cfg.n_items})")
    generation = GenerateConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=ctx.config.seed,
                                scenarios=tuple(cfg.grid))
    paths = generate_responses(ctx.model, [ctx.image(q["record"]) for q in items], [q["question"] for q in items],
                               [q["answer"] for q in items], scratch / "splits", generation,
                               model_id=ctx.config.model, item_ids=[f"q{i}" for i in range(len(items))],
                               score=lambda a, r: normalise(a) == normalise(r), overwrite=True, progress=False)
    splits = load_splits(paths, load_images=cfg.image_model is not None)
    config = ShiftConfig(estimator=EstimatorConfig(seed=ctx.config.seed, max_epochs=cfg.max_epochs),
                         fusion=cfg.fusion, n_permutations=cfg.n_permutations, n_bootstrap=cfg.n_bootstrap,
                         seed=ctx.config.seed)
    image = ClipImageEmbedder(cfg.image_model) if cfg.image_model else None
    # One BLAS thread: the permutation nulls are many small eigendecompositions, and OpenBLAS's worker threads spin
    # while they wait: on the shared 2-core machine scoring one grid took 37 s with them and 4 s without.
    with threadpool_limits(limits=1, user_api="blas"):
        result = analyse(splits, config, text_embedder=text_embedder(cfg.text_embedder, progress=False),
                         image_embedder=image, id_split="clean", progress=False)
    write_report(result, page_dir, title=f"Distribution-shift risk of {ctx.config.model} (EMI, EMID, bound)")

    clean = result.row("clean")
    shifted = [r for r in result.rows if "emid" in r]
    per_split = {r["split"]: {"accuracy": r.get("accuracy"), "emi": r["emi"], "emid": r["emid"],
                              "emid_ci": r.get("emid_ci"), "bound": r["bound"]} for r in shifted}
    summary: dict[str, Any] = {"n_items": len(items), "clean_accuracy": clean.get("accuracy"), "clean_emi": clean["emi"],
                               "splits": per_split,
                               "pearson_emid_bound": _finite(result.correlations.get("emid_bound", {}).get("pearson"))}
    ranked = sorted(shifted, key=lambda r: -r["emid"])
    findings = []
    for r in ranked[:3]:
        before, after = clean.get("accuracy", float("nan")), r.get("accuracy", float("nan"))
        lo, hi = r.get("emid_ci") or (float("nan"), float("nan"))
        findings.append(Finding(
            f"Under {_split_words(r['split'])} accuracy goes from {before:.2f} to {after:.2f} ({after - before:+.2f} "
            f"on {len(items)} questions); EMID {r['emid']:+.3f} (positive = EMI lower than clean), bootstrap "
            f"interval [{lo:.3f}, {hi:.3f}]: {_interval_words(lo, hi)}; bound {r['bound']:.3f}."))
    worst = ranked[0]
    above = [r for r in shifted if (r.get("emid_ci") or (float("nan"),))[0] > 0]
    if above:
        lead = (f"Of {len(shifted)} shifts, {len(above)} lower the EMI with an EMID interval above 0; the largest "
                f"EMID is under {_split_words(worst['split'])} ({worst['emid']:+.3f}).")
    else:
        lead = (f"None of the {len(shifted)} shifts has an EMID interval above 0 (the largest: "
                f"{_split_words(worst['split'])}, {worst['emid']:+.3f}).")
    lead += f" Clean EMI {clean['emi']:.3f}."
    corr = result.correlations.get("emid_bound", {})
    if corr.get("pearson") is not None and np.isfinite(corr["pearson"]):
        c_lo, c_hi = corr.get("pearson_ci", [float("nan")] * 2)
        lead += (f" Across the grid r(EMID, bound) = {corr['pearson']:.2f} over {corr.get('n', len(shifted))} shifts "
                 f"(bootstrap interval [{c_lo:.2f}, {c_hi:.2f}]).")
    findings.insert(0, Finding(lead))
    return StageOutcome(summary, tuple(findings))


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else None


def _interval_words(lo: float, hi: float) -> str:
    """What an interval of a difference says, in words: only an interval that excludes 0 shows a difference."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "no interval"
    if lo > 0:
        return "above 0"
    if hi < 0:
        return "below 0"
    return "includes 0, not distinguishable from no change"


def _paired_interval(diff: np.ndarray, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired differences."""
    diff = np.asarray(diff, dtype=float)
    if len(diff) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (N_BOOTSTRAP, len(diff)))].mean(1)
    tail = (1 - INTERVAL_LEVEL) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def _split_words(split: str) -> str:
    """``fog_5+keyboard_5`` -> ``fog severity 5 + keyboard severity 5``."""
    parts = [p.rpartition("_") for p in split.split("+")]
    return " + ".join(f"{name.replace('_', ' ')} severity {level}" for name, _, level in parts)


# -------------------------------------------------------------------------------------------------- concepts
def _concept_inputs(ctx: StageContext, n: int, path: Path) -> Path:
    rows = [{"image": ctx.data.records[q["record"]]["image_path"], "prompt": q["question"], "reference": q["answer"],
             "attributes": {"answer": q["answer"], "answer_type": q["answer_type"]}}
            for q in ctx.questions(n)]
    write_jsonl_atomic(path, rows)
    return path


def _purity_value(value: Any) -> str:
    if isinstance(value, dict):  # random_purity may carry a spread: report its mean
        value = value.get("mean")
    return f"{value:.2f}" if isinstance(value, (int, float)) else "n/a"


def _purity_verdict(value: float, random: Any) -> str:
    if isinstance(random, dict):
        random = random.get("mean")
    if not isinstance(random, (int, float)):
        return "no random baseline"
    return "above random" if value > random else "no purer than random"


def run_concepts(ctx: StageContext, page_dir: Path, scratch: Path) -> StageOutcome:
    from mmlens.concepts.capture import CaptureConfig, PositionKind, PositionRule
    from mmlens.concepts.compare import CompareConfig
    from mmlens.concepts.decompose import DecomposerConfig, DecomposerKind
    from mmlens.concepts.workflow import compare, extract, learn

    cfg = ctx.config.concepts
    inputs = _concept_inputs(ctx, cfg.n_items, scratch / "inputs.jsonl")
    layer = ctx.model.num_layers // 2
    capture = CaptureConfig(layers=(layer,), position=PositionRule(PositionKind.LAST_PROMPT), final_norm=True,
                            max_new_tokens=1, batch_size=cfg.batch_size)
    n_items = len(inputs.read_text(encoding="utf-8").splitlines())
    n_concepts = max(2, min(cfg.n_concepts, n_items // 4))
    decomposer = DecomposerConfig(DecomposerKind.KMEANS, n_concepts=n_concepts, seed=ctx.config.seed)
    # captures resume from their shards when a run was interrupted (same fingerprint = same scratch folder)
    extract(ctx.config.model, scratch / "capture-model", capture, data=inputs, progress=False)
    learned = learn(scratch / "capture-model", page_dir, decomposer, layer=cfg.layer)
    purity, random = learned.get("mean_purity") or {}, learned.get("random_purity") or {}
    summary: dict[str, Any] = {"n_inputs": n_items, "n_concepts": n_concepts, "layer": cfg.layer,
                               "mean_purity": purity, "random_purity": random,
                               "disentanglement": learned.get("disentanglement")}
    text = (f"A {n_concepts}-concept dictionary over the {cfg.layer} hidden state at the last prompt token of "
            f"{n_items} questions")
    if purity:
        text += ": the most-activating samples of a concept share their " + " and their ".join(
            f"{name.replace('_', ' ')} at mean purity {value:.2f} against {_purity_value(random.get(name))} for "
            f"random sets of the same size ({_purity_verdict(value, random.get(name))})"
            for name, value in purity.items())
    findings = [Finding(text + ".")]
    pages = ["index.html"]
    if ctx.config.finetuned is not None:
        extract(ctx.config.finetuned, scratch / "capture-finetuned", capture, data=inputs, progress=False)
        analysis, _, _ = compare(scratch / "capture-model", scratch / "capture-finetuned", page_dir / "compare",
                                 CompareConfig(decomposer=decomposer, seed=ctx.config.seed), layer=cfg.layer)
        shift = analysis.summary()
        keys = ("frac_improved", "mean_gain", "baseline_global_gain", "baseline_random_gain",
                "baseline_permuted_gain", "alpha_peak")
        summary["finetuning"] = {k: shift.get(k) for k in keys}
        pages.append("compare/index.html")
        summary["finetuning"]["beats_every_baseline"] = shift.get("beats_every_baseline")
        verdict = ("more than every baseline" if shift.get("beats_every_baseline") else
                   "not more than every baseline, so no concept-specific change is shown")
        findings.append(Finding(
            f"Fine-tuning ({ctx.config.finetuned}): per-concept shift vectors bring {shift['frac_improved']:.0%} of the "
            f"original concepts closer to their fine-tuned match, mean cosine gain {shift['mean_gain']:.3f} against "
            f"{shift['baseline_global_gain']:.3f} for one global shift, {shift['baseline_permuted_gain']:.3f} for "
            f"permuted shifts and {shift['baseline_random_gain']:.3f} for random vectors: {verdict}.",
            "compare/index.html"))
    return StageOutcome(summary, tuple(findings), tuple(pages))


# -------------------------------------------------------------------------------------------------- steering
def run_steering(ctx: StageContext, page_dir: Path, scratch: Path) -> StageOutcome:
    from collections import Counter

    from mmlens.steer import (
        FlipTarget,
        VQAExample,
        answer_labels,
        capture_examples,
        evaluate_vectors,
        save_vectors,
        shuffled_vector,
        vectors_from_capture,
        write_report,
    )

    cfg = ctx.config.steering
    questions = ctx.questions(cfg.n_items)
    examples = [VQAExample(ctx.image(q["record"]), q["question"], q["answer"], q["answer_type"], q["template"])
                for q in questions]
    half = len(examples) // 2
    build, held_out = examples[:half], examples[half:]
    yes_no_types = Counter(e.answer_type for e in examples if e.answer.strip().lower() in ("yes", "no"))
    if not yes_no_types:
        raise NotApplicable(f"none of the {len(examples)} questions drawn for steering (n_items) is a yes/no "
                            "question: no yes->no vector to build")
    answer_type = yes_no_types.most_common(1)[0][0] or None
    layer = (cfg.layer if cfg.layer is not None else ctx.model.num_layers // 2) % ctx.model.num_layers
    cap = capture_examples(ctx.model, build, [layer], max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                           progress=False)
    labels = answer_labels(cap.generated, build)
    if not {"yes", "no"} <= set(labels):
        raise NotApplicable("the model does not answer both 'yes' and 'no' correctly on the yes/no questions of the "
                            "build half: no yes->no mean difference to take")
    vector = vectors_from_capture(cap, labels, "yes", "no", layers=[layer], model=ctx.config.model)[layer]
    rows = [labels[i] for i in cap.sample_index.tolist()]
    control = shuffled_vector(cap.layer(layer), rows, vector.source, vector.target, layer=layer,
                              seed=ctx.config.seed, model=ctx.config.model, position=vector.position)
    save_vectors(scratch / "yes-no.safetensors", [vector, control])
    result = evaluate_vectors(ctx.model, held_out, [vector, control], FlipTarget("yes", "no", answer_type),
                              alphas=cfg.alphas, random_seed=ctx.config.seed, max_new_tokens=cfg.max_new_tokens,
                              batch_size=cfg.batch_size, progress=False)
    result["model"] = ctx.config.model
    write_report(result, page_dir, held_out, title=f"Steering {ctx.config.model}: yes -> no at layer {layer}")
    best = result["vectors"][0]
    at = best["at_best"]
    flip = {kind: at.get(kind, {}).get("flip_rate") for kind in ("steer", "random", "shuffled", "logit_bias")}
    summary: dict[str, Any] = {"layer": layer, "n_build": len(build), "n_eval": len(held_out),
                               "alpha": best["best_alpha"], "flip_rate": flip,
                               "n_source": at["steer"].get("n_source"),
                               "other_types_acc_drop": at["steer"].get("other_types_acc_drop")}
    pct = _percent
    n_source = int(at["steer"].get("n_source") or 0)
    if n_source == 0:
        findings = [Finding(f"A yes->no steering vector was built at layer {layer}, but the model answers 'yes' to "
                            "none of the held-out yes/no questions: no answer to flip, no measurement.")]
    else:
        drop = at["steer"].get("other_types_acc_drop")
        findings = [Finding(
            f"A yes->no steering vector at layer {layer} (alpha {best['best_alpha']:g}, chosen on the same held-out "
            f"questions) flips {pct(flip['steer'])} of the {n_source} held-out 'yes' answers, against "
            f"{pct(flip['random'])} for a random direction, {pct(flip['shuffled'])} for shuffled labels and "
            f"{pct(flip['logit_bias'])} for a logit bias"
            + (f"; accuracy on the other answer types changes by {-drop:+.2f}." if _finite(drop) is not None
               else "."))]
    pages = ["index.html"]
    if ctx.finetuned is not None:
        extra = _finetune_steering(ctx, layer, page_dir / "finetune")
        summary["finetuning"] = extra
        pages.append("finetune/index.html")
        (p_lo, p_hi), (r_lo, r_hi) = extra["gain_over_plain_ci"], extra["gain_over_random_ci"]
        moved = p_lo > 0 and r_lo > 0
        findings.append(Finding(
            f"The fine-tuning shift vector as steering (layer {layer}, best alpha {extra['best_alpha']:g}, chosen on "
            "the same images) "
            + ("moves the original model's descriptions toward the fine-tuned model's" if moved else
               "does not measurably move the original model's descriptions toward the fine-tuned model's")
            + f": word overlap {extra['overlap_steered']:.2f} against {extra['overlap_plain']:.2f} unsteered "
            f"(gain interval [{p_lo:+.3f}, {p_hi:+.3f}]) and {extra['overlap_random']:.2f} with a random direction of "
            f"the same norm (gain interval [{r_lo:+.3f}, {r_hi:+.3f}]).", "finetune/index.html"))
    return StageOutcome(summary, tuple(findings), tuple(pages))


def _format_interval(interval: tuple[float, float]) -> str:
    return f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"


def _word_overlap(a: str, b: str) -> float:
    """Jaccard similarity of the word sets of two texts (1 = the same words)."""
    wa, wb = set(a.lower().split()), set(b.lower().split())
    return len(wa & wb) / len(wa | wb) if wa | wb else 1.0


def _percent(value: float | None) -> str:
    return "n/a" if _finite(value) is None else f"{value:.0%}"


def _finetune_steering(ctx: StageContext, layer: int, page_dir: Path) -> dict[str, Any]:
    """The fine-tuning shift vector (mean difference of the two models' last-prompt states on "describe the image")
    applied to the original model: do its descriptions move toward the fine-tuned model's, more than with a random
    direction of the same norm? Vector built on half of the images, measured on the other half."""
    from mmlens.align.eval import DESCRIBE_PROMPT
    from mmlens.concepts.capture import PositionKind, PositionRule, common_samples
    from mmlens.steer import (
        SteerConfig,
        Steering,
        VQAExample,
        capture_examples,
        generate_answers,
        random_like,
        shift_vectors,
    )

    cfg = ctx.config.steering
    order = np.random.default_rng(ctx.config.seed).permutation(len(ctx.data))[: cfg.n_describe]
    examples = [VQAExample(ctx.image(int(i)), DESCRIBE_PROMPT, "", "description", "") for i in order]
    half = len(examples) // 2
    build, held_out = examples[:half], examples[half:]
    # each model's mean state over its own generated description: what the fine-tune says differently
    mean_rule = PositionRule(PositionKind.GENERATED_MEAN)
    cap_a = capture_examples(ctx.model, build, [layer], position=mean_rule, max_new_tokens=cfg.describe_tokens,
                             batch_size=cfg.batch_size, progress=False)
    cap_b = capture_examples(ctx.finetuned, build, [layer], position=mean_rule, max_new_tokens=cfg.describe_tokens,
                             batch_size=cfg.batch_size, progress=False)
    cap_a, cap_b = common_samples(cap_a, cap_b)
    shift = shift_vectors(cap_a.layer(layer), cap_b.layer(layer), layer=layer, model=ctx.config.model,
                          position="generated_mean", finetuned=str(ctx.config.finetuned))[0]
    random = random_like(shift, seed=ctx.config.seed)
    kw = {"max_new_tokens": cfg.describe_tokens, "batch_size": cfg.batch_size}
    plain = generate_answers(ctx.model, held_out, **kw)
    tuned = generate_answers(ctx.finetuned, held_out, **kw)

    def overlaps(texts: list[str]) -> np.ndarray:
        return np.array([_word_overlap(t, f) for t, f in zip(texts, tuned)])

    rows, steered_by_alpha, per_image = [], {}, {}
    for alpha in cfg.shift_alphas:
        steered = generate_answers(ctx.model, held_out, Steering((shift,), SteerConfig(alpha)), **kw)
        randomised = generate_answers(ctx.model, held_out, Steering((random,), SteerConfig(alpha)), **kw)
        steered_by_alpha[alpha] = steered
        per_image[float(alpha)] = (overlaps(steered), overlaps(randomised))
        rows.append({"alpha": float(alpha), "overlap_steered": float(per_image[float(alpha)][0].mean()),
                     "overlap_random": float(per_image[float(alpha)][1].mean())})
    best = max(rows, key=lambda r: r["overlap_steered"])
    plain_overlap = overlaps(plain)
    best_steered, best_random = per_image[best["alpha"]]
    # paired over the held-out images: steered minus unsteered, steered minus random direction
    out = {"layer": layer, "n_build": len(build), "n_eval": len(held_out), "overlap_plain": float(plain_overlap.mean()),
           "best_alpha": best["alpha"], "overlap_steered": best["overlap_steered"],
           "overlap_random": best["overlap_random"],
           "gain_over_plain_ci": _paired_interval(best_steered - plain_overlap, ctx.config.seed),
           "gain_over_random_ci": _paired_interval(best_steered - best_random, ctx.config.seed),
           "sweep": rows, "norm": float(shift.norm)}
    report = HtmlReport("Fine-tuning shift vector as steering",
                        subtitle=f"{ctx.config.model} steered toward {ctx.config.finetuned} at layer {layer}, on "
                                 f"descriptions of {len(held_out)} held-out images")
    sec = report.section("How close the steered descriptions come to the fine-tuned model's")
    sec.text("Word overlap = Jaccard similarity of the word sets of a description and the fine-tuned model's "
             "description of the same image, averaged. The random direction has the shift vector's norm and runs at "
             "the same alpha. The best alpha is chosen on these same images (in-sample).", note=True)
    sec.table([{"alpha": 0.0, "overlap_steered": out["overlap_plain"], "overlap_random": out["overlap_plain"]},
               *rows])
    steered = steered_by_alpha[best["alpha"]]
    sec = report.section(f"Examples at alpha {best['alpha']:g}")
    sec.images([ImageCard(held_out[i].image, f"image {i}", (
        CardLine(f"original: {plain[i]}"), CardLine(f"steered: {steered[i]}"),
        CardLine(f"fine-tuned: {tuned[i]}"))) for i in range(min(8, len(held_out)))])
    report.data = {**out, "examples": [{"plain": p, "steered": st, "finetuned": t}
                                       for p, st, t in zip(plain, steered, tuned)]}
    report.write(page_dir)
    return out


# --------------------------------------------------------------------------------------------- hallucination
def run_hallucination(ctx: StageContext, page_dir: Path, scratch: Path) -> StageOutcome:
    from mmlens.align.eval import DESCRIBE_PROMPT, evaluate_files, vocabulary_parser
    from mmlens.align.report import metrics_report

    cfg = ctx.config.hallucination
    records = ctx.data.records[: cfg.n_images]
    pope_rows = [{"image": r["image_path"], "question": p["question"], "label": p["label"],
                  "kind": p.get("kind", "all")}
                 for r in records for p in (r.get("pope") or ()) if isinstance(p, dict)]
    chair_rows = [{"image": r["image_path"], "objects": list(r["objects"]),
                   **({"answer": r["caption"]} if isinstance(r.get("caption"), str) else {})}
                  for r in records if isinstance(r.get("objects"), list) and r["objects"]]
    pope = write_jsonl_atomic(scratch / "pope.jsonl", pope_rows) if pope_rows else None
    chair = write_jsonl_atomic(scratch / "chair.jsonl", chair_rows) if chair_rows else None
    kw = {"pope": str(pope) if pope else None, "chair": str(chair) if chair else None, "batch_size": cfg.batch_size,
              "max_new_tokens": cfg.max_new_tokens}
    results = {ctx.config.model: evaluate_files(ctx.model, **kw)}
    if ctx.finetuned is not None:
        results[str(ctx.config.finetuned)] = evaluate_files(ctx.finetuned, **kw)
    report = metrics_report(results, title=f"Hallucination probes of {ctx.config.model}")
    metrics = results[ctx.config.model]
    kinds = [k for k in ("random", "popular", "adversarial", "all") if f"pope_{k}_acc" in metrics]
    if kinds:
        report.section("POPE accuracy by probe kind").figure(
            _pope_figure(results, kinds), "POPE accuracy per probe kind (adversarial = absent co-occurring objects).")
    if chair_rows:
        shown = [r for r in records if isinstance(r.get("objects"), list) and r["objects"]][:8]
        said = ctx.model.generate([r["image"] for r in shown], [DESCRIBE_PROMPT] * len(shown),
                                  max_new_tokens=cfg.max_new_tokens)
        parser = vocabulary_parser([o for row in chair_rows for o in row["objects"]])
        cards = []
        for record, text in zip(shown, said):
            extra = parser(text) - {str(o).lower() for o in record["objects"]}
            cards.append(ImageCard(record["image"], "objects: " + ", ".join(map(str, record["objects"])), (
                CardLine(f"says: {text}", ok=not extra),
                CardLine("hallucinated: " + (", ".join(sorted(extra)) or "none"), ok=not extra))))
        report.section("Descriptions (red: mentions an absent object)").images(cards)
    report.write(page_dir)

    summary = {name: {k: v for k, v in m.items() if isinstance(v, (int, float))} for name, m in results.items()}
    findings = []
    if "pope_random_acc" in metrics and "pope_adversarial_acc" in metrics:
        gap = metrics["pope_random_acc"] - metrics["pope_adversarial_acc"]
        lo, hi = _accuracy_gap_interval(metrics["pope_random_acc"], _count(pope_rows, "random"),
                                        metrics["pope_adversarial_acc"], _count(pope_rows, "adversarial"))
        summary[ctx.config.model]["pope_gap_ci"] = [lo, hi]
        verdict = ("it is less accurate on probes about co-occurring objects than on random ones" if lo > 0 else
                   "no sign that co-occurring objects are hallucinated more than random ones" if hi >= 0 else
                   "it is more accurate on probes about co-occurring objects than on random ones")
        findings.append(Finding(
            f"POPE adversarial accuracy {metrics['pope_adversarial_acc']:.2f} vs random "
            f"{metrics['pope_random_acc']:.2f} (gap {gap:+.2f}, {INTERVAL_LEVEL:.0%} interval [{lo:+.2f}, {hi:+.2f}]): "
            f"{verdict}; it answers 'yes' to "
            f"{metrics.get('pope_adversarial_yes_ratio', float('nan')):.0%} of the adversarial probes "
            f"({_share_present(pope_rows, 'adversarial'):.0%} of their objects are present)."))
    elif kinds:
        k = kinds[0]
        findings.append(Finding(f"POPE ({k}) accuracy {metrics[f'pope_{k}_acc']:.2f}, yes-ratio "
                                f"{metrics[f'pope_{k}_yes_ratio']:.2f}."))
    if "chair_i" in metrics:
        findings.append(Finding(
            f"In free descriptions {metrics['chair_i']:.1%} of the object mentions are hallucinated (CHAIR_i; "
            f"CHAIR_s {metrics['chair_s']:.2f}) with object recall {metrics['recall']:.2f}"
            + (f"; image-dependence gap {metrics['image_gap']:.2f} nats" if "image_gap" in metrics else "") + "."))
    if ctx.finetuned is not None:
        tuned = results[str(ctx.config.finetuned)]
        names = {"pope_adversarial_acc": "POPE adversarial accuracy", "chair_i": "CHAIR_i",
                 "recall": "object recall"}
        parts = [f"{name} {metrics[key]:.2f} -> {tuned[key]:.2f}" for key, name in names.items()
                 if key in metrics and key in tuned]
        if parts:
            findings.append(Finding(f"After fine-tuning ({ctx.config.finetuned}): " + ", ".join(parts) + "."))
    return StageOutcome(summary, tuple(findings))


def _count(probes: list[dict[str, Any]], kind: str) -> int:
    return sum(p["kind"] == kind for p in probes)


def _accuracy_gap_interval(acc_a: float, n_a: int, acc_b: float, n_b: int) -> tuple[float, float]:
    """Normal-approximation interval of the difference of two accuracies on independent probe sets."""
    from scipy.stats import norm

    if n_a == 0 or n_b == 0:
        return float("nan"), float("nan")
    se = np.sqrt(acc_a * (1 - acc_a) / n_a + acc_b * (1 - acc_b) / n_b)
    z = float(norm.ppf(0.5 + INTERVAL_LEVEL / 2))
    return float(acc_a - acc_b - z * se), float(acc_a - acc_b + z * se)


def _share_present(probes: list[dict[str, Any]], kind: str) -> float:
    labels = [p["label"] == "yes" for p in probes if p["kind"] == kind]
    return float(np.mean(labels)) if labels else float("nan")


def _pope_figure(results: dict[str, dict[str, Any]], kinds: list[str]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.2))
    ax = fig.subplots()
    width = 0.8 / len(results)
    xs = np.arange(len(kinds))
    for j, (name, metrics) in enumerate(results.items()):
        ax.bar(xs + j * width, [metrics.get(f"pope_{k}_acc", 0.0) for k in kinds], width, label=name)
    ax.set_xticks(xs + width * (len(results) - 1) / 2, kinds)
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="grey", linewidth=1, linestyle=":")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


__all__ = ["Finding", "NotApplicable", "StageContext", "StageOutcome", "run_concepts", "run_hallucination", "run_influence",
           "run_shift", "run_steering", "skip_reason"]
