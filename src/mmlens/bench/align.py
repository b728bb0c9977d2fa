"""``mmlens bench align``: every alignment arm on ``mini-llava`` with the same data budget, over several seeds.

Arms: ``sft`` (no alignment), ``dpo_substitution`` (POVID-like random object substitution), ``dpo_noisy_image``
(noisy-image teacher forcing), ``dpo_bdhs``, ``online_dpo`` (world-oracle judge), ``mixed_dpo`` (BDHS pairs or
online judged pairs, p = 0.5) and ``online_bdhs``; and two answers to DPO's length bias on the BDHS pairs:
``dpo_bdhs_sft`` (TRL's SFT loss on the chosen answers added with weight 1) and ``dpo_bdhs_ld`` (LD-DPO,
``ld_alpha`` 0.5). Every arm sees the same SFT examples and runs the same number of
DPO steps at the same batch size; the evaluation probes are fixed across arms and seeds (held-out test scenes).
Also measured in the same run: BDHS statistics per try and the cost of batched vs sentence-by-sentence generation.
"""

from __future__ import annotations

import copy
import enum
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from mmlens.align.baselines import (
    noisy_image_pairs,
    substitution_pairs,
    world_substitutions,
)
from mmlens.align.bdhs import BDHSConfig, bdhs_pairs, default_embedder, split_sentences
from mmlens.align.eval import WorldEvalConfig, evaluate_on_world
from mmlens.align.judges import WorldOracleJudge
from mmlens.align.train import DPOSettings, OnlineMode, train_dpo, train_online
from mmlens.align.world_data import world_sft_examples
from mmlens.models.generative import VisionLanguageModel
from mmlens.zoo import world_of


class Arm(enum.StrEnum):
    """One way to align (or not) the SFT model; the value is its key in the benchmark JSON."""

    SFT = "sft"
    DPO_SUBSTITUTION = "dpo_substitution"
    DPO_NOISY_IMAGE = "dpo_noisy_image"
    DPO_BDHS = "dpo_bdhs"
    ONLINE_DPO = "online_dpo"
    MIXED_DPO = "mixed_dpo"
    ONLINE_BDHS = "online_bdhs"
    DPO_BDHS_SFT = "dpo_bdhs_sft"
    DPO_BDHS_LD = "dpo_bdhs_ld"


ARMS: tuple[Arm, ...] = tuple(Arm)
ONLINE_MODES: dict[Arm, OnlineMode] = {
    Arm.ONLINE_DPO: OnlineMode.ONLINE,
    Arm.MIXED_DPO: OnlineMode.MIXED,
    Arm.ONLINE_BDHS: OnlineMode.ONLINE_BDHS,
}
# Arms that train on the BDHS pairs with changed DPO settings (the length-bias remedies).
BDHS_VARIANTS: dict[Arm, dict] = {Arm.DPO_BDHS_SFT: {"sft_weight": 1.0}, Arm.DPO_BDHS_LD: {"ld_alpha": 0.5}}
METRICS: tuple[str, ...] = (
    "pope_adversarial_acc",
    "pope_adversarial_f1",
    "pope_random_acc",
    "yes_ratio",
    "chair_i",
    "chair_s",
    "recall",
    "image_gap",
)


@dataclass(frozen=True)
class AlignBenchConfig:
    model: str = "zoo:mini-llava"
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[Arm, ...] = ARMS
    n_scenes: int = 160  # SFT scenes: a description + 2 yes/no turns each
    # mini-llava has 4 image tokens (one per grid cell): keep one visible (the spec's "1-3 visible tokens")
    bdhs: BDHSConfig = field(default_factory=lambda: BDHSConfig(visible_tokens=1))
    dpo: DPOSettings = field(
        default_factory=lambda: DPOSettings(steps=96, batch_size=16, learning_rate=2e-4, refresh_every=8)
    )
    evaluation: WorldEvalConfig = field(
        default_factory=lambda: WorldEvalConfig(n_pope_scenes=200, n_caption_scenes=150)
    )
    cost_examples: int = 96
    threads: int = 2


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4)}


