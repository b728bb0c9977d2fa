"""Representation Jensen-Shannon divergence (RJSD) with a permutation null.

RJSD (Hoyos-Osorio & Sanchez-Giraldo, arXiv 2305.16446) with a linear kernel on L2-normalised embeddings: for
samples A (n_A x d) and B, C_A = A^T A, S(C) the von Neumann entropy of C / tr C (natural log), and

    RJSD(A, B) = S(mix) - (S(C_A) + S(C_B)) / 2,

with ``mix = (C_A + C_B) / 2`` (``mixture="sample_size"``, the reference code: the unnormalised sums weight the
mixture by sample size) or ``mix = (C_A / tr C_A + C_B / tr C_B) / 2`` (``mixture="equal"``: a proper equal-weight
JSD of the two density matrices, then 0 <= RJSD <= ln 2).

RJSD is a *lower bound* on the JSD of the underlying distributions, and it is biased above 0 on small samples of
one distribution (the rank is at most n), so :func:`rjsd_test` reports a permutation null next to every value.
The spectra are computed from the n x n Gram matrices when n < d (same non-zero eigenvalues as the d x d
covariance), so the cost is O(min(n, d)^3).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from mmlens.enums import as_enum
from mmlens.errors import InputError
from mmlens.shift.options import Mixture

MIXTURES = tuple(Mixture)


def _matrix(a: Any, name: str) -> np.ndarray:
    a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise InputError(f"{name} must be a non-empty [N, D] matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return a


def l2_normalise(a: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InputError(f"{int((norms == 0).sum())} embedding rows are all zero and cannot be L2-normalised")
    return a / norms


def _entropy_of_psd(m: np.ndarray) -> float:
    """von Neumann entropy of the PSD matrix m / tr m (natural log)."""
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    eig = eig[eig > 1e-12 * max(eig.max(), 1e-300)]
    p = eig / eig.sum()
    return float(-(p * np.log(p)).sum())


def _entropy_of_rows(a: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Entropy of sum_i w_i a_i a_i^T (normalised), via the smaller of the Gram and covariance matrices."""
    if weight is not None:
        a = a * np.sqrt(weight)[:, None]
    n, d = a.shape
    return _entropy_of_psd(a @ a.T if n < d else a.T @ a)


def von_neumann_entropy(a: Any) -> float:
    """S(C_A / tr C_A) for C_A = A^T A."""
    return _entropy_of_rows(_matrix(a, "a"))


def rjsd(a: Any, b: Any, *, mixture: Mixture = Mixture.SAMPLE_SIZE, normalise: bool = True) -> float:
    """RJSD between the samples ``a`` [n_A, d] and ``b`` [n_B, d] (nats). See the module docstring."""
    mixture = as_enum(Mixture, mixture, "mixture")
    a, b = _prepare_pair(a, b, normalise)
    return _rjsd_prepared(a, b, mixture)


def _prepare_pair(a: Any, b: Any, normalise: bool) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 samples of equal dimension, L2-normalised if asked."""
    a, b = _matrix(a, "a"), _matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise InputError(f"the two samples have different dimensions: {a.shape[1]} and {b.shape[1]}")
    if normalise:
        a, b = l2_normalise(a), l2_normalise(b)
    return a, b


def _rjsd_prepared(a: np.ndarray, b: np.ndarray, mixture: Mixture) -> float:
    s_a, s_b = _entropy_of_rows(a), _entropy_of_rows(b)
    both = np.concatenate([a, b])
    if mixture is Mixture.EQUAL:
        tr_a, tr_b = float((a**2).sum()), float((b**2).sum())
        w = np.concatenate([np.full(len(a), 1.0 / tr_a), np.full(len(b), 1.0 / tr_b)])
        s_mix = _entropy_of_rows(both, w)
    else:
        s_mix = _entropy_of_rows(both)
    return s_mix - 0.5 * (s_a + s_b)


@dataclass(frozen=True)
class RJSDResult:
    """An RJSD value with its permutation null (labels of the pooled sample shuffled ``n_permutations`` times).

    ``excess`` = value - null mean: the part of the divergence not explained by finite-sample bias.
    ``p_value`` = (1 + #{null >= value}) / (1 + n_permutations).
    """

    value: float
    null_mean: float
    null_q95: float
    p_value: float
    n_permutations: int
    n_a: int
    n_b: int

    @property
    def excess(self) -> float:
        return self.value - self.null_mean

    def to_dict(self) -> dict[str, float]:
        return asdict(self) | {"excess": self.excess}


def rjsd_test(
    a: Any,
    b: Any,
    *,
    mixture: Mixture = Mixture.SAMPLE_SIZE,
    n_permutations: int = 100,
    seed: int = 0,
    normalise: bool = True,
) -> RJSDResult:
    """RJSD with its permutation null: the RJSD of random relabellings of the pooled sample (same sizes)."""
    mixture = as_enum(Mixture, mixture, "mixture")
    a, b = _prepare_pair(a, b, normalise)
    # One BLAS thread: the test is many small eigendecompositions, and OpenBLAS's threads only wait on each other
    # there (on the shared, loaded 2-core machine a 180 x 180 eigvalsh took 0.38 s with them, 0.03 s without).
    with threadpool_limits(limits=1, user_api="blas"):
        value = _rjsd_prepared(a, b, mixture)
        if n_permutations <= 0:
            return RJSDResult(value, math.nan, math.nan, math.nan, 0, len(a), len(b))
        rng = np.random.default_rng(seed)
        pooled = np.concatenate([a, b])
        null = np.empty(n_permutations)
        # sample-size mixture: C_A + C_B is the pooled sample's matrix whatever the labels, so S(mix) is computed
        # once; the equal mixture's weights depend on the labels (unless n_A = n_B), so it is recomputed
        s_mix = _entropy_of_rows(pooled) if mixture is Mixture.SAMPLE_SIZE else None
        for k in range(n_permutations):
            perm = rng.permutation(len(pooled))
            pa, pb = pooled[perm[: len(a)]], pooled[perm[len(a) :]]
            if s_mix is None:
                null[k] = _rjsd_prepared(pa, pb, mixture)
            else:
                null[k] = s_mix - 0.5 * (_entropy_of_rows(pa) + _entropy_of_rows(pb))
    p = (1 + int((null >= value - 1e-12).sum())) / (1 + n_permutations)
    return RJSDResult(value, float(null.mean()), float(np.quantile(null, 0.95)), p, n_permutations, len(a), len(b))
