"""``mmlens bench shift``: ground truth (Gaussians), miniature world (mini-llava), real responses (LLaVA-1.5-13B)
and cost. Every tier compares against baselines measured in the same run and reports what it measures."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mmlens.io import json_default, write_json_atomic
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
from mmlens.shift.estimators import ESTIMATORS, EstimatorConfig, GaussianTask, MIEstimator, club_from_conditional
from mmlens.shift.options import (
    EarlyStoppingSplit,
    EstimatorKind,
    Fusion,
    ImageFeatureMode,
    LogvarActivation,
    Mixture,
)

# The project's real-response data sits beside the repository (../shared/data/...) when run from its root.
DEFAULT_LLAVA_BENCH_DIR = Path("../shared/data/llava-bench-shift")

#: Runs one named part of a tier, ``unit(name, compute) -> result``: directly (:func:`run_now`) or through a
#: :class:`RunCheckpoint`, which returns a part finished by an interrupted run instead of recomputing it.
UnitRunner = Callable[[str, Callable[[], Any]], Any]


def run_now(name: str, compute: Callable[[], Any]) -> Any:
    return compute()


class RunCheckpoint:
    """The parts of one benchmark run finished so far, in a JSON file beside the result (written atomically after
    each part). A rerun with the same ``key`` (settings and code: the commit's ``src`` tree, no uncommitted
    changes) takes the finished parts from it and computes the rest; any other key starts over. Each part is kept
    as its JSON form, so a resumed run writes the same file as an uninterrupted one."""

    def __init__(self, path: str | Path, key: dict[str, Any], *, resume: bool = True) -> None:
        self.path, self.key = Path(path), json.loads(json.dumps(key, default=json_default))
        self.units: dict[str, Any] = {}
        self.reused: list[str] = []
        self.note = "new"
        if not self.path.is_file():
            return
        if not resume:
            self.note = "an earlier checkpoint was discarded (--no-resume)"
            return
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            self.note = "an unreadable checkpoint was discarded"
            return
        if not self.resumable:
            self.note = "a checkpoint exists but the code has uncommitted changes in src: starting over"
        elif saved.get("key") != self.key:
            changed = sorted(k for k in self.key if saved.get("key", {}).get(k) != self.key[k])
            self.note = f"a checkpoint of another run was discarded (differs in {', '.join(changed)})"
        else:
            self.units = saved.get("units", {})
            self.note = f"resuming: {len(self.units)} finished parts taken from {self.path}"

    @property
    def resumable(self) -> bool:
        return bool(self.key.get("code", {}).get("src_tree")) and not self.key["code"].get("dirty", True)

    def __call__(self, name: str, compute: Callable[[], Any]) -> Any:
        if name in self.units:
            self.reused.append(name)
            return self.units[name]["value"]
        t0 = time.perf_counter()
        value = json.loads(json.dumps(compute(), default=json_default))
        self.units[name] = {
            "value": value,
            "seconds": time.perf_counter() - t0,
            "finished": _now(),
            "load_average": list(os.getloadavg()),
        }
        write_json_atomic(self.path, {"key": self.key, "units": self.units})
        return value

    def seconds(self, prefix: str) -> float:
        """Seconds spent on the finished parts whose name starts with ``prefix`` (across the runs that made them)."""
        return float(sum(u["seconds"] for n, u in self.units.items() if n.startswith(prefix)))

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


GT_DIMS = (4, 16, 64)
GT_MIS = (0.5, 1.0, 2.0, 4.0)


def _gt_config(kind: EstimatorKind, seed: int) -> EstimatorConfig:
    if kind is EstimatorKind.CLUB:
        return EstimatorConfig(
            kind=EstimatorKind.CLUB,
            hidden=128,
            logvar_activation=LogvarActivation.NONE,
            lr=1e-3,
            batch_size=256,
            max_steps=2000,
            patience=10,
            seed=seed,
        )
    return EstimatorConfig(
        kind=kind, hidden=128, lr=1e-3, batch_size=256, eval_batch_size=2000, max_steps=2000, patience=10, seed=seed
    )


def ground_truth_tier(
    n_train: int = 10000,
    n_test: int = 10000,
    seed: int = 0,
    dims: tuple[int, ...] = GT_DIMS,
    mis: tuple[float, ...] = GT_MIS,
    unit: UnitRunner = run_now,
) -> dict[str, Any]:
    """Each estimator on Gaussian pairs with known MI; CLUB's closed form; RJSD properties; EMI vs response noise;
    r(EMID, bound) over synthetic shift scenarios. ``unit`` runs (or takes from a checkpoint) each part."""
    out: dict[str, Any] = {}
    for kind in ESTIMATORS:
        out[kind] = unit(f"ground_truth/{kind}", partial(_gt_estimator, kind, n_train, n_test, seed, dims, mis))
    best = min(ESTIMATORS, key=lambda k: out[k]["mean_abs_error_mi_le2_dim_le16"])
    out["best_estimator"] = best
    out["target"] = {
        "metric": "mean_abs_error_mi_le2_dim_le16 of the best estimator",
        "threshold": 0.1,
        "value": out[best]["mean_abs_error_mi_le2_dim_le16"],
        "met": out[best]["mean_abs_error_mi_le2_dim_le16"] <= 0.1,
    }
    out["rjsd"] = unit("ground_truth/rjsd", lambda: rjsd_checks(seed))
    out["emi_vs_response_noise"] = unit("ground_truth/emi_vs_response_noise", lambda: emi_noise_check(seed))
    out["synthetic_shift_scenarios"] = unit("ground_truth/synthetic_shift_scenarios", lambda: synthetic_scenarios(seed))
    return out


def _gt_estimator(
    kind: EstimatorKind, n_train: int, n_test: int, seed: int, dims: tuple[int, ...], mis: tuple[float, ...]
) -> dict[str, Any]:
    """One estimator kind on every (dim, MI) Gaussian task."""
    rows = []
    for d in dims:
        for mi in mis:
            task = GaussianTask(d, mi)
            x, y = task.sample(n_train, seed)
            xt, yt = task.sample(n_test, seed + 1)
            t0 = time.perf_counter()
            est = MIEstimator(_gt_config(kind, seed)).fit(x, y)
            value = est.estimate(xt, yt)
            row = {
                "dim": d,
                "mi_true": mi,
                "estimate": value,
                "abs_error": abs(value - mi),
                "seconds": time.perf_counter() - t0,
                "epochs": est.history_["epochs"],
            }
            if kind is EstimatorKind.CLUB:
                mu, lv = task.true_conditional(xt)
                import torch

                row["club_true_conditional_closed_form"] = task.club_true_conditional
                row["club_true_conditional_sample"] = float(club_from_conditional(mu, lv, torch.as_tensor(yt)))
                row["above_true_mi"] = value > mi
            rows.append(row)
    entry = {
        "mean_abs_error_nats": float(np.mean([r["abs_error"] for r in rows])),
        "mean_abs_error_mi_le2_dim_le16": float(
            np.mean([r["abs_error"] for r in rows if r["mi_true"] <= 2 and r["dim"] <= 16])
        ),
        "rows": rows,
    }
    if kind is EstimatorKind.CLUB:
        entry["always_above_true_mi"] = all(r["above_true_mi"] for r in rows)
        entry["increasing_in_mi_for_every_dim"] = all(
            all(np.diff([r["estimate"] for r in rows if r["dim"] == d]) > 0) for d in dims
        )
        entry["closed_form_max_rel_error"] = float(
            max(
                abs(r["club_true_conditional_sample"] - r["club_true_conditional_closed_form"])
                / r["club_true_conditional_closed_form"]
                for r in rows
            )
        )
    return entry


def rjsd_checks(seed: int = 0, n: int = 200, d: int = 16) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    scales = np.linspace(2.0, 0.3, d)  # anisotropic
    a = rng.standard_normal((n, d)) * scales + 1.0
    b = rng.standard_normal((n, d)) * scales + 1.0
    shifts = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]
    direction = np.zeros(d)
    direction[:4] = 1.0
    out: dict[str, Any] = {
        "identical_sets": {m: rjsd(a, a, mixture=m) for m in Mixture},
        "symmetry_abs_diff": abs(rjsd(a, b[:120]) - rjsd(b[:120], a)),
    }
    by_shift = {m: [rjsd(a, b + s * direction, mixture=m) for s in shifts] for m in Mixture}
    out["by_mean_shift"] = {
        "shifts": shifts,
        **by_shift,
        "increasing": {m: bool(all(np.diff(v) > 0)) for m, v in by_shift.items()},
        "max_equal_mixture": max(by_shift[Mixture.EQUAL]),
        "ln2": math.log(2),
        "equal_mixture_le_ln2": max(by_shift[Mixture.EQUAL]) <= math.log(2) + 1e-9,
    }
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
            cfg = ShiftConfig(
                estimator=_gt_config(est_kind, seed)
                if est_kind is EstimatorKind.CLUB
                else replace(_gt_config(est_kind, seed), eval_batch_size=500),
                n_permutations=0,
            )
            est = fit_estimator(embs, cfg)
            values = [emi(est, e)["emi"] for e in embs]
            out[f"{kind}/{est_kind}"] = {"emi": values, "decreasing": bool(all(np.diff(values) < 0))}
    out["note"] = (
        "replace: response i is another item's reference with probability p; additive: y + 2p noise "
        "(sigma_m = 2p). A frozen CLUB scores 2 Cov(y, mu(x)) / sigma^2, so independent additive noise "
        "cancels between its joint and marginal terms."
    )
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
    cfg = ShiftConfig(
        estimator=EstimatorConfig(
            kind=EstimatorKind.CLUB,
            hidden=128,
            logvar_activation=LogvarActivation.NONE,
            seed=seed,
            max_steps=2000,
            patience=10,
        ),
        n_permutations=20,
        n_bootstrap=20,
    )
    levels = [0.0, 0.5, 1.0, 1.5, 2.0]
    grid = [(v, t, 1.0, 1.0) for v in levels for t in levels]
    grid += [(0.0, 0.0, s, 1.0) for s in (0.5, 2.0, 3.0)] + [(0.0, 0.0, 1.0, s) for s in (0.5, 2.0, 3.0)]
    out: dict[str, Any] = {}
    for model in ("degrading", "saturating"):
        embs = []
        for v, t, sv, st in grid:
            x = rng.standard_normal((n, dv + dt))
            x[:, : dv // 2] *= sv  # anisotropic covariance change of half of each block (visible after L2-norm)
            x[:, dv : dv + dt // 2] *= st
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

            def f(m: np.ndarray) -> np.ndarray:  # unit rows, as real embeddings
                return (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)

            fam = ("visual" if (v or sv != 1) else "") + ("text" if (t or st != 1) else "")
            embs.append(
                SplitEmbeddings(
                    name,
                    f(x),
                    f(x[:, dv:]),
                    f(y_mod),
                    f(y_ref),
                    image=f(x[:, :dv]),
                    meta={"family": {"visualtext": "joint"}.get(fam, fam or "id")},
                )
            )
        res = analyse_embeddings(embs, cfg, progress=False)
        ood = [r for r in res.rows if "emid" in r]
        out[model] = {
            "n_scenarios": len(ood),
            "pearson_emid_bound": res.correlations["emid_bound"]["pearson"],
            "spearman_emid_bound": res.correlations["emid_bound"]["spearman"],
            "pearson_emid_bound_by_form": {
                b: correlation([r["emid"] for r in ood], [r["bound_forms"][b] for r in ood])["pearson"] for b in BOUNDS
            },
            "rows": [
                {
                    "split": r["split"],
                    "emid": r["emid"],
                    "bound": r["bound"],
                    "J_v": r["terms"]["J_v"]["value"],
                    "J_t": r["terms"]["J_t"]["value"],
                    "J_Q": r["terms"]["J_Q"]["value"],
                }
                for r in ood
            ],
        }
    return out


# --------------------------------------------------------------------------------------------- real
def _slim_rows(rows: list[dict[str, Any]], extra: dict[str, dict[str, float]] | None = None) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        s: dict[str, Any] = {
            k: r[k]
            for k in (
                "split",
                "family",
                "control",
                "visual_severity",
                "n",
                "emi",
                "emi_ci",
                "emi_seed_std",
                "mi_model",
                "mi_reference",
                "accuracy",
            )
            if k in r
        }
        if "emid" in r:
            s |= {
                "emid_against": r["emid_against"],
                "emid": r["emid"],
                "emid_ci": r["emid_ci"],
                "bound": r["bound"],
                "bound_forms": r["bound_forms"],
                "terms": {
                    k: ({kk: t[kk] for kk in ("value", "null_mean", "p_value")} if t else None)
                    for k, t in r["terms"].items()
                },
            }
        if extra and r["split"] in extra:
            s["released"] = extra[r["split"]]
        out.append(s)
    return out


# Like-for-like families of the LLaVA-Bench grid: splits that share what the offline (text-only) embedders can see.
# EMI rankings include the family's clean reference point (the ID split; the English control for languages).
REAL_FAMILIES: dict[str, Any] = {
    "text": lambda r: r.get("family") in ("id", "text"),
    "visual": lambda r: r.get("family") in ("id", "visual"),
    **{f"visual_severity_{k}": (lambda r, k=k: r.get("visual_severity") == k) for k in (1, 3, 5)},
    "joint": lambda r: r.get("family") == "joint",
    "natural": lambda r: r.get("family") in ("control", "natural"),
    "synthetic": lambda r: r.get("family") in ("id", "text", "visual", "joint"),
}


def _vc(c: dict[str, Any], key: str) -> dict[str, Any]:
    """{value, ci, n} of one coefficient of a :func:`split_correlation` result."""
    return {"value": c.get(key), "ci": c.get(f"{key}_ci"), "n": c.get("n"), "p": c.get(f"{key}_p")}


def reference_club_forward(state: dict[str, Any], x: Any, y: Any) -> float:
    """The official CLUB forward exactly as the checkpoint's README states it, with the N x N mean over j written
    out (float64): positive_i = sum_d -(mu_id - y_id)^2 / 2 / exp(logvar_id), negative_i = sum_d -mean_j
    (y_jd - mu_id)^2 / 2 / exp(logvar_id), I = mean_i (positive_i - negative_i)."""
    import torch

    st = {k: v.double() for k, v in state.items()}
    x, y = torch.as_tensor(x).double(), torch.as_tensor(y).double()

    def mlp(p: str, v: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(v @ st[f"{p}.0.weight"].T + st[f"{p}.0.bias"])
        return hidden @ st[f"{p}.2.weight"].T + st[f"{p}.2.bias"]

    mu, logvar = mlp("p_mu", x), torch.tanh(mlp("p_logvar", x))
    positive = (-((mu - y) ** 2) / 2 / logvar.exp()).sum(1)
    negative = (-((y[None, :, :] - mu[:, None, :]) ** 2).mean(1) / 2 / logvar.exp()).sum(1)
    return float((positive - negative).mean())


def official_checkpoint_check(path: str | Path, seed: int = 0, n: int = 90) -> dict[str, Any]:
    """Load the authors' ``CLUB_global.pt`` into mmlens's CLUB and compare its estimate with
    :func:`reference_club_forward` on fixed random unit inputs (independent and dependent pairs)."""
    import torch

    from mmlens.errors import InputError

    path = Path(path)
    if not path.is_file():
        return {"loaded": False, "path": str(path), "error": "file not found"}
    try:
        est = MIEstimator.load(path)
    except InputError as err:
        return {"loaded": False, "path": str(path), "error": str(err)}
    state = torch.load(path, map_location="cpu", weights_only=True)
    g = torch.Generator().manual_seed(seed)

    def unit(t: torch.Tensor) -> torch.Tensor:
        return t / t.norm(dim=1, keepdim=True)

    if est.dims_ is None:
        return {"loaded": False, "path": str(path), "error": "the loaded estimator has no dimensions"}
    dx, dy = est.dims_
    x = unit(torch.randn(n, dx, generator=g))
    cases = {
        "independent": unit(torch.randn(n, dy, generator=g)),
        "dependent": unit(x[:, :dy] + 0.5 * unit(torch.randn(n, dy, generator=g))),
    }
    diffs, values = {}, {}
    for name, y in cases.items():
        ours, ref = est.estimate(x, y), reference_club_forward(state, x, y)
        diffs[name], values[name] = abs(ours - ref), {"mmlens": ours, "reference_forward": ref}
    _, logvar = est.conditional(x)
    worst = max(diffs.values())
    return {
        "loaded": True,
        "path": str(path),
        "dims": [dx, dy],
        "hidden": est.config.hidden,
        "max_abs_diff_vs_reference_forward": worst,
        "target": 1e-5,
        "met": worst <= 1e-5,
        "values": values,
        "logvar_range_on_random_unit_inputs": [float(logvar.min()), float(logvar.max())],
        "note": "reference forward in float64 with the N x N mean; the checkpoint needs 768-d CLIP/XLM-R "
        "features, which are not available offline, so it is not applied to the real responses here",
    }


def _real_block(name: str, embs: list[SplitEmbeddings], cfg: ShiftConfig, released: dict[str, Any]) -> dict[str, Any]:
    """One text embedder on the real responses: EMI ranks vs the released EMI, r(EMID, bound), by family, ID EMI."""
    from mmlens.shift.analysis import emid_replicates, split_correlation

    t0 = time.perf_counter()
    ens = fit_estimator(embs, cfg)
    t_train = time.perf_counter() - t0
    res = analyse_embeddings(embs, cfg, estimator=ens, progress=False)
    res.seconds["train_estimator"] = t_train
    rows = res.rows
    rel_emi = {n: v["EMI"] for n, v in released.items() if "EMI" in v}
    emid_reps = emid_replicates(res)

    def rank(pred=lambda r: True) -> dict[str, Any]:
        pts = {r["split"]: r["emi"] for r in rows if pred(r) and r["split"] in rel_emi}
        return split_correlation(pts, rel_emi, replicates=res.replicates, seed=cfg.seed)

    def bound(pred=lambda r: True, key="bound") -> dict[str, Any]:
        pts = [r for r in rows if "emid" in r and not r.get("control") and pred(r)]
        return split_correlation(
            {r["split"]: r["emid"] for r in pts}, {r["split"]: r[key] for r in pts}, replicates=emid_reps, seed=cfg.seed
        )

    overall, emid_bound = rank(lambda r: not r.get("control")), bound()
    rel_emid = {n: v["EMID"] for n, v in released.items() if "EMID" in v}
    ours_emid = {r["split"]: r["emid"] for r in rows if "emid" in r and not r.get("control")}
    id_row = rows[0]
    order = []
    for r in rows:
        for lo, hi in (("sr_7", "sr_4"), ("KeyboardAug_3", "KeyboardAug_1")):
            if r["split"].endswith(lo):
                try:
                    other = res.row(r["split"][: -len(lo)] + hi)
                except KeyError:
                    continue
                diff = res.replicates[other["split"]] - res.replicates[r["split"]]
                order.append(
                    {
                        "pair": f"{r['split']} < {other['split']}",
                        "agree": other["emi"] > r["emi"],
                        "diff_ci": [float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))],
                    }
                )
    return {
        "embedder": name,
        "spearman_vs_released_emi": _vc(overall, "spearman"),
        "pearson_emid_bound": _vc(emid_bound, "pearson"),
        "spearman_emid_bound": _vc(emid_bound, "spearman"),
        "spearman_emid_vs_released_emid": _vc(
            split_correlation(ours_emid, rel_emid, replicates=emid_reps, seed=cfg.seed), "spearman"
        ),
        "synthetic": {
            "spearman_vs_released_emi": _vc(rank(REAL_FAMILIES["synthetic"]), "spearman"),
            "pearson_emid_bound": _vc(bound(REAL_FAMILIES["synthetic"]), "pearson"),
        },
        "by_family": {
            f: {
                "spearman_vs_released_emi": _vc(rank(pred), "spearman"),
                "pearson_emid_bound": _vc(bound(pred), "pearson"),
            }
            for f, pred in REAL_FAMILIES.items()
            if f != "synthetic"
        },
        "id_emi": {
            "ours": id_row["emi"],
            "ci": id_row["emi_ci"],
            "seed_std": id_row["emi_seed_std"],
            "released": rel_emi.get(id_row["split"]),
        },
        "control": {r["split"]: {"emid": r["emid"], "emid_ci": r["emid_ci"]} for r in rows if r.get("control")},
        "text_shift_ordering_agreement": {
            "agree": int(sum(o["agree"] for o in order)),
            "pairs": len(order),
            "interval_excludes_0": int(sum(o["diff_ci"][0] > 0 or o["diff_ci"][1] < 0 for o in order)),
            "detail": order,
        },
        "estimator": {
            k: v
            for k, v in res.estimator_history.items()
            if k in ("seeds", "best_epochs") or (k != "members" and not isinstance(v, list))
        },
        "mean_emi_ci_width": float(np.mean([r["emi_ci"][1] - r["emi_ci"][0] for r in rows])),
        "mean_emi_seed_std": float(np.mean([r["emi_seed_std"] for r in rows])),
        "std_of_emi_across_splits": float(np.std([r["emi"] for r in rows])),
        "seconds": res.seconds,
        "rows": _slim_rows(rows, released),
    }


REAL_EMBEDDERS = ("minilm", "lexical", "embedding_layer")


def llava_bench_tier(
    root: str | Path = DEFAULT_LLAVA_BENCH_DIR,
    seed: int = 0,
    n_permutations: int = 20,
    n_estimators: int = 5,
    embedders: tuple[str, ...] = REAL_EMBEDDERS,
    limit: int | None = None,
    official_checkpoint: str | Path | None = None,
    statistics_ablation: bool = True,
    make_embedder: Any = None,
    unit: UnitRunner = run_now,
) -> dict[str, Any]:
    """Real LLaVA-1.5-13B responses, one block per offline text embedder (``minilm`` contextual MiniLM,
    ``lexical`` hashed character n-grams, ``embedding_layer`` MiniLM's embedding layer as the reference's mode):
    EMI per split from an ensemble of ``n_estimators`` reference CLUBs trained on the pooled, deduplicated pairs
    (early stopping by question), EMID against the ID split (translations against the English control), the
    text-side bound, agreement with the released numbers with split-level intervals, overall and by family.
    The first embedder also fills the tier's top-level keys (the previous layout). ``official_checkpoint``:
    the authors' ``CLUB_global.pt`` (default: ``emi-official/CLUB_global.pt`` beside ``root``). ``unit`` runs
    (or takes from a checkpoint) each embedder's block and the ablation."""
    from mmlens.models.embed import text_embedder
    from mmlens.shift.data import load_llava_bench_shift, load_released_results

    root = Path(root)
    splits = load_llava_bench_shift(root)[:limit]
    released = load_released_results(root)
    cfg = ShiftConfig(n_permutations=n_permutations, n_bootstrap=200, seed=seed, n_estimators=n_estimators)
    specs = {"minilm": "minilm", "lexical": "lexical", "embedding_layer": "embedding-layer"}
    make_embedder = make_embedder or (lambda key: text_embedder(specs[key], progress=False))
    out: dict[str, Any] = {
        "model": "llava-v1.5-13b",
        "n_splits": len(splits) - 1,
        "id_split": splits[0].name,
        "control_split": next((s.name for s in splits if s.meta.get("family") == "control"), None),
        "text_embedders": list(embedders),
        "config": cfg.to_dict(),
        "estimator": {"n_seeds": n_estimators, "dedup": cfg.dedup_pairs, "split": str(cfg.early_stopping_split)},
    }
    embedded: dict[str, tuple[str, list[SplitEmbeddings], float]] = {}

    def embed(key: str) -> tuple[str, list[SplitEmbeddings], float]:
        if key not in embedded:
            t0 = time.perf_counter()
            emb = make_embedder(key)
            embedded[key] = (emb.name, embed_splits(splits, emb), time.perf_counter() - t0)
        return embedded[key]

    def block(key: str) -> dict[str, Any]:
        name, embs, t_embed = embed(key)
        result = _real_block(name, embs, cfg, released)
        result["seconds"]["embed"] = t_embed
        return result

    for key in embedders:
        out[key] = unit(f"llava_bench/{key}", partial(block, key))
        if key == embedders[0] and statistics_ablation:
            out["ablation_statistics_off"] = unit(
                "llava_bench/ablation_statistics_off", partial(_statistics_off, key, partial(embed, key), cfg, released)
            )
        embedded.clear()  # one embedder's vectors in memory at a time
    first = out[embedders[0]]
    out["estimator"] |= {
        k: first["estimator"].get(k) for k in ("pairs", "unique_pairs", "best_epochs", "n_train", "n_val")
    }
    out["id_emi"] = {
        "released": first["id_emi"]["released"],
        "ours": {k: {"value": out[k]["id_emi"]["ours"], "ci": out[k]["id_emi"]["ci"]} for k in embedders},
    }
    # previous layout: the first (default) embedder's numbers at the top level
    out |= {
        "embedder": first["embedder"],
        "spearman_vs_released_emi": first["spearman_vs_released_emi"]["value"],
        "pearson_emid_bound": first["pearson_emid_bound"]["value"],
        "seconds": first["seconds"],
        "n_pairs": sum(len(s) for s in splits) * 2,
        "rows": first["rows"],
    }
    best = max(embedders, key=lambda k: out[k]["synthetic"]["spearman_vs_released_emi"]["value"] or -2)
    out["best_offline_embedder"] = {
        "name": best,
        "rule": "highest Spearman vs released EMI on the synthetic splits, chosen on the same data "
        "(no separate validation split exists for this comparison)",
        "synthetic_spearman_vs_released_emi": out[best]["synthetic"]["spearman_vs_released_emi"],
        "target": 0.6,
    }
    path = Path(official_checkpoint) if official_checkpoint else root.parent / "emi-official" / "CLUB_global.pt"
    out["official_checkpoint"] = official_checkpoint_check(path, seed=seed)
    return out


