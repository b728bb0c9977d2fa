"""The memorised tier of ``mmlens bench influence``: ECIF on CLIPs trained end to end on their noisy pairs.

Each unit (noise kind, rate, seed) trains a small CLIP with the zoo's own recipe function
(:func:`mmlens.zoo.mini_clip.build`, the recipe of ``mini-clip-noisy-*`` at a smaller budget) so that the noise is
fitted the way web noise is, then scores every training pair by ECIF and the baselines and evaluates trace-back and
removal on the same fit. A unit's outcome (per-pair scores, flags, per-item correctness) is saved as one ``.npz``
in the work folder, written atomically: a rerun skips finished units, so a long run resumes where it stopped.
Intervals are computed across the finished seeds by a bootstrap over seeds and items.

The influence group here is the projection heads of the memorised model (the towers' output layers), fitted with
an L2 pull (``l2``, summed reduction) to the trained weights over one recorded partition; the towers themselves are
the model as trained. The fidelity tier (:mod:`mmlens.bench.influence_fidelity`) covers groups inside the towers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from mmlens.errors import ConvergenceError, InputError
from mmlens.influence.analyzer import FitResult, InfluenceAnalyzer
from mmlens.influence.baselines import KronfluencePeer, clip_score, lemon, neg_clip_loss
from mmlens.influence.config import FitArguments, HessianSolver, InfluenceArguments, NegForm, Relative
from mmlens.influence.data import BatchPartition, PairData
from mmlens.influence.task import HeadTask, subset

Log = Callable[[str], None]

#: ECIF rows, the paper's method first (both roles), then the role/form ablations and our additions.
ECIF_SCORES = (
    "ecif_both_exact",
    "ecif_both_prob",
    "ecif_pos",
    "ecif_neg_exact",
    "ecif_neg_prob",
    "ecif_self_influence",
    "ecif_relative",
)
BASELINE_SCORES = (
    "clipscore",
    "neg_clip_loss",
    "lemon",
    "tracin_self",
    "peer_ekfac_value",
    "peer_ekfac_self",
    "cleanlab",
)


@dataclass(frozen=True)
class MemorisedConfig:
    """The memorised tier: which models are trained, how ECIF is fitted, how intervals are drawn."""

    kinds: tuple[str, ...] = ("confusable", "random")  # mini_clip.NOISE_KINDS
    rates: tuple[float, ...] = (0.2, 0.1, 0.4)  # 0.2 first: the target's rate
    seeds: tuple[int, ...] = (0, 1, 2)
    # the zoo recipe (mini_clip.MiniClipConfig) at a budget the benchmark can afford 18 times; the many epochs over
    # few scenes (steps * batch / scenes) are what makes the model memorise its pairs
    n_train_scenes: int = 1000
    steps: int = 400
    train_batch_size: int = 128
    vision_hidden: int = 64
    text_hidden: int = 64
    projection_dim: int = 64
    caption_style: str = "objects"  # the caption of a pair (the build trains on every style's captions)
    # ECIF on the projection heads, fitted from the trained weights
    l2: float = 10.0  # summed reduction
    batch_size: int = 64
    # the fit and every retraining must reach this per-pair gradient tolerance (FitArguments); a unit whose fit does
    # not is refused (ConvergenceError) rather than scored
    tolerance_grad: float = 1e-9
    max_iter: int = 1000
    newton_max_iter: int = 200
    n_val: int = 200  # clean validation pairs (test split of the world)
    # trace-back and removal (confusable models: twin discrimination; random: retrieval in pools of 100)
    n_trace: int = 20
    n_test: int = 2000
    removal_fraction: float = 0.1
    edit_steps: int = 4
    run_peer: bool = True
    n_boot: int = 1000


# --------------------------------------------------------------------------------------------- statistics
def _auroc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC per row of [R, n] label/score arrays (Mann-Whitney with average ranks)."""
    ranks = rankdata(scores, axis=1)
    pos = labels.sum(1)
    neg = labels.shape[1] - pos
    return ((ranks * labels).sum(1) - pos * (pos + 1) / 2) / np.maximum(pos * neg, 1)


def _auprc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision per row (ties broken by order)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    hit = np.take_along_axis(labels, order, 1).astype(float)
    prec = np.cumsum(hit, 1) / np.arange(1, labels.shape[1] + 1)
    return (prec * hit).sum(1) / np.maximum(hit.sum(1), 1)


