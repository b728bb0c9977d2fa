"""End-to-end claims of mmlens.concepts' comparison (issue 21): per-concept shift vectors, their consistency and
magnitude, and concept matching, against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import trim_mean

from mmlens.concepts import CompareConfig, ShiftStatistic, concept_shift_vectors, match_concepts
from mmlens.errors import InputError


@pytest.mark.parametrize("statistic", list(ShiftStatistic))
def test_shift_vectors_by_hand(statistic):
    """Delta_k = statistic of b_m - a_m over the samples of concept k; counts; consistency = mean cosine between
    each sample's shift and Delta_k; magnitude = ||Delta_k||; a concept without samples has a zero vector and NaN
    consistency."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(23, 4))
    b = a + rng.normal(size=(23, 4)) + np.array([2.0, 0.0, -1.0, 0.5])
    assignment = np.array([0, 2] * 11 + [0])  # concept 1 empty, concept 3 beyond every sample
    shifts = concept_shift_vectors(a, b, assignment, 4, statistic, trim=0.2)
    assert shifts.counts.tolist() == [12, 0, 11, 0]
    for k in (0, 2):
        d = (b - a)[assignment == k]
        expected = {
            ShiftStatistic.MEAN: d.mean(0),
            ShiftStatistic.MEDIAN: np.median(d, axis=0),
            ShiftStatistic.TRIMMED_MEAN: trim_mean(d, 0.2, axis=0),
        }[statistic]
        np.testing.assert_allclose(shifts.vectors[k], expected, rtol=1e-12)
        cos = [float(x @ expected / np.linalg.norm(x) / np.linalg.norm(expected)) for x in d]
        assert shifts.consistency[k] == pytest.approx(np.mean(cos), rel=1e-9)
        assert shifts.magnitude[k] == pytest.approx(np.linalg.norm(expected), rel=1e-12)
    for k in (1, 3):
        assert not shifts.vectors[k].any() and np.isnan(shifts.consistency[k]) and shifts.magnitude[k] == 0
    if statistic is ShiftStatistic.TRIMMED_MEAN:  # the trim fraction reaches scipy
        other = concept_shift_vectors(a, b, assignment, 4, statistic, trim=0.0)
        np.testing.assert_allclose(other.vectors[0], (b - a)[assignment == 0].mean(0), rtol=1e-12)
        assert not np.allclose(other.vectors[0], shifts.vectors[0])
    with pytest.raises(InputError, match=r"^A and B must hold the same samples: shapes \(23, 4\) vs \(22, 4\)$"):
        concept_shift_vectors(a, b[:-1], assignment, 4, statistic)


def test_matching_by_cosine_with_the_hungarian_algorithm():
    """A greedy matching would take the best pair first; the Hungarian algorithm maximises the total cosine."""
    u_a = np.array([[1.0, 0.0], [0.8, 0.6]])
    u_b = np.array([[0.9, 0.436], [1.0, -0.1]])
    match, cos = match_concepts(u_a, u_b)
    sim = (u_a / np.linalg.norm(u_a, axis=1, keepdims=True)) @ (u_b / np.linalg.norm(u_b, axis=1, keepdims=True)).T
    totals = {(0, 1): sim[0, 0] + sim[1, 1], (1, 0): sim[0, 1] + sim[1, 0]}
    best = max(totals, key=totals.get)
    assert tuple(match.tolist()) == best
    np.testing.assert_allclose(cos, sim[np.arange(2), match], rtol=1e-9)
    with pytest.raises(InputError, match=r"^the two dictionaries differ in shape: \(2, 2\) vs \(3, 2\)$"):
        match_concepts(u_a, np.ones((3, 2)))


def test_compare_config_validation():
    assert CompareConfig(statistic="median").statistic is ShiftStatistic.MEDIAN
    assert CompareConfig().trim == 0.1 and CompareConfig().alphas[0] == 0.0 and CompareConfig().alphas[-1] == 2.0
    assert len(CompareConfig().alphas) == 21
    for kwargs, message in (
        (dict(trim=0.5), r"^trim must be in \[0, 0.5\), got 0.5$"),
        (dict(trim=-0.1), r"^trim must be in \[0, 0.5\), got -0.1$"),
        (dict(alphas=()), r"^alphas must not be empty$"),
        (dict(statistic="mode"), r"shift statistic"),
    ):
        with pytest.raises(InputError, match=message):
            CompareConfig(**kwargs)
    assert CompareConfig(trim=0.0).trim == 0.0
