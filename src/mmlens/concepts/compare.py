"""What fine-tuning shifted: concepts of model A and model B on the same samples, matched one-to-one, the shift
vector of each concept, and how well u_a + alpha * shift recovers the matched concept of B, always against
baselines (one global shift, norm-matched random vectors, shifts permuted across concepts) and a split-half check.

With k-means and alpha = 1 the shifted concept is exactly the centroid of B's features over A's cluster (u_a is
A's centroid over the same samples); recovery then measures whether B's independent clustering keeps A's
partition, which is why the baselines and the split half are part of every result.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import pearsonr, trim_mean

from mmlens.concepts.decompose import ConceptDictionary, DecomposerConfig, DecomposerKind, as_matrix
from mmlens.concepts.grounding import top_samples
from mmlens.concepts.metrics import mas_overlap, mean_t_overlap, t_overlap
from mmlens.enums import as_enum
from mmlens.errors import InputError

Grounder = Callable[[np.ndarray], list[list[str]]]


class ShiftStatistic(enum.Enum):
    """How the per-sample shifts delta_m = b_m - a_m of a concept's samples are summarised."""

    MEAN = "mean"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed_mean"


class ConceptScale(enum.Enum):
    """The scale of the concepts that shifts are added to (a shift is in feature units)."""

    AS_FITTED = "as_fitted"  # the dictionary's own rows (unit norm for semi-NMF: a shift then swamps them)
    ACTIVATION = "activation"  # semi-NMF rows times the mean code of their samples (see concepts_in_feature_scale)


#: Kinds whose concepts are unit-norm directions with non-negative codes (the only ones ACTIVATION rescales).
_UNIT_NORM_KINDS = (DecomposerKind.SNMF, DecomposerKind.SNMF_SKLEARN)


def concepts_in_feature_scale(dictionary: ConceptDictionary, x: Any) -> np.ndarray:
    """Concepts on the scale of the features ``x`` they were fitted on, so that u_a + shift compares like with
    like: a semi-NMF concept u_k (unit norm) times the mean code of the samples assigned to it, i.e. the average
    contribution G_mk u_k of the concept to its own samples; k-means centroids (already points in feature space)
    and the other kinds are returned as fitted. A concept with no sample keeps scale 1."""
    u = dictionary.concepts
    if dictionary.config.kind not in _UNIT_NORM_KINDS:
        return u
    codes = dictionary.transform(x)
    owner = np.abs(codes).argmax(axis=1)
    scale = np.array([codes[owner == k, k].mean() if np.any(owner == k) else 1.0 for k in range(len(u))])
    return u * np.where(scale > 0, scale, 1.0)[:, None]


@dataclass(frozen=True)
class CompareConfig:
    decomposer: DecomposerConfig = field(default_factory=DecomposerConfig)
    concept_scale: ConceptScale = ConceptScale.ACTIVATION
    statistic: ShiftStatistic = ShiftStatistic.MEAN
    trim: float = 0.1  # fraction cut at each end by TRIMMED_MEAN
    alpha: float = 1.0
    alphas: tuple[float, ...] = tuple(round(0.1 * i, 2) for i in range(21))  # the sweep, 0 .. 2
    n_top_samples: int = 10  # most-activating samples per concept (MAS overlap)
    n_baseline_draws: int = 20  # random / permuted baselines are averaged over this many draws
    split_half: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.statistic, ShiftStatistic):
            object.__setattr__(self, "statistic", as_enum(ShiftStatistic, self.statistic, "shift statistic"))
        if not isinstance(self.concept_scale, ConceptScale):
            object.__setattr__(self, "concept_scale", as_enum(ConceptScale, self.concept_scale, "concept scale"))
        if not 0 <= self.trim < 0.5:
            raise InputError(f"trim must be in [0, 0.5), got {self.trim}")
        if not self.alphas:
            raise InputError("alphas must not be empty")


def _unit(u: np.ndarray) -> np.ndarray:
    return u / (np.linalg.norm(u, axis=-1, keepdims=True) + 1e-12)


def cosine_matrix(u_a: np.ndarray, u_b: np.ndarray) -> np.ndarray:
    return _unit(u_a) @ _unit(u_b).T


def row_cosine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (_unit(x) * _unit(y)).sum(-1)