def _precision_at_k_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Precision among the k highest scores, k = the number of noisy pairs in the row."""
    order = np.argsort(-scores, axis=1, kind="stable")
    hit = np.take_along_axis(labels, order, 1)
    k = labels.sum(1)
    ranks = np.arange(labels.shape[1])[None, :]
    return (hit * (ranks < k[:, None])).sum(1) / np.maximum(k, 1)


METRICS = {"auroc": _auroc_rows, "auprc": _auprc_rows, "precision_at_k": _precision_at_k_rows}


def _interval(values: np.ndarray) -> list[float]:
    return [round(float(np.percentile(values, 2.5)), 4), round(float(np.percentile(values, 97.5)), 4)]


def bootstrap_detection(
    units: list[dict[str, np.ndarray]], names: list[str], n_boot: int, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """{score: {metric: {mean, ci, per_seed}}} and the paired differences, over ``units`` (one per seed: arrays
    ``is_noisy`` and one per score, higher = noisier). Resampling: seeds with replacement, then pairs within each
    drawn seed (the same draw for every score: paired)."""
    rng = np.random.default_rng(seed)
    n_units = len(units)
    per_seed = {
        name: {m: [float(fn(u["is_noisy"][None], u[name][None])[0]) for u in units] for m, fn in METRICS.items()}
        for name in names
    }
    draws: dict[str, dict[str, np.ndarray]] = {name: {m: np.zeros(n_boot) for m in METRICS} for name in names}
    for b in range(n_boot):
        picked = rng.integers(n_units, size=n_units)
        for u_i in picked:
            u = units[u_i]
            idx = rng.integers(len(u["is_noisy"]), size=len(u["is_noisy"]))
            labels = u["is_noisy"][idx][None]
            for name in names:
                for m, fn in METRICS.items():
                    draws[name][m][b] += fn(labels, u[name][idx][None])[0] / n_units
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        out[name] = {
            m: {
                "mean": round(float(np.mean(per_seed[name][m])), 4),
                "ci": _interval(draws[name][m]),
                "per_seed": [round(v, 4) for v in per_seed[name][m]],
            }
            for m in METRICS
        }
        out[name]["_draws"] = draws[name]  # removed before writing; used for paired differences
    return out


def paired_score_difference(result: dict[str, dict[str, Any]], a: str, b: str, metric: str = "auroc") -> dict[str, Any]:
    """Mean and 95 % interval of metric(a) - metric(b) from the same bootstrap draws."""
    diff = result[a]["_draws"][metric] - result[b]["_draws"][metric]
    mean = result[a][metric]["mean"] - result[b][metric]["mean"]
    lo, hi = _interval(diff)
    verdict = f"{a} beats {b}" if lo > 0 else f"{b} beats {a}" if hi < 0 else "no measurable difference"
    return {"mean": round(mean, 4), "ci": [lo, hi], "verdict": verdict}


def bootstrap_mean(per_seed_items: list[np.ndarray], n_boot: int, seed: int = 0) -> dict[str, Any]:
    """Mean over seeds of per-item values, with a bootstrap over seeds and items."""
    rng = np.random.default_rng(seed)
    means = [float(np.mean(v)) for v in per_seed_items]
    draws = np.zeros(n_boot)
    for b in range(n_boot):
        picked = rng.integers(len(per_seed_items), size=len(per_seed_items))
        draws[b] = np.mean([rng.choice(per_seed_items[i], size=len(per_seed_items[i])).mean() for i in picked])
    return {"mean": round(float(np.mean(means)), 4), "ci": _interval(draws), "per_seed": [round(m, 4) for m in means]}


# ----------------------------------------------------------------------------------------------- models
def recipe(cfg: MemorisedConfig, kind: str, rate: float, seed: int):
    """The zoo's ``mini-clip-noisy-<kind>`` recipe at the benchmark's budget (seed varies init, order and noise)."""
    from mmlens.zoo.mini_clip import MiniClipConfig

    return replace(
        MiniClipConfig(),
        noise_kind=kind,
        noise_rate=rate,
        seed=seed,
        n_train_scenes=cfg.n_train_scenes,
        steps=cfg.steps,
        batch_size=cfg.train_batch_size,
        vision_hidden=cfg.vision_hidden,
        text_hidden=cfg.text_hidden,
        projection_dim=cfg.projection_dim,
        warmup=min(200, cfg.steps // 10),
        n_eval_scenes_large=0,
        n_noise_eval=cfg.n_train_scenes,
    )


def trained_model(cfg: MemorisedConfig, kind: str, rate: float, seed: int, work: Path, log: Log) -> tuple[Path, float]:
    """The unit's memorised model folder (trained now unless a finished one is there) and its training seconds."""
    from mmlens.io import atomic_folder
    from mmlens.zoo import mini_clip
    from mmlens.zoo.common import METRICS_FILE, read_record

    folder = work / "models" / f"{kind}-{rate}-s{seed}"
    wanted = recipe(cfg, kind, rate, seed)
    if not (folder / METRICS_FILE).is_file():
        log(f"  training the memorised model {folder.name} (zoo recipe mini_clip.build)")
        with atomic_folder(folder) as tmp:
            mini_clip.build(tmp, wanted)
    record = read_record(folder)
    saved = {k: v for k, v in record.get("config", {}).items() if k != "world"}
    expected = {k: v for k, v in json.loads(json.dumps(asdict(wanted), default=list)).items() if k != "world"}
    if saved != expected:
        differ = sorted(k for k in expected if saved.get(k) != expected[k])
        raise InputError(f"{folder} holds a model of another recipe (differs in {differ}): use another --work-dir")
    return folder, float(record.get("seconds", float("nan")))


