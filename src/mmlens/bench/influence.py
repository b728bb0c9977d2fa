"""``mmlens bench influence``: detection, fidelity against retraining, removal utility and cost, in tiers.

Tiers: ``memorised`` (CLIPs trained end to end on their noisy pairs; :mod:`mmlens.bench.influence_memorised`)
and ``clean_trained`` (below). Each tier run now replaces its keys in the result file and records its provenance in
``tier_runs``; the others are kept.

Models: the zoo's digits-clip and mini-clip. Each is fine-tuned on noisy pairs in the projection-head setting
(frozen towers, cached features, full-batch L-BFGS over a recorded partition, L2 towards the zoo weights), which
makes every retraining a few seconds, so the fidelity subsets are retrained for real.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from mmlens.bench.influence_fidelity import FidelityConfig, fidelity_tier
from mmlens.bench.influence_memorised import (
    MemorisedConfig,
    code_version,
    run_units,
    summarise_memorised_tier,
    trained_model,
    training_pairs,
    unit_order,
    unit_status,
)
from mmlens.errors import InputError
from mmlens.influence.analyzer import InfluenceAnalyzer
from mmlens.influence.baselines import (
    KronfluencePeer,
    clip_score,
    detection_metrics,
    lemon,
    neg_clip_loss,
)
from mmlens.influence.config import (
    FitArguments,
    HessianSolver,
    InfluenceArguments,
    NegForm,
    NoiseKind,
    Role,
)
from mmlens.influence.data import PairData, inject_noise
from mmlens.influence.solvers import InverseOperator
from mmlens.influence.task import ContrastiveTask, HeadTask, attach_lora

# digits that are written alike share a confusable group
DIGIT_CONFUSABLE = MappingProxyType({3: 0, 5: 0, 8: 0, 1: 1, 7: 1, 4: 2, 9: 2, 0: 3, 6: 3, 2: 4})


@dataclass(frozen=True)
class BenchConfig:
    seed: int = 0
    models: tuple[str, ...] = ("digits-clip", "mini-clip")
    rates: tuple[float, ...] = (0.1, 0.2, 0.4)
    noise_kinds: tuple[NoiseKind, ...] = (NoiseKind.RANDOM_SWAP, NoiseKind.CONFUSABLE_SWAP)
    batch_size: int = 64
    l2: float = 300.0  # summed reduction; keeps the head problem well conditioned (near-convex)
    n_val: int = 200
    mini_clip_n_train: int = 1500
    n_loo: int = 50
    n_subsets: int = 20
    subset_fraction: float = 0.1
    n_lds: int = 20
    lds_fraction: float = 0.5
    lora_rank: int = 4
    fidelity_rate: float = 0.2
    removal_fraction: float = 0.1
    n_random_removals: int = 3
    run_peer: bool = True


@dataclass
class _Setup:
    train: PairData
    val: PairData
    accuracy: Callable[[ContrastiveTask, torch.Tensor], float]


def _digits_setup(cfg: BenchConfig) -> _Setup:
    from mmlens.world.digits import digit_class_prompts, digits_pairs

    tr = digits_pairs("train", seed=cfg.seed + 1, image_size=16)
    te = digits_pairs("test", seed=cfg.seed + 1, image_size=16)
    train = PairData(
        tuple(p.image for p in tr),
        tuple(p.caption for p in tr),
        groups=tuple(DIGIT_CONFUSABLE[p.label] for p in tr),
        labels=tuple(p.label for p in tr),
    )
    val = PairData(tuple(p.image for p in te[: cfg.n_val]), tuple(p.caption for p in te[: cfg.n_val]))
    test = te[cfg.n_val :]
    test_images, test_labels = [p.image for p in test], np.array([p.label for p in test])
    prompts = digit_class_prompts()
    cache: weakref.WeakKeyDictionary[ContrastiveTask, tuple] = weakref.WeakKeyDictionary()  # id() could be reused

    def accuracy(task: ContrastiveTask, theta: torch.Tensor) -> float:
        key = task
        if key not in cache:
            cache[key] = (
                task.encode(PairData(tuple(test_images), tuple(prompts[0] for _ in test_images))),
                task.encode(PairData(tuple(test_images[:10]), tuple(prompts))),
            )
        enc_img, enc_txt = cache[key]
        with torch.no_grad():
            params = task.space.unflatten(theta)
            img, _ = task.embed(params, enc_img)
            _, txt = task.embed(params, enc_txt)
        return float(((img @ txt.T).argmax(1).numpy() == test_labels).mean())

    return _Setup(train, val, accuracy)


def _mini_clip_setup(cfg: BenchConfig) -> _Setup:
    from mmlens.zoo import world_of

    world = world_of("zoo:mini-clip")
    rng = np.random.default_rng(cfg.seed + 11)
    scenes = world.sample_scenes(cfg.mini_clip_n_train, "train", start=100_000)
    shape_sets: dict[frozenset, int] = {}
    groups = tuple(shape_sets.setdefault(s.object_classes, len(shape_sets)) for s in scenes)
    train = PairData(
        tuple(world.render(s) for s in scenes), tuple(world.caption(s, rng, "objects") for s in scenes), groups=groups
    )
    val_scenes = world.sample_scenes(cfg.n_val, "test")
    val = PairData(
        tuple(world.render(s) for s in val_scenes), tuple(world.caption(s, rng, "objects") for s in val_scenes)
    )
    pool = world.sample_scenes(100, "test", start=5_000)
    pool_pairs = PairData(
        tuple(world.render(s) for s in pool),
        tuple(world.caption(s, np.random.default_rng(12345 + i), "objects") for i, s in enumerate(pool)),
    )
    cache: weakref.WeakKeyDictionary[ContrastiveTask, dict] = weakref.WeakKeyDictionary()  # id() could be reused

    def accuracy(task: ContrastiveTask, theta: torch.Tensor) -> float:
        if task not in cache:
            cache[task] = task.encode(pool_pairs)
        with torch.no_grad():
            img, txt = task.embed(task.space.unflatten(theta), cache[task])
        best = (img @ txt.T).argmax(1).numpy()
        caps = pool_pairs.captions
        return float(np.mean([caps[j] == caps[i] for i, j in enumerate(best)]))

    return _Setup(train, val, accuracy)


def _corr(pred, actual) -> tuple[float, float]:
    pred, actual = np.asarray(pred, float), np.asarray(actual, float)
    if np.std(pred) == 0 or np.std(actual) == 0:
        return float("nan"), float("nan")
    return round(float(pearsonr(pred, actual)[0]), 4), round(float(spearmanr(pred, actual)[0]), 4)


def _identity() -> InverseOperator:
    return InverseOperator(lambda x: x, {"solver": "identity"}, True)


def _detection_run(setup: _Setup, adapter, cfg: BenchConfig, kind: NoiseKind, rate: float, log) -> tuple[dict, dict]:
    noisy = inject_noise(setup.train, rate, kind, seed=cfg.seed)
    task = HeadTask(adapter)
    an = InfluenceAnalyzer(
        task,
        noisy.data,
        fit_args=FitArguments(batch_size=cfg.batch_size, l2=cfg.l2),
        args=InfluenceArguments(solver=HessianSolver.CG),
    )
    t0 = time.time()
    fit = an.fit()
    fit_s = time.time() - t0
    t0 = time.time()
    scores = an.value(setup.val)
    ecif_s = time.time() - t0
    methods: dict[str, np.ndarray] = {f"ecif_{k}": -v for k, v in scores.variants().items()}  # harmful first
    methods["clipscore"] = clip_score(an)
    methods["neg_clip_loss"] = neg_clip_loss(an)
    methods["lemon"] = lemon(an)
    t0 = time.time()
    methods["tracin_self"] = an.tracin_self_influence()
    tracin_s = time.time() - t0
    peer_s, peer_error = None, None
    if cfg.run_peer:
        t0 = time.time()
        try:
            peer = KronfluencePeer(an).scores(task.encode(setup.val))
            methods["peer_ekfac_value"] = -peer["value"]
            methods["peer_ekfac_self"] = peer["self"]
            peer_s = time.time() - t0
        except Exception as err:  # noqa: BLE001 - the peer library failing must not sink the benchmark: record why
            peer_error = f"{type(err).__name__}: {err}"
    result = {m: detection_metrics(noisy.is_noisy, s) for m, s in methods.items()}
    log(
        f"  {kind.value} {rate}: ecif_both_exact auroc {result['ecif_both_exact']['auroc']}, "
        f"clipscore {result['clipscore']['auroc']}, lemon {result['lemon']['auroc']}"
    )
    extra = {
        "fit_s": fit_s,
        "ecif_s": ecif_s,
        "peer_s": peer_s,
        "tracin_s": tracin_s,
        "peer_error": peer_error,
        "n_noisy": int(noisy.is_noisy.sum()),
        "fit_grad_max": fit.grad_norm,
        "cg_iterations": an.inverse().info["solves"][0]["iterations"],
        "analyzer": an,
        "noisy": noisy,
        "scores": scores,
    }
    return result, extra


def _fidelity(setup: _Setup, adapter, cfg: BenchConfig, lora: bool, log) -> dict:
    noisy = inject_noise(setup.train, cfg.fidelity_rate, NoiseKind.RANDOM_SWAP, seed=cfg.seed)
    task = HeadTask(attach_lora(adapter, rank=cfg.lora_rank, seed=cfg.seed), "lora") if lora else HeadTask(adapter)
    an = InfluenceAnalyzer(
        task,
        noisy.data,
        fit_args=FitArguments(batch_size=cfg.batch_size, l2=cfg.l2),
        args=InfluenceArguments(solver=HessianSolver.CG),
    )
    fit = an.fit()
    n = an.n
    val_enc = task.encode(setup.val)
    base_batches = np.asarray(an.validation_loss(fit.params, val_enc, per_batch=True))
    queries, _ = an.measurement_gradients(setup.val, per_batch=True)
    queries = torch.cat([queries.sum(0, keepdim=True), queries])  # row 0: the whole validation loss
    parts, _ = an.query_scores(queries)
    ident, _ = an.query_scores(queries, inverse=_identity())
    preds: dict[str, np.ndarray] = {}  # [N, 1 + n_val_batches] each
    for form in NegForm:
        preds[f"ecif_both_{form.value}"] = parts["pos"] + parts[f"neg_{form.value}"]
        preds[f"ecif_neg_{form.value}"] = parts[f"neg_{form.value}"]
    preds["ecif_pos"] = parts["pos"]
    preds["tracin_gradient_dot"] = ident["pos"] + ident["neg_prob"]
    peer_error = None
    if cfg.run_peer:
        try:
            peer_value = KronfluencePeer(an).scores(val_enc)["value"]
            preds["peer_ekfac"] = np.stack([peer_value] + [np.full(n, np.nan)] * (queries.shape[0] - 1), 1)
        except Exception as err:  # noqa: BLE001 - a failing peer is recorded, not fatal
            peer_error = f"{type(err).__name__}: {err}"
    rng = np.random.default_rng(cfg.seed + 5)
    # leave-one-out (warm start from the fit, same partition), plus per-role ground truth by masking
    loo = rng.choice(n, size=cfg.n_loo, replace=False)
    actual: dict[str, list[Any]] = {"both": [], "neg": [], "pos": []}
    t0 = time.time()
    for i in loo:
        for role, kw in (("both", {"remove": [i]}), ("neg", {"remove_neg": [i]}), ("pos", {"remove_pos": [i]})):
            theta = an.retrain(warm_start=True, **kw)
            actual[role].append(an.validation_loss(theta, val_enc) - base_batches.sum())
    retrain_s = (time.time() - t0) / (3 * cfg.n_loo)
    subsets = [rng.choice(n, size=int(cfg.subset_fraction * n), replace=False) for _ in range(cfg.n_subsets)]
    actual_subset = [
        an.validation_loss(an.retrain(remove=s, warm_start=True), val_enc) - base_batches.sum() for s in subsets
    ]
    lds_sets = [rng.choice(n, size=int(cfg.lds_fraction * n), replace=False) for _ in range(cfg.n_lds)]
    actual_lds = np.stack(
        [an.validation_loss(an.retrain(remove=s, warm_start=True), val_enc, per_batch=True) for s in lds_sets]
    )  # [n_lds, n_val_batches]
    out = {}
    for name, p in preds.items():
        lp, ls = _corr(p[loo, 0], actual["both"])
        sp, ss = _corr([p[s, 0].sum() for s in subsets], actual_subset)
        if np.isnan(p[:, 1:]).all():
            lds = float("nan")
        else:
            per_batch = [
                spearmanr([p[s, 1 + b].sum() for s in lds_sets], actual_lds[:, b])[0]
                for b in range(actual_lds.shape[1])
            ]
            lds = round(float(np.nanmean(per_batch)), 4)
        out[name] = {"loo_pearson": lp, "loo_spearman": ls, "subset_pearson": sp, "subset_spearman": ss, "lds": lds}
    roles = {"pos_vs_pos_masked": _corr(preds["ecif_pos"][loo, 0], actual["pos"])[1]}
    for form in NegForm:
        roles[f"neg_{form.value}_vs_neg_masked"] = _corr(preds[f"ecif_neg_{form.value}"][loo, 0], actual["neg"])[1]
    log(
        f"  fidelity {'lora' if lora else 'projection'}: "
        + ", ".join(f"{k} {v['loo_spearman']}" for k, v in out.items())
    )
    return {
        "methods": out,
        "role_spearman_vs_masked_retraining": roles,
        "n_params": task.space.size,
        "n_loo": cfg.n_loo,
        "n_subsets": cfg.n_subsets,
        "subset_fraction": cfg.subset_fraction,
        "n_lds": cfg.n_lds,
        "lds_fraction": cfg.lds_fraction,
        "retrain_s": round(retrain_s, 3),
        "peer_error": peer_error,
        "retraining": "warm start from the fit, same partition and initialisation "
        "of the L2 anchor; L-BFGS to convergence",
    }


def _removal(setup: _Setup, cfg: BenchConfig, run: dict, log) -> dict:
    an: InfluenceAnalyzer = run["analyzer"]
    task = an.task
    clean = InfluenceAnalyzer(task, setup.train, fit_args=an.fit_args, args=an.args, partition=an.partition)
    clean_fit = clean.fit()
    k = round(cfg.removal_fraction * an.n)
    scores = run["scores"]  # the detection run's delta_val_loss_if_removed on the same validation pairs
    noisy_fit = an.fitted if an.fitted is not None else an.fit()
    out: dict[str, Any] = {
        "clean": setup.accuracy(task, clean_fit.params),
        "noisy": setup.accuracy(task, noisy_fit.params),
        "n_removed": k,
    }
    for form in (NegForm.PROB, NegForm.EXACT):
        top = np.argsort(scores.role(Role.BOTH, form))[:k]
        out[f"ecif_{form.value}_edit"] = setup.accuracy(task, an.removal_edit(top, form))
        out[f"ecif_{form.value}_retrain"] = setup.accuracy(task, an.retrain(remove=top))
        out[f"ecif_{form.value}_precision_of_removed"] = float(run["noisy"].is_noisy[top].mean())
    rng = np.random.default_rng(cfg.seed + 7)
    randoms = [
        setup.accuracy(task, an.retrain(remove=rng.choice(an.n, k, replace=False)))
        for _ in range(cfg.n_random_removals)
    ]
    out["random_retrain"] = float(np.mean(randoms))
    gap = out["clean"] - out["noisy"]
    for form in (NegForm.PROB, NegForm.EXACT):
        for how in ("edit", "retrain"):
            out[f"gap_recovered_ecif_{form.value}_{how}"] = (
                round((out[f"ecif_{form.value}_{how}"] - out["noisy"]) / gap, 4) if gap > 0 else None
            )
    out["gap_recovered_random_retrain"] = round((out["random_retrain"] - out["noisy"]) / gap, 4) if gap > 0 else None
    log(f"  removal: {out}")
    return {k2: (round(v, 4) if isinstance(v, float) else v) for k2, v in out.items()}


def clean_trained_tier(cfg: BenchConfig = BenchConfig(), log: Callable[[str], None] = print) -> dict:
    """The first regime: noise injected into a heads-only fine-tune pulled back (L2) to a model trained on clean
    captions (the noise is never memorised). Detection, fidelity (projection, LoRA on the projections), removal."""
    from mmlens.models import ContrastiveModel, load_model

    torch.manual_seed(cfg.seed)
    t_start = time.time()
    result: dict = {"detection": {}, "fidelity": {}, "removal": {}, "cost": {}}
    setups = {"digits-clip": _digits_setup, "mini-clip": _mini_clip_setup}
    for name in cfg.models:
        log(f"{name}: building data")
        setup = setups[name](cfg)
        adapter = load_model(f"zoo:{name}", expect=ContrastiveModel)
        det: dict[str, Any] = {}
        result["detection"][name] = det
        for kind in cfg.noise_kinds:
            for rate in cfg.rates:
                metrics, extra = _detection_run(setup, adapter, cfg, kind, rate, log)
                det.setdefault(kind.value, {})[str(rate)] = metrics
                if kind is NoiseKind.RANDOM_SWAP and rate == cfg.fidelity_rate:
                    result["cost"][name] = {
                        "ecif_s": round(extra["ecif_s"], 3),
                        "peer_s": None if extra["peer_s"] is None else round(extra["peer_s"], 3),
                        "retrain_s": round(extra["fit_s"], 3),
                        "n_pairs": len(setup.train),
                        "tracin_s": round(extra["tracin_s"], 3),
                        "n_params": extra["analyzer"].task.space.size,
                        "cg_iterations": extra["cg_iterations"],
                        "peer_error": extra["peer_error"],
                    }
                    result["removal"][name] = _removal(setup, cfg, extra, log)
        if name == cfg.models[0]:
            result["fidelity"]["projection"] = _fidelity(setup, adapter, cfg, lora=False, log=log)
            result["fidelity"]["lora"] = _fidelity(setup, adapter, cfg, lora=True, log=log)
            result["fidelity"]["model"] = name
    result["cost"] = {**result["cost"].get(cfg.models[0], {}), "per_model": result["cost"]}
    result["seconds"] = round(time.time() - t_start, 1)
    result["config"] = {**asdict(cfg), "noise_kinds": [k.value for k in cfg.noise_kinds]}
    return result


TIERS = ("memorised", "fidelity_towers", "clean_trained")
#: top-level keys each tier owns in the result file
TIER_KEYS = {
    "clean_trained": ("detection", "fidelity", "removal", "cost", "config"),
    "memorised": (
        "memorised",
        "traceback",
        "removal_memorised",
        "peer_settings",
        "memorised_units",
        "memorised_status",
    ),
    "fidelity_towers": ("fidelity_towers", "cost_per_group"),
}


def _machine() -> dict[str, Any]:
    import os

    return {"cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}


def peer_settings(l2: float, n_pairs: int, batch_size: int) -> dict[str, Any]:
    """What ECIF and the kronfluence peer were each given in the memorised tier."""
    return {
        "ecif": {
            "parameter_group": "projection heads of the memorised model (image and text)",
            "curvature": "exact Hessian of the summed InfoNCE risk over the recorded partition, by CG "
            "(Hessian-vector products)",
            "prior": f"L2 weight {l2} (summed reduction), in the Hessian and in every retraining",
            "per_pair_gradients": "Pos and Neg role terms with the whole batch in the graph",
            "batches": f"one recorded partition, batch {batch_size}",
        },
        "kronfluence_peer": {
            "parameter_group": "the same projection heads (their Linear modules are the tracked modules)",
            "curvature": "EK-FAC of the empirical Fisher (kronfluence 1.0, use_empirical_fisher=True)",
            "damping_factor": l2 / n_pairs,
            "damping_rule": "ECIF's L2 weight in kronfluence's scale: kronfluence averages its Fisher over the N "
            "training pairs, ECIF sums its Hessian, so (H_sum + l2 I) / N = F_mean + (l2 / N) I",
            "per_pair_gradients": "kronfluence's hooks on the summed batch loss (the method as shipped: both roles "
            "mixed; ECIF spec section 6)",
            "batches": f"the same recorded partition, in order, batch {batch_size}; validation pairs in ECIF's "
            "measurement batches",
        },
    }


def memorised_tier(
    cfg: MemorisedConfig, work: Path, log: Callable[[str], None], deadline: float | None = None, on_unit=None
) -> dict[str, Any]:
    """Run (or resume) the memorised units and summarise every finished one."""
    status = run_units(cfg, work, log, deadline=deadline, on_unit=on_unit)
    return memorised_result(cfg, work, status)


def memorised_result(cfg: MemorisedConfig, work: Path, status: dict[str, list[str]]) -> dict[str, Any]:
    summary = summarise_memorised_tier(cfg, work)
    n_pairs = cfg.n_train_scenes
    return {
        "memorised": summary["detection"],
        "traceback": summary["traceback"],
        "removal_memorised": summary["removal"],
        "peer_settings": peer_settings(cfg.l2, n_pairs, cfg.batch_size),
        "memorised_units": summary["units"],
        "memorised_status": {**status, "config": summary["config"], "mean_cost_s": summary["cost"]},
    }


def merge_result(existing: dict[str, Any] | None, tier: str, tier_result: dict[str, Any], run: dict) -> dict:
    """``existing`` with ``tier``'s keys replaced by ``tier_result`` and its provenance in ``tier_runs``; the other
    tiers are kept with theirs (a file written before per-tier provenance keeps its tiers, marked as such)."""
    merged = dict(existing or {})
    runs = dict(merged.get("tier_runs", {}))
    for other in TIERS:
        if other != tier and other not in runs and any(k in merged for k in TIER_KEYS[other]):
            runs[other] = {
                "commit": None,
                "note": "kept from the file written by an earlier version of this command, before it recorded "
                "per-tier provenance",
                "seconds": merged.get("seconds"),
            }
    for key in TIER_KEYS[tier]:
        merged.pop(key, None)
    merged.update(tier_result)
    runs[tier] = run
    merged["tier_runs"] = runs
    merged.pop("notes", None)
    merged.pop("seconds", None)
    return merged


def influence_benchmark(
    cfg: BenchConfig = BenchConfig(),
    log: Callable[[str], None] = print,
    *,
    tiers: tuple[str, ...] = TIERS,
    memorised: MemorisedConfig = MemorisedConfig(),
    fidelity: FidelityConfig = FidelityConfig(),
    work: Path | None = None,
    existing: dict[str, Any] | None = None,
    command: str | None = None,
    deadline: float | None = None,
    write: Callable[[dict[str, Any]], None] | None = None,
) -> dict:
    """Run the chosen tiers and merge them into ``existing`` (the previous file, or None). ``write(result)`` is
    called whenever a unit or tier finishes (the caller writes atomically), so an interrupted run loses at most
    the unit in progress and a rerun resumes (memorised units are kept in ``work``)."""
    import datetime

    unknown = set(tiers) - set(TIERS)
    if unknown:
        raise InputError(f"unknown tiers {sorted(unknown)}; use {', '.join(TIERS)}")
    work = Path(work) if work is not None else _default_work()
    code = code_version()
    result = dict(existing or {})

    def provenance(seconds: float) -> dict[str, Any]:
        return code | {
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "seconds": round(seconds, 1),
            "command": command,
            "machine": _machine(),
            "work_dir": str(work),
        }

    for tier in tiers:
        t0 = time.time()
        if tier == "memorised":

            def partial(tier: str = tier, t0: float = t0) -> None:
                nonlocal result
                status = unit_status(memorised, work)
                result = merge_result(
                    result, tier, memorised_result(memorised, work, status), provenance(time.time() - t0)
                )
                if write is not None:
                    write(result)

            tier_result = memorised_tier(memorised, work, log, deadline=deadline, on_unit=partial)
        elif tier == "fidelity_towers":
            tier_result = fidelity_towers_tier(memorised, fidelity, work, log)
        else:
            tier_result = clean_trained_tier(cfg, log)
        result = merge_result(result, tier, tier_result, provenance(time.time() - t0))
        if write is not None:
            write(result)
    return result


def fidelity_towers_tier(
    memorised: MemorisedConfig, cfg: FidelityConfig, work: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Fidelity on the groups inside the towers, on the memorised model of the first unit (trained if absent)."""
    kind, rate, seed = unit_order(memorised)[0]
    folder, _ = trained_model(memorised, kind, rate, seed, work, log)
    pairs = training_pairs(memorised, kind, rate, seed)
    res = fidelity_tier(folder, pairs.train, pairs.val, cfg, work / f"{kind}-{rate}-s{seed}", log)
    return {
        "fidelity_towers": {**res["fidelity_towers"], "model": f"{kind}-{rate}-s{seed}", "config": res["config"]},
        "cost_per_group": res["per_group"],
    }