def _statistics_off(
    key: str,
    embedded: Callable[[], tuple[str, list[SplitEmbeddings], float]],
    cfg: ShiftConfig,
    released: dict[str, Any],
) -> dict[str, Any]:
    """The previous pipeline (no dedup, early stopping by pair, one estimator) on the splits as ``embedded()``
    gives them: the ID EMI before the fix."""
    from mmlens.shift.analysis import split_correlation

    embs = embedded()[1]
    old = replace(
        cfg, dedup_pairs=False, early_stopping_split=EarlyStoppingSplit.PAIR, n_estimators=1, n_permutations=0
    )
    res = analyse_embeddings(embs, old, progress=False)
    rel = {n: v["EMI"] for n, v in released.items() if "EMI" in v}
    pts = {r["split"]: r["emi"] for r in res.rows if not r.get("control")}
    return {
        "embedder": key,
        "dedup": False,
        "split": "pair",
        "n_seeds": 1,
        "id_emi": {"value": res.rows[0]["emi"], "ci": res.rows[0]["emi_ci"]},
        "spearman_vs_released_emi": _vc(
            split_correlation(pts, rel, replicates=res.replicates, seed=cfg.seed), "spearman"
        ),
        "training_pairs": res.estimator_history.get("pairs"),
    }


def mini_world_tier(
    model: str = "zoo:mini-llava",
    image_model: str = "zoo:mini-clip",
    n: int = 200,
    seed: int = 0,
    n_permutations: int = 50,
) -> dict[str, Any]:
    from mmlens.bench.world_sets import generate_world_splits
    from mmlens.models.embed import ClipImageEmbedder, SentenceEmbedder
    from mmlens.shift.data import load_splits
    from mmlens.shift.generate import GenerateConfig

    with tempfile.TemporaryDirectory(prefix="mmlens-shift-world-") as tmp:
        t0 = time.perf_counter()
        generate_world_splits(model, Path(tmp) / "splits", n=n, config=GenerateConfig(seed=seed), progress=False)
        t_gen = time.perf_counter() - t0
        splits = load_splits([Path(tmp) / "splits"], load_images=True)
        splits.sort(key=lambda s: s.name != "clean")
        text = SentenceEmbedder(progress=False)
        image = ClipImageEmbedder(image_model, mode=ImageFeatureMode.PATCH_MEAN, progress=False)
        t1 = time.perf_counter()
        embs = embed_splits(splits, text, image, fusion=Fusion.CONCAT)
        t_embed = time.perf_counter() - t1
    cfg = ShiftConfig(fusion=Fusion.CONCAT, n_permutations=n_permutations, n_bootstrap=100, seed=seed)
    res = analyse_embeddings(embs, cfg, progress=False)
    acc = res.correlations.get("emi_accuracy", {})
    ood = [r for r in res.rows if "emid" in r]
    # baseline: does the accuracy drop itself track the bound? (the bound's link to a real performance drop)
    id_acc = res.rows[0].get("accuracy")
    out = {
        "model": model,
        "models_measured": {m: _model_build(m) for m in (model, image_model)},
        "image_embedder": image.name,
        "text_embedder": text.name,
        "n_items_per_split": n,
        "n_splits": len(ood),
        "pearson_emi_accuracy": acc.get("pearson"),
        "spearman_emi_accuracy": acc.get("spearman"),
        "emi_accuracy_detail": acc,
        "pearson_emid_bound": res.correlations["emid_bound"]["pearson"],
        "emid_bound_detail": res.correlations["emid_bound"],
        "pearson_emid_bound_by_form": {
            b: correlation([r["emid"] for r in ood], [r["bound_forms"][b] for r in ood])["pearson"] for b in BOUNDS
        },
        "pearson_accuracy_drop_bound": correlation([id_acc - r["accuracy"] for r in ood], [r["bound"] for r in ood])[
            "pearson"
        ]
        if id_acc is not None
        else None,
        "baseline_pearson_mi_model_accuracy": correlation(
            [r["mi_model"] for r in res.rows], [r["accuracy"] for r in res.rows]
        )["pearson"],
        "seconds": res.seconds | {"generate": t_gen, "embed": t_embed},
        "rows": _slim_rows(res.rows),
    }
    return out