@dataclass
class _Pairs:
    world: Any
    scenes: list
    train: PairData
    is_noisy: np.ndarray
    source: list
    val: PairData


def training_pairs(cfg: MemorisedConfig, kind: str, rate: float, seed: int) -> _Pairs:
    """The unit's training pairs exactly as the build drew them (one caption of ``caption_style`` per scene)."""
    from mmlens.zoo import mini_clip

    mcfg = recipe(cfg, kind, rate, seed)
    world = mini_clip.build_world(mcfg)
    scenes = mini_clip.training_scenes(world, mcfg)
    caps, flags, source = mini_clip.training_captions(world, scenes, mcfg)
    col = mcfg.caption_styles.index(cfg.caption_style) * mini_clip.CAPTION_VARIANTS
    train = PairData(tuple(world.render(s) for s in scenes), tuple(c[col] for c in caps))
    rng = np.random.default_rng(10_000 + seed)
    val_scenes = world.sample_scenes(cfg.n_val, "test")
    val = PairData(
        tuple(world.render(s) for s in val_scenes),
        tuple(world.caption(s, rng, cfg.caption_style) for s in val_scenes),
    )
    return _Pairs(world, scenes, train, np.asarray(flags, bool), source, val)


def caption_shapes(caption: str, shapes: tuple[str, ...]) -> frozenset[str]:
    """The shapes a caption names (singular or plural)."""
    from mmlens.world.core import plural

    words = set(caption.split())
    return frozenset(s for s in shapes if s in words or plural(s) in words)


def cleanlab_score(pairs: _Pairs, img: torch.Tensor, txt: torch.Tensor, scale: float) -> tuple[np.ndarray, dict]:
    """Confident learning (cleanlab) on zero-shot class probabilities. A pair's given class is the set of shapes
    its caption names; a class's zero-shot prompt is the mean text embedding of the captions of that class (prompt
    ensembling over the training captions); image probabilities = softmax(scale * cos). Score = 1 - cleanlab's
    label quality (self-confidence); higher = noisier."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    given = [caption_shapes(c, pairs.world.cfg.shapes) for c in pairs.train.captions]
    classes = sorted(set(given), key=lambda s: sorted(s))
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[g] for g in given])
    protos = torch.stack([txt[torch.as_tensor(labels == i)].mean(0) for i in range(len(classes))])
    protos = torch.nn.functional.normalize(protos, dim=1)
    probs = torch.softmax(scale * img @ protos.T, dim=1).double().numpy()
    quality = get_label_quality_scores(labels, probs)
    issues = find_label_issues(labels, probs)
    flagged = pairs.is_noisy[issues]
    info = {
        "n_classes": len(classes),
        "n_flagged_by_cleanlab": int(issues.sum()),
        "precision_of_flagged": round(float(flagged.mean()), 4) if len(flagged) else None,
        "recall_of_flagged": round(float(flagged.sum() / max(1, pairs.is_noisy.sum())), 4),
    }
    return 1.0 - quality, info


# ------------------------------------------------------------------------------------------ test sets
def _twin(world, scene, rng: np.random.Generator):
    """``scene`` with one confusable shape renamed to its look-alike (None if it has none); (twin, "old->new")."""
    from mmlens.zoo.mini_clip import CONFUSABLE_SHAPES

    present = sorted(scene.object_classes & set(CONFUSABLE_SHAPES))
    if not present:
        return None, None
    old = str(rng.choice(present))
    new = CONFUSABLE_SHAPES[old]
    objects = tuple(dataclasses.replace(o, shape=new) if o.shape == old else o for o in scene.objects)
    return dataclasses.replace(scene, objects=objects), f"{old}->{new}"


@dataclass
class _TestSet:
    """Held-out scenes (test split) with their captions, and for confusable models their twins' captions."""

    images: list
    captions: list[str]
    twin_captions: list[str]  # empty for random models
    renames: list[str]


