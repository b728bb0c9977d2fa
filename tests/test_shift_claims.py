"""End-to-end claims of mmlens.shift's divergence (issue 21): RJSD against a direct eigenvalue computation, and the
bound terms of an analysis computed from the right pair of embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from mmlens.shift import EstimatorConfig, ShiftConfig, SplitEmbeddings, analyse_embeddings, rjsd, rjsd_test


def _von_neumann(c: np.ndarray) -> float:
    """S(C / tr C) from the eigenvalues of the d x d matrix itself (no Gram-matrix shortcut)."""
    eig = np.linalg.eigvalsh(c / np.trace(c))
    eig = eig[eig > 1e-15]
    return float(-(eig * np.log(eig)).sum())


def _direct_rjsd(a: np.ndarray, b: np.ndarray, mixture: str) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    c_a, c_b = a.T @ a, b.T @ b
    mix = c_a + c_b if mixture == "sample_size" else c_a / np.trace(c_a) + c_b / np.trace(c_b)
    return _von_neumann(mix) - 0.5 * (_von_neumann(c_a) + _von_neumann(c_b))


def _sample(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) * np.linspace(2.0, 0.3, d) + 1.0 + shift * (np.arange(d) < 3)


@pytest.mark.parametrize("mixture", ["sample_size", "equal"])
@pytest.mark.parametrize(("n_a", "n_b", "d"), [(40, 7, 12), (5, 9, 16), (30, 3, 8)])
def test_rjsd_equals_a_direct_eigenvalue_computation_for_unequal_sizes(mixture, n_a, n_b, d):
    """RJSD = S(mix) - (S(C_A) + S(C_B)) / 2 with equal 1/2 weights on the two entropies whatever the sample sizes;
    covers both the covariance (n >= d) and the Gram (n < d) routes of the implementation."""
    a, b = _sample(n_a, d, 0), _sample(n_b, d, 1, shift=1.5)
    expected = _direct_rjsd(a, b, mixture)
    assert rjsd(a, b, mixture=mixture) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert rjsd_test(a, b, mixture=mixture, n_permutations=0).value == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # the 1/2 weights matter here: sample-size weights would give a different number
    s_a = _von_neumann(a.T @ a / n_a)
    s_b = _von_neumann(b.T @ b / n_b)
    assert abs((n_a * s_a + n_b * s_b) / (n_a + n_b) - 0.5 * (s_a + s_b)) > 1e-3


@pytest.mark.parametrize("mixture", ["sample_size", "equal"])
def test_rjsd_permutation_null_is_the_rjsd_of_relabelled_samples(mixture):
    """The null reported by rjsd_test is the RJSD of random relabellings of the pooled sample (same sizes, same
    mixture): its mean is reproduced from the same generator, and the p-value counts null values >= the observed
    one, ties included."""
    a, b = _sample(20, 6, 0), _sample(9, 6, 1, shift=0.3)
    result = rjsd_test(a, b, n_permutations=25, seed=4, mixture=mixture)
    rng = np.random.default_rng(4)
    pooled = np.concatenate(
        [a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)]
    )
    null = []
    for _ in range(25):
        perm = rng.permutation(len(pooled))
        null.append(_direct_rjsd(pooled[perm[:20]], pooled[perm[20:]], mixture))
    null = np.asarray(null)
    assert result.null_mean == pytest.approx(null.mean(), rel=1e-9)
    assert result.null_q95 == pytest.approx(np.quantile(null, 0.95), rel=1e-9)
    assert result.p_value == pytest.approx((1 + (null >= result.value - 1e-12).sum()) / 26)
    assert (result.n_a, result.n_b) == (20, 9)
    # every relabelling of identical rows gives the observed value (up to rounding): all ties count, p = 1
    assert rjsd_test(np.ones((5, 3)), np.ones((4, 3)), n_permutations=9, mixture=mixture).p_value == 1.0


def test_bound_terms_compare_the_right_embeddings():
    """J_v: ID vs OOD images, J_t: ID vs OOD text queries, J_P: ID responses vs ID references, J_Q: OOD responses vs
    OOD references; each shifted in turn so a swapped pair of inputs changes the numbers."""

    def split(name, seed, image_shift=0.0, text_shift=0.0, response_shift=0.0):
        return SplitEmbeddings(
            name,
            query=_sample(30, 6, seed),
            text=_sample(30, 6, seed + 1, text_shift),
            response=_sample(30, 6, seed + 2, response_shift),
            reference=_sample(30, 6, seed + 3),
            image=_sample(30, 6, seed + 4, image_shift),
        )

    ref, ood = split("id", 0), split("ood", 10, image_shift=3.0, text_shift=0.5, response_shift=1.0)
    config = ShiftConfig(
        estimator=EstimatorConfig(kind="club", hidden=16, max_steps=5), n_permutations=0, n_bootstrap=2
    )
    result = analyse_embeddings([ref, ood], config, progress=False)
    terms = result.row("ood")["terms"]
    for key, x, y in (
        ("J_v", ref.image, ood.image),
        ("J_t", ref.text, ood.text),
        ("J_P", ref.response, ref.reference),
        ("J_Q", ood.response, ood.reference),
    ):
        assert terms[key]["value"] == pytest.approx(rjsd(x, y, mixture=config.mixture), rel=1e-9), key
    values = sorted(terms[k]["value"] for k in ("J_v", "J_t", "J_P", "J_Q"))
    assert min(np.diff(values)) > 1e-3  # distinct, so any swap of inputs is seen above


def test_von_neumann_entropy_and_the_input_paths():
    """S(C / tr C) by hand; torch tensors are accepted as numpy; normalise=False uses the rows as given; the result
    record derives its excess and dictionary from its fields; bad shapes are one-line errors."""
    import math

    import torch

    from mmlens.errors import InputError
    from mmlens.shift import von_neumann_entropy

    a = _sample(9, 5, 2)
    assert von_neumann_entropy(a) == pytest.approx(_von_neumann(a.T @ a), rel=1e-10)
    wide = _sample(3, 7, 4)  # n < d: through the Gram matrix
    assert von_neumann_entropy(wide) == pytest.approx(_von_neumann(wide.T @ wide), rel=1e-10)
    assert von_neumann_entropy(np.eye(4)) == pytest.approx(math.log(4), rel=1e-12)  # maximally mixed
    b = _sample(6, 5, 3, shift=1.0)
    assert rjsd(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(rjsd(a, b), rel=1e-12)
    raw_a, raw_b = 3 * a, b / 2  # unnormalised rows weigh by their squared norms
    c_a, c_b = raw_a.T @ raw_a, raw_b.T @ raw_b
    expected = _von_neumann(c_a + c_b) - 0.5 * (_von_neumann(c_a) + _von_neumann(c_b))
    assert rjsd(raw_a, raw_b, normalise=False) == pytest.approx(expected, rel=1e-9)
    assert rjsd(raw_a, raw_b, normalise=False) != pytest.approx(rjsd(raw_a, raw_b), rel=1e-6)
    result = rjsd_test(a, b, n_permutations=0)
    assert result.value == pytest.approx(rjsd(a, b), rel=1e-12)
    assert all(math.isnan(x) for x in (result.null_mean, result.null_q95, result.p_value))
    assert (result.n_permutations, result.n_a, result.n_b) == (0, 9, 6)
    one = rjsd_test(a, b, n_permutations=1)  # a single relabelling is a (tiny) null, not "no null"
    assert one.n_permutations == 1 and one.null_mean == one.null_q95 and one.p_value in (0.5, 1.0)
    default = rjsd_test(a, b)
    assert default == rjsd_test(a, b, mixture="sample_size", n_permutations=100, seed=0, normalise=True)
    for fn in (rjsd, rjsd_test):
        with pytest.raises(InputError, match=r"^unknown mixture 'nope': use one of"):
            fn(a, b, mixture="nope")
    done = rjsd_test(a, b, n_permutations=5, seed=1)
    assert done.excess == pytest.approx(done.value - done.null_mean)
    assert done.to_dict() == {
        "value": done.value,
        "null_mean": done.null_mean,
        "null_q95": done.null_q95,
        "p_value": done.p_value,
        "n_permutations": 5,
        "n_a": 9,
        "n_b": 6,
        "excess": done.excess,
    }
    # float64 throughout, whatever comes in: float32 input gives the float64 result of the same numbers; a tensor
    # that requires grad is accepted; one row is a valid sample
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    assert rjsd(a32, b32) == pytest.approx(rjsd(a32.astype(np.float64), b32.astype(np.float64)), rel=1e-13)
    assert rjsd(torch.from_numpy(a).requires_grad_(True), b) == pytest.approx(rjsd(a, b), rel=1e-12)
    assert rjsd(a[:1], b) == pytest.approx(_direct_rjsd(a[:1], b, "sample_size"), rel=1e-9)
    for bad in (np.ones(4), np.ones((0, 4)), np.ones((2, 3, 4))):
        with pytest.raises(InputError, match=r"non-empty \[N, D\] matrix"):
            rjsd(bad, np.ones((3, 4)))
    with pytest.raises(InputError, match=r"^a must be a non-empty \[N, D\] matrix, got shape \(3,\)$"):
        von_neumann_entropy(np.ones(3))
    with pytest.raises(InputError, match=r"^b contains NaN or infinite values$"):
        rjsd(np.ones((3, 4)), np.full((3, 4), np.inf))
    with pytest.raises(InputError, match=r"^a must be a non-empty"):
        rjsd_test(np.ones((0, 4)), np.ones((3, 4)))
    with pytest.raises(InputError, match="1 embedding rows are all zero"):
        rjsd(np.vstack([np.ones((2, 4)), np.zeros((1, 4))]), np.ones((3, 4)))
