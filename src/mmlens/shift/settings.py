"""Settings of the shift analysis as frozen dataclasses, light to import (no torch, no numpy): the estimator, the
analysis and the response generation. The command line makes its options from these fields
(``mmlens.cli.options``), so the CLI and the Python API refuse the same values."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mmlens.enums import as_enum
from mmlens.errors import InputError, check_finite
from mmlens.shift.options import (
    BoundKind,
    EarlyStoppingSplit,
    EstimatorData,
    EstimatorKind,
    Fusion,
    LogBase,
    LogvarActivation,
    Mixture,
    TermValues,
)

Scenario = tuple[str | None, int, str | None, int]  # (visual, visual severity, text, text severity)


def _default_scenarios() -> tuple[Scenario, ...]:
    from mmlens.shift.generate import default_scenarios

    return tuple(default_scenarios())


@dataclass(frozen=True)
class EstimatorConfig:
    """How to build and train an :class:`MIEstimator`.

    ``hidden`` is the hidden width of each network (the reference CLUB uses 250 = mi_est_dim 500 / 2).
    ``logvar_activation`` (CLUB only): ``"tanh"`` bounds log sigma^2 to (-1, 1) as the reference code does;
    ``"none"`` leaves it free (needed when the conditional variance is far from 1).
    ``eval_batch_size`` (InfoNCE/NWJ) is the batch over which the estimate is averaged; InfoNCE cannot exceed
    log(eval_batch_size).
    """

    kind: EstimatorKind = EstimatorKind.CLUB
    hidden: int = 250
    embed_dim: int = 64  # InfoNCE/NWJ critic feature size
    logvar_activation: LogvarActivation = LogvarActivation.TANH
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    eval_batch_size: int = 256
    max_epochs: int = 300
    max_steps: int = 4000
    patience: int = 20
    val_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        # frozen dataclass: store the coerced enum members in place of user strings
        object.__setattr__(self, "kind", as_enum(EstimatorKind, self.kind, "estimator kind"))
        check_finite(self)
        object.__setattr__(
            self, "logvar_activation", as_enum(LogvarActivation, self.logvar_activation, "logvar_activation")
        )
        if not 0.0 < self.val_fraction < 0.9:
            raise InputError(f"val_fraction must be in (0, 0.9), got {self.val_fraction}")
        if self.batch_size < 2 or self.eval_batch_size < 2:
            raise InputError("batch sizes must be >= 2")
        if min(self.hidden, self.embed_dim, self.max_epochs, self.max_steps, self.patience) < 1:
            raise InputError("hidden, embed_dim, max_epochs, max_steps and patience must be >= 1")


@dataclass(frozen=True)
class ShiftConfig:
    """Options of the analysis. Defaults follow the reference code where it is known (CLUB with Tanh-bounded
    log-variance, pooled transductive estimator data, sample-size mixture in RJSD, scale-adjusted bound)."""

    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    estimator_data: EstimatorData = EstimatorData.POOLED
    fusion: Fusion = Fusion.AVERAGE
    bound: BoundKind = BoundKind.SCALE_ADJUSTED
    h_hat: float = 1.0  # entropy constant of the theorem/compact bounds (user value; unverified in the paper)
    log_base: LogBase = LogBase.E
    mixture: Mixture = Mixture.SAMPLE_SIZE
    term_values: TermValues = TermValues.RAW
    n_permutations: int = 100
    n_bootstrap: int = 200
    seed: int = 0
    # estimator statistics: members of the ensemble (seeds of initialisation, early-stopping split and data order),
    # exact duplicate (x, y) pairs dropped before training, early stopping held out by query group
    n_estimators: int = 5
    dedup_pairs: bool = True
    early_stopping_split: EarlyStoppingSplit = EarlyStoppingSplit.GROUP

    def __post_init__(self) -> None:
        options = {
            "estimator_data": EstimatorData,
            "fusion": Fusion,
            "bound": BoundKind,
            "log_base": LogBase,
            "mixture": Mixture,
            "term_values": TermValues,
            "early_stopping_split": EarlyStoppingSplit,
        }
        for key, enum_cls in options.items():  # frozen dataclass: store the coerced members in place of strings
            object.__setattr__(self, key, as_enum(enum_cls, getattr(self, key), key))
        check_finite(self)
        if self.h_hat <= 0:
            raise InputError("h_hat must be positive")
        if self.n_bootstrap < 1 or self.n_permutations < 0:
            raise InputError(
                f"need n_bootstrap >= 1 and n_permutations >= 0, got {self.n_bootstrap} and {self.n_permutations}"
            )
        if self.n_estimators < 1:
            raise InputError(f"n_estimators must be >= 1, got {self.n_estimators}")
        if self.term_values is TermValues.EXCESS and self.n_permutations == 0:
            raise InputError("term_values='excess' subtracts the permutation null: it needs n_permutations >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GenerateConfig:
    """Decoding and grid settings (recorded in every output record)."""

    max_new_tokens: int = 8
    batch_size: int = 64
    seed: int = 0
    scenarios: tuple[Scenario, ...] = field(default_factory=_default_scenarios)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise InputError(
                f"max_new_tokens and batch_size must be >= 1, got {self.max_new_tokens} and {self.batch_size}"
            )


__all__ = ["EstimatorConfig", "GenerateConfig", "Scenario", "ShiftConfig"]