def test_set(world, kind: str, n: int, seed: int, style: str) -> _TestSet:
    rng = np.random.default_rng(20_000 + seed)
    images: list = []
    caps: list[str] = []
    twins: list[str] = []
    renames: list[str] = []
    start = 50_000
    while len(images) < n:
        for scene in world.sample_scenes(n, "test", start=start):
            if len(images) >= n:
                break
            if kind == "confusable":
                twin, rename = _twin(world, scene, rng)
                if twin is None:
                    continue
                twins.append(world.caption(twin, np.random.default_rng(len(images)), style))
                renames.append(rename)
            images.append(world.render(scene))
            caps.append(world.caption(scene, np.random.default_rng(len(images)), style))
        start += n
    return _TestSet(images, caps, twins, renames)


def correct_items(an: InfluenceAnalyzer, theta: torch.Tensor, test: _TestSet, enc: dict) -> np.ndarray:
    """Per test image, 1 if the model gets it right: for confusable models, the image prefers its own caption to
    its twin's (one shape renamed to its look-alike); for random models, its own caption is the top-1 caption
    among the 100 of its pool (identical caption texts count as correct)."""
    with torch.no_grad():
        img, txt = an.task.embed(an.task.space.unflatten(theta), enc)
    n = len(test.images)
    if test.twin_captions:  # encoded as n (image, own caption) rows, then n (image, twin caption) rows
        own = (img[:n] * txt[:n]).sum(1)
        twin = (img[n:] * txt[n:]).sum(1)
        return (own > twin).numpy().astype(float)
    out = np.zeros(n)
    for s in range(0, n, 100):
        sim = img[s : s + 100] @ txt[s : s + 100].T
        best = sim.argmax(1).numpy()
        caps = test.captions[s : s + 100]
        out[s : s + 100] = [caps[j] == caps[i] for i, j in enumerate(best)]
    return out


def encode_test(task: HeadTask, test: _TestSet) -> dict:
    captions = test.captions + test.twin_captions
    images = test.images + test.images[: len(test.twin_captions)]
    return task.encode(PairData(tuple(images), tuple(captions)))


# --------------------------------------------------------------------------------------------- one unit
def _reduced_analyzer(an: InfluenceAnalyzer, removed: np.ndarray, theta: torch.Tensor) -> tuple[InfluenceAnalyzer, Any]:
    """An analyzer over the pairs not in ``removed`` (every other pair kept in its recorded batch), adopting
    ``theta`` as its current parameters."""
    keep = np.setdiff1d(np.arange(an.n), removed)
    new_index = np.full(an.n, -1)
    new_index[keep] = np.arange(len(keep))
    batches = tuple(tuple(int(new_index[i]) for i in b if new_index[i] >= 0) for b in an.partition.batches)
    batches = tuple(b for b in batches if len(b) >= 1)
    partition = BatchPartition(batches)
    reduced = InfluenceAnalyzer(
        an.task,
        an.train.subset(keep.tolist()),
        args=an.args,
        fit_args=an.fit_args,
        partition=partition,
        encoded=subset(an.encoded, torch.as_tensor(keep)),
    )
    reduced.use_fit(FitResult(theta, an.theta0, partition, an.fit_args, float("nan"), float("nan"), 0.0))
    return reduced, keep


def stepwise_edit(an: InfluenceAnalyzer, ranked: np.ndarray, steps: int) -> torch.Tensor:
    """The closed-form removal of ``ranked`` applied in ``steps`` chunks, re-linearised after each: with the pairs
    removed so far giving the current risk R_c (Hessian H_c at the current parameters) and R_r the risk after also
    removing the next chunk, theta <- theta - H_c^-1 grad R_r(theta). From the fit, one step is exactly the ECIF
    edit with the exact form (grad R_r(theta_hat) = -sum of the chunk's Pos + Neg_exact gradients, H_c = H)."""
    theta = an.fitted.params if an.fitted is not None else an.fit().params
    current = an
    removed = np.zeros(0, dtype=int)
    for chunk in np.array_split(np.asarray(ranked), steps):
        removed = np.concatenate([removed, chunk])
        reduced, _ = _reduced_analyzer(an, removed, theta)
        _, grad = reduced.risk_and_grad(theta)
        theta = (theta - current.inverse().apply(grad.unsqueeze(0))[0]).detach()
        current, _ = _reduced_analyzer(an, removed, theta)
    return theta


def parameter_change_norms(an: InfluenceAnalyzer, form: NegForm = NegForm.EXACT) -> np.ndarray:
    """||H^-1 grad (Pos_n + Neg_n)|| per pair: the size of the parameter change removing pair n predicts
    (RelatIF's theta normaliser), with the analyzer's batched inverse operator."""
    inv = an.batched_inverse()
    out = np.zeros(an.n)
    for idx, grads, _ in an.iter_pair_gradients(parts=("pos", f"neg_{form.value}")):
        step = inv.apply((grads["pos"] + grads[f"neg_{form.value}"]).detach())
        out[idx] = step.norm(dim=1).detach().cpu().numpy()
    return out