def match_concepts(u_a: Any, u_b: Any) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching by cosine (Hungarian algorithm on 1 - cos): ``(match, cos)`` where concept k of A is
    matched to concept ``match[k]`` of B, with cosine ``cos[k]``."""
    a, b = as_matrix(u_a, name="concepts of A"), as_matrix(u_b, name="concepts of B")
    if a.shape != b.shape:
        raise InputError(f"the two dictionaries differ in shape: {a.shape} vs {b.shape}")
    sim = cosine_matrix(a, b)
    rows, cols = linear_sum_assignment(1.0 - sim)
    match = np.empty(len(a), dtype=int)
    match[rows] = cols
    return match, sim[np.arange(len(a)), match]


@dataclass(frozen=True)
class Shifts:
    """Per concept: the shift vector, how many samples it averages, their consistency and its magnitude."""

    vectors: np.ndarray  # (K, D)
    counts: np.ndarray  # (K,)
    consistency: np.ndarray  # (K,) mean cos(delta_m, shift_k) over the concept's samples (NaN when empty)
    magnitude: np.ndarray  # (K,) ||shift_k||


def concept_shift_vectors(
    a: Any,
    b: Any,
    assignment: np.ndarray,
    n_concepts: int,
    statistic: ShiftStatistic = ShiftStatistic.MEAN,
    trim: float = 0.1,
) -> Shifts:
    """Delta_k = statistic of {b_m - a_m : m assigned to concept k} (zero for a concept with no sample)."""
    a, b = as_matrix(a, name="features of A"), as_matrix(b, name="features of B")
    if a.shape != b.shape:
        raise InputError(f"A and B must hold the same samples: shapes {a.shape} vs {b.shape}")
    delta = b - a
    vectors = np.zeros((n_concepts, a.shape[1]))
    counts = np.bincount(assignment, minlength=n_concepts)
    consistency = np.full(n_concepts, np.nan)
    for k in range(n_concepts):
        d = delta[assignment == k]
        if not len(d):
            continue
        if statistic is ShiftStatistic.MEAN:
            vectors[k] = d.mean(0)
        elif statistic is ShiftStatistic.MEDIAN:
            vectors[k] = np.median(d, axis=0)
        else:
            vectors[k] = trim_mean(d, trim, axis=0)
        consistency[k] = float(row_cosine(d, np.broadcast_to(vectors[k], d.shape)).mean())
    return Shifts(vectors, counts, consistency, np.linalg.norm(vectors, axis=1))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return float("nan")
    return float(pearsonr(x[ok], y[ok])[0])


@dataclass
class Recovery:
    """How close candidate concepts (u_a + a shift) come to the matched concepts of B, against u_a itself."""

    cos_gain: np.ndarray  # cos(u_b, u_s) - cos(u_b, u_a)
    normalised_gain: np.ndarray  # cos_gain / |cos(u_b, u_a)|
    l2_gain: np.ndarray  # ||u_b - u_a|| - ||u_b - u_s|| (> 0: closer)
    t_overlap: np.ndarray | None  # TO(T(u_s), T(u_b)) per concept (with grounders)
    mas_overlap: np.ndarray | None  # |MAS(u_s) & MAS(u_b)| / n (with B's features)

    def summary(self) -> dict[str, float]:
        out = {
            "frac_improved": float(np.mean(self.cos_gain > 0)),
            "mean_gain": float(np.mean(self.cos_gain)),
            "mean_normalised_gain": float(np.mean(self.normalised_gain)),
            "mean_l2_gain": float(np.mean(self.l2_gain)),
        }
        if self.t_overlap is not None:
            out["mean_t_overlap"] = float(np.mean(self.t_overlap))
        if self.mas_overlap is not None:
            out["mean_mas_overlap"] = float(np.mean(self.mas_overlap))
        return out


def recovery(
    u_a: np.ndarray,
    u_s: np.ndarray,
    u_b: np.ndarray,
    *,
    words_b: list[list[str]] | None = None,
    ground_s: Grounder | None = None,
    dictionary_a: ConceptDictionary | None = None,
    b: np.ndarray | None = None,
    mas_b: np.ndarray | None = None,
    n_top: int = 10,
) -> Recovery:
    """Recovery of ``u_b`` (matched rows) by ``u_s``; TO needs ``words_b`` + ``ground_s``, MAS overlap needs
    ``dictionary_a`` (its encoder is applied with u_s as concepts), B's features ``b`` and B's MAS ``mas_b``."""
    cos_a, cos_s = row_cosine(u_b, u_a), row_cosine(u_b, u_s)
    gain = cos_s - cos_a
    norm_gain = gain / np.maximum(np.abs(cos_a), 1e-6)
    l2 = np.linalg.norm(u_b - u_a, axis=1) - np.linalg.norm(u_b - u_s, axis=1)
    to = None
    if words_b is not None and ground_s is not None:
        to = np.array([t_overlap(s, w) for s, w in zip(ground_s(u_s), words_b)])
    mas = None
    if dictionary_a is not None and b is not None and mas_b is not None:
        mas = mas_overlap(top_samples(dictionary_a.with_components(u_s).transform(b), n_top), mas_b)
    return Recovery(gain, norm_gain, l2, to, mas)


def _derangement(k: int, rng: np.random.Generator) -> np.ndarray:
    while True:
        perm = rng.permutation(k)
        if k < 2 or not (perm == np.arange(k)).any():
            return perm


def _mean_summaries(items: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([d[key] for d in items])) for key in items[0]}


#: Keys of :meth:`ShiftAnalysis.headline`.
HEADLINE_KEYS = (
    "frac_improved",
    "mean_gain",
    "baseline_global_gain",
    "baseline_random_gain",
    "baseline_permuted_gain",
    "alpha_peak",
    "consistency_pearson",
)


@dataclass
class ShiftAnalysis:
    """Everything :func:`compare_models` measured; ``summary()`` is the JSON-ready digest."""

    dictionary_a: ConceptDictionary
    dictionary_b: ConceptDictionary
    match: np.ndarray  # concept k of A <-> concept match[k] of B
    match_cos: np.ndarray
    shifts: Shifts
    shifted: np.ndarray  # u_a + alpha * shift (K, D)
    recovery: Recovery
    baselines: dict[str, dict[str, float]]
    alpha_sweep: list[dict[str, float]]
    words_a: list[list[str]] | None = None
    words_b: list[list[str]] | None = None  # matched order: row k = B's concept match[k]
    words_shifted: list[list[str]] | None = None
    mas_a: np.ndarray | None = None
    mas_b: np.ndarray | None = None  # matched order
    split_half: dict[str, Any] | None = None
    config: CompareConfig = field(default_factory=CompareConfig)

    @property
    def alpha_peak(self) -> float:
        best = max(self.alpha_sweep, key=lambda r: r["mean_cos_to_b"])
        return float(best["alpha"])

    @property
    def consistency_pearson(self) -> float:
        return _pearson(self.shifts.consistency, self.recovery.normalised_gain)

    @property
    def magnitude_pearson(self) -> float:
        return _pearson(self.shifts.magnitude, self.recovery.normalised_gain)

    def summary(self) -> dict[str, Any]:
        rec = self.recovery.summary()
        out = {
            "frac_improved": rec["frac_improved"],
            "mean_gain": rec["mean_gain"],
            "baseline_global_gain": self.baselines["global"]["mean_gain"],
            "baseline_random_gain": self.baselines["random"]["mean_gain"],
            "baseline_permuted_gain": self.baselines["permuted"]["mean_gain"],
            "alpha_peak": self.alpha_peak,
            "consistency_pearson": self.consistency_pearson,
            "magnitude_pearson": self.magnitude_pearson,
            "consistency_pearson_cos_gain": _pearson(self.shifts.consistency, self.recovery.cos_gain),
            "beats_every_baseline": bool(all(rec["mean_gain"] > b["mean_gain"] for b in self.baselines.values())),
            "per_concept": rec,
            "baselines": self.baselines,
            "mean_match_cos": float(np.mean(self.match_cos)),
            "mean_shift_norm": float(np.mean(self.shifts.magnitude)),
            "alpha_sweep": self.alpha_sweep,
        }
        if self.split_half is not None:
            out["split_half"] = self.split_half
        return out

    def headline(self) -> dict[str, Any]:
        """The few numbers that say whether the concepts recovered the fine-tune better than the baselines (the
        first keys of :meth:`summary`), as the CLI prints them and the benchmark records them."""
        summary = self.summary()
        return {k: summary[k] for k in HEADLINE_KEYS}

    def concept_rows(self) -> list[dict[str, Any]]:
        """One row per concept of A: match, shift statistics and recovery (the report's table)."""
        rows = []
        for k in range(len(self.match)):
            row: dict[str, Any] = {
                "concept": k,
                "matched_b": int(self.match[k]),
                "match_cos": float(self.match_cos[k]),
                "n_samples": int(self.shifts.counts[k]),
                "consistency": float(self.shifts.consistency[k]),
                "shift_norm": float(self.shifts.magnitude[k]),
                "cos_gain": float(self.recovery.cos_gain[k]),
                "normalised_gain": float(self.recovery.normalised_gain[k]),
            }
            if self.words_a is not None and self.words_b is not None and self.words_shifted is not None:
                row.update(
                    words_a=" ".join(self.words_a[k][:5]),
                    words_b=" ".join(self.words_b[k][:5]),
                    words_shifted=" ".join(self.words_shifted[k][:5]),
                )
            if self.recovery.t_overlap is not None:
                row["t_overlap_shifted_b"] = float(self.recovery.t_overlap[k])
            rows.append(row)
        return rows


def _analyse(
    a: np.ndarray,
    b: np.ndarray,
    dict_a: ConceptDictionary,
    dict_b: ConceptDictionary,
    shift_a: np.ndarray,
    shift_b: np.ndarray,
    config: CompareConfig,
    ground_a: Grounder | None,
    ground_b: Grounder | None,
    with_sweep: bool,
) -> dict[str, Any]:
    """Match the two dictionaries, compute shifts on (shift_a, shift_b) and recovery with its baselines."""
    k = dict_a.n_concepts
    if config.concept_scale is ConceptScale.ACTIVATION:
        u_a, u_b_all = concepts_in_feature_scale(dict_a, a), concepts_in_feature_scale(dict_b, b)
    else:
        u_a, u_b_all = dict_a.concepts, dict_b.concepts
    match, match_cos = match_concepts(u_a, u_b_all)
    u_b = u_b_all[match]
    shifts = concept_shift_vectors(shift_a, shift_b, dict_a.assign(shift_a), k, config.statistic, config.trim)
    words_b = ground_b(u_b) if ground_b is not None else None
    mas_b = top_samples(dict_b.transform(b), config.n_top_samples)[match]
    common = dict(words_b=words_b, ground_s=ground_b, dictionary_a=dict_a, b=b, mas_b=mas_b, n_top=config.n_top_samples)
    u_s = u_a + config.alpha * shifts.vectors
    rec = recovery(u_a, u_s, u_b, **common)
    rng = np.random.default_rng(config.seed)
    global_shift = (shift_b - shift_a).mean(0)
    baselines = {
        "none": recovery(u_a, u_a, u_b, **common).summary(),
        "global": recovery(u_a, u_a + config.alpha * global_shift, u_b, **common).summary(),
    }
    random_runs, permuted_runs = [], []
    for _ in range(config.n_baseline_draws):
        noise = _unit(rng.standard_normal(shifts.vectors.shape)) * shifts.magnitude[:, None]
        random_runs.append(recovery(u_a, u_a + config.alpha * noise, u_b, **common).summary())
        perm = _derangement(k, rng)
        permuted_runs.append(recovery(u_a, u_a + config.alpha * shifts.vectors[perm], u_b, **common).summary())
    baselines["random"] = _mean_summaries(random_runs)
    baselines["permuted"] = _mean_summaries(permuted_runs)
    sweep = []
    if with_sweep:
        for alpha in config.alphas:
            cand = u_a + alpha * shifts.vectors
            r = recovery(u_a, cand, u_b)
            row = {
                "alpha": float(alpha),
                "mean_cos_to_b": float(np.mean(row_cosine(u_b, cand))),
                "frac_improved": float(np.mean(r.cos_gain > 0)),
                "mean_gain": float(np.mean(r.cos_gain)),
            }
            if ground_b is not None:
                row["mean_t_overlap"] = mean_t_overlap(ground_b(cand), words_b or [])
            sweep.append(row)
    return dict(
        match=match,
        match_cos=match_cos,
        shifts=shifts,
        u_s=u_s,
        recovery=rec,
        baselines=baselines,
        sweep=sweep,
        words_b=words_b,
        mas_b=mas_b,
    )


def compare_models(
    a: Any,
    b: Any,
    config: CompareConfig | None = None,
    *,
    ground_a: Grounder | None = None,
    ground_b: Grounder | None = None,
) -> ShiftAnalysis:
    """Shift analysis of row-aligned features ``a`` (model A) and ``b`` (model B) of the same samples (see
    :func:`mmlens.concepts.common_samples`). ``ground_a`` / ``ground_b`` (e.g. :class:`TextGrounder`) add text
    groundings and T-overlaps; B's grounder also grounds the shifted concepts."""
    config = config or CompareConfig()
    a, b = as_matrix(a, name="features of A"), as_matrix(b, name="features of B")
    if a.shape != b.shape:
        raise InputError(f"A and B must hold the same samples: shapes {a.shape} vs {b.shape} (use common_samples)")
    dict_a = ConceptDictionary(config.decomposer).fit(a)
    dict_b = ConceptDictionary(config.decomposer).fit(b)
    main = _analyse(a, b, dict_a, dict_b, a, b, config, ground_a, ground_b, with_sweep=True)
    split = None
    if config.split_half:
        split = split_half_recovery(a, b, config)
    return ShiftAnalysis(
        dictionary_a=dict_a,
        dictionary_b=dict_b,
        match=main["match"],
        match_cos=main["match_cos"],
        shifts=main["shifts"],
        shifted=main["u_s"],
        recovery=main["recovery"],
        baselines=main["baselines"],
        alpha_sweep=main["sweep"],
        words_a=ground_a(dict_a.concepts) if ground_a is not None else None,
        words_b=main["words_b"],
        words_shifted=ground_b(main["u_s"]) if ground_b is not None else None,
        mas_a=top_samples(dict_a.transform(a), config.n_top_samples),
        mas_b=main["mas_b"],
        split_half=split,
        config=config,
    )


def split_half_recovery(a: np.ndarray, b: np.ndarray, config: CompareConfig) -> dict[str, Any]:
    """Both dictionaries and the concepts' assignments from one half of the samples, the shifts from the other:
    a per-concept shift that only reflects the k-means identity (u_s = mean of B over A's cluster) fails here."""
    rng = np.random.default_rng(config.seed + 1)
    order = rng.permutation(len(a))
    fit_rows, shift_rows = order[: len(a) // 2], order[len(a) // 2 :]
    if len(fit_rows) < config.decomposer.n_concepts:
        return {"skipped": f"{len(a)} samples are too few to split for {config.decomposer.n_concepts} concepts"}
    dict_a = ConceptDictionary(config.decomposer).fit(a[fit_rows])
    dict_b = ConceptDictionary(config.decomposer).fit(b[fit_rows])
    res = _analyse(
        a[fit_rows], b[fit_rows], dict_a, dict_b, a[shift_rows], b[shift_rows], config, None, None, with_sweep=False
    )
    rec = res["recovery"].summary()
    return {
        "frac_improved": rec["frac_improved"],
        "mean_gain": rec["mean_gain"],
        "baseline_global_gain": res["baselines"]["global"]["mean_gain"],
        "baseline_random_gain": res["baselines"]["random"]["mean_gain"],
        "baseline_permuted_gain": res["baselines"]["permuted"]["mean_gain"],
        "beats_every_baseline": bool(all(rec["mean_gain"] > v["mean_gain"] for v in res["baselines"].values())),
    }


# ------------------------------------------------------------------------------------------------- drift
@dataclass
class Drift:
    """T-overlap between the original concepts and their matches in each checkpoint's dictionary."""

    steps: list[int]
    t_overlap: list[float]
    per_concept: list[list[float]]  # [step][concept of the original]
    groups: dict[str, list[float]] = field(default_factory=dict)  # group name -> mean TO per step
    match_cos: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "t_overlap": self.t_overlap,
            "groups": self.groups,
            "match_cos": self.match_cos,
            "per_concept": self.per_concept,
        }


def concept_drift(
    base: Any,
    checkpoints: Sequence[Any],
    steps: Sequence[int],
    ground_base: Grounder,
    ground_checkpoints: Sequence[Grounder],
    config: DecomposerConfig | None = None,
    *,
    base_dictionary: ConceptDictionary | None = None,
    groups: dict[str, np.ndarray] | None = None,
) -> Drift:
    """TO(original concept, matched concept of checkpoint) per step. ``checkpoints[i]`` are the features of the
    same samples under checkpoint ``steps[i]``; ``groups`` (name -> boolean mask over the original concepts) adds
    a mean TO per group and step (e.g. colour-related concepts against the others)."""
    if not (len(checkpoints) == len(steps) == len(ground_checkpoints)):
        raise InputError("checkpoints, steps and ground_checkpoints must have the same length")
    config = config or DecomposerConfig()
    base_dictionary = base_dictionary or ConceptDictionary(config).fit(base)
    u_a = base_dictionary.concepts
    words_a = ground_base(u_a)
    drift = Drift(list(map(int, steps)), [], [], {name: [] for name in (groups or {})})
    for feats, ground in zip(checkpoints, ground_checkpoints):
        d = ConceptDictionary(config).fit(feats)
        match, cos = match_concepts(u_a, d.concepts)
        words = ground(d.concepts[match])
        per = [t_overlap(wa, wb) for wa, wb in zip(words_a, words)]
        drift.per_concept.append(per)
        drift.t_overlap.append(float(np.mean(per)))
        drift.match_cos.append(float(np.mean(cos)))
        for name, mask in (groups or {}).items():
            drift.groups[name].append(float(np.mean(np.asarray(per)[mask])) if np.any(mask) else float("nan"))
    return drift
