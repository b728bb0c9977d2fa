"""Inverse-Hessian-vector products: explicit, conjugate gradient, LiSSA, random projection, identity.

All solvers act on flat vectors and a Hessian-vector-product callable ``hvp(v) -> H v``; ``damping`` is added to H.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mmlens.influence.config import HessianSolver, InfluenceArguments

HVP = Callable[[torch.Tensor], torch.Tensor]
BatchedHVP = Callable[[torch.Tensor], torch.Tensor]  # [Q, P] -> [Q, P]


def explicit_hessian(
    hvp_batched: BatchedHVP,
    size: int,
    dtype: torch.dtype,
    chunk: int = 256,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Materialise H [P, P] column block by column block (batched HVPs against the identity)."""
    cols = []
    for start in range(0, size, chunk):
        stop = min(size, start + chunk)
        basis = torch.zeros(stop - start, size, dtype=dtype)
        basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        cols.append(hvp_batched(basis))
        if progress is not None:
            progress(stop)
    hess = torch.cat(cols)
    return (hess + hess.T) / 2  # symmetrise away round-off


def conjugate_gradient(
    hvp: HVP, b: torch.Tensor, damping: float = 0.0, max_iter: int = 300, tol: float = 1e-8
) -> tuple[torch.Tensor, dict]:
    """Solve (H + damping I) x = b; stops when ||r|| <= tol ||b||. Returns x and {iterations, rel_residual}."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = r @ r
    b_norm = b.norm().clamp_min(1e-300)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (the count is reported after the loop)
        hp = hvp(p) + damping * p
        curvature = p @ hp
        if curvature <= 0:  # indefinite direction: stop rather than diverge
            break
        alpha = rs / curvature
        x = x + alpha * p
        r = r - alpha * hp
        rs_new = r @ r
        if rs_new.sqrt() <= tol * b_norm:
            rs = rs_new
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x, {"iterations": it, "rel_residual": float(rs.sqrt() / b_norm)}


def top_eigenvalue(hvp: HVP, size: int, dtype: torch.dtype, iters: int = 30, seed: int = 0) -> float:
    """Largest |eigenvalue| of H by power iteration."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(size, generator=gen, dtype=dtype)
    v /= v.norm()
    lam = 0.0
    for _ in range(iters):
        hv = hvp(v)
        lam = float(hv.norm())
        v = hv / max(lam, 1e-300)
    return lam


def lissa(hvp: HVP, b: torch.Tensor, scale: float, damping: float = 0.0, depth: int = 500) -> torch.Tensor:
    """Neumann series h_{j+1} = b + (I - (H + damping) / scale) h_j; H^-1 b = h / scale. Needs scale > lambda_max."""
    h = b.clone()
    for _ in range(depth):
        h = b + h - (hvp(h) + damping * h) / scale
    return h / scale


@dataclass
class InverseOperator:
    """H^-1 (plus damping) applied to rows of a matrix [Q, P] -> [Q, P]; ``info`` records how it was obtained."""

    apply: Callable[[torch.Tensor], torch.Tensor]
    info: dict
    batched: bool  # True when applying to many rows is cheap (a matrix form exists)


def build_inverse(
    args: InfluenceArguments, hvp: HVP, hvp_batched: BatchedHVP, size: int, dtype: torch.dtype
) -> InverseOperator:
    """The solver chosen by ``args.solver``."""
    damping = args.damping
    if args.solver is HessianSolver.IDENTITY:
        return InverseOperator(lambda x: x, {"solver": "identity"}, True)
    if args.solver is HessianSolver.EXPLICIT:
        hess = explicit_hessian(hvp_batched, size, dtype)
        evals, evecs = torch.linalg.eigh(hess)
        shifted = evals + damping
        # a singular direction (e.g. a scale symmetry) gets no inverse rather than an infinite one
        inv = torch.where(shifted.abs() > 1e-10 * shifted.abs().max(), 1.0 / shifted, torch.zeros_like(shifted))
        hinv = (evecs * inv) @ evecs.T
        return InverseOperator(
            lambda x: x @ hinv,
            {
                "solver": "explicit",
                "min_eigenvalue": float(evals.min()),
                "max_eigenvalue": float(evals.max()),
                "n_params": size,
            },
            True,
        )
    if args.solver is HessianSolver.PROJECTED:
        gen = torch.Generator().manual_seed(args.seed)
        k = min(args.proj_dim, size)
        proj = torch.randn(k, size, generator=gen, dtype=dtype) / k**0.5
        small = proj @ hvp_batched(proj).T  # Pi H Pi^T [k, k]
        small = (small + small.T) / 2 + damping * (proj @ proj.T)
        small_inv = torch.linalg.pinv(small, hermitian=True)
        return InverseOperator(
            lambda x: ((x @ proj.T) @ small_inv) @ proj, {"solver": "projected", "proj_dim": k}, True
        )
    if args.solver is HessianSolver.CG:
        infos: list[dict] = []

        def apply_cg(x: torch.Tensor) -> torch.Tensor:
            rows = []
            for row in x:
                sol, info = conjugate_gradient(hvp, row, damping, args.cg_max_iter, args.cg_tol)
                rows.append(sol)
                infos.append(info)
            return torch.stack(rows)

        return InverseOperator(apply_cg, {"solver": "cg", "solves": infos}, False)
    scale = args.lissa_scale or 1.2 * (top_eigenvalue(hvp, size, dtype, seed=args.seed) + damping)

    def apply_lissa(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([lissa(hvp, row, scale, damping, args.lissa_depth) for row in x])

    return InverseOperator(apply_lissa, {"solver": "lissa", "scale": scale, "depth": args.lissa_depth}, False)


__all__ = ["InverseOperator", "build_inverse", "conjugate_gradient", "explicit_hessian", "lissa", "top_eigenvalue"]