def fit_arguments(cfg: MemorisedConfig, seed: int) -> FitArguments:
    """How the tier fits (and retrains) the heads."""
    return FitArguments(
        batch_size=cfg.batch_size,
        l2=cfg.l2,
        seed=seed,
        tolerance_grad=cfg.tolerance_grad,
        max_iter=cfg.max_iter,
        newton_max_iter=cfg.newton_max_iter,
    )


def require_converged(fit: FitResult, what: str) -> None:
    """Refuse a fit that did not reach its stated tolerance: ECIF's scores assume grad R(theta_hat) = 0."""
    if not fit.converged:
        raise ConvergenceError(
            f"{what} did not converge: largest per-pair gradient entry {fit.grad_norm / fit.partition.n_pairs:.2e} "
            f"> tolerance {fit.args.tolerance_grad:g} after {fit.evaluations} evaluations; no score of it is reported"
        )


def converged_retrain(an: InfluenceAnalyzer, remove: np.ndarray) -> torch.Tensor:
    """The group refitted without ``remove`` (from the same start and partition), refused unless it converged."""
    t0 = time.time()
    theta = an.retrain(remove=remove)
    _, grad = an.risk_and_grad(theta, remove=remove)
    done = FitResult(theta, an.theta0, an.partition, an.fit_args, float("nan"), float(grad.abs().max()), 0.0)
    require_converged(done, f"a retraining without {len(remove)} pairs ({time.time() - t0:.0f} s)")
    return theta


