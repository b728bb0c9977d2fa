"""mmlens.influence: ECIF terms, solvers, closed-form removal vs retraining, every contrastive architecture, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmlens.errors import InputError
from mmlens.influence import (
    BatchPartition,
    FitArguments,
    FitResult,
    HeadTask,
    InfluenceAnalyzer,
    InfluenceArguments,
    ModelTask,
    NoiseKind,
    PairData,
    attach_lora,
    detection_metrics,
    inject_noise,
    lemon_score,
    load_pair_data,
)
from mmlens.influence.objective import batch_loss, pair_terms, removal_masks
from mmlens.models import LossKind, tiny_model

COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 210, 40), (200, 60, 200), (250, 250, 250)]
WORDS = ["red", "green", "blue", "yellow", "purple", "white"]


def _pairs(n: int = 24, size: int = 16, seed: int = 0) -> PairData:
    """Two-colour squares with captions "a red and blue square": distinct content, few exact duplicates."""
    rng = np.random.default_rng(seed)
    images, captions, labels = [], [], []
    combos = [(a, b) for a in range(6) for b in range(6) if a != b]
    order = rng.permutation(len(combos))
    for i in range(n):
        a, b = combos[order[i % len(combos)]]
        arr = np.zeros((size, size, 3), dtype=np.uint8)
        arr[:, : size // 2] = COLOURS[a]
        arr[:, size // 2 :] = COLOURS[b]
        arr[rng.integers(size), :, :] = 0  # a random dark stripe: every image differs
        images.append(Image.fromarray(arr))
        captions.append(f"a {WORDS[a]} and {WORDS[b]} square")
        labels.append(a * 6 + b)
    return PairData(tuple(images), tuple(captions), groups=tuple(label // 12 for label in labels), labels=tuple(labels))


@pytest.fixture(scope="module")
def clip():
    return tiny_model("clip")


# ------------------------------------------------------------------------------------------ the ECIF terms
def _sim(b: int = 6, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(b, b, generator=gen, dtype=torch.float64)


def _relaxed_loss(sim: torch.Tensor, n: int, zeta: torch.Tensor) -> torch.Tensor:
    """L_Batch with image n's entries in the other rows and text n's entries in the other columns scaled by zeta."""
    b = sim.shape[0]
    other = torch.ones(b, dtype=torch.bool)
    other[n] = False
    row_logits = sim.clone()
    row_logits[other, n] = row_logits[other, n] + torch.log(zeta)
    col_logits = sim.clone()
    col_logits[n, other] = col_logits[n, other] + torch.log(zeta)
    diag = sim.diagonal()
    return (-2 * diag + torch.logsumexp(row_logits, 1) + torch.logsumexp(col_logits, 0)).sum()


@pytest.mark.parametrize("n", [0, 3])
def test_neg_prob_is_the_zeta_derivative(n):
    sim = _sim()
    zeta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    (dz,) = torch.autograd.grad(_relaxed_loss(sim, n, zeta), zeta)
    assert float(dz) == pytest.approx(float(pair_terms(sim, LossKind.INFONCE)["neg_prob"][n]), rel=1e-9)


@pytest.mark.parametrize("kind", [LossKind.INFONCE, LossKind.SIGMOID])
def test_pos_plus_neg_exact_is_the_batch_loss_difference(kind):
    sim = _sim(7, seed=1)
    terms = pair_terms(sim, kind)
    none = torch.zeros(7, dtype=torch.bool)
    index = torch.arange(7)
    full = batch_loss(sim, *removal_masks(index, none, none, none), kind=kind)
    for n in range(7):
        keep = [i for i in range(7) if i != n]
        without = batch_loss(
            sim[keep][:, keep], *removal_masks(torch.arange(6), none[:6], none[:6], none[:6]), kind=kind
        )
        assert float(terms["pos"][n] + terms["neg_exact"][n]) == pytest.approx(float(full - without), rel=1e-9)
        # the removal masks express the same deletion inside the batch
        flags = none.clone()
        flags[n] = True
        masked = batch_loss(sim, *removal_masks(index, flags, none, none), kind=kind)
        assert float(masked) == pytest.approx(float(without), rel=1e-9)
    assert (terms["neg_exact"] >= terms["neg_prob"] - 1e-12).all() or kind is LossKind.SIGMOID


def test_reciprocal_is_not_a_rescaling_of_prob():
    terms = pair_terms(_sim(8, seed=2), LossKind.INFONCE)
    ratio = terms["neg_reciprocal"] / terms["neg_prob"]
    assert float(ratio.std()) > 0.1 * float(ratio.mean())


# ---------------------------------------------------------------------------------- solvers and gradients
@pytest.fixture(scope="module")
def fitted(clip):
    """A near-convex head: random tiny CLIP with its projections scaled up (a random init's small projections make
    the normalised embedding strongly curved) and a strong L2 anchor."""
    import copy

    model = copy.deepcopy(clip)
    with torch.no_grad():
        model.base_model.visual_projection.weight.mul_(10)
        model.base_model.text_projection.weight.mul_(10)
    data = _pairs(24)
    analyzer = InfluenceAnalyzer(
        HeadTask(model), data, fit_args=FitArguments(batch_size=8, l2=50.0), args=InfluenceArguments(solver="explicit")
    )
    analyzer.fit()
    return analyzer


def test_fit_converges_and_records_its_partition(fitted, tmp_path):
    assert fitted.fitted.grad_norm < 1e-5
    fitted.fitted.save(tmp_path / "fit")
    from mmlens.influence import FitResult

    again = FitResult.load(tmp_path / "fit")
    assert again.partition == fitted.partition and torch.equal(again.params, fitted.fitted.params)


def test_explicit_and_cg_inverses_agree(fitted):
    from mmlens.influence.solvers import build_inverse

    gen = torch.Generator().manual_seed(0)
    v = torch.randn(2, fitted.task.space.size, generator=gen, dtype=torch.float64)
    exact = fitted.inverse().apply(v)
    assert torch.allclose(fitted.hvp(exact[0]), v[0], rtol=1e-6, atol=1e-8)

    def error(**kw):
        approx = build_inverse(
            InfluenceArguments(**kw), fitted.hvp, fitted.hvp, fitted.task.space.size, torch.float64
        ).apply(v)
        return float((approx - exact).norm() / exact.norm())

    assert error(solver="cg", cg_tol=1e-12, cg_max_iter=2000) < 1e-6
    # LiSSA is a Neumann series: its error shrinks geometrically with depth
    shallow, deep = error(solver="lissa", lissa_depth=5), error(solver="lissa", lissa_depth=300)
    assert deep < 1e-6 < shallow
    assert error(solver="projected", proj_dim=fitted.task.space.size) < 1e-6  # a full-rank projection is exact


def test_per_pair_gradients_match_forward_mode_and_autograd(fitted):
    idx, grads, _ = next(fitted.iter_pair_gradients())
    theta = fitted.fitted.params
    direction = torch.randn(theta.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    enc = {k: v[torch.as_tensor(idx)] for k, v in fitted.encoded.items()}
    dots = fitted._terms_jvp(theta, enc, direction[None])[0]  # [parts, B]
    assert torch.allclose(dots[0], grads["pos"] @ direction, rtol=1e-8, atol=1e-10)
    assert torch.allclose(dots[3], grads["neg_exact"] @ direction, rtol=1e-8, atol=1e-10)
    # one pair's exact term gradient by plain autograd
    th = theta.clone().requires_grad_(True)
    img, txt = fitted.task.embed(fitted.task.space.unflatten(th), enc)
    from mmlens.influence.objective import similarity

    term = pair_terms(similarity(txt, img, fitted.task.logit_scale), LossKind.INFONCE)["neg_exact"][2]
    (g,) = torch.autograd.grad(term, th)
    assert torch.allclose(g, grads["neg_exact"][2], rtol=1e-8, atol=1e-10)


def test_closed_form_removal_matches_retraining_on_a_convex_head(fitted):
    val = _pairs(16, seed=5)
    scores = fitted.value(val)
    base = fitted.validation_loss(fitted.fitted.params, val)
    for n in (0, 5):
        retrained = fitted.retrain(remove=[n])
        edit = fitted.removal_edit([n], "exact")
        # the edit moves the parameters the way retraining does
        step_true = retrained - fitted.fitted.params
        rel = float((edit - retrained).norm() / step_true.norm())
        assert rel < 0.05
        actual = fitted.validation_loss(retrained, val) - base
        predicted = scores.role("both", "exact")[n]
        assert predicted == pytest.approx(actual, rel=0.15, abs=1e-6)


def test_trace_back_matches_leave_one_out_retraining_of_the_test_loss(fitted):
    """Trace-back's sign and ranking are those of retraining without each pair (the README example's "clean pairs of
    the same digit on top" was checked this way); the relative score is the plain one over ||H^-1 g_n||."""
    from scipy.stats import spearmanr

    from mmlens.influence.objective import similarity

    test = _pairs(4, seed=9)
    result = fitted.trace(test, relative="theta")
    enc = fitted.task.encode(test)
    task = fitted.task

    def test_loss(theta: torch.Tensor) -> float:
        img, txt = task.embed(task.space.unflatten(theta), enc)
        return float(pair_terms(similarity(txt, img, task.logit_scale, task.logit_bias), task.loss_kind)["pos"][0])

    base = test_loss(fitted.fitted.params)
    actual = np.array([test_loss(fitted.retrain(remove=[n], warm_start=True)) - base for n in range(fitted.n)])
    predicted = result.delta_test_loss_if_removed[0]
    assert spearmanr(predicted, actual).statistic > 0.95
    big = np.abs(actual) > 0.1 * np.abs(actual).max()
    assert (np.sign(predicted[big]) == np.sign(actual[big])).all()
    norms = np.array(
        [
            float(fitted.inverse().apply((g["pos"] + g["neg_exact"]).detach())[k].norm())
            for idx, g, _ in fitted.iter_pair_gradients(parts=("pos", "neg_exact"))
            for k in range(len(idx))
        ]
    )
    order = np.concatenate([np.asarray(b) for b in fitted.partition.batches])
    np.testing.assert_allclose(result.relative_influence[0][order], predicted[order] / norms, rtol=1e-6)


