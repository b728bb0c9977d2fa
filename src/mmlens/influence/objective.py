"""The contrastive batch loss with removal masks, and ECIF's per-pair role terms Pos(n) and Neg(n).

Notation (ECIF spec, section 2): S[i, j] = s(text_i, image_j) = scale * cos (+ bias for SigLIP); row softmax
p_ij (text -> image), column softmax q_ij (image -> text). The batch loss is **summed** over its pairs:
L_Batch = sum_i [-log p_ii - log q_ii] (InfoNCE) or sum_ij -log sigmoid(+-z_ij) (SigLIP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmlens.models.contrastive import LossKind

PARTS = ("pos", "neg_prob", "neg_reciprocal", "neg_exact")


def similarity(
    text_emb: torch.Tensor, image_emb: torch.Tensor, scale: float, bias: float | None = None
) -> torch.Tensor:
    """S[..., i, j] = scale * text_i . image_j (+ bias): rows are texts, columns images."""
    sim = scale * text_emb @ image_emb.transpose(-1, -2)
    return sim + bias if bias is not None else sim


def batch_loss(
    sim: torch.Tensor, row_mask: torch.Tensor, col_mask: torch.Tensor, row_weight: torch.Tensor, kind: LossKind
) -> torch.Tensor:
    """Summed loss of (a stack of) batches ``sim[..., B, B]`` with removals.

    ``row_mask[..., i, j]`` False deletes entry (i, j) from row i's softmax (image j no longer a negative for text
    i); ``col_mask[..., i, j]`` False deletes it from column j's softmax (text i no longer a negative for image j);
    the diagonals must stay True. ``row_weight[..., i]`` in {0, 1} keeps or drops pair i's own loss (its positive
    role). Removing pair n entirely = weight 0, row_mask[:, n] and col_mask[n, :] off the diagonal False. For
    SigLIP an off-diagonal term exists when both masks keep it.
    """
    diag = sim.diagonal(dim1=-2, dim2=-1)
    if kind is LossKind.SIGMOID:
        eye = torch.eye(sim.shape[-1], dtype=torch.bool, device=sim.device)
        signed = torch.where(eye, sim, -sim)
        per_entry = -F.logsigmoid(signed)
        off_weight = (row_mask & col_mask).to(sim.dtype)
        weight = torch.where(eye, row_weight.unsqueeze(-1).expand_as(sim).to(sim.dtype), off_weight)
        return (per_entry * weight).sum()
    row_lse = torch.logsumexp(sim.masked_fill(~row_mask, float("-inf")), dim=-1)
    col_lse = torch.logsumexp(sim.masked_fill(~col_mask, float("-inf")), dim=-2)
    per_pair = -2 * diag + row_lse + col_lse
    return (per_pair * row_weight.to(sim.dtype)).sum()


def removal_masks(
    index: torch.Tensor, remove: torch.Tensor, remove_neg: torch.Tensor, remove_pos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row_mask, col_mask, row_weight) for batches ``index[..., B]`` (pair ids, -1 = padding).

    ``remove``, ``remove_neg``, ``remove_pos``: boolean per pair id - removed entirely, only as a negative for the
    others in its batch, only as its own positive.
    """
    valid = index >= 0
    safe = index.clamp_min(0)
    gone = ~valid | remove[safe]
    neg_gone = gone | remove_neg[safe]
    eye = torch.eye(index.shape[-1], dtype=torch.bool, device=index.device)
    row_mask = ~neg_gone.unsqueeze(-2) | eye  # image n leaves every other row
    col_mask = ~neg_gone.unsqueeze(-1) | eye  # text n leaves every other column
    row_weight = ~(gone | remove_pos[safe])
    return row_mask, col_mask, row_weight


def _lse_without(sim: torch.Tensor) -> torch.Tensor:
    """E[k, n] = log sum_{j != n} exp(S[k, j]) (stable, via a [B, B, B] masked tensor)."""
    b = sim.shape[-1]
    eye = torch.eye(b, dtype=torch.bool, device=sim.device)
    expanded = sim.unsqueeze(-2).expand(*sim.shape[:-1], b, b)  # [k, n, j]
    return torch.logsumexp(expanded.masked_fill(eye, float("-inf")), dim=-1)


