"""``mmlens bench shift``: ground truth (Gaussians), miniature world (mini-llava), real responses (LLaVA-1.5-13B)
and cost. Every tier compares against baselines measured in the same run and reports what it measures."""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mmlens.shift.analysis import (
    BOUNDS,
    ShiftConfig,
    SplitEmbeddings,
    analyse_embeddings,
    correlation,
    embed_splits,
    fit_estimator,
)
from mmlens.shift.divergence import rjsd, rjsd_test
from mmlens.shift.options import (
    EstimatorData,
    EstimatorKind,
    Fusion,
    LogvarActivation,
    Mixture,
    TermValues,
)
from mmlens.shift.estimators import ESTIMATORS, EstimatorConfig, GaussianTask, MIEstimator, club_from_conditional

# The project's real-response data sits beside the repository (../shared/data/...) when run from its root.
DEFAULT_LLAVA_BENCH_DIR = Path("../shared/data/llava-bench-shift")

GT_DIMS = (4, 16, 64)
GT_MIS = (0.5, 1.0, 2.0, 4.0)


def _gt_config(kind: str, seed: int) -> EstimatorConfig:
    if kind is EstimatorKind.CLUB:
        return EstimatorConfig(kind=EstimatorKind.CLUB, hidden=128, logvar_activation=LogvarActivation.NONE, lr=1e-3, batch_size=256,
                               max_steps=2000, patience=10, seed=seed)
    return EstimatorConfig(kind=kind, hidden=128, lr=1e-3, batch_size=256, eval_batch_size=2000, max_steps=2000,
                           patience=10, seed=seed)


def ground_truth_tier(n_train: int = 10000, n_test: int = 10000, seed: int = 0,
                      dims: tuple[int, ...] = GT_DIMS, mis: tuple[float, ...] = GT_MIS) -> dict[str, Any]:
    """Each estimator on Gaussian pairs with known MI; CLUB's closed form; RJSD properties; EMI vs response noise;
    r(EMID, bound) over synthetic shift scenarios."""
    out: dict[str, Any] = {}
    for kind in ESTIMATORS:
        rows = []
        for d in dims:
            for mi in mis:
                task = GaussianTask(d, mi)
                x, y = task.sample(n_train, seed)
                xt, yt = task.sample(n_test, seed + 1)
                t0 = time.perf_counter()
                est = MIEstimator(_gt_config(kind, seed)).fit(x, y)
                value = est.estimate(xt, yt)
                row = {"dim": d, "mi_true": mi, "estimate": value, "abs_error": abs(value - mi),
                       "seconds": time.perf_counter() - t0, "epochs": est.history_["epochs"]}
                if kind is EstimatorKind.CLUB:
                    mu, lv = task.true_conditional(xt)
                    import torch

                    row["club_true_conditional_closed_form"] = task.club_true_conditional
                    row["club_true_conditional_sample"] = float(club_from_conditional(mu, lv, torch.as_tensor(yt)))
                    row["above_true_mi"] = value > mi
                rows.append(row)
        entry = {"mean_abs_error_nats": float(np.mean([r["abs_error"] for r in rows])),
                 "mean_abs_error_mi_le2_dim_le16": float(np.mean([r["abs_error"] for r in rows
                                                                  if r["mi_true"] <= 2 and r["dim"] <= 16])),
                 "rows": rows}
        if kind is EstimatorKind.CLUB:
            entry["always_above_true_mi"] = all(r["above_true_mi"] for r in rows)
            entry["increasing_in_mi_for_every_dim"] = all(
                all(np.diff([r["estimate"] for r in rows if r["dim"] == d]) > 0) for d in dims)
            entry["closed_form_max_rel_error"] = float(max(
                abs(r["club_true_conditional_sample"] - r["club_true_conditional_closed_form"])
                / r["club_true_conditional_closed_form"] for r in rows))
        out[kind] = entry
    best = min(ESTIMATORS, key=lambda k: out[k]["mean_abs_error_mi_le2_dim_le16"])
    out["best_estimator"] = best
    out["target"] = {"metric": "mean_abs_error_mi_le2_dim_le16 of the best estimator", "threshold": 0.1,
                     "value": out[best]["mean_abs_error_mi_le2_dim_le16"],
                     "met": out[best]["mean_abs_error_mi_le2_dim_le16"] <= 0.1}
    out["rjsd"] = rjsd_checks(seed)
    out["emi_vs_response_noise"] = emi_noise_check(seed)
    out["synthetic_shift_scenarios"] = synthetic_scenarios(seed)
    return out


