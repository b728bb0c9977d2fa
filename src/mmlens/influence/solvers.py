"""Inverse-Hessian-vector products: explicit, conjugate gradient, LiSSA, random projection, identity.

All solvers act on flat vectors and a Hessian-vector-product callable ``hvp(v) -> H v``; ``damping`` is added to H.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mmlens.errors import InputError
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
    hvp: HVP,
    b: torch.Tensor,
    damping: float = 0.0,
    max_iter: int = 300,
    tol: float = 1e-8,
    preconditioner: Callable[[torch.Tensor], torch.Tensor] | None = None,
    x0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """Solve (H + damping I) x = b by (preconditioned) conjugate gradient from ``x0`` (default 0); stops when the
    true residual ||b - (H + damping) x|| <= tol ||b||, with or without a preconditioner (so a preconditioner changes
    the cost, not the accuracy). ``preconditioner(r)`` applies M^-1 ~ (H + damping)^-1 (symmetric positive
    definite). Returns x and {iterations, rel_residual} (iterations = Hessian-vector products after the start)."""
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b.clone() if x0 is None else b - (hvp(x) + damping * x)
    b_norm = b.norm().clamp_min(1e-300)
    it = 0
    if r.norm() <= tol * b_norm:  # the start already solves it
        return x, {"iterations": 0, "rel_residual": float(r.norm() / b_norm)}
    z = r if preconditioner is None else preconditioner(r)
    p = z.clone()
    rz = r @ z
    for it in range(1, max_iter + 1):  # noqa: B007 (the count is reported after the loop)
        hp = hvp(p) + damping * p
        curvature = p @ hp
        if curvature <= 0:  # indefinite direction: stop rather than diverge
            break
        alpha = rz / curvature
        x = x + alpha * p
        r = r - alpha * hp
        if r.norm() <= tol * b_norm:
            break
        z = r if preconditioner is None else preconditioner(r)
        rz_new = r @ z
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, {"iterations": it, "rel_residual": float(r.norm() / b_norm)}


@dataclass(frozen=True)
class NystromPreconditioner:
    """Randomised Nystrom preconditioner of H = A + shift I (Frangella, Tropp and Udell, 2023): from a sketch
    Y = A Omega of the positive semi-definite part A, A ~ U diag(lam) U^T of rank <= k, and

        M^-1 = (lam_min + shift) U (diag(lam) + shift)^-1 U^T + (I - U U^T),

    which maps the sketched top of the spectrum onto lam_min + shift; CG on M^-1 H then needs a number of iterations
    set by how much of A's spectrum lies above its k-th eigenvalue rather than by lam_max / shift. ``shift`` is the
    part of H known to be a multiple of the identity (the fit's L2 prior plus the damping)."""

    basis: torch.Tensor  # U [P, r], orthonormal columns
    eigenvalues: torch.Tensor  # lam [r], decreasing, >= 0
    shift: float

    @classmethod
    def from_sketch(cls, omega: torch.Tensor, sketch: torch.Tensor, shift: float) -> NystromPreconditioner:
        """``omega`` [k, P] test vectors (rows) and ``sketch`` [k, P] their products A omega_i (rows)."""
        if shift <= 0:
            raise InputError(f"a Nystrom preconditioner needs a positive shift (prior + damping), got {shift}")
        omega, sketch = omega.T, sketch.T  # [P, k]
        eps = torch.finfo(sketch.dtype).eps
        nu = eps * omega.shape[0] ** 0.5 * float(sketch.norm())  # a tiny shift keeps the core positive definite
        shifted = sketch + nu * omega
        core = omega.T @ shifted
        core = (core + core.T) / 2
        evals, evecs = torch.linalg.eigh(core)
        # directions where A is not positive (a non-convex group) or numerically null carry no curvature estimate
        keep = evals > 1e-12 * evals.abs().max().clamp_min(1e-300)
        factor = shifted @ (evecs[:, keep] / evals[keep].sqrt())  # A_nys = factor factor^T
        basis, sing, _ = torch.linalg.svd(factor, full_matrices=False)
        lam = (sing.pow(2) - nu).clamp_min(0.0)
        return cls(basis, lam, float(shift))

    @property
    def rank(self) -> int:
        return int(self.eigenvalues.numel())

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        """M^-1 r for a vector or rows [Q, P]."""
        if self.rank == 0:
            return r
        lam_min = float(self.eigenvalues[-1])
        coef = r @ self.basis  # [.., r]
        scaled = coef * ((lam_min + self.shift) / (self.eigenvalues + self.shift)) - coef
        return r + scaled @ self.basis.T

    def sqrt_apply(self, r: torch.Tensor) -> torch.Tensor:
        """M^-1/2 r (the symmetric square root): the change of variables theta = theta_start + M^-1/2 z of a
        preconditioned fit."""
        if self.rank == 0:
            return r
        lam_min = float(self.eigenvalues[-1])
        coef = r @ self.basis
        ratio = ((lam_min + self.shift) / (self.eigenvalues + self.shift)).sqrt()
        return r + (coef * ratio - coef) @ self.basis.T

    def approximate_inverse(self, r: torch.Tensor) -> torch.Tensor:
        """(A_nys + shift I)^-1 r: the sketch's own solve (a warm start for CG)."""
        if self.rank == 0:
            return r / self.shift
        coef = r @ self.basis
        return (r - coef @ self.basis.T) / self.shift + (coef / (self.eigenvalues + self.shift)) @ self.basis.T


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


def projection_sketch(
    args: InfluenceArguments, hvp_batched: BatchedHVP, size: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Pi [k, P], (H Pi^T)^T [k, P]): ``proj_dim`` seeded Gaussian test vectors and their Hessian-vector products,
    the sketch of the projected solver and of the Nystrom preconditioner."""
    gen = torch.Generator().manual_seed(args.seed)
    k = min(args.proj_dim, size)
    proj = torch.randn(k, size, generator=gen, dtype=dtype) / k**0.5
    return proj, hvp_batched(proj)


def build_inverse(
    args: InfluenceArguments,
    hvp: HVP,
    hvp_batched: BatchedHVP,
    size: int,
    dtype: torch.dtype,
    *,
    sketch: tuple[torch.Tensor, torch.Tensor] | None = None,
    preconditioner: Callable[[], NystromPreconditioner | None] | None = None,
) -> InverseOperator:
    """The solver chosen by ``args.solver``. ``sketch``: the projected solver's (Pi, H Pi^T) when already computed
    (:func:`projection_sketch`). ``preconditioner()``: CG's preconditioner, built when a solve first needs it (None: plain
    CG; see the CG branch)."""
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
        proj, sketched = sketch if sketch is not None else projection_sketch(args, hvp_batched, size, dtype)
        k = len(proj)
        small = proj @ sketched.T  # Pi H Pi^T [k, k]
        small = (small + small.T) / 2 + damping * (proj @ proj.T)
        small_inv = torch.linalg.pinv(small, hermitian=True)
        return InverseOperator(
            lambda x: ((x @ proj.T) @ small_inv) @ proj, {"solver": "projected", "proj_dim": k}, True
        )
    if args.solver is HessianSolver.CG:
        infos: list[dict] = []
        info: dict = {"solver": "cg", "solves": infos}

        def solve(row: torch.Tensor) -> torch.Tensor:
            # plain CG first; only if it has not converged after cg_precondition_after iterations is the
            # preconditioner built (or fetched) and CG restarted from its current solution (a warm start). A solve
            # that converges early is plain CG's, bit for bit, whatever else was computed before.
            first = args.cg_max_iter if preconditioner is None else min(args.cg_max_iter, args.cg_precondition_after)
            sol, done = conjugate_gradient(hvp, row, damping, first, args.cg_tol)
            done["preconditioned_from"] = None
            if done["rel_residual"] > args.cg_tol and done["iterations"] >= first and first < args.cg_max_iter:
                precond = preconditioner() if preconditioner is not None else None
                # (without a preconditioner after all, plain CG continues from where it stopped)
                sol, more = conjugate_gradient(
                    hvp, row, damping, args.cg_max_iter - first, args.cg_tol, preconditioner=precond, x0=sol
                )
                # + 1: the restart's residual b - H x
                done = {
                    **more,
                    "iterations": first + 1 + more["iterations"],
                    "preconditioned_from": first if precond is not None else None,
                }
                if isinstance(precond, NystromPreconditioner):
                    info["preconditioner"] = {"kind": "nystrom", "rank": precond.rank, "shift": precond.shift}
            infos.append(done)
            return sol

        return InverseOperator(lambda x: torch.stack([solve(row) for row in x]), info, False)
    scale = args.lissa_scale or 1.2 * (top_eigenvalue(hvp, size, dtype, seed=args.seed) + damping)

    def apply_lissa(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([lissa(hvp, row, scale, damping, args.lissa_depth) for row in x])

    return InverseOperator(apply_lissa, {"solver": "lissa", "scale": scale, "depth": args.lissa_depth}, False)


__all__ = [
    "InverseOperator",
    "NystromPreconditioner",
    "build_inverse",
    "conjugate_gradient",
    "explicit_hessian",
    "lissa",
    "projection_sketch",
    "top_eigenvalue",
]
