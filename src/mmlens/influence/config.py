"""Choices (enums) and arguments (frozen dataclasses) of the influence analysis.

Sign convention, used everywhere in :mod:`mmlens.influence`: a score named ``delta_val_loss_if_removed`` is the
predicted change of the validation loss when the pair is removed from training, ``L'(theta_without) - L'(theta)``.
Negative = the pair is harmful (removing it lowers the validation loss), positive = the pair helps.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mmlens.enums import as_enum
from mmlens.errors import InputError, check_finite
from mmlens.models.options import ParamGroup


class NegForm(enum.Enum):
    """Form of the negative-role term Neg(n) (the pair as a negative for the others in its batch)."""

    PROB = "prob"  # sum_k p_kn + q_nk: first-order effect of down-weighting n's entries (derivation)
    RECIPROCAL = "reciprocal"  # sum_k 1/p_kn + 1/q_nk: the form printed in the paper's secondary summary
    EXACT = "exact"  # -sum_k log(1-p_kn) + log(1-q_nk): the exact loss change when n is deleted as a negative


class Role(enum.Enum):
    """Which roles of a pair enter a score."""

    POS = "pos"
    NEG = "neg"
    BOTH = "both"


class HessianSolver(enum.Enum):
    """How H^-1 v is computed."""

    EXPLICIT = "explicit"  # materialise H (small groups) and solve by eigendecomposition
    CG = "cg"  # conjugate gradient on Hessian-vector products
    LISSA = "lissa"  # stochastic Neumann series over the recorded batches
    PROJECTED = "projected"  # random subspace of dimension proj_dim: Pi^T (Pi H Pi^T + lambda)^-1 Pi
    IDENTITY = "identity"  # H = I: plain gradient dot products (TracIn-like)


class Preconditioner(enum.Enum):
    """How conjugate gradient is preconditioned (the solution and its tolerance do not depend on it)."""

    NONE = "none"  # plain CG: its iterations grow with lambda_max(H) / prior, i.e. with the number of pairs
    NYSTROM = "nystrom"  # randomised Nystrom from proj_dim Hessian-vector products (Frangella et al., 2023)


class Relative(enum.Enum):
    """Normalisation of trace-back scores (RelatIF)."""

    NONE = "none"
    THETA = "theta"  # divide by ||H^-1 g_n||
    L = "l"  # divide by sqrt(g_n^T H^-1 g_n)


class NoiseKind(enum.Enum):
    """Injected misalignment."""

    RANDOM_SWAP = "random_swap"  # a caption moved to a random other image
    CONFUSABLE_SWAP = "confusable_swap"  # a caption swapped within a confusable category (digits 3/5/8, same shapes)


@dataclass(frozen=True)
class FitArguments:
    """How the parameter group is fitted on the pairs (the risk ECIF differentiates).

    Risk R(theta) = sum over the recorded batches of the summed batch loss + (l2 / 2) ||theta - theta_0||^2, minimised
    full-batch by L-BFGS over a fixed partition (the recorded batch order), so the optimum is well defined and a
    retraining without some pairs is reproducible from the same initialisation and partition.

    ``tolerance_grad`` is scale-free: L-BFGS stops when the largest entry of grad R(theta) / N (N training pairs)
    is below it, i.e. the gradient of the mean pair loss plus the prior (l2 / (2N)) ||theta - theta_0||^2 - the same
    minimiser, and the same R, Hessian and damping for ECIF. The number of evaluations then does not grow with N.

    When L-BFGS stops above the tolerance (its iteration cap: a far optimum or ill-conditioned curvature) and
    ``newton_max_iter`` > 0 (off by default), a trust-region Newton-CG stage with exact Hessian-vector products of
    R continues from where it stopped, for at most ``newton_max_iter`` iterations (and 25 x that many products),
    until the gradient's Euclidean norm / N is below ``tolerance_grad`` (which bounds its largest entry too). A fit
    that still did not reach the tolerance says so (``FitResult.converged``).
    """

    batch_size: int = 64
    l2: float = 1.0
    max_iter: int = 1000
    tolerance_grad: float = 1e-9
    seed: int = 0
    newton_max_iter: int = 0  # 0: L-BFGS only; at most 25 Hessian-vector products per iteration on average
    #: evaluations of plain L-BFGS after which an unconverged fit continues preconditioned (0, the default: never;
    #: opt-in because with it on, leave-one-out retraining at a weak prior - l2 = 1 - lost its agreement with ECIF
    #: in test_epoch_partitions_sum_each_pair_over_its_batches, not yet understood): L-BFGS on
    #: theta = theta_k + M^-1/2 z with M a Nystrom approximation of the Hessian at theta_k from ``precondition_rank``
    #: Hessian-vector products over ``precondition_pairs`` pairs (whole batches, scaled to all pairs). The same
    #: minimiser and the same stopping rule (on grad R(theta) / N); only the path and its cost change.
    precondition_after: int = 0
    precondition_rank: int = 256
    precondition_pairs: int = 2048

    def __post_init__(self) -> None:
        check_finite(self)
        if self.precondition_after < 0 or self.precondition_rank < 1 or self.precondition_pairs < 1:
            raise InputError(
                "precondition_after must be >= 0, precondition_rank and precondition_pairs >= 1, got "
                f"{self.precondition_after}, {self.precondition_rank}, {self.precondition_pairs}"
            )
        if self.batch_size < 2:
            raise InputError(f"batch_size must be >= 2 (a contrastive batch needs negatives), got {self.batch_size}")
        if self.l2 < 0:
            raise InputError(f"l2 must be >= 0, got {self.l2}")
        if self.max_iter < 1 or self.newton_max_iter < 0:
            raise InputError(
                f"max_iter must be >= 1 and newton_max_iter >= 0, got {self.max_iter}, {self.newton_max_iter}"
            )


@dataclass(frozen=True)
class InfluenceArguments:
    """How influence is computed. ``damping`` is added to H (in the summed reduction of the risk)."""

    neg_form: NegForm = NegForm.EXACT  # settled by leave-one-out retraining (docs/influence.md)
    solver: HessianSolver = HessianSolver.CG
    damping: float = 0.0
    cg_max_iter: int = 300
    cg_tol: float = 1e-8
    lissa_depth: int = 500
    lissa_scale: float | None = None  # None: 1.2 x the largest Hessian eigenvalue (power iteration)
    proj_dim: int = 256
    seed: int = 0
    #: CG's preconditioner: Nystrom from ``proj_dim`` Hessian-vector products over at most ``precond_pairs`` pairs
    #: (whole batches, scaled to all pairs; all pairs - the projected self-influence operator's sketch - when there
    #: are fewer), so its cost does not grow with the number of pairs
    preconditioner: Preconditioner = Preconditioner.NYSTROM
    precond_pairs: int = 2048
    #: plain CG iterations before CG builds its preconditioner and restarts from its current solution
    cg_precondition_after: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "neg_form", as_enum(NegForm, self.neg_form, "neg_form"))
        object.__setattr__(self, "solver", as_enum(HessianSolver, self.solver, "solver"))
        object.__setattr__(self, "preconditioner", as_enum(Preconditioner, self.preconditioner, "preconditioner"))
        if self.precond_pairs < 1 or self.cg_precondition_after < 1:
            raise InputError(
                f"precond_pairs and cg_precondition_after must be >= 1, got {self.precond_pairs}, "
                f"{self.cg_precondition_after}"
            )
        check_finite(self)
        if self.damping < 0:
            raise InputError(f"damping must be >= 0, got {self.damping}")
        if self.proj_dim < 1:
            raise InputError(f"proj_dim must be >= 1, got {self.proj_dim}")


__all__ = [
    "FitArguments",
    "HessianSolver",
    "InfluenceArguments",
    "NegForm",
    "NoiseKind",
    "ParamGroup",
    "Preconditioner",
    "Relative",
    "Role",
    "as_enum",
]