def run_unit(cfg: MemorisedConfig, kind: str, rate: float, seed: int, work: Path, log: Log) -> dict[str, Any]:
    """Train (or reuse) one memorised model and score it; returns arrays and facts (saved by the caller)."""
    from mmlens.models import ContrastiveModel, load_model

    folder, train_s = trained_model(cfg, kind, rate, seed, work, log)
    pairs = training_pairs(cfg, kind, rate, seed)
    adapter = load_model(folder, expect=ContrastiveModel)
    task = HeadTask(adapter)
    an = InfluenceAnalyzer(
        task,
        pairs.train,
        fit_args=fit_arguments(cfg, seed),
        args=InfluenceArguments(solver=HessianSolver.CG, seed=seed),
    )
    cost: dict[str, float] = {"train_model_s": train_s}
    t0 = time.time()
    fit = an.fit()
    cost["fit_s"] = time.time() - t0
    log(
        f"    fit {cost['fit_s']:.1f}s, {fit.evaluations} evaluations, largest per-pair gradient entry "
        f"{fit.grad_norm / an.n:.2e} (tolerance {cfg.tolerance_grad:g}), moved "
        f"{float((fit.params - fit.theta0).norm() / fit.theta0.norm()):.2f} of the trained heads' norm"
    )
    require_converged(fit, f"the ECIF fit of {kind}-{rate}-s{seed}")
    scores: dict[str, np.ndarray] = {}
    t0 = time.time()
    value = an.value(pairs.val)
    cost["ecif_value_s"] = time.time() - t0
    log(f"    ECIF validation influence {cost['ecif_value_s']:.1f}s")
    for name, v in value.variants().items():
        if "reciprocal" not in name:
            scores[f"ecif_{name}"] = -v  # harmful first: higher = noisier
    t0 = time.time()
    scores["ecif_self_influence"] = an.self_influence(NegForm.EXACT)
    cost["ecif_self_s"] = time.time() - t0
    log(f"    ECIF self-influence {cost['ecif_self_s']:.1f}s")
    t0 = time.time()
    # relative influence (RelatIF, theta-relative): the validation influence divided by ||H^-1 g_n||, the norm
    # taken with the same batched operator trace-back uses for it (one solve for the validation gradient)
    scores["ecif_relative"] = scores["ecif_both_exact"] / np.maximum(parameter_change_norms(an), 1e-30)
    cost["ecif_relative_s"] = time.time() - t0
    log(f"    ECIF relative influence {cost['ecif_relative_s']:.1f}s")
    scores["clipscore"] = clip_score(an)
    scores["neg_clip_loss"] = neg_clip_loss(an)
    scores["lemon"] = lemon(an)
    t0 = time.time()
    scores["tracin_self"] = an.tracin_self_influence()
    cost["tracin_s"] = time.time() - t0
    with torch.no_grad():
        img, txt = task.embed(task.space.unflatten(fit.params), an.encoded)
    t0 = time.time()
    scores["cleanlab"], cleanlab_info = cleanlab_score(pairs, img, txt, task.logit_scale)
    cost["cleanlab_s"] = time.time() - t0
    peer_error = None
    damping = cfg.l2 / an.n
    if cfg.run_peer:
        t0 = time.time()
        try:
            peer = KronfluencePeer(an, damping=damping).scores(task.encode(pairs.val))
            scores["peer_ekfac_value"] = -peer["value"]
            scores["peer_ekfac_self"] = peer["self"]
        except Exception as err:  # noqa: BLE001 - a failing peer library is recorded, not fatal
            peer_error = f"{type(err).__name__}: {err}"
        cost["peer_s"] = time.time() - t0
        log(f"    peer {cost['peer_s']:.1f}s {peer_error or ''}")
    arrays: dict[str, np.ndarray] = {"is_noisy": pairs.is_noisy, **scores}
    log(
        f"  {kind} {rate} seed {seed}: auroc "
        + ", ".join(f"{k} {_auroc_rows(pairs.is_noisy[None], v[None])[0]:.3f}" for k, v in scores.items())
    )
    # ---- trace-back (confusable models): mispredicted test images, whose twin caption beats their own
    test = test_set(pairs.world, kind, cfg.n_test, seed, cfg.caption_style)
    enc = encode_test(task, test)
    noisy_correct = correct_items(an, fit.params, test, enc)
    trace_info: dict[str, Any] = {}
    if kind == "confusable":
        wrong = np.flatnonzero(noisy_correct == 0)[: cfg.n_trace]
        trace_info["n_traced"] = int(len(wrong))
        if len(wrong):
            tests = PairData(tuple(test.images[i] for i in wrong), tuple(test.captions[i] for i in wrong))
            negs = PairData(tuple(test.images[i] for i in wrong), tuple(test.twin_captions[i] for i in wrong))
            t0 = time.time()
            tr = an.trace(tests, negatives=negs, relative=Relative.THETA)
            cost["trace_s"] = time.time() - t0
            ident = InfluenceAnalyzer(
                task,
                pairs.train,
                fit_args=an.fit_args,
                args=replace(an.args, solver=HessianSolver.IDENTITY),
                partition=an.partition,
                encoded=an.encoded,
            )
            ident.use_fit(fit)
            tracin = ident.trace(tests, negatives=negs, relative=Relative.NONE)
            rankings = {
                "ecif_relative": tr.relative_influence,
                "ecif_plain": tr.delta_test_loss_if_removed,
                "tracin": tracin.delta_test_loss_if_removed,
            }
            for name, mat in rankings.items():
                top = np.argsort(mat, axis=1)[:, :10]  # most negative: removal lowers the test loss most
                arrays[f"trace_flag_{name}"] = pairs.is_noisy[top].mean(1)
                same = np.array(
                    [[pairs.source[j] == test.renames[wrong[t]] for j in row] for t, row in enumerate(top)], float
                )
                arrays[f"trace_same_swap_{name}"] = same
    # ---- removal: the noise gap (group refit without every flagged pair) and what top-k removal recovers
    k = int(round(cfg.removal_fraction * an.n))
    ranked = np.argsort(-scores["ecif_both_exact"], kind="stable")[:k]
    t0 = time.time()
    oracle = converged_retrain(an, np.flatnonzero(pairs.is_noisy))
    cost["retrain_s"] = time.time() - t0
    arrays["correct_noisy"] = noisy_correct
    arrays["correct_oracle"] = correct_items(an, oracle, test, enc)
    arrays["correct_retrain"] = correct_items(an, converged_retrain(an, ranked), test, enc)
    arrays["correct_edit"] = correct_items(an, an.removal_edit(ranked, NegForm.EXACT), test, enc)
    t0 = time.time()
    arrays["correct_edit_steps"] = correct_items(an, stepwise_edit(an, ranked, cfg.edit_steps), test, enc)
    cost["edit_steps_s"] = time.time() - t0
    rng = np.random.default_rng(seed + 7)
    arrays["correct_random_retrain"] = correct_items(
        an, converged_retrain(an, rng.choice(an.n, size=k, replace=False)), test, enc
    )
    ranked_clip = np.argsort(-scores["clipscore"], kind="stable")[:k]
    arrays["correct_clipscore_retrain"] = correct_items(an, converged_retrain(an, ranked_clip), test, enc)
    facts = {
        "code": code_version(),
        "kind": kind,
        "rate": rate,
        "seed": seed,
        "n_pairs": an.n,
        "n_noisy": int(pairs.is_noisy.sum()),
        "n_params": task.space.size,
        "fit_grad_max": fit.grad_norm,
        "fit_grad_max_per_pair": fit.grad_norm / an.n,
        "fit_tolerance_grad": cfg.tolerance_grad,
        "fit_converged": fit.converged,
        "fit_evaluations": fit.evaluations,
        "fit_relative_move": float((fit.params - fit.theta0).norm() / fit.theta0.norm()),
        "model_metrics": _model_metrics(folder),
        "cleanlab": cleanlab_info,
        "peer_error": peer_error,
        "peer_damping": damping,
        "removed_k": k,
        "precision_of_removed": round(float(pairs.is_noisy[ranked].mean()), 4),
        "precision_of_removed_clipscore": round(float(pairs.is_noisy[ranked_clip].mean()), 4),
        "cost": {k2: round(v, 3) for k2, v in cost.items()},
        **trace_info,
    }
    return {"arrays": arrays, "facts": facts}


