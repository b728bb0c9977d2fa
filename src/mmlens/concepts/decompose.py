"""Concept dictionaries: Z (n samples x D) ~ V U, concepts U (K x D), activations V (n x K).

One estimator, :class:`ConceptDictionary`, with an sklearn-style ``fit`` / ``transform`` and ``save`` / ``load``
over six methods (:class:`DecomposerKind`). sklearn fits k-means, PCA and sparse dictionary learning. Semi-NMF
(signed concepts, non-negative codes) comes twice: ``snmf`` is Ding, Li & Jordan's (2010) multiplicative update,
written here, and ``snmf_sklearn`` is the reference code's way, sklearn ``DictionaryLearning(positive_code=True)``
(L1 on the codes, ||u_k|| <= 1). After
fitting, ``transform`` depends only on the stored arrays, so a loaded dictionary transforms exactly like the
fitted one, and :meth:`ConceptDictionary.with_components` gives the same encoder over other concepts (the
shifted concepts of a model comparison).
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, DictionaryLearning, sparse_encode

from mmlens.enums import as_enum
from mmlens.errors import InputError

_FORMAT = "mmlens.concepts.dictionary/1"


class DecomposerKind(enum.Enum):
    """How concepts are learnt from the samples."""

    KMEANS = "kmeans"  # centroids; activation 1 / (1 + ||x - u_k||) (used by the shift-vector paper)
    SNMF = "snmf"  # semi-NMF: signed concepts, non-negative sparse codes (CoX-LMM's default), hand-written
    SNMF_SKLEARN = "snmf_sklearn"  # the same objective by sklearn DictionaryLearning(positive_code=True), as xl-vlms
    PCA = "pca"  # principal directions; activation = projection of the centred sample
    DICTIONARY = "dictionary"  # sparse dictionary learning with signed codes (sklearn)
    TOP_NORM = "top_norm"  # the K largest-norm samples as concepts; activation = projection on their direction


@dataclass(frozen=True)
class DecomposerConfig:
    """``sparsity`` is the L1 weight on codes (semi-NMF, dictionary learning); ``max_iter`` their iterations."""

    kind: DecomposerKind = DecomposerKind.KMEANS
    n_concepts: int = 20
    seed: int = 0
    sparsity: float = 1.0
    max_iter: int = 300

    def __post_init__(self) -> None:
        if not isinstance(self.kind, DecomposerKind):
            object.__setattr__(self, "kind", as_enum(DecomposerKind, self.kind, "decomposer kind"))
        if self.n_concepts < 1:
            raise InputError(f"n_concepts must be >= 1, got {self.n_concepts}")
        if self.sparsity < 0 or self.max_iter < 1:
            raise InputError("sparsity must be >= 0 and max_iter >= 1")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kind": self.kind.value}


def as_matrix(z: Any, *, name: str = "activations") -> np.ndarray:
    """A finite float64 (n, D) array from a tensor / array, or an :class:`InputError` saying what is wrong."""
    if isinstance(z, torch.Tensor):
        z = z.detach().cpu().double().numpy()
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2:
        raise InputError(f"{name} must be a 2-D (samples x features) matrix, got shape {z.shape}")
    if z.shape[0] == 0:
        raise InputError(f"{name} hold no samples (an empty capture: check the filters and the token of interest)")
    if not np.isfinite(z).all():
        raise InputError(f"{name} contain NaN or infinite values")
    return z


# ---------------------------------------------------------------------------------------------- semi-NMF
def _pos(a: np.ndarray) -> np.ndarray:
    return (np.abs(a) + a) / 2


def _neg(a: np.ndarray) -> np.ndarray:
    return (np.abs(a) - a) / 2


def _snmf_codes(
    x: np.ndarray, u: np.ndarray, sparsity: float, iters: int, init: np.ndarray | None = None
) -> np.ndarray:
    """Non-negative codes G (n x K) minimising 1/2 ||X - G U||^2 + sparsity * sum(G) for fixed U, by Ding et al.'s
    multiplicative update (all samples at once)."""
    xu, uu = x @ u.T, u @ u.T
    if init is None:
        init = np.maximum(xu @ np.linalg.pinv(uu), 0) + 1e-3
    g = init
    xu_p, xu_n, uu_p, uu_n = _pos(xu), _neg(xu), _pos(uu), _neg(uu)
    for _ in range(iters):
        g = g * np.sqrt((xu_p + g @ uu_n + 1e-12) / (xu_n + g @ uu_p + sparsity + 1e-12))
    return g


def _fit_snmf(x: np.ndarray, k: int, sparsity: float, iters: int, seed: int) -> np.ndarray:
    """Concepts U (K x D), unit norm, of semi-NMF X ~ G U with G >= 0 (k-means initialisation, as in Ding et al.)."""
    labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)
    g = np.full((len(x), k), 0.2)
    g[np.arange(len(x)), labels] += 1.0
    u = np.zeros((k, x.shape[1]))
    previous = np.inf
    for _ in range(iters):
        # U = (G'G)^-1 G'X by the normal equations (lstsq's SVD is 50x slower here), lightly regularised.
        u = np.linalg.solve(g.T @ g + 1e-8 * np.eye(k), g.T @ x)
        # ||u_k|| = 1: rescaling u and g together leaves G U unchanged and makes the L1 weight scale-free.
        norms = np.linalg.norm(u, axis=1, keepdims=True) + 1e-12
        u, g = u / norms, g * norms.T
        g = _snmf_codes(x, u, sparsity, 1, init=g)
        loss = 0.5 * np.square(x - g @ u).sum() + sparsity * g.sum()
        if previous - loss < 1e-5 * abs(previous):
            break
        previous = loss
    return u


# --------------------------------------------------------------------------------------------- estimator
class ConceptDictionary:
    """Learn K concepts from samples (rows) and encode samples as concept activations.

    ``components_`` (K x D) are the concepts u_k in the activation space; ``mean_`` is the centre PCA subtracts.
    """

    def __init__(self, config: DecomposerConfig | None = None) -> None:
        self.config = config or DecomposerConfig()
        self.components_: np.ndarray | None = None
        self.mean_: np.ndarray | None = None

    def __repr__(self) -> str:
        fitted = "unfitted" if self.components_ is None else f"{self.components_.shape[0]} concepts"
        return f"ConceptDictionary({self.config.kind.value}, {fitted})"

    @property
    def n_concepts(self) -> int:
        return int(self._fitted().shape[0])

    @property
    def concepts(self) -> np.ndarray:
        """The fitted concepts (K x D): ``components_`` once fitted, an :class:`InputError` before."""
        return self._fitted()

    def _fitted(self) -> np.ndarray:
        if self.components_ is None:
            raise InputError("the concept dictionary is not fitted: call fit() or load() first")
        return self.components_

    def fit(self, z: Any) -> ConceptDictionary:
        x = as_matrix(z)
        cfg = self.config
        k = cfg.n_concepts
        if len(x) < k:
            raise InputError(f"{len(x)} samples cannot give {k} concepts: capture more samples or lower n_concepts")
        self.mean_ = np.zeros(x.shape[1])
        if cfg.kind is DecomposerKind.KMEANS:
            self.components_ = KMeans(n_clusters=k, n_init=10, random_state=cfg.seed).fit(x).cluster_centers_
        elif cfg.kind is DecomposerKind.PCA:
            if k > min(x.shape):
                raise InputError(f"PCA gives at most min(samples, features) = {min(x.shape)} concepts, asked {k}")
            pca = PCA(n_components=k, random_state=cfg.seed).fit(x)
            self.components_, self.mean_ = pca.components_, pca.mean_
        elif cfg.kind is DecomposerKind.DICTIONARY:
            learner = DictionaryLearning(
                n_components=k, alpha=cfg.sparsity, max_iter=cfg.max_iter, fit_algorithm="cd", random_state=cfg.seed
            )
            self.components_ = learner.fit(x).components_
        elif cfg.kind is DecomposerKind.SNMF:
            self.components_ = _fit_snmf(x, k, cfg.sparsity, cfg.max_iter, cfg.seed)
        elif cfg.kind is DecomposerKind.SNMF_SKLEARN:
            learner = DictionaryLearning(
                n_components=k,
                alpha=cfg.sparsity,
                max_iter=cfg.max_iter,
                fit_algorithm="cd",  # sklearn's lars coder refuses positive codes
                transform_algorithm="lasso_cd",
                transform_alpha=cfg.sparsity,
                positive_code=True,
                random_state=cfg.seed,
            )
            self.components_ = learner.fit(x).components_
        else:  # TOP_NORM
            order = np.argsort(-np.linalg.norm(x, axis=1), kind="stable")
            _, first = np.unique(x[order], axis=0, return_index=True)  # distinct samples only
            distinct = order[np.sort(first)]
            if len(distinct) < k:
                raise InputError(f"only {len(distinct)} distinct samples for {k} top-norm concepts")
            self.components_ = x[distinct[:k]].copy()
        return self

    def transform(self, z: Any) -> np.ndarray:
        """Concept activations (n x K) of the samples."""
        x = as_matrix(z)
        u = self._fitted()
        if x.shape[1] != u.shape[1]:
            raise InputError(f"samples have {x.shape[1]} features, the dictionary {u.shape[1]}")
        kind = self.config.kind
        if kind is DecomposerKind.KMEANS:
            dist = np.sqrt(np.maximum((x**2).sum(1, keepdims=True) - 2 * x @ u.T + (u**2).sum(1), 0))
            return 1.0 / (1.0 + dist)
        if kind is DecomposerKind.PCA:
            return (x - self.mean_) @ u.T
        if kind is DecomposerKind.DICTIONARY:
            return sparse_encode(x, u, algorithm="lasso_cd", alpha=self.config.sparsity, max_iter=self.config.max_iter)
        if kind is DecomposerKind.SNMF:
            return _snmf_codes(x, u, self.config.sparsity, self.config.max_iter)
        if kind is DecomposerKind.SNMF_SKLEARN:
            return sparse_encode(
                x, u, algorithm="lasso_cd", alpha=self.config.sparsity, max_iter=self.config.max_iter, positive=True
            )
        directions = u / (np.linalg.norm(u, axis=1, keepdims=True) + 1e-12)
        return x @ directions.T

    def fit_transform(self, z: Any) -> np.ndarray:
        return self.fit(z).transform(z)

    def assign(self, z: Any) -> np.ndarray:
        """Each sample's concept: argmax_k |v_k(x)| (the nearest centroid for k-means)."""
        return np.abs(self.transform(z)).argmax(axis=1)

    def with_components(self, components: Any) -> ConceptDictionary:
        """A copy with other concepts (K x D), e.g. shifted ones, encoding samples by the same rule."""
        u = as_matrix(components, name="components")
        if u.shape[1] != self._fitted().shape[1]:
            raise InputError(f"components have {u.shape[1]} features, the dictionary {self._fitted().shape[1]}")
        other = ConceptDictionary(replace(self.config, n_concepts=len(u)))
        other.components_, other.mean_ = u.copy(), None if self.mean_ is None else self.mean_.copy()
        return other

    # ------------------------------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the concepts and config to one safetensors file (atomically)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            save_file(
                {"components": np.ascontiguousarray(self._fitted()), "mean": np.ascontiguousarray(self.mean_)},
                str(tmp),
                metadata={"format": _FORMAT, "config": json.dumps(self.config.to_dict())},
            )
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ConceptDictionary:
        source = Path(path)
        if not source.is_file():
            raise InputError(f"no concept dictionary at {source}")
        try:
            with safe_open(str(source), framework="numpy") as handle:
                meta = handle.metadata() or {}
            arrays = load_file(str(source))
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise InputError(f"cannot read concept dictionary {source}: {err}") from err
        if meta.get("format") != _FORMAT:
            raise InputError(f"{source} is not an mmlens concept dictionary")
        try:
            out = cls(DecomposerConfig(**json.loads(meta["config"])))
            out.components_, out.mean_ = arrays["components"], arrays["mean"]
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise InputError(f"concept dictionary {source} is incomplete: {err}") from None
        return out


def load_decomposer(path: str | os.PathLike[str]) -> ConceptDictionary:
    """A saved :class:`ConceptDictionary` (``ConceptDictionary.load``; the name the steering package looks up)."""
    return ConceptDictionary.load(path)
