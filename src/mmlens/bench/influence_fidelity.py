"""Fidelity of ECIF on parameter groups inside the towers, against real retraining (the ``fidelity_towers`` tier).

Groups: ``projection`` (the heads), ``last_layers`` (the last transformer layer of each tower) and ``lora_towers``
(peft LoRA on the towers' attention q/v projections), on a memorised model of the ``memorised`` tier. Each group is
fitted from the trained weights with an L2 pull over recorded batches, in two ways:

* ``single``: one recorded partition (the benchmark's former setting);
* ``epochs`` (the paper's Seg): ``epochs`` recorded partitions, one per epoch. The risk sums every epoch's batch
  losses, so a pair is in one batch per epoch; ECIF sums each pair's terms over its batches. Implemented by giving
  the analyzer one slot per (pair, epoch) and scoring a pair as the sum of its slots; removing a pair removes all
  its slots.

Ground truth: leave-one-out and random-half (LDS) retraining with the same partitions, initialisation, L2 anchor
and optimiser (L-BFGS, warm start from the fit). Spearman correlations with 95 % bootstrap intervals over the
left-out pairs (paired between methods).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from mmlens.influence.analyzer import InfluenceAnalyzer
from mmlens.influence.config import FitArguments, HessianSolver, InfluenceArguments
from mmlens.influence.data import BatchPartition, PairData
from mmlens.influence.solvers import InverseOperator
from mmlens.influence.task import ContrastiveTask, HeadTask, ModelTask, attach_lora

Log = Callable[[str], None]
GROUPS = ("projection", "last_layers", "lora_towers")


@dataclass(frozen=True)
class FidelityConfig:
    groups: tuple[str, ...] = GROUPS
    modes: tuple[str, ...] = ("single", "epochs")
    n_pairs: int = 128  # training pairs of the fidelity problem (the first ones of the unit's pairs)
    epochs: int = 3
    batch_size: int = 32
    l2: float = 10.0
    n_val: int = 64
    n_loo: int = 30
    n_lds: int = 10
    lds_fraction: float = 0.5
    lora_rank: int = 4
    n_boot: int = 1000
    seed: int = 0


def epoch_analyzer(
    task: ContrastiveTask,
    pairs: PairData,
    epochs: int,
    batch_size: int,
    l2: float,
    seed: int,
    args: InfluenceArguments,
) -> InfluenceAnalyzer:
    """An analyzer whose risk sums ``epochs`` recorded partitions of ``pairs`` (slot ``n + e * N`` is pair n in
    epoch e); with ``epochs=1`` the ordinary single-partition analyzer."""
    n = len(pairs)
    encoded = task.encode(pairs)
    slots = PairData(pairs.images * epochs, pairs.captions * epochs)
    batches: list[tuple[int, ...]] = []
    for e in range(epochs):
        part = BatchPartition.random(n, batch_size, seed + 1000 * e)
        batches += [tuple(i + e * n for i in b) for b in part.batches]
    return InfluenceAnalyzer(
        task,
        slots,
        args=args,
        fit_args=FitArguments(batch_size=batch_size, l2=l2, seed=seed),
        partition=BatchPartition(tuple(batches), seed),
        encoded={k: torch.cat([v] * epochs) for k, v in encoded.items()},
    )


def pair_slots(indices, n: int, epochs: int) -> np.ndarray:
    """The analyzer slots of pairs ``indices`` (one per epoch)."""
    idx = np.asarray(indices, dtype=np.int64)
    return np.concatenate([idx + e * n for e in range(epochs)])


def per_pair(values: np.ndarray, n: int, epochs: int) -> np.ndarray:
    """Slot values [N * epochs, ...] summed into pair values [N, ...]."""
    return values.reshape(epochs, n, *values.shape[1:]).sum(0)


def spearman_interval(pred: np.ndarray, actual: np.ndarray, n_boot: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    mean = float(spearmanr(pred, actual)[0])
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(len(pred), size=len(pred))
        if np.std(pred[idx]) > 0 and np.std(actual[idx]) > 0:
            draws.append(spearmanr(pred[idx], actual[idx])[0])
    lo, hi = np.percentile(draws, [2.5, 97.5]) if draws else (np.nan, np.nan)
    return {"mean": round(mean, 4), "ci": [round(float(lo), 4), round(float(hi), 4)]}


def make_task(adapter, group: str, cfg: FidelityConfig) -> ContrastiveTask:
    if group == "projection":
        return HeadTask(adapter)
    if group == "last_layers":
        return ModelTask(adapter, "last_k_layers", k=1, dtype="float64")
    if group == "lora_towers":
        return ModelTask(
            attach_lora(adapter, rank=cfg.lora_rank, targets=("q_proj", "v_proj"), seed=cfg.seed),
            "lora",
            dtype="float64",
        )
    raise ValueError(f"unknown group {group!r}")


def _identity() -> InverseOperator:
    return InverseOperator(lambda x: x, {"solver": "identity"}, True)


def group_fidelity(
    task: ContrastiveTask, train: PairData, val: PairData, cfg: FidelityConfig, epochs: int, log: Log
) -> dict[str, Any]:
    """LOO and LDS fidelity of ECIF (both roles, exact and prob forms) and TracIn on one group and partition mode."""
    n = len(train)
    args = InfluenceArguments(solver=HessianSolver.CG, seed=cfg.seed)
    an = epoch_analyzer(task, train, epochs, cfg.batch_size, cfg.l2, cfg.seed, args)
    t0 = time.time()
    fit = an.fit()
    fit_s = time.time() - t0
    val_enc = task.encode(val)
    base = np.asarray(an.validation_loss(fit.params, val_enc, per_batch=True))
    t0 = time.time()
    queries, _ = an.measurement_gradients(val, per_batch=True)
    queries = torch.cat([queries.sum(0, keepdim=True), queries])  # row 0: the whole validation loss
    parts, _ = an.query_scores(queries)
    ecif_s = time.time() - t0
    ident, _ = an.query_scores(queries, inverse=_identity())
    preds = {
        "ecif_both_exact": per_pair(parts["pos"] + parts["neg_exact"], n, epochs),
        "ecif_both_prob": per_pair(parts["pos"] + parts["neg_prob"], n, epochs),
        "ecif_pos": per_pair(parts["pos"], n, epochs),
        "tracin_gradient_dot": per_pair(ident["pos"] + ident["neg_prob"], n, epochs),
    }
    rng = np.random.default_rng(cfg.seed + 5)
    loo = rng.choice(n, size=min(cfg.n_loo, n), replace=False)
    t0 = time.time()
    actual = np.array(
        [
            an.validation_loss(an.retrain(remove=pair_slots([i], n, epochs), warm_start=True), val_enc) - base.sum()
            for i in loo
        ]
    )
    loo_retrain_s = (time.time() - t0) / len(loo)
    halves = [rng.choice(n, size=int(cfg.lds_fraction * n), replace=False) for _ in range(cfg.n_lds)]
    actual_lds = np.stack(
        [
            np.asarray(
                an.validation_loss(
                    an.retrain(remove=pair_slots(h, n, epochs), warm_start=True), val_enc, per_batch=True
                )
            )
            for h in halves
        ]
    )
    out: dict[str, Any] = {}
    for name, p in preds.items():
        lds = [spearmanr([p[h, 1 + b].sum() for h in halves], actual_lds[:, b])[0] for b in range(actual_lds.shape[1])]
        out[name] = {
            "loo_spearman": spearman_interval(p[loo, 0], actual, cfg.n_boot, cfg.seed),
            "lds": {"mean": round(float(np.nanmean(lds)), 4), "per_val_batch": [round(float(x), 4) for x in lds]},
        }
    log(
        f"  fidelity {epochs} epoch(s), {task.space.size} params: "
        + ", ".join(f"{k} {v['loo_spearman']['mean']}" for k, v in out.items())
    )
    return {
        "methods": out,
        "n_params": task.space.size,
        "n_pairs": n,
        "epochs": epochs,
        "n_loo": len(loo),
        "n_lds": cfg.n_lds,
        "fit_grad_max": fit.grad_norm,
        "cost": {"ecif_s": round(ecif_s, 3), "retrain_s": round(fit_s, 3), "loo_retrain_s": round(loo_retrain_s, 3)},
    }


def fidelity_tier(
    model_folder: Path, train: PairData, val: PairData, cfg: FidelityConfig, work: Path, log: Log
) -> dict[str, Any]:
    """``fidelity_towers[group][mode]`` and ``per_group[group]`` costs for one memorised model. Each finished
    (group, mode) is saved in ``work/fidelity`` (atomically) and reused by a rerun."""
    from mmlens.io import write_json_atomic
    from mmlens.models import ContrastiveModel, load_model

    adapter = load_model(model_folder, expect=ContrastiveModel)
    train = train.subset(range(min(cfg.n_pairs, len(train))))
    val = val.subset(range(min(cfg.n_val, len(val))))
    fidelity: dict[str, Any] = {}
    per_group: dict[str, Any] = {}
    for group in cfg.groups:
        for mode in cfg.modes:
            path = work / "fidelity" / f"{group}-{mode}.json"
            if path.is_file():
                res = json.loads(path.read_text())
            else:
                log(f"fidelity {group} {mode}")
                torch.manual_seed(cfg.seed)
                task = make_task(adapter, group, cfg)
                res = group_fidelity(task, train, val, cfg, cfg.epochs if mode == "epochs" else 1, log)
                write_json_atomic(path, res)
            fidelity.setdefault(group, {})[mode] = res
            if mode == "single":
                cost = res["cost"]
                per_group[group] = {
                    **cost,
                    "ecif_over_retrain": round(cost["ecif_s"] / max(cost["retrain_s"], 1e-9), 3),
                }
    return {"fidelity_towers": fidelity, "per_group": per_group, "config": asdict(cfg)}


__all__ = ["GROUPS", "FidelityConfig", "epoch_analyzer", "fidelity_tier", "group_fidelity", "pair_slots", "per_pair"]