def test_trace_and_self_influence(fitted):
    test = _pairs(4, seed=9)
    result = fitted.trace(test)
    assert result.delta_test_loss_if_removed.shape == (4, 24)
    assert np.isfinite(result.relative_influence).all()
    assert len(result.top(0, 5)) == 5
    # the test pairs' Pos losses sum to their batch's loss: summed over t, trace-back is the value for that batch
    np.testing.assert_allclose(
        result.delta_test_loss_if_removed.sum(0),
        fitted.value(test, batch_size=8).role("both", "exact"),
        rtol=1e-6,
        atol=1e-9,
    )
    # g_n^T H^-1 g_n with H positive definite at the converged fit: strictly positive, and it depends on the role
    # (its value is checked against a dense Hessian in test_influence_claims); TracIn's is ||g_pos||^2
    self_both = fitted.self_influence()
    assert (self_both > 0).all()
    assert not np.allclose(self_both, fitted.self_influence(role="pos"))
    idx, grads, _ = next(fitted.iter_pair_gradients(parts=("pos",)))
    tracin = fitted.tracin_self_influence()
    np.testing.assert_allclose(tracin[np.asarray(idx)], grads["pos"].pow(2).sum(1).detach().numpy(), rtol=1e-10)


# ------------------------------------------------------------------------------------------ dataset scale
def _replicated(analyzer: InfluenceAnalyzer, copies: int, tolerance_grad: float) -> InfluenceAnalyzer:
    """The same problem with every batch repeated ``copies`` times and the prior scaled by ``copies``: its risk is
    exactly ``copies`` x the original risk, so a scale-free fit must need the same evaluations at every size."""
    n = analyzer.n
    batches = tuple(tuple(i + c * n for i in b) for c in range(copies) for b in analyzer.partition.batches)
    return InfluenceAnalyzer(
        analyzer.task,
        PairData(analyzer.train.images * copies, analyzer.train.captions * copies),
        fit_args=FitArguments(
            batch_size=analyzer.fit_args.batch_size, l2=analyzer.fit_args.l2 * copies, tolerance_grad=tolerance_grad
        ),
        args=analyzer.args,
        partition=BatchPartition(batches),
        encoded={k: v.repeat(copies, *([1] * (v.ndim - 1))) for k, v in analyzer.encoded.items()},
    )