def rjsd_checks(seed: int = 0, n: int = 200, d: int = 16) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    scales = np.linspace(2.0, 0.3, d)  # anisotropic
    a = rng.standard_normal((n, d)) * scales + 1.0
    b = rng.standard_normal((n, d)) * scales + 1.0
    shifts = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]
    direction = np.zeros(d)
    direction[:4] = 1.0
    out: dict[str, Any] = {"identical_sets": {m: rjsd(a, a, mixture=m) for m in Mixture},
                           "symmetry_abs_diff": abs(rjsd(a, b[:120]) - rjsd(b[:120], a))}
    by_shift = {m: [rjsd(a, b + s * direction, mixture=m) for s in shifts] for m in Mixture}
    out["by_mean_shift"] = {"shifts": shifts, **by_shift,
                            "increasing": {m: bool(all(np.diff(v) > 0)) for m, v in by_shift.items()},
                            "max_equal_mixture": max(by_shift[Mixture.EQUAL]), "ln2": math.log(2),
                            "equal_mixture_le_ln2": max(by_shift[Mixture.EQUAL]) <= math.log(2) + 1e-9}
    # two samples of one distribution: within the permutation null? (bias at small n, both mixtures, sizes 90/30)
    same = {}
    for m in Mixture:
        r = rjsd_test(a[:90], b[:30], mixture=m, n_permutations=200, seed=seed)
        same[m] = r.to_dict() | {"within_null": r.p_value > 0.05}
    out["same_distribution_90_vs_30"] = same
    return out


def _gaussian_world(seed: int, n: int, dv: int = 8, dt: int = 8, dy: int = 8):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((dy, dv + dt)) / math.sqrt(dv + dt) * 2.0
    return rng, a


def emi_noise_check(seed: int = 0, n: int = 2000) -> dict[str, Any]:
    """EMI under two kinds of response degradation, for a frozen CLUB (the reference) and a frozen InfoNCE:
    ``replace`` (a fraction p of responses answer another query) and ``additive`` (y + sigma * noise)."""
    from mmlens.shift.analysis import emi

    rng, a = _gaussian_world(seed, n)
    x = rng.standard_normal((n, a.shape[1])).astype(np.float32)
    y = (x @ a.T + 0.5 * rng.standard_normal((n, a.shape[0]))).astype(np.float32)
    levels = [0.0, 0.25, 0.5, 0.75, 1.0]
    out: dict[str, Any] = {"levels": levels}
    for kind in ("replace", "additive"):
        embs = []
        for p in levels:
            if kind == "replace":
                resp = y.copy()
                hit = rng.random(n) < p
                resp[hit] = y[rng.permutation(np.flatnonzero(hit))]
            else:
                resp = (y + 2 * p * rng.standard_normal(y.shape)).astype(np.float32)
            embs.append(SplitEmbeddings(f"{kind}_{p}", x, x, resp.astype(np.float32), y))
        for est_kind in (EstimatorKind.CLUB, EstimatorKind.INFONCE):
            cfg = ShiftConfig(estimator=_gt_config(est_kind, seed) if est_kind is EstimatorKind.CLUB else
                              replace(_gt_config(est_kind, seed), eval_batch_size=500), n_permutations=0)
            est = fit_estimator(embs, cfg)
            values = [emi(est, e)["emi"] for e in embs]
            out[f"{kind}/{est_kind}"] = {"emi": values, "decreasing": bool(all(np.diff(values) < 0))}
    out["note"] = ("replace: response i is another item's reference with probability p; additive: y + 2p noise "
                   "(sigma_m = 2p). A frozen CLUB scores 2 Cov(y, mu(x)) / sigma^2, so independent additive noise "
                   "cancels between its joint and marginal terms.")
    return out


