"""End-to-end claims of mmlens.influence (issue 21), each against an independent computation.

- The three negative forms against their definitions written as plain loops over a non-symmetric batch (a swap of the
  row (text -> image) and column (image -> text) softmaxes changes every one of them).
- Self-influence g_n^T H^-1 g_n and relative influence (RelatIF) against a dense Hessian and per-pair gradients
  taken from the loss difference with and without the pair.
- ECIF's value scores agree in rank with leave-one-out retraining on SigLIP, the dual encoder and ``last_k_layers``.
- The exported edited model carries the edited parameters.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from mmlens.influence import (
    FitArguments,
    HeadTask,
    InfluenceAnalyzer,
    InfluenceArguments,
    ModelTask,
    PairData,
    save_model,
)
from mmlens.influence.objective import pair_terms
from mmlens.models import LossKind, load_model, tiny_model

COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 210, 40), (200, 60, 200), (250, 250, 250)]
WORDS = ["red", "green", "blue", "yellow", "purple", "white"]


def _pairs(n: int, seed: int = 0, size: int = 16) -> PairData:
    rng = np.random.default_rng(seed)
    combos = [(a, b) for a in range(6) for b in range(6) if a != b]
    order = rng.permutation(len(combos))
    images, captions = [], []
    for i in range(n):
        a, b = combos[order[i % len(combos)]]
        arr = np.zeros((size, size, 3), dtype=np.uint8)
        arr[:, : size // 2], arr[:, size // 2 :] = COLOURS[a], COLOURS[b]
        arr[rng.integers(size), :, :] = 0
        images.append(Image.fromarray(arr))
        captions.append(f"a {WORDS[a]} and {WORDS[b]} square")
    return PairData(tuple(images), tuple(captions))


# ------------------------------------------------------------------------------- the negative forms by hand
def _sim(b: int = 5, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(b, b, generator=gen, dtype=torch.float64)


def test_negative_forms_equal_their_definitions_by_loops():
    """p_kn = softmax over images of row k (text k), q_nk = softmax over texts of column k (image k):
    prob[n] = sum_{k != n} p_kn + q_nk; reciprocal[n] = sum_{k != n} 1/p_kn + 1/q_nk;
    exact[n] = -sum_{k != n} log(1 - p_kn) + log(1 - q_nk); pos[n] = -log p_nn - log q_nn."""
    sim = _sim()
    b = sim.shape[0]
    p = torch.exp(sim) / torch.exp(sim).sum(1, keepdim=True)  # p[k, j]: text k over images j
    q = torch.exp(sim) / torch.exp(sim).sum(0, keepdim=True)  # q[i, k]: image k over texts i
    terms = pair_terms(sim, LossKind.INFONCE)
    for n in range(b):
        others = [k for k in range(b) if k != n]
        prob = sum(float(p[k, n] + q[n, k]) for k in others)
        recip = sum(float(1 / p[k, n] + 1 / q[n, k]) for k in others)
        exact = -sum(math.log(1 - float(p[k, n])) + math.log(1 - float(q[n, k])) for k in others)
        pos = -math.log(float(p[n, n])) - math.log(float(q[n, n]))
        assert float(terms["neg_prob"][n]) == pytest.approx(prob, rel=1e-10)
        assert float(terms["neg_reciprocal"][n]) == pytest.approx(recip, rel=1e-10)
        assert float(terms["neg_exact"][n]) == pytest.approx(exact, rel=1e-10)
        assert float(terms["pos"][n]) == pytest.approx(pos, rel=1e-10)


def test_sigmoid_terms_equal_their_definitions_by_loops():
    """SigLIP: pos[n] = -log sigmoid(z_nn); every negative form = sum_{k != n} -log sigmoid(-z_kn) - log sigmoid(-z_nk)."""
    sim = _sim(seed=3)
    terms = pair_terms(sim, LossKind.SIGMOID)

    def nls(x: float) -> float:
        return math.log1p(math.exp(-x))

    for n in range(sim.shape[0]):
        neg = sum(nls(-float(sim[k, n])) + nls(-float(sim[n, k])) for k in range(sim.shape[0]) if k != n)
        for form in ("neg_prob", "neg_reciprocal", "neg_exact"):
            assert float(terms[form][n]) == pytest.approx(neg, rel=1e-10)
        assert float(terms["pos"][n]) == pytest.approx(nls(float(sim[n, n])), rel=1e-10)


# ---------------------------------------------------------------------- self- and relative influence by hand
@pytest.fixture(scope="module")
def small_fit():
    """A tiny CLIP head with few parameters (dense Hessian affordable), near-convex (scaled heads, strong L2)."""
    model = copy.deepcopy(tiny_model("clip"))
    with torch.no_grad():
        model.base_model.visual_projection.weight.mul_(10)
        model.base_model.text_projection.weight.mul_(10)
    analyzer = InfluenceAnalyzer(
        HeadTask(model),
        _pairs(12),
        fit_args=FitArguments(batch_size=6, l2=50.0),
        args=InfluenceArguments(solver="explicit"),
    )
    analyzer.fit()
    return analyzer


def _dense(analyzer):
    """(H, G): the dense Hessian of the risk at the fit and per-pair gradients of L - L_without_n (= Pos + Neg exact)."""
    theta = analyzer.fitted.params.detach().clone()
    hess = torch.autograd.functional.hessian(analyzer.risk, theta)
    grads = []
    for n in range(analyzer.n):
        th = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(analyzer.loss(th) - analyzer.loss(th, remove=[n]), th)
        grads.append(g)
    return hess, torch.stack(grads)


def test_self_and_relative_influence_against_a_dense_hessian(small_fit):
    hess, grads = _dense(small_fit)
    solved = torch.linalg.solve(hess, grads.T).T  # H^-1 g_n
    expected_self = (solved * grads).sum(1).numpy()
    np.testing.assert_allclose(small_fit.self_influence(), expected_self, rtol=1e-5)
    assert expected_self.min() > 0  # H is positive definite at the fit
    test = _pairs(3, seed=9)
    theta = small_fit.fitted.params.detach().clone().requires_grad_(True)
    img, txt = small_fit.task.embed(small_fit.task.space.unflatten(theta), small_fit.task.encode(test))
    terms = pair_terms(small_fit.task.logit_scale * txt @ img.T, LossKind.INFONCE)
    test_grads = torch.stack([torch.autograd.grad(terms["pos"][t], theta, retain_graph=True)[0] for t in range(3)])
    raw = (torch.linalg.solve(hess, test_grads.T).T @ grads.T).numpy()  # g_t^T H^-1 g_n
    for relative, norm in (
        ("none", np.ones(small_fit.n)),
        ("theta", solved.norm(dim=1).numpy()),
        ("l", np.sqrt(expected_self)),
    ):
        result = small_fit.trace(test, relative=relative)
        np.testing.assert_allclose(result.delta_test_loss_if_removed, raw, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(result.relative_influence, raw / norm, rtol=1e-5, atol=1e-9)


def test_exported_edited_model_carries_the_edited_parameters(small_fit, tmp_path):
    edit = small_fit.removal_edit([0, 3])
    assert float((edit - small_fit.fitted.params).norm()) > 1e-4
    save_model(small_fit.edited_model([0, 3]), tmp_path / "edited")
    reloaded = HeadTask(load_model(str(tmp_path / "edited")))
    params = reloaded.space.flatten(reloaded.initial_params())
    torch.testing.assert_close(params, edit.to(params.dtype), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------ agreement with leave-one-out retraining
def _loo_agreement(task, n_train: int = 10, l2: float = 20.0) -> float:
    analyzer = InfluenceAnalyzer(
        task,
        _pairs(n_train),
        fit_args=FitArguments(batch_size=5, l2=l2),
        args=InfluenceArguments(solver="explicit" if task.space.size <= 3000 else "cg", cg_max_iter=500, cg_tol=1e-10),
    )
    analyzer.fit()
    val = _pairs(6, seed=5)
    predicted = analyzer.value(val).role("both", "exact")
    base = analyzer.validation_loss(analyzer.fitted.params, val)
    actual = np.array(
        [float(analyzer.validation_loss(analyzer.retrain(remove=[n]), val) - base) for n in range(n_train)]
    )
    return float(spearmanr(predicted, actual).statistic)


def _scaled(arch: str):
    """The tiny model with its projection heads scaled up (SigLIP has none: its towers' heads are left as they are);
    a random init's small projections make the normalised embedding strongly curved."""
    model = copy.deepcopy(tiny_model(arch))
    if hasattr(model.base_model, "visual_projection"):
        with torch.no_grad():
            model.base_model.visual_projection.weight.mul_(10)
            model.base_model.text_projection.weight.mul_(10)
    return model


# (architecture, parameter group, L2 anchor, training pairs, minimum Spearman). Measured: SigLIP 0.90, dual
# encoder > 0.8, CLIP last_k_layers 0.81 (a whole transformer layer is far less convex than a head: it needs the
# strong anchor, and 8 pairs make the rank correlation coarse).
LOO_CASES = [
    ("siglip", "projection", 20.0, 10, 0.8),
    ("vision-text-dual-encoder", "projection", 20.0, 10, 0.8),
    ("clip", "last_k_layers", 300.0, 8, 0.7),
]


@pytest.mark.parametrize(("arch", "group", "l2", "n_train", "minimum"), LOO_CASES)
def test_ecif_ranks_pairs_like_leave_one_out_retraining(arch, group, l2, n_train, minimum):
    """Spearman correlation between ECIF's predicted change of the validation loss and the change measured by
    refitting without each pair (from the same initialisation and batch partition), on a tiny problem."""
    model = _scaled(arch)
    task = HeadTask(model) if group == "projection" else ModelTask(model, "last_k_layers", k=1, dtype="float64")
    assert _loo_agreement(task, n_train=n_train, l2=l2) > minimum


def test_similarity_and_max_negative_probability_by_hand():
    """S[i, j] = scale * text_i . image_j (+ bias); the largest negative probability of pair n is
    max_k max(p_kn, q_nk) over k != n."""
    from mmlens.influence.objective import max_negative_probability, similarity

    gen = torch.Generator().manual_seed(5)
    text, image = (
        torch.randn(4, 3, generator=gen, dtype=torch.float64),
        torch.randn(4, 3, generator=gen, dtype=torch.float64),
    )
    sim = similarity(text, image, 2.5, bias=-1.0)
    for i in range(4):
        for j in range(4):
            assert float(sim[i, j]) == pytest.approx(2.5 * float(text[i] @ image[j]) - 1.0, rel=1e-12)
    torch.testing.assert_close(similarity(text, image, 2.5), sim + 1.0, rtol=0, atol=1e-12)
    p, q = sim.softmax(1), sim.softmax(0)
    got = max_negative_probability(sim)
    for n in range(4):
        expected = max(max(float(p[k, n]), float(q[n, k])) for k in range(4) if k != n)
        assert float(got[n]) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("kind", [LossKind.INFONCE, LossKind.SIGMOID])
def test_removal_masks_delete_exactly_the_chosen_roles(kind):
    """Removing pair n only as a negative = the batch loss with n's off-diagonal entries gone from the other rows'
    and columns' softmaxes (InfoNCE) or its off-diagonal terms dropped (SigLIP), its own loss kept; removing it only
    as a positive = the loss without its own term; padding (-1) contributes nothing."""
    from mmlens.influence.objective import batch_loss, removal_masks

    sim = _sim(5, seed=7)
    b, n = 5, 2
    none = torch.zeros(b, dtype=torch.bool)
    flag = none.clone()
    flag[n] = True
    index = torch.arange(b)

    def by_hand(drop_neg: bool, drop_pos: bool) -> float:
        total = 0.0
        if kind is LossKind.SIGMOID:  # separate terms: the diagonal is n's positive, row/column n its negatives
            for i in range(b):
                for j in range(b):
                    if (i == j == n and drop_pos) or (i != j and n in (i, j) and drop_neg):
                        continue
                    z = float(sim[i, j]) if i == j else -float(sim[i, j])
                    total += math.log1p(math.exp(-z))
            return total
        for i in range(b):
            if drop_pos and i == n:
                continue
            others = [j for j in range(b) if not (drop_neg and j == n and i != n)]
            total += float(-2 * sim[i, i] + torch.logsumexp(sim[i, others], 0) + torch.logsumexp(sim[others, i], 0))
        return total

    neg_only = batch_loss(sim, *removal_masks(index, none, flag, none), kind=kind)
    pos_only = batch_loss(sim, *removal_masks(index, none, none, flag), kind=kind)
    assert float(neg_only) == pytest.approx(by_hand(True, False), rel=1e-10)
    assert float(pos_only) == pytest.approx(by_hand(False, True), rel=1e-10)
    padded = torch.tensor([0, 1, 2, 3, -1])
    full4 = batch_loss(sim[:4, :4], *removal_masks(torch.arange(4), none[:4], none[:4], none[:4]), kind=kind)
    assert float(batch_loss(sim, *removal_masks(padded, none, none, none), kind=kind)) == pytest.approx(
        float(full4), rel=1e-10
    )


@pytest.mark.parametrize("kind", [LossKind.INFONCE, LossKind.SIGMOID])
def test_a_stack_of_batches_is_the_sum_of_its_batches(kind):
    """The analyzer evaluates all batches at once as ``sim[nb, B, B]``: the stacked similarity and loss (with removal
    masks) equal the per-batch ones, batch by batch."""
    from mmlens.influence.objective import batch_loss, removal_masks, similarity

    gen = torch.Generator().manual_seed(11)
    text, image = (
        torch.randn(3, 4, 5, generator=gen, dtype=torch.float64),
        torch.randn(3, 4, 5, generator=gen, dtype=torch.float64),
    )
    sim = similarity(text, image, 3.0, bias=0.5)
    assert sim.shape == (3, 4, 4)
    index = torch.arange(12).view(3, 4)
    flags = [torch.zeros(12, dtype=torch.bool) for _ in range(3)]
    flags[0][1], flags[1][6], flags[2][11] = True, True, True  # removed / as negative / as positive
    stacked = batch_loss(sim, *removal_masks(index, *flags), kind=kind)
    per_batch = 0.0
    for b in range(3):
        single = similarity(text[b], image[b], 3.0, bias=0.5)
        torch.testing.assert_close(sim[b], single)
        per_batch += float(batch_loss(single, *removal_masks(index[b], *flags), kind=kind))
    assert float(stacked) == pytest.approx(per_batch, rel=1e-12)