def test_fit_evaluations_do_not_grow_with_the_number_of_pairs(fitted):
    """The stopping rule is per pair: the same problem at 1x, 16x and 256x the pairs (risk scaled exactly) is fitted
    to the same parameters in the same number of evaluations, stopped by the gradient tolerance (reachable here).
    An absolute threshold on the summed gradient asks 16x and 256x more precision of the larger problems: more
    evaluations, then a stall on float noise."""
    tolerance = 1e-5
    fits = {c: _replicated(fitted, c, tolerance).fit() for c in (1, 16, 256)}
    base = fits[1]
    assert base.evaluations >= 3  # a real optimisation, not a start at the optimum
    for copies, fit in fits.items():
        n_pairs = copies * fitted.n
        assert fit.grad_norm <= tolerance * n_pairs  # stopped by the per-pair gradient rule
        assert fit.evaluations == base.evaluations, (copies, fit.evaluations, base.evaluations)
        assert torch.allclose(fit.params, base.params, rtol=1e-6, atol=1e-8)
        assert fit.risk == pytest.approx(copies * base.risk, rel=1e-9)


def test_fit_reaches_its_tolerance_where_lbfgs_stops_short_and_says_when_it_did_not(fitted):
    """L-BFGS capped at 3 iterations stops far above the per-pair tolerance: the fit must finish by Newton-CG to the
    tolerance, and ``converged`` must tell the truth (checked against the gradient recomputed at the result)."""
    tolerance = 1e-9

    def refit(**kw) -> FitResult:
        an = InfluenceAnalyzer(
            fitted.task,
            fitted.train,
            fit_args=FitArguments(batch_size=8, l2=50.0, max_iter=3, tolerance_grad=tolerance, **kw),
            partition=fitted.partition,
            encoded=fitted.encoded,
        )
        fit = an.fit()
        _, grad = an.risk_and_grad(fit.params)
        assert fit.grad_norm == pytest.approx(float(grad.abs().max()), rel=1e-9)
        assert fit.converged == (float(grad.abs().max()) <= tolerance * an.n)
        return fit

    short = refit(newton_max_iter=0)
    assert not short.converged and short.grad_norm > 1e3 * tolerance * fitted.n
    full = refit(newton_max_iter=100)
    assert full.converged and full.evaluations > short.evaluations
    assert torch.allclose(full.params, fitted.fitted.params, atol=1e-6)  # the same optimum as the uncapped fit


