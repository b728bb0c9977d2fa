"""Dictionary metrics: T-overlap of text groundings, disentanglement, overlap of most-activating samples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def t_overlap(words_a: Sequence[str], words_b: Sequence[str]) -> float:
    """TO(u, u') = 100 |T(u) & T(u')| / |T(u)| (0 when T(u) is empty)."""
    a = set(words_a)
    return 100.0 * len(a & set(words_b)) / len(a) if a else 0.0


def mean_t_overlap(groundings_a: Sequence[Sequence[str]], groundings_b: Sequence[Sequence[str]]) -> float:
    """Mean TO of row-aligned concepts (concept k of a against concept k of b)."""
    return float(np.mean([t_overlap(a, b) for a, b in zip(groundings_a, groundings_b)])) if groundings_a else 0.0


def disentanglement(groundings: Sequence[Sequence[str]]) -> float:
    """Mean overlap between the words of different concepts of one dictionary, in [0, 1]; lower = more distinct:
    1 / (K (K - 1)) sum_{i != j} |T_i & T_j| / |T_i|."""
    k = len(groundings)
    if k < 2:
        return 0.0
    total = sum(t_overlap(groundings[i], groundings[j]) / 100.0 for i in range(k) for j in range(k) if i != j)
    return total / (k * (k - 1))


def mas_overlap(top_a: np.ndarray, top_b: np.ndarray) -> np.ndarray:
    """Per row-aligned concept, the fraction of shared most-activating samples |X_a & X_b| / |X_a|."""
    return np.array([len(set(a.tolist()) & set(b.tolist())) / max(len(a), 1) for a, b in zip(top_a, top_b)])