def _default_work() -> Path:
    """``$MMLENS_HOME/bench/influence`` (the models this benchmark trains; not the zoo folder)."""
    import os

    home = Path(os.environ.get("MMLENS_HOME", Path.home() / ".cache" / "mmlens"))
    return home / "bench" / "influence"


PLOT_SCORES = ("ecif_both_exact", "ecif_pos", "ecif_relative", "clipscore", "lemon", "tracin_self", "cleanlab")


def plot_regimes(result: dict[str, Any], path: str | Path, rate: str = "0.2") -> Path | None:
    """Detection AUROC at ``rate`` in the two regimes side by side: the clean-trained heads-only fine-tune
    (mini-clip, one seed, no interval) and the memorised models (mean and 95 % interval over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    memorised = result.get("memorised", {})
    old = result.get("detection", {}).get("mini-clip", {})
    kinds = [("confusable", "confusable_swap"), ("random", "random_swap")]
    panels = [(k, o) for k, o in kinds if rate in memorised.get(f"mini-clip-noisy-{k}", {}).get(k, {})]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, (kind, old_kind) in zip(axes[0], panels):
        mem = memorised[f"mini-clip-noisy-{kind}"][kind][rate]
        names = [n for n in PLOT_SCORES if n in mem]
        x = np.arange(len(names))
        old_vals = [old.get(old_kind, {}).get(rate, {}).get(n, {}).get("auroc", np.nan) for n in names]
        means = [mem[n]["auroc"]["mean"] for n in names]
        lo = [mem[n]["auroc"]["mean"] - mem[n]["auroc"]["ci"][0] for n in names]
        hi = [mem[n]["auroc"]["ci"][1] - mem[n]["auroc"]["mean"] for n in names]
        ax.bar(x - 0.2, old_vals, 0.4, label="clean-trained towers, noisy heads fine-tune (1 seed)", color="#bbbbbb")
        ax.bar(
            x + 0.2,
            means,
            0.4,
            yerr=[lo, hi],
            capsize=3,
            label=f"memorised: trained end to end on the noise ({len(mem['_seeds'])} seeds, 95 % CI)",
            color="#3366aa",
        )
        ax.axhline(0.5, color="k", lw=0.6, ls=":")
        ax.set_xticks(x, [n.replace("ecif_", "ECIF ") for n in names], rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0.3, 1.02)
        ax.set_ylabel("detection AUROC")
        ax.set_title(f"{kind} swaps at {float(rate):.0%}", fontsize=10)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = [
    "DIGIT_CONFUSABLE",
    "TIERS",
    "BenchConfig",
    "clean_trained_tier",
    "influence_benchmark",
    "merge_result",
    "plot_regimes",
]