def test_newton_stage_ends_at_a_bounded_cost_when_the_tolerance_is_out_of_reach(fitted):
    """A tolerance below float64 rounding: the stage stops at its product budget, returns its last accepted iterate
    (not worse than where L-BFGS stopped) and the fit says it did not converge."""
    from mmlens.influence.analyzer import PRODUCTS_PER_NEWTON_ITER

    an = InfluenceAnalyzer(
        fitted.task,
        fitted.train,
        fit_args=FitArguments(batch_size=8, l2=50.0, max_iter=3, tolerance_grad=1e-30, newton_max_iter=4),
        partition=fitted.partition,
        encoded=fitted.encoded,
    )
    fit = an.fit()
    assert not fit.converged
    lbfgs_evaluations = int(3 * 1.25) + 1
    newton_risk_evaluations = 4 + 2 + 10 * 5  # trust region, then <= 10 gradient-norm steps of <= 5 evaluations
    assert fit.evaluations <= lbfgs_evaluations + 4 * PRODUCTS_PER_NEWTON_ITER + newton_risk_evaluations
    assert float(an.risk_and_grad(fit.params)[0]) <= float(an.risk_and_grad(fitted.theta0)[0])


def test_hessian_vector_products_at_any_point_match_finite_differences(fitted):
    """``hvp_at`` (the Newton stage's curvature, with removals, single graph and chunked) is the derivative of the
    risk's gradient."""
    theta = fitted.theta0 + 0.1 * torch.randn(fitted.task.space.size, dtype=fitted.theta0.dtype)
    v = torch.randn_like(theta)
    chunked = InfluenceAnalyzer(
        fitted.task,
        fitted.train,
        fit_args=fitted.fit_args,
        partition=fitted.partition,
        encoded=fitted.encoded,
        chunk_pairs=8,
    )
    for an in (fitted, chunked):
        for removal in ({}, {"remove": [0, 5]}, {"remove_neg": [3]}):
            eps = 1e-5
            plus = an.risk_and_grad(theta + eps * v, **removal)[1]
            minus = an.risk_and_grad(theta - eps * v, **removal)[1]
            expected = (plus - minus) / (2 * eps)
            assert torch.allclose(an.hvp_at(theta, **removal)(v), expected, rtol=1e-5, atol=1e-6)