def _log1m_softmax(sim: torch.Tensor) -> torch.Tensor:
    """[k, n] = log(1 - p_kn) of the row softmax, stable and in O(B^2) (the [B, B, B] form of :func:`_lse_without`
    dominated the per-pair gradients). Below 1/2, log1p(-p) is accurate; above, n is row k's unique argmax and
    1 - p_kn is the mass of the row's other entries: a log-sum-exp with that entry masked out, no cancellation."""
    log_p = sim.log_softmax(dim=-1)
    p = log_p.exp()
    is_top = torch.zeros_like(sim, dtype=torch.bool).scatter_(-1, sim.argmax(dim=-1, keepdim=True), True)
    others = torch.logsumexp(sim.masked_fill(is_top, float("-inf")), dim=-1, keepdim=True) - torch.logsumexp(
        sim, dim=-1, keepdim=True
    )
    # the clamp keeps the unused branch's gradient finite where p is near 1
    return torch.where(is_top & (p > 0.5), others.expand_as(sim), torch.log1p(-p.clamp(max=0.5)))


def pair_terms(sim: torch.Tensor, kind: LossKind) -> dict[str, torch.Tensor]:
    """Per-pair ECIF terms of one batch ``sim[B, B]``: ``pos`` and the three negative forms, each Tensor[B].

    pos[n] = -log p_nn - log q_nn; neg_prob[n] = sum_{k != n} p_kn + q_nk; neg_reciprocal[n] = sum_{k != n}
    1/p_kn + 1/q_nk; neg_exact[n] = -sum_{k != n} log(1 - p_kn) + log(1 - q_nk), with log(1 - p_kn) computed as
    LSE_{j != n} S_kj - LSE_j S_kj (:func:`_log1m_softmax`). For SigLIP the pair's terms are separate, so every negative form is the exact
    sum of the deleted terms sum_{k != n} -log sigmoid(-z_kn) - log sigmoid(-z_nk).
    """
    b = sim.shape[-1]
    off = ~torch.eye(b, dtype=torch.bool, device=sim.device)
    diag = sim.diagonal()
    if kind is LossKind.SIGMOID:
        neg_entries = -F.logsigmoid(-sim) * off
        neg = neg_entries.sum(0) + neg_entries.sum(1)  # column n (image n vs other texts) + row n (text n)
        return {"pos": -F.logsigmoid(diag), "neg_prob": neg, "neg_reciprocal": neg, "neg_exact": neg}
    log_p = sim.log_softmax(dim=1)  # p[k, n]: row k (text k) over images
    log_q = sim.log_softmax(dim=0)  # q[n, k]: column k (image k) over texts
    pos = -log_p.diagonal() - log_q.diagonal()
    p, q = log_p.exp(), log_q.exp()
    neg_prob = (p * off).sum(0) + (q * off).sum(1)
    neg_recip = ((-log_p).exp() * off).sum(0) + ((-log_q).exp() * off).sum(1)
    log1m_p = _log1m_softmax(sim)  # [k, n] = log(1 - p_kn)
    log1m_q = _log1m_softmax(sim.T).T  # [n, k] = log(1 - q_nk)
    neg_exact = -(log1m_p * off).sum(0) - (log1m_q * off).sum(1)
    return {"pos": pos, "neg_prob": neg_prob, "neg_reciprocal": neg_recip, "neg_exact": neg_exact}


def max_negative_probability(sim: torch.Tensor) -> torch.Tensor:
    """max_k max(p_kn, q_nk) per pair n: near 1 the exact form diverges (a near-duplicate dominating a row)."""
    off = ~torch.eye(sim.shape[-1], dtype=torch.bool, device=sim.device)
    p, q = sim.softmax(dim=1) * off, sim.softmax(dim=0) * off
    return torch.maximum(p.amax(0), q.amax(1))


__all__ = ["PARTS", "batch_loss", "max_negative_probability", "pair_terms", "removal_masks", "similarity"]