def _headline(metrics: dict) -> dict[str, float]:
    return {
        "pope_adversarial_acc": metrics["pope_adversarial_acc"],
        "pope_adversarial_f1": metrics["pope_adversarial_f1"],
        "pope_random_acc": metrics["pope_random_acc"],
        "yes_ratio": metrics["pope_adversarial_yes_ratio"],
        "chair_i": metrics["chair_i"],
        "chair_s": metrics["chair_s"],
        "recall": metrics["recall"],
        "image_gap": metrics["image_gap"],
    }


def _plain(config) -> dict:
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in asdict(config).items()}


def _model_record(spec: str) -> dict:
    """Which SFT checkpoint was measured: its folder, the time its metrics were written and its own POPE numbers."""
    import json
    from pathlib import Path

    from mmlens.models.loading import resolve_spec

    folder = Path(resolve_spec(spec))
    path = folder / "metrics.json"
    if not path.is_file():
        return {"path": str(folder)}
    rec = json.loads(path.read_text())
    metrics = rec.get("metrics", {})
    return {
        "path": str(folder),
        "metrics_written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(path.stat().st_mtime)),
        **{
            k: metrics[k]
            for k in ("pope_adversarial_acc", "pope_adversarial_yes_rate", "vqa_acc_overall")
            if k in metrics
        },
    }


def _targets(arms: dict) -> dict:
    def m(arm: str, key: str) -> float:
        return float(arms.get(arm, {}).get(key, {}).get("mean", float("nan")))

    out: dict = {}
    if "sft" in arms and "dpo_bdhs" in arms:
        gain = m("dpo_bdhs", "pope_adversarial_acc") - m("sft", "pope_adversarial_acc")
        drop = m("sft", "recall") - m("dpo_bdhs", "recall")
        yes = m("dpo_bdhs", "yes_ratio")
        out["bdhs_pope_adv_gain_ge_5pts"] = {"measured": round(100 * gain, 2), "met": gain >= 0.05}
        out["bdhs_recall_drop_le_2pts"] = {"measured": round(100 * drop, 2), "met": drop <= 0.02}
        out["bdhs_yes_ratio_in_0.4_0.6"] = {"measured": yes, "met": 0.4 <= yes <= 0.6}
    if {"dpo_bdhs", "dpo_substitution", "dpo_noisy_image"} <= set(arms):
        best = max(m("dpo_substitution", "pope_adversarial_acc"), m("dpo_noisy_image", "pope_adversarial_acc"))
        out["bdhs_beats_baselines_pope_adv"] = {
            "measured": round(m("dpo_bdhs", "pope_adversarial_acc") - best, 4),
            "met": m("dpo_bdhs", "pope_adversarial_acc") > best,
        }
    if {"mixed_dpo", "dpo_bdhs", "online_dpo"} <= set(arms):
        res = {}
        for key in ("pope_adversarial_acc", "recall"):
            best = max(m("dpo_bdhs", key), m("online_dpo", key))
            res[key] = round(m("mixed_dpo", key) - best, 4)
        out["mixed_matches_best_of_offline_online"] = {"measured": res, "met": all(v >= 0 for v in res.values())}
    return out


def _length_bias(arms: dict) -> dict:
    """The length-bias remedies against plain DPO on the same BDHS pairs: recall and POPE-adversarial differences."""
    if Arm.DPO_BDHS not in arms:
        return {}
    base = arms[Arm.DPO_BDHS]
    return {
        arm.value: {
            "settings": BDHS_VARIANTS[arm],
            "recall_minus_dpo_bdhs": round(arms[arm]["recall"]["mean"] - base["recall"]["mean"], 4),
            "pope_adv_minus_dpo_bdhs": round(
                arms[arm]["pope_adversarial_acc"]["mean"] - base["pope_adversarial_acc"]["mean"], 4
            ),
        }
        for arm in BDHS_VARIANTS
        if arm in arms
    }