def _model_build(spec: str) -> dict[str, Any]:
    """Which build of a model was measured: its folder and the SHA-256 and time of its ``metrics.json``."""
    import datetime
    import hashlib

    from mmlens.models.loading import resolve_spec

    folder = Path(resolve_spec(spec))
    metrics = folder / "metrics.json"
    if not metrics.is_file():
        return {"folder": str(folder)}
    return {
        "folder": str(folder),
        "metrics_sha256": hashlib.sha256(metrics.read_bytes()).hexdigest(),
        "metrics_written": datetime.datetime.fromtimestamp(metrics.stat().st_mtime, datetime.UTC).isoformat(
            timespec="seconds"
        ),
    }


def cost_tier(llava: dict[str, Any] | None) -> dict[str, Any]:
    if not llava:
        return {}
    s, n = llava["seconds"], llava["n_pairs"]
    per = 1000.0 / n
    return {
        "source": "llava_bench tier (MiniLM on 2 CPU cores, CLUB reference architecture)",
        "n_pairs": n,
        "seconds_per_1000_pairs": {
            "embed": s["embed"] * per,
            "train_estimator": s["train_estimator"] * per,
            "score_with_nulls_and_bootstrap": s["score"] * per,
        },
    }


TIERS = ("ground_truth", "llava_bench", "mini_world")