def code_version() -> dict[str, Any]:
    """The commit the unit ran at (units of one result file may come from several resumed runs)."""
    import subprocess

    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=20
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "src"],
            capture_output=True,
            text=True,
            check=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head, "dirty": bool(dirty)}


def _model_metrics(folder: Path) -> dict:
    from mmlens.zoo.common import read_record

    metrics = read_record(folder).get("metrics", {})
    return {k: metrics[k] for k in ("retrieval_top1", "final_train_loss", "noise") if k in metrics}


def unit_path(work: Path, kind: str, rate: float, seed: int) -> Path:
    return work / "units" / f"{kind}-{rate}-s{seed}.npz"


def save_unit(path: Path, unit: dict[str, Any]) -> None:
    """One .npz (arrays + facts as JSON), written to a temporary name and renamed: a unit is there whole or not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    try:
        np.savez(tmp, facts=np.array(json.dumps(unit["facts"])), **unit["arrays"])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_unit(path: Path) -> dict[str, Any]:
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "facts"}
        facts = json.loads(str(data["facts"]))
    return {"arrays": arrays, "facts": facts}


def unit_order(cfg: MemorisedConfig) -> list[tuple[str, float, int]]:
    """Units in priority order: rates in the given order (0.2 first), kinds, then seeds."""
    return [(k, r, s) for r in cfg.rates for k in cfg.kinds for s in cfg.seeds]


def unit_status(cfg: MemorisedConfig, work: Path) -> dict[str, list[str]]:
    """{"done": units with a saved outcome, "left": the others}, in priority order."""
    status: dict[str, list[str]] = {"done": [], "left": []}
    for kind, rate, seed in unit_order(cfg):
        path = unit_path(work, kind, rate, seed)
        status["done" if path.is_file() else "left"].append(path.stem)
    return status


def run_units(
    cfg: MemorisedConfig,
    work: Path,
    log: Log,
    deadline: float | None = None,
    on_unit: Callable[[], None] | None = None,
) -> dict[str, list[str]]:
    """Every unit in priority order, skipping finished ones (their .npz is in ``work``); starts no new unit after
    ``deadline`` (a time.time() value, for runs that must stop; the rest is left to a resumed run). ``on_unit`` is
    called after each unit is saved. Returns {"done": [...], "left": [...]} unit names."""
    status: dict[str, list[str]] = {"done": [], "left": []}
    for kind, rate, seed in unit_order(cfg):
        path = unit_path(work, kind, rate, seed)
        if not path.is_file():
            if deadline is not None and time.time() > deadline:
                status["left"].append(path.stem)
                continue
            log(f"memorised unit {kind} {rate} seed {seed}")
            torch.manual_seed(seed)
            save_unit(path, run_unit(cfg, kind, rate, seed, work, log))
            if on_unit is not None:
                on_unit()
        status["done"].append(path.stem)
    return status


def summarise_memorised_tier(cfg: MemorisedConfig, work: Path) -> dict[str, Any]:
    """The memorised tier's JSON from the finished units: detection with intervals, trace-back, removal, cost."""
    detection: dict[str, Any] = {}
    traceback: dict[str, Any] = {}
    removal: dict[str, Any] = {}
    facts_out: dict[str, Any] = {}
    costs: list[dict] = []
    for kind in cfg.kinds:
        model = f"mini-clip-noisy-{kind}"
        for rate in cfg.rates:
            units = [
                load_unit(unit_path(work, kind, rate, s)) for s in cfg.seeds if unit_path(work, kind, rate, s).is_file()
            ]
            if not units:
                continue
            arrays = [u["arrays"] for u in units]
            names = [n for n in (*ECIF_SCORES, *BASELINE_SCORES) if all(n in a for a in arrays)]
            res = bootstrap_detection(arrays, names, cfg.n_boot, seed=int(rate * 100))
            ecif_best = max((n for n in names if n.startswith("ecif_")), key=lambda n: res[n]["auroc"]["mean"])
            base_best = max((n for n in names if not n.startswith("ecif_")), key=lambda n: res[n]["auroc"]["mean"])
            differences = {
                "ecif_both_exact_minus_clipscore": paired_score_difference(res, "ecif_both_exact", "clipscore"),
                f"best_ecif_minus_clipscore ({ecif_best})": paired_score_difference(res, ecif_best, "clipscore"),
                f"best_ecif_minus_best_baseline ({ecif_best} - {base_best})": paired_score_difference(
                    res, ecif_best, base_best
                ),
            }
            for name in names:
                res[name].pop("_draws")
            entry = {
                **res,
                "_seeds": [u["facts"]["seed"] for u in units],
                "_n_pairs": units[0]["facts"]["n_pairs"],
                "_differences_auroc": differences,
                "_best_ecif_variant_exploratory": ecif_best,
                "_best_baseline": base_best,
            }
            detection.setdefault(model, {}).setdefault(kind, {})[str(rate)] = entry
            facts_out.setdefault(model, {})[str(rate)] = [u["facts"] for u in units]
            costs += [u["facts"]["cost"] for u in units]
            if kind == "confusable" and all("trace_flag_ecif_relative" in a for a in arrays):
                tb: dict[str, Any] = {}
                for name in ("ecif_relative", "ecif_plain", "tracin"):
                    tb[name] = {
                        "precision_at_10": bootstrap_mean([a[f"trace_flag_{name}"] for a in arrays], cfg.n_boot),
                        "same_swap_precision_at_10": bootstrap_mean(
                            [a[f"trace_same_swap_{name}"].mean(1) for a in arrays], cfg.n_boot
                        ),
                    }
                diff = [a["trace_flag_ecif_relative"] - a["trace_flag_ecif_plain"] for a in arrays]
                tb["relative_minus_plain"] = bootstrap_mean(diff, cfg.n_boot)
                tb["chance"] = rate
                tb["n_traced_per_seed"] = [u["facts"].get("n_traced") for u in units]
                traceback.setdefault(model, {})[str(rate)] = tb
            removal.setdefault(model, {})[str(rate)] = _removal_summary(arrays, cfg)
    cost = _cost_summary(costs)
    return {
        "detection": detection,
        "traceback": traceback,
        "removal": removal,
        "units": facts_out,
        "cost": cost,
        "config": asdict(cfg),
    }