def _with_fit(analyzer: InfluenceAnalyzer, params: torch.Tensor) -> InfluenceAnalyzer:
    """``analyzer`` set to ``params`` (the minimiser of a replicated problem is the original one)."""
    from mmlens.influence import FitResult

    analyzer.use_fit(FitResult(params, analyzer.theta0, analyzer.partition, analyzer.fit_args, 0.0, 0.0, 0.0))
    return analyzer


def test_nystrom_preconditioner_removes_the_sketched_spectrum():
    """H = A + shift I with A positive semi-definite, its spectrum spread over six decades in its top 12
    directions: a Nystrom sketch of 24 vectors maps them onto one value, so preconditioned CG converges in a few
    steps where plain CG needs many; a full sketch is H^-1 up to a scalar (a step or two: round-off). Both solve to the exact
    answer at the same tolerance, and the square root squares to the preconditioner."""
    from mmlens.influence.solvers import NystromPreconditioner, conjugate_gradient

    size, shift = 120, 1.0
    gen = torch.Generator().manual_seed(3)
    basis, _ = torch.linalg.qr(torch.randn(size, size, generator=gen, dtype=torch.float64))
    spectrum = torch.cat([torch.logspace(6, 1, 12, dtype=torch.float64), torch.rand(size - 12, generator=gen) * 0.5])
    a_mat = (basis * spectrum) @ basis.T
    h_mat = a_mat + shift * torch.eye(size, dtype=torch.float64)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        return (a_mat @ v.T).T if v.ndim == 2 else a_mat @ v  # the data part; CG adds the shift as damping

    b = torch.randn(size, generator=gen, dtype=torch.float64)
    exact = torch.linalg.solve(h_mat, b)
    results = {}
    for k in (24, size):
        omega = torch.randn(k, size, generator=gen, dtype=torch.float64)
        pre = NystromPreconditioner.from_sketch(omega, hvp(omega), shift)
        x, info = conjugate_gradient(hvp, b, shift, 500, 1e-10, preconditioner=pre)
        assert float((x - exact).norm() / exact.norm()) < 1e-8
        assert torch.allclose(pre.sqrt_apply(pre.sqrt_apply(b)), pre(b), rtol=1e-10, atol=1e-12)
        results[k] = info["iterations"]
    full = NystromPreconditioner.from_sketch(torch.eye(size, dtype=torch.float64), a_mat, shift)
    assert torch.allclose(full(h_mat @ b), (float(full.eigenvalues[-1]) + shift) * b, rtol=1e-8)
    assert torch.allclose(full.approximate_inverse(b), exact, rtol=1e-8)
    plain_x, plain = conjugate_gradient(hvp, b, shift, 500, 1e-10)
    assert float((plain_x - exact).norm() / exact.norm()) < 1e-8
    assert results[size] <= 3 and results[24] <= 20 < plain["iterations"], (results, plain)


def test_preconditioned_cg_cost_does_not_grow_with_the_number_of_pairs(fitted):
    """The same problem at 1x, 8x and 32x the pairs (risk and Hessian exactly scaled, same conditioning): CG with
    the Nystrom preconditioner - sketched on the first 24 pairs' batches and scaled to all pairs - is the whole
    problem's preconditioner, takes the same iterations at every size and solves to the explicit inverse's
    answer; so does plain CG. A preconditioner not rescaled to all pairs, one sketched on all pairs (its cost
    growing with N) or an absolute tolerance breaks one of these. (This head is well conditioned - cond(H) 1.3 -
    so the preconditioner cannot save iterations here; that it does where the spectrum is spread is tested on a
    known matrix above.)"""
    gen = torch.Generator().manual_seed(4)
    b = torch.randn(fitted.task.space.size, generator=gen, dtype=torch.float64)
    exact = fitted.inverse().apply(b[None])[0]
    counts: dict[tuple[int, str], int] = {}
    for copies in (1, 8, 32):
        for pre in ("nystrom", "none"):
            args = InfluenceArguments(
                solver="cg", cg_tol=1e-10, proj_dim=24, preconditioner=pre, precond_pairs=fitted.n,
                cg_precondition_after=1,
            )  # fmt: skip
            rep = _with_fit(_replicated(fitted, copies, 1e-9), fitted.fitted.params)
            rep.args = args
            x = rep.inverse().apply(copies * b[None])[0]
            info = rep.inverse().info
            assert float((x - exact).norm() / exact.norm()) < 1e-7, (copies, pre)
            assert info["solves"][0]["rel_residual"] <= 1e-10
            counts[copies, pre] = info["solves"][0]["iterations"]
            if pre == "nystrom":
                assert info["solves"][0]["preconditioned_from"] == 1  # built after one plain iteration
                assert copies == 1 or rep._subsample_rows(args.precond_pairs)[1] == fitted.n  # sketched on 24 pairs
                precond = rep.cg_preconditioner()
                assert precond is not None and precond.shift == pytest.approx(copies * fitted.fit_args.l2)
                if copies == 1:
                    base = precond
                else:  # the 24-pair sketch rescaled to all pairs is the whole problem's: copies x the original
                    assert torch.allclose(precond.eigenvalues, copies * base.eigenvalues, rtol=1e-8)
                    assert torch.allclose(precond.basis.abs(), base.basis.abs(), rtol=1e-6, atol=1e-8)
    assert counts[1, "nystrom"] == counts[8, "nystrom"] == counts[32, "nystrom"], counts
    assert counts[1, "none"] == counts[8, "none"] == counts[32, "none"], counts