def synthetic_scenarios(seed: int = 0, n: int = 500) -> dict[str, Any]:
    """30 Gaussian shift scenarios: mean shifts (24) and covariance scalings (6) of the visual (X_v) and text (X_t)
    query blocks (anisotropic, so that they survive the L2 normalisation that every embedding gets); the reference
    answer is the truth Y = A x + eps. Two "models":

    - ``degrading``: the model answers correctly (Y) except that, with probability p = 1 - exp(-shift size), it
      answers another query's answer (it stops depending on the query as the input moves away from ID);
    - ``saturating``: a model fitted on ID that extrapolates badly, Y_model = A tanh(x) + eps.

    Reported: Pearson / Spearman r(EMID, bound) across scenarios for each model and each bound form."""
    rng, a = _gaussian_world(seed, n)
    dv = dt = 8
    cfg = ShiftConfig(estimator=EstimatorConfig(kind=EstimatorKind.CLUB, hidden=128, logvar_activation=LogvarActivation.NONE, seed=seed,
                                                max_steps=2000, patience=10),
                      n_permutations=20, n_bootstrap=20)
    levels = [0.0, 0.5, 1.0, 1.5, 2.0]
    grid = [(v, t, 1.0, 1.0) for v in levels for t in levels]
    grid += [(0.0, 0.0, s, 1.0) for s in (0.5, 2.0, 3.0)] + [(0.0, 0.0, 1.0, s) for s in (0.5, 2.0, 3.0)]
    out: dict[str, Any] = {}
    for model in ("degrading", "saturating"):
        embs = []
        for v, t, sv, st in grid:
            x = rng.standard_normal((n, dv + dt))
            x[:, : dv // 2] *= sv  # anisotropic covariance change of half of each block (visible after L2-norm)
            x[:, dv: dv + dt // 2] *= st
            x[:, :dv] += v
            x[:, dv:] += t
            y_ref = x @ a.T + 0.3 * rng.standard_normal((n, a.shape[0]))
            if model == "degrading":
                size = v + t + abs(math.log(sv)) + abs(math.log(st))
                y_mod = y_ref.copy()
                hit = np.flatnonzero(rng.random(n) < 1 - math.exp(-size))
                y_mod[hit] = y_ref[rng.permutation(hit)]
            else:
                y_mod = np.tanh(x) @ a.T + 0.3 * rng.standard_normal((n, a.shape[0]))
            name = "id" if (v, t, sv, st) == (0, 0, 1, 1) else f"v{v}_t{t}_sv{sv}_st{st}"
            f = lambda m: (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)  # as real embeddings
            fam = ("visual" if (v or sv != 1) else "") + ("text" if (t or st != 1) else "")
            embs.append(SplitEmbeddings(name, f(x), f(x[:, dv:]), f(y_mod), f(y_ref), image=f(x[:, :dv]),
                                        meta={"family": {"visualtext": "joint"}.get(fam, fam or "id")}))
        res = analyse_embeddings(embs, cfg, progress=False)
        ood = [r for r in res.rows if "emid" in r]
        out[model] = {
            "n_scenarios": len(ood),
            "pearson_emid_bound": res.correlations["emid_bound"]["pearson"],
            "spearman_emid_bound": res.correlations["emid_bound"]["spearman"],
            "pearson_emid_bound_by_form": {b: correlation([r["emid"] for r in ood],
                                                          [r["bound_forms"][b] for r in ood])["pearson"]
                                           for b in BOUNDS},
            "rows": [{"split": r["split"], "emid": r["emid"], "bound": r["bound"],
                      "J_v": r["terms"]["J_v"]["value"], "J_t": r["terms"]["J_t"]["value"],
                      "J_Q": r["terms"]["J_Q"]["value"]} for r in ood]}
    return out


# --------------------------------------------------------------------------------------------- real
def _slim_rows(rows: list[dict[str, Any]], extra: dict[str, dict[str, float]] | None = None) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        s = {k: r[k] for k in ("split", "family", "n", "emi", "emi_ci", "mi_model", "mi_reference", "accuracy")
             if k in r}
        if "emid" in r:
            s |= {"emid": r["emid"], "emid_ci": r["emid_ci"], "bound": r["bound"], "bound_forms": r["bound_forms"],
                  "terms": {k: ({kk: t[kk] for kk in ("value", "null_mean", "p_value")} if t else None)
                            for k, t in r["terms"].items()}}
        if extra and r["split"] in extra:
            s["released"] = extra[r["split"]]
        out.append(s)
    return out


def _ablation(embs, cfg: ShiftConfig, est: MIEstimator, released: dict | None, id_index: int = 0) -> dict[str, Any]:
    res = analyse_embeddings(embs, cfg, estimator=est, id_index=id_index, progress=False)
    ood = [r for r in res.rows if "emid" in r]
    out = {"pearson_emid_bound": res.correlations["emid_bound"]["pearson"],
           "pearson_emid_bound_by_form": {b: correlation([r["emid"] for r in ood],
                                                         [r["bound_forms"][b] for r in ood])["pearson"]
                                          for b in BOUNDS}}
    out["emi"] = {r["split"]: r["emi"] for r in res.rows}
    if released:
        names = [r["split"] for r in res.rows if r["split"] in released and "EMI" in released[r["split"]]]
        out["spearman_vs_released_emi"] = correlation([res.row(n)["emi"] for n in names],
                                                      [released[n]["EMI"] for n in names])["spearman"]
    return out


def llava_bench_tier(root: str | Path = DEFAULT_LLAVA_BENCH_DIR, seed: int = 0, n_permutations: int = 100,
                     ablations: bool = True, limit: int | None = None, embedder: Any = None,
                     layer_embedder: Any = None) -> dict[str, Any]:
    """Real LLaVA-1.5-13B responses: per-split EMI with the default embedders and a reference CLUB trained on the
    pooled splits, EMID against the clean split, the text-side bound, agreement with the released numbers."""
    from mmlens.shift.data import load_llava_bench_shift, load_released_results
    from mmlens.shift.embed import EmbeddingLayerTextEmbedder, SentenceEmbedder

    splits = load_llava_bench_shift(root)[:limit]
    released = load_released_results(root)
    t0 = time.perf_counter()
    embedder = embedder or SentenceEmbedder(progress=False)
    embs = embed_splits(splits, embedder)
    t_embed = time.perf_counter() - t0
    cfg = ShiftConfig(n_permutations=n_permutations, n_bootstrap=200, seed=seed)
    t1 = time.perf_counter()
    est = fit_estimator(embs, cfg)
    t_train = time.perf_counter() - t1
    res = analyse_embeddings(embs, cfg, estimator=est, progress=False)
    res.seconds |= {"embed": t_embed, "train_estimator": t_train}
    names = [r["split"] for r in res.rows if r["split"] in released and "EMI" in released[r["split"]]]
    sp = correlation([res.row(n)["emi"] for n in names], [released[n]["EMI"] for n in names], seed=seed)
    ood = [r for r in res.rows if "emid" in r]
    emid_names = [r["split"] for r in ood if r["split"] in released and "EMID" in released[r["split"]]]
    # ordering checks of the released results: sr_7 < sr_4 and KeyboardAug_3 < KeyboardAug_1 (same visual condition)
    order = []
    for r in res.rows:
        for lo, hi in (("sr_7", "sr_4"), ("KeyboardAug_3", "KeyboardAug_1")):
            if r["split"].endswith(lo):
                other = r["split"][: -len(lo)] + hi
                try:
                    order.append(res.row(other)["emi"] > r["emi"])
                except KeyError:
                    pass
    n_pairs = sum(len(s) for s in splits) * 2
    out: dict[str, Any] = {
        "model": "llava-v1.5-13b", "n_splits": len(ood), "id_split": res.id_split, "embedder": embedder.name,
        "estimator": {k: v for k, v in res.estimator_history.items() if not isinstance(v, list)},
        "config": cfg.to_dict(),
        "spearman_vs_released_emi": sp["spearman"], "spearman_vs_released_emi_detail": sp,
        "pearson_emid_bound": res.correlations["emid_bound"]["pearson"],
        "emid_bound_detail": res.correlations["emid_bound"],
        "emid_bound_by_family": {f: c.get("pearson") for f, c in res.correlations["emid_bound_by_family"].items()},
        "spearman_emid_vs_released_emid": correlation([res.row(n)["emid"] for n in emid_names],
                                                      [released[n]["EMID"] for n in emid_names])["spearman"],
        "pearson_released_emid_vs_our_bound": correlation([released[n]["EMID"] for n in emid_names],
                                                          [res.row(n)["bound"] for n in emid_names])["pearson"],
        "text_shift_ordering_agreement": {"agree": int(sum(order)), "pairs": len(order)},
        "seconds": res.seconds, "n_pairs": n_pairs,
        "rows": _slim_rows(res.rows, released),
    }
    out |= llava_bench_synthetic_only(out)
    if ablations:
        small = replace(cfg, n_permutations=min(30, n_permutations), n_bootstrap=20)
        abl = {"bound_forms": {b: correlation([r["emid"] for r in ood], [r["bound_forms"][b] for r in ood])["pearson"]
                               for b in BOUNDS},
               "mixture_equal": _ablation(embs, replace(small, mixture=Mixture.EQUAL), est, released),
               "term_values_excess": _ablation(embs, replace(small, term_values=TermValues.EXCESS), est, released)}
        held = replace(small, estimator_data=EstimatorData.HELD_OUT)
        abl["estimator_held_out"] = _ablation(embs, held, fit_estimator(embs, held), released)
        free = replace(small, estimator=replace(cfg.estimator, logvar_activation=LogvarActivation.NONE))
        abl["club_logvar_unbounded"] = _ablation(embs, free, fit_estimator(embs, free), released)
        for other_seed in (1, 2):
            s_cfg = replace(small, estimator=replace(cfg.estimator, seed=other_seed))
            abl[f"estimator_seed_{other_seed}"] = _ablation(embs, s_cfg, fit_estimator(embs, s_cfg), released)
        seeds = [{r["split"]: r["emi"] for r in res.rows}] + [abl[f"estimator_seed_{k}"]["emi"] for k in (1, 2)]
        spread = [float(np.std([sd[name] for sd in seeds])) for name in seeds[0]]
        ranges = [r["emi"] for r in res.rows]
        abl["estimator_seed_variance"] = {
            "mean_std_of_split_emi_over_3_seeds": float(np.mean(spread)),
            "std_of_emi_across_splits_seed0": float(np.std(ranges)),
            "mean_bootstrap_ci_width": float(np.mean([r["emi_ci"][1] - r["emi_ci"][0] for r in res.rows]))}
        el = embed_splits(splits, layer_embedder or EmbeddingLayerTextEmbedder(progress=False))
        abl["embedding_layer_text_features"] = _ablation(el, small, fit_estimator(el, small), released)
        out["ablations"] = abl
    return out


def llava_bench_synthetic_only(tier: dict[str, Any]) -> dict[str, Any]:
    """The same numbers restricted to the 34 synthetic shifts (visual, text, joint; no translations), the set of
    the released synthetic result (r = 0.579 with images). Computed from the tier's rows."""
    rows = [r for r in tier["rows"] if r.get("family") != "natural"]
    ood = [r for r in rows if "emid" in r]
    with_rel = [r for r in rows if "released" in r and "EMI" in r["released"]]
    # only splits with both released numbers, so that the two lists stay paired
    with_bound = [r["released"] for r in ood if {"EMID", "EMID_UB"} <= r.get("released", {}).keys()]
    return {"synthetic_only": {
        "n_splits": len(ood),
        "pearson_emid_bound": correlation([r["emid"] for r in ood], [r["bound"] for r in ood])["pearson"],
        "spearman_emid_bound": correlation([r["emid"] for r in ood], [r["bound"] for r in ood])["spearman"],
        "pearson_emid_bound_by_form": {b: correlation([r["emid"] for r in ood], [r["bound_forms"][b] for r in ood])
                                       ["pearson"] for b in BOUNDS},
        "spearman_vs_released_emi": correlation([r["emi"] for r in with_rel],
                                                [r["released"]["EMI"] for r in with_rel])["spearman"],
        "released_pearson_emid_bound_with_images": correlation(
            [rel["EMID"] for rel in with_bound], [rel["EMID_UB"] for rel in with_bound])["pearson"]}}


def mini_world_tier(model: str = "zoo:mini-llava", image_model: str = "zoo:mini-clip", n: int = 200,
                    seed: int = 0, n_permutations: int = 50) -> dict[str, Any]:
    from mmlens.shift.data import load_splits
    from mmlens.shift.embed import ClipImageEmbedder, SentenceEmbedder
    from mmlens.shift.generate import GenerateConfig, generate_world_splits

    with tempfile.TemporaryDirectory(prefix="mmlens-shift-world-") as tmp:
        t0 = time.perf_counter()
        generate_world_splits(model, Path(tmp) / "splits", n=n, config=GenerateConfig(seed=seed), progress=False)
        t_gen = time.perf_counter() - t0
        splits = load_splits([Path(tmp) / "splits"], load_images=True)
        splits.sort(key=lambda s: s.name != "clean")
        text = SentenceEmbedder(progress=False)
        image = ClipImageEmbedder(image_model, mode="patch_mean", progress=False)
        t1 = time.perf_counter()
        embs = embed_splits(splits, text, image, fusion=Fusion.CONCAT)
        t_embed = time.perf_counter() - t1
    cfg = ShiftConfig(fusion=Fusion.CONCAT, n_permutations=n_permutations, n_bootstrap=100, seed=seed)
    res = analyse_embeddings(embs, cfg, progress=False)
    acc = res.correlations.get("emi_accuracy", {})
    ood = [r for r in res.rows if "emid" in r]
    # baseline: does the accuracy drop itself track the bound? (the bound's link to a real performance drop)
    id_acc = res.rows[0].get("accuracy")
    out = {"model": model, "image_embedder": image.name, "text_embedder": text.name, "n_items_per_split": n,
           "n_splits": len(ood),
           "pearson_emi_accuracy": acc.get("pearson"), "spearman_emi_accuracy": acc.get("spearman"),
           "emi_accuracy_detail": acc,
           "pearson_emid_bound": res.correlations["emid_bound"]["pearson"],
           "emid_bound_detail": res.correlations["emid_bound"],
           "pearson_emid_bound_by_form": {b: correlation([r["emid"] for r in ood],
                                                         [r["bound_forms"][b] for r in ood])["pearson"]
                                          for b in BOUNDS},
           "pearson_accuracy_drop_bound": correlation([id_acc - r["accuracy"] for r in ood],
                                                      [r["bound"] for r in ood])["pearson"] if id_acc is not None
           else None,
           "baseline_pearson_mi_model_accuracy": correlation([r["mi_model"] for r in res.rows],
                                                             [r["accuracy"] for r in res.rows])["pearson"],
           "seconds": res.seconds | {"generate": t_gen, "embed": t_embed},
           "rows": _slim_rows(res.rows)}
    return out


def cost_tier(llava: dict[str, Any] | None) -> dict[str, Any]:
    if not llava:
        return {}
    s, n = llava["seconds"], llava["n_pairs"]
    per = 1000.0 / n
    return {"source": "llava_bench tier (MiniLM on 2 CPU cores, CLUB reference architecture)", "n_pairs": n,
            "seconds_per_1000_pairs": {"embed": s["embed"] * per, "train_estimator": s["train_estimator"] * per,
                                       "score_with_nulls_and_bootstrap": s["score"] * per}}


TIERS = ("ground_truth", "llava_bench", "mini_world")


def _git_commit() -> dict[str, Any]:
    """The commit of the code that ran (and whether the tree had uncommitted changes), if this is a git clone."""
    import subprocess

    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=20).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "src"],
                               capture_output=True, text=True, check=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head, "dirty": bool(dirty)}