def _removal_summary(arrays: list[dict[str, np.ndarray]], cfg: MemorisedConfig) -> dict[str, Any]:
    """Noise gap (oracle refit without every flagged pair minus the noisy fit) in images, and the share of it
    each removal of the top ``removal_fraction`` recovers: a ratio of means, bootstrapped over seeds and items."""
    rng = np.random.default_rng(1)
    n_test = len(arrays[0]["correct_noisy"])
    gap = [float(a["correct_oracle"].sum() - a["correct_noisy"].sum()) for a in arrays]
    out: dict[str, Any] = {
        "n_test": n_test,
        "gap_images": {"mean": round(float(np.mean(gap)), 2), "per_seed": gap},
        "accuracy": {
            arm: round(float(np.mean([a[f"correct_{arm}"].mean() for a in arrays])), 4)
            for arm in ("noisy", "oracle", "edit", "edit_steps", "retrain", "random_retrain", "clipscore_retrain")
        },
    }
    for arm in ("edit", "edit_steps", "retrain", "random_retrain", "clipscore_retrain"):
        draws = np.zeros(cfg.n_boot)
        for b in range(cfg.n_boot):
            picked = rng.integers(len(arrays), size=len(arrays))
            num = den = 0.0
            for i in picked:
                idx = rng.integers(n_test, size=n_test)
                a = arrays[i]
                num += a[f"correct_{arm}"][idx].sum() - a["correct_noisy"][idx].sum()
                den += a["correct_oracle"][idx].sum() - a["correct_noisy"][idx].sum()
            draws[b] = num / den if den > 0 else np.nan
        num = sum(a[f"correct_{arm}"].sum() - a["correct_noisy"].sum() for a in arrays)
        den = sum(gap)
        out[arm] = {
            "gap_recovered": round(float(num / den), 4) if den > 0 else None,
            "ci": _interval(draws[np.isfinite(draws)]) if np.isfinite(draws).any() else None,
        }
    return out


def _cost_summary(costs: list[dict]) -> dict[str, Any]:
    if not costs:
        return {}
    keys = sorted({k for c in costs for k in c})
    return {k: round(float(np.mean([c[k] for c in costs if k in c])), 3) for k in keys}


__all__ = [
    "BASELINE_SCORES",
    "ECIF_SCORES",
    "MemorisedConfig",
    "bootstrap_detection",
    "code_version",
    "paired_score_difference",
    "run_units",
    "unit_order",
    "unit_status",
    "summarise_memorised_tier",
]