def test_preconditioned_fit_has_the_same_minimiser_and_evaluations_at_every_size(fitted):
    """The fit's preconditioned continuation (forced after 2 plain evaluations) reaches the plain fit's parameters
    by the same per-pair stopping rule, in the same evaluations at 1x and 8x the pairs."""
    tolerance = 1e-7
    plain = _replicated(fitted, 1, tolerance).fit()
    fits = {}
    for copies in (1, 8):
        rep = _replicated(fitted, copies, tolerance)
        rep.fit_args = FitArguments(
            batch_size=fitted.fit_args.batch_size,
            l2=fitted.fit_args.l2 * copies,
            tolerance_grad=tolerance,
            precondition_after=2,
            precondition_rank=24,
            precondition_pairs=fitted.n,
        )
        fits[copies] = rep.fit()
        assert fits[copies].grad_norm <= tolerance * rep.n
        assert torch.allclose(fits[copies].params, plain.params, rtol=1e-5, atol=1e-7)
    assert fits[1].evaluations == fits[8].evaluations > 2


def test_chunked_passes_equal_the_single_graph(fitted):
    """The fit's risk gradient and the Hessian-vector products summed chunk by chunk equal the one-graph values."""
    chunked = InfluenceAnalyzer(
        fitted.task,
        fitted.train,
        fit_args=fitted.fit_args,
        args=fitted.args,
        partition=fitted.partition,
        encoded=fitted.encoded,
        chunk_pairs=8,
    )
    assert len(chunked._chunks) == 3 and len(fitted._chunks) == 1
    chunked.use_fit(fitted.fitted)
    theta = fitted.fitted.params + 0.01
    (value_a, grad_a), (value_b, grad_b) = (
        fitted.risk_and_grad(theta, remove=[3]),
        chunked.risk_and_grad(theta, remove=[3]),
    )
    assert float(value_a) == pytest.approx(float(value_b), rel=1e-12)
    assert torch.allclose(grad_a, grad_b, rtol=1e-10, atol=1e-12)
    v = torch.randn(3, theta.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(fitted.hvp(v), chunked._chunked_hvp(v, rows_per_pass=2), rtol=1e-10, atol=1e-10)
    assert torch.allclose(fitted.hvp(v[0]), chunked.hvp(v[0]), rtol=1e-10, atol=1e-10)
    assert torch.allclose(chunked.retrain(remove=[3]), fitted.retrain(remove=[3]), rtol=1e-6, atol=1e-8)


def test_streaming_scores_equal_the_in_memory_scores(fitted, tmp_path):
    from mmlens.influence import encode_cached, score_pairs

    val = _pairs(16, seed=5)
    streamed = score_pairs(fitted, tmp_path / "scores", val, shard_batches=1, all_forms=True)
    assert streamed.n_shards == 3 and streamed.reused_shards == 0 and len(streamed) == 24
    memory = fitted.value(val)
    for name, v in memory.variants().items():
        np.testing.assert_allclose(streamed.pair_scores().variants()[name], v, rtol=1e-7, atol=1e-10, err_msg=name)
    np.testing.assert_allclose(streamed.value, memory.role("both", "exact"), rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(streamed.self_influence, fitted.self_influence(), rtol=1e-9)
    np.testing.assert_allclose(streamed.columns["max_negative_prob"], memory.max_negative_prob, rtol=1e-9)
    # without validation pairs: self-influence only
    alone = score_pairs(fitted, tmp_path / "alone", shard_batches=2)
    assert np.isnan(alone.value).all() and np.array_equal(alone.self_influence, streamed.self_influence)
    one_form = score_pairs(fitted, tmp_path / "one-form", val, shard_batches=2)  # the default: the chosen form only
    np.testing.assert_allclose(one_form.value, streamed.value, rtol=1e-9)
    assert np.isnan(one_form.columns["neg_prob"]).all()
    # the tower outputs are cached on disk and read back identical
    first = encode_cached(fitted.task, fitted.train, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("encoded-*.safetensors"))) == 1
    again = encode_cached(fitted.task, fitted.train, tmp_path / "cache")
    assert all(torch.equal(first[k], again[k]) and torch.equal(first[k], fitted.encoded[k]) for k in first)


def test_an_interrupted_scoring_run_resumes_with_the_same_scores(fitted, tmp_path):
    from mmlens.influence import score_pairs

    val = _pairs(16, seed=5)
    whole = score_pairs(fitted, tmp_path / "whole", val, shard_batches=1)

    class Crash(Exception):
        pass

    def crash_after_first(i):
        if i == 0:
            raise Crash

    with pytest.raises(Crash):
        score_pairs(fitted, tmp_path / "cut", val, shard_batches=1, on_shard=crash_after_first)
    assert len(list((tmp_path / "cut" / "shards").glob("*.npz"))) == 1  # the finished shard survived, nothing else
    written = []
    resumed = score_pairs(fitted, tmp_path / "cut", val, shard_batches=1, on_shard=written.append)
    assert resumed.reused_shards == 1 and written == [1, 2]  # only the missing shards were computed
    for name in whole.columns:
        assert np.array_equal(resumed.columns[name], whole.columns[name], equal_nan=True), name
    # other validation pairs: the stale shards are not reused
    other = score_pairs(fitted, tmp_path / "cut", _pairs(16, seed=6), shard_batches=1)
    assert other.reused_shards == 0 and not np.allclose(other.value, whole.value)


# ------------------------------------------------------------------------------ architectures and groups
@pytest.mark.parametrize("arch", ["clip", "siglip", "vision-text-dual-encoder"])
def test_every_contrastive_architecture(arch):
    model = tiny_model(arch)
    data, val = _pairs(12), _pairs(6, seed=3)
    for task in (HeadTask(model), ModelTask(model, "last_k_layers", k=1)):
        analyzer = InfluenceAnalyzer(
            task,
            data,
            fit_args=FitArguments(batch_size=6, l2=5.0, max_iter=50),
            args=InfluenceArguments(solver="cg", cg_max_iter=50),
        )
        analyzer.fit()
        scores = analyzer.value(val)
        for name, v in scores.variants().items():
            assert v.shape == (12,) and np.isfinite(v).all(), name
        edited = analyzer.edited_model([0, 1])
        assert torch.isfinite(edited.embed_images(list(val.images[:2]))).all()


def test_lora_group_and_kronfluence_peer(clip):
    import copy

    from mmlens.influence import KronfluencePeer

    model = copy.deepcopy(clip)
    with torch.no_grad():  # the near-convex head of the `fitted` fixture
        model.base_model.visual_projection.weight.mul_(10)
        model.base_model.text_projection.weight.mul_(10)
    task = HeadTask(attach_lora(model, rank=2), "lora")
    assert all("lora_" in n for n in task.space.names)
    analyzer = InfluenceAnalyzer(task, _pairs(16), fit_args=FitArguments(batch_size=8, l2=50.0))
    analyzer.fit()
    val = _pairs(8, seed=4)
    ours = analyzer.value(val).role("both")
    assert np.isfinite(ours).all()
    # `make test` installs the peer extra: a missing kronfluence is a failure, never a silent skip
    import importlib.util

    assert importlib.util.find_spec("kronfluence") is not None, (
        "the peer extra is not installed: `make test` does it (pip install --no-deps kronfluence==1.0.1 and the "
        "rest of the `peer` extra)"
    )
    peer = KronfluencePeer(analyzer).scores(task.encode(val))
    assert peer["value"].shape == (16,) and np.isfinite(peer["self"]).all()
    # same measurement on a near-convex head: the peer's value scores correlate with ECIF's (0.70 measured)
    assert np.corrcoef(peer["value"], ours)[0, 1] > 0.3


# ------------------------------------------------------------------------------------- data and metrics
def test_noise_injection_and_detection_metrics():
    data = _pairs(60)
    noisy = inject_noise(data, 0.2, NoiseKind.RANDOM_SWAP, seed=0)
    assert 0 < noisy.is_noisy.sum() <= 12
    # with labels, noisy = the caption came from a pair of another label (here: another caption text)
    assert all(noisy.data.captions[i] != data.captions[i] for i in np.flatnonzero(noisy.is_noisy))
    assert not any(noisy.data.captions[i] != data.captions[i] for i in np.flatnonzero(~noisy.is_noisy))
    conf = inject_noise(data, 0.4, "confusable_swap", seed=0)
    changed = [i for i in range(60) if conf.data.captions[i] != data.captions[i]]
    assert changed and conf.is_noisy.sum() == len(changed)
    # a confusable swap keeps each caption within its group: the noisy pair's caption comes from its own group
    for i in changed:
        donors = [j for j in range(60) if data.captions[j] == conf.data.captions[i]]
        assert any(data.groups[j] == data.groups[i] for j in donors)
    m = detection_metrics(noisy.is_noisy, noisy.is_noisy.astype(float))
    assert m == {"auroc": 1.0, "auprc": 1.0, "precision_at_k": 1.0}
    _check_lemon_by_loops()


def _check_lemon_by_loops():
    """LEMoN against its definition written as loops, and a swapped caption scores highest."""
    from mmlens.influence.baselines import LemonArguments

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 6, generator=gen, dtype=torch.float64)
    y = x + 0.1 * torch.randn(12, 6, generator=gen, dtype=torch.float64)  # aligned pairs ...
    y[[3, 7]] = y[[7, 3]]  # ... except two swapped captions
    args = LemonArguments(k=4)  # fewer neighbours than pairs: the neighbour choice matters
    scores = lemon_score(x, y, args)
    xn, yn = x / x.norm(dim=1, keepdim=True), y / y.norm(dim=1, keepdim=True)

    def d(a, b):
        return 1 - float(a @ b)

    k = args.k
    for i in range(12):
        others = [j for j in range(12) if j != i]
        near_x = sorted(others, key=lambda j: d(xn[i], xn[j]))[:k]
        near_y = sorted(others, key=lambda j: d(yn[i], yn[j]))[:k]
        s_n = np.mean([d(yn[i], yn[j]) * np.exp(-args.tau1 * d(xn[i], xn[j])) for j in near_x])
        s_m = np.mean([d(xn[i], xn[j]) * np.exp(-args.tau2 * d(yn[i], yn[j])) for j in near_y])
        assert scores[i] == pytest.approx(d(xn[i], yn[i]) + args.beta * s_n + args.gamma * s_m, rel=1e-9)
    assert set(np.argsort(scores)[-2:]) == {3, 7}


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="empty"):
        PairData((), ())
    with pytest.raises(InputError, match="must match"):
        PairData((Image.new("RGB", (8, 8)),), ("a", "b"))
    with pytest.raises(InputError, match="not found"):
        load_pair_data(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="neg_form"):
        InfluenceArguments(neg_form="cubic")
    with pytest.raises(InputError, match="twice"):
        BatchPartition(((0, 1), (1, 2)))
    with pytest.raises(InputError, match="NaN"):
        detection_metrics(np.array([True, False]), np.array([np.nan, 1.0]))
    with pytest.raises(InputError, match="groups"):
        inject_noise(PairData((Image.new("RGB", (8, 8)),) * 4, ("a", "b", "c", "d")), 0.5, "confusable_swap")
    with pytest.raises(InputError, match="noise kind"):
        inject_noise(PairData((Image.new("RGB", (8, 8)),) * 4, ("a", "b", "c", "d")), 0.5, "noun_swap")
    from mmlens.influence import FitResult, PairScores

    with pytest.raises(InputError, match="role"):
        PairScores(np.zeros(2), {"exact": np.zeros(2)}, np.zeros(2)).role("positive")
    (tmp_path / "fit").mkdir()
    (tmp_path / "fit" / "fit.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="no complete fit"):
        FitResult.load(tmp_path / "fit")