def _git_commit() -> dict[str, Any]:
    """The commit of the code that ran, the hash of its ``src`` tree (what a checkpoint may be resumed with) and
    whether ``src`` had uncommitted changes, if this is a git clone."""
    import subprocess

    root = Path(__file__).resolve().parents[3]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=20
        ).stdout.strip()

    try:
        head, tree = git("rev-parse", "HEAD"), git("rev-parse", "HEAD:src")
        dirty = git("status", "--porcelain", "--untracked-files=no", "src")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "src_tree": None, "dirty": None}
    return {"commit": head, "src_tree": tree, "dirty": bool(dirty)}


def _machine() -> dict[str, Any]:
    import platform

    import torch

    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "nice": os.nice(0),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def shift_benchmark(
    tiers: tuple[str, ...] = TIERS,
    seed: int = 0,
    progress_cb=None,
    llava_bench_dir: str | Path = DEFAULT_LLAVA_BENCH_DIR,
    command: str | None = None,
    official_checkpoint: str | Path | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Run the selected tiers; a tier that cannot run (e.g. mini-llava not built) is reported with its error.
    ``tier_runs[tier]`` records the commit, finish time, seconds, machine and command of each tier's run.

    ``checkpoint``: a file where every finished part (an estimator of the ground truth, one embedder of the real
    tier, the mini-world tier...) is kept; a rerun with the same settings on the same code resumes from it
    (``resume=False`` starts over). The caller deletes it once the result is written."""
    import torch

    code = _git_commit()
    settings = {
        "tiers": list(tiers),
        "seed": seed,
        "llava_bench_dir": str(Path(llava_bench_dir).resolve()),
        "official_checkpoint": str(Path(official_checkpoint).resolve()) if official_checkpoint else None,
        "mmlens_home": os.environ.get("MMLENS_HOME"),
    }
    unit: UnitRunner = run_now
    ckpt = None
    if checkpoint is not None:
        ckpt = RunCheckpoint(checkpoint, {"settings": settings, "code": code}, resume=resume)
        unit = ckpt
        if progress_cb:
            progress_cb(f"checkpoint {checkpoint}: {ckpt.note}")
    out: dict[str, Any] = {"seed": seed, "torch_threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    runners = {
        "ground_truth": lambda: ground_truth_tier(seed=seed, unit=unit),
        "llava_bench": lambda: llava_bench_tier(
            llava_bench_dir, seed=seed, official_checkpoint=official_checkpoint, unit=unit
        ),
        "mini_world": lambda: unit("mini_world", lambda: mini_world_tier(seed=seed)),
    }
    for tier in tiers:
        if progress_cb:
            progress_cb(f"running tier {tier} ...")
        t = time.perf_counter()
        load_start, reused_before = list(os.getloadavg()), len(ckpt.reused) if ckpt else 0
        try:
            out[tier] = runners[tier]()
        except Exception as err:  # noqa: BLE001 - record and keep the other tiers
            from mmlens.errors import MMLensError

            if not isinstance(err, MMLensError):
                raise
            out[tier] = {"error": str(err)}
        out.setdefault("tier_seconds", {})[tier] = time.perf_counter() - t
        reused = ckpt.reused[reused_before:] if ckpt else []
        out.setdefault("tier_runs", {})[tier] = code | {
            "finished": _now(),
            "seconds": out["tier_seconds"][tier],
            # parts taken from an interrupted run of the same command and code: their own seconds are added above
            "resumed_parts": reused,
            "seconds_of_resumed_parts": float(sum(ckpt.units[n]["seconds"] for n in reused)) if ckpt else 0.0,
            "seed": seed,
            "command": command,
            "machine": _machine() | {"load_average_start": load_start, "load_average_end": list(os.getloadavg())},
        }
        out["tier_seconds"][tier] += out["tier_runs"][tier]["seconds_of_resumed_parts"]
    if "llava_bench" in out and "error" not in out["llava_bench"]:
        out["cost"] = cost_tier(out["llava_bench"])
    out["total_seconds"] = time.perf_counter() - t0
    return out


def merge_tiers(existing: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``existing`` (a file this command wrote, with ``tier_runs``) updated by the tiers of ``new``: the tiers
    run now replace their old entries, the others are kept with their own provenance. Raises if ``existing`` has
    no per-tier provenance (a hand-edited or older file cannot be merged into)."""
    from mmlens.errors import InputError

    if not isinstance(existing.get("tier_runs"), dict) or not all(
        t in existing["tier_runs"] for t in TIERS if t in existing
    ):
        raise InputError(
            "the existing result file has tiers without per-tier provenance (tier_runs): it was not "
            "written by this command; rerun every tier with --fresh"
        )
    merged = dict(existing)
    for tier in new.get("tier_runs", {}):
        merged[tier] = new[tier]
        merged["tier_runs"] = {**merged["tier_runs"], tier: new["tier_runs"][tier]}
        merged.setdefault("tier_seconds", {})[tier] = new["tier_seconds"][tier]
    if "cost" in new:
        merged["cost"] = new["cost"]
    if new.get("seed") != existing.get("seed"):
        raise InputError(
            f"cannot merge a seed-{new.get('seed')} run into a seed-{existing.get('seed')} file; use --fresh"
        )
    merged["total_seconds"] = sum(merged["tier_seconds"].get(t, 0.0) for t in merged["tier_runs"])
    merged["torch_threads"] = new["torch_threads"]
    return merged