def shift_benchmark(tiers: tuple[str, ...] = TIERS, seed: int = 0,
                    progress_cb=None, llava_bench_dir: str | Path = DEFAULT_LLAVA_BENCH_DIR,
                    command: str | None = None) -> dict[str, Any]:
    """Run the selected tiers; a tier that cannot run (e.g. mini-llava not built) is reported with its error.
    ``tier_runs[tier]`` records the commit, finish time, seconds and command of each tier's run."""
    import datetime

    import torch

    out: dict[str, Any] = {"seed": seed, "torch_threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    runners = {"ground_truth": lambda: ground_truth_tier(seed=seed), "llava_bench": lambda: llava_bench_tier(llava_bench_dir, seed=seed),
               "mini_world": lambda: mini_world_tier(seed=seed)}
    code = _git_commit()
    for tier in tiers:
        if progress_cb:
            progress_cb(tier)
        t = time.perf_counter()
        try:
            out[tier] = runners[tier]()
        except Exception as err:  # noqa: BLE001 - record and keep the other tiers
            from mmlens.errors import MMLensError

            if not isinstance(err, MMLensError):
                raise
            out[tier] = {"error": str(err)}
        out.setdefault("tier_seconds", {})[tier] = time.perf_counter() - t
        out.setdefault("tier_runs", {})[tier] = code | {
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seconds": out["tier_seconds"][tier], "seed": seed, "command": command}
    if "llava_bench" in out and "error" not in out["llava_bench"]:
        out["cost"] = cost_tier(out["llava_bench"])
    out["total_seconds"] = time.perf_counter() - t0
    return out


def merge_tiers(existing: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``existing`` (a file this command wrote, with ``tier_runs``) updated by the tiers of ``new``: the tiers
    run now replace their old entries, the others are kept with their own provenance. Raises if ``existing`` has
    no per-tier provenance (a hand-edited or older file cannot be merged into)."""
    from mmlens.errors import InputError

    if not isinstance(existing.get("tier_runs"), dict) or not all(t in existing["tier_runs"]
                                                                  for t in TIERS if t in existing):
        raise InputError("the existing result file has tiers without per-tier provenance (tier_runs): it was not "
                         "written by this command; rerun every tier with --fresh")
    merged = dict(existing)
    for tier in new.get("tier_runs", {}):
        merged[tier] = new[tier]
        merged["tier_runs"] = {**merged["tier_runs"], tier: new["tier_runs"][tier]}
        merged.setdefault("tier_seconds", {})[tier] = new["tier_seconds"][tier]
    if "cost" in new:
        merged["cost"] = new["cost"]
    if new.get("seed") != existing.get("seed"):
        raise InputError(f"cannot merge a seed-{new.get('seed')} run into a seed-{existing.get('seed')} file; "
                         "use --fresh")
    merged["total_seconds"] = sum(r["seconds"] for r in merged["tier_runs"].values())
    merged["torch_threads"] = new["torch_threads"]
    return merged