def align_benchmark(
    config: AlignBenchConfig = AlignBenchConfig(),
    progress: Callable[[str], None] | None = None,
    on_partial: Callable[[dict], object] | None = None,
) -> dict:
    """Run every arm for every seed and return the benchmark record (see the module docstring); ``on_partial``
    receives the record so far (``complete: False``) after each seed, for an atomic checkpoint."""
    from mmlens.models import load_model

    say = progress or (lambda msg: None)
    torch.set_num_threads(config.threads)
    t_start = time.perf_counter()
    sft = load_model(config.model, expect=VisionLanguageModel)
    world = world_of(config.model)
    embedder = default_embedder()
    judge = WorldOracleJudge(world)
    sft_record = _model_record(config.model)

    say("cost: batched vs sentence-by-sentence BDHS")
    cost_examples = world_sft_examples(world, max(1, config.cost_examples // 3), seed=99, start=40000)
    one_try = replace(config.bdhs, max_tries=1)
    batched_pairs, batched = bdhs_pairs(sft, cost_examples, one_try, embedder=embedder, progress=False)
    sequential_pairs, sequential = bdhs_pairs(
        sft, cost_examples, replace(one_try, batch_size=1), embedder=embedder, progress=False
    )
    # The target is about generation: the *_s numbers time the masked generate calls; the *_total_s numbers add
    # the similarity embedding and bookkeeping, which are the same batched code in both runs.
    cost = {
        "n_examples": len(cost_examples),
        "n_sentences": sum(len(split_sentences(e.answer)) for e in cost_examples),
        "bdhs_batched_s": round(batched.generation_seconds, 3),
        "bdhs_sequential_s": round(sequential.generation_seconds, 3),
        "speedup": round(sequential.generation_seconds / max(batched.generation_seconds, 1e-9), 2),
        "bdhs_batched_total_s": round(batched.seconds, 3),
        "bdhs_sequential_total_s": round(sequential.seconds, 3),
        "speedup_total": round(sequential.seconds / max(batched.seconds, 1e-9), 2),
        "same_pairs": [p.rejected for p in batched_pairs] == [p.rejected for p in sequential_pairs],
    }

    say("evaluating the SFT model")
    base_metrics = evaluate_on_world(sft, world, config.evaluation)
    per_seed: dict[str, list[dict]] = {arm: [] for arm in config.arms}
    bdhs_stats: list[dict] = []
    train_logs: dict[str, list[dict]] = {arm: [] for arm in config.arms}
    example_pairs: dict[str, list[dict]] = {}
    n_examples = 0

    def assemble(complete: bool) -> dict:
        done = {arm: rows for arm, rows in per_seed.items() if rows}
        arms = {
            arm: {
                k: _summary([r[k] for r in rows]) for k in (*METRICS, "pope_popular_acc", "pope_adversarial_unparsed")
            }
            for arm, rows in done.items()
        }
        targets = _targets(arms)
        targets["batched_bdhs_ge_3x"] = {"measured": cost["speedup"], "met": cost["speedup"] >= 3.0}
        accepted = np.sum([s["accepted_by_try"] for s in bdhs_stats], axis=0).tolist() if bdhs_stats else []
        return {
            "complete": complete,
            "model": config.model,
            "sft_model_record": sft_record,
            "seeds": sorted({r["seed"] for rows in done.values() for r in rows}),
            "budget": {
                "sft_examples_per_seed": n_examples,
                "dpo_steps": config.dpo.steps,
                "batch_size": config.dpo.batch_size,
                "pairs_seen": config.dpo.steps * config.dpo.batch_size,
            },
            "config": {
                "bdhs": _plain(config.bdhs),
                "dpo": _plain(config.dpo),
                "evaluation": _plain(config.evaluation),
                "n_scenes": config.n_scenes,
            },
            "arms": arms,
            "bdhs_stats": {
                "accepted_by_try": accepted,
                "accepted_fraction_by_try": [round(a / max(1, sum(accepted)), 4) for a in accepted],
                "seconds_per_pair": round(float(np.mean([s["seconds_per_pair"] for s in bdhs_stats])), 5)
                if bdhs_stats
                else None,
                "mean_similarity": round(float(np.mean([s["mean_similarity"] for s in bdhs_stats])), 4)
                if bdhs_stats
                else None,
                "n_dropped": int(sum(s["n_dropped"] for s in bdhs_stats)),
                "per_seed": bdhs_stats,
            },
            "cost": cost,
            "targets": targets,
            "length_bias": _length_bias(arms),
            "per_seed": done,
            "training": {arm: rows for arm, rows in train_logs.items() if rows},
            "example_pairs": example_pairs,
            "sft_examples": base_metrics.get("examples", []),
            "elapsed_s": round(time.perf_counter() - t_start, 1),
        }

    for seed in config.seeds:
        examples = world_sft_examples(world, config.n_scenes, seed=seed, start=20000 + 1000 * seed)
        n_examples = len(examples)
        settings = replace(config.dpo, seed=seed)
        bdhs_cfg = replace(config.bdhs, seed=seed)
        say(f"seed {seed}: {len(examples)} SFT examples, BDHS pairs")
        pairs_bdhs, stats = bdhs_pairs(sft, examples, bdhs_cfg, embedder=embedder, progress=False)
        bdhs_stats.append(stats.to_dict())
        offline = {Arm.DPO_BDHS: pairs_bdhs, **{arm: pairs_bdhs for arm in BDHS_VARIANTS}}
        if Arm.DPO_SUBSTITUTION in config.arms:
            offline[Arm.DPO_SUBSTITUTION] = substitution_pairs(examples, world_substitutions(world), seed=seed)
        if Arm.DPO_NOISY_IMAGE in config.arms:
            offline[Arm.DPO_NOISY_IMAGE] = noisy_image_pairs(sft, examples, seed=seed)
        if seed == config.seeds[0]:
            example_pairs = {
                arm.value: [
                    {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                    for p in pairs[:: max(1, len(pairs) // 8)][:8]
                ]
                for arm, pairs in offline.items()
                if arm not in BDHS_VARIANTS
            }
        for arm in config.arms:
            t0 = time.perf_counter()
            if arm == Arm.SFT:
                metrics = base_metrics
                log: dict = {}
            else:
                say(f"seed {seed}: training {arm.value}")
                policy = VisionLanguageModel(copy.deepcopy(sft.model), sft.processor)
                if arm in offline:
                    trained, log = train_dpo(policy, offline[arm], replace(settings, **BDHS_VARIANTS.get(arm, {})))
                else:
                    trained, log = train_online(
                        policy,
                        examples,
                        ONLINE_MODES[arm],
                        settings,
                        judge=judge,
                        offline_pairs=pairs_bdhs,
                        bdhs=bdhs_cfg,
                        embedder=embedder,
                    )
                metrics = evaluate_on_world(trained, world, config.evaluation)
            steps = log.get("steps", [])
            tail = steps[-max(1, len(steps) // 4) :] if steps else []
            train_logs[arm].append(
                {
                    "seed": seed,
                    "seconds": round(time.perf_counter() - t0, 2),
                    "pope_adversarial_top_answers": metrics["pope_adversarial_top_answers"],
                    "descriptions": [e["description"] for e in metrics.get("examples", [])[:3]],
                    "n_pairs": log.get(
                        "n_pairs", sum(log.get(k, 0) for k in ("online_pairs", "offline_pairs", "bdhs_pairs"))
                    ),
                    **{
                        k: v
                        for k, v in log.items()
                        if k in ("judged", "ties", "online_pairs", "offline_pairs", "bdhs_pairs")
                    },
                    **(
                        {
                            f"final_{k.replace('/', '_')}": round(float(np.mean([s[k] for s in tail if k in s])), 4)
                            for k in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen")
                        }
                        if tail
                        else {}
                    ),
                }
            )
            per_seed[arm].append(
                {
                    **_headline(metrics),
                    "pope_popular_acc": metrics["pope_popular_acc"],
                    "pope_adversarial_unparsed": metrics["pope_adversarial_unparsed_ratio"],
                    "seed": seed,
                }
            )
            say(
                f"seed {seed}: {arm.value} pope_adv_acc={metrics['pope_adversarial_acc']:.3f} recall={metrics['recall']:.3f}"
            )
        if on_partial is not None:
            on_partial(assemble(False))

    return assemble(True)


__all__ = ["ARMS", "Arm", "BDHS_VARIANTS", "METRICS", "AlignBenchConfig", "align_benchmark"]
