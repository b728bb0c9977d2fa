"""The analyzer: fits a parameter group over a recorded batch partition and computes ECIF scores.

Sign convention: ``delta_val_loss_if_removed[n] = grad L'(theta)^T H^-1 grad (Pos_n + Neg_n)`` predicts
``L'(theta_without_n) - L'(theta)``, the change of the summed validation loss if pair n were removed from training.
Negative = harmful pair (removing it lowers the validation loss), positive = helpful pair. Trace-back scores use
the same sign for one test pair's loss.

Under ``accelerate launch`` (several processes) the per-pair work (gradients, forward-mode scores, self-influence,
TracIn, trace-back) is split across the processes by whole batches of the recorded partition and gathered in batch
order on every process, so every process returns the single-process result. The fit and the inverse-Hessian
operator are computed on every process (deterministic functions of the same data and parameters). Every process
must make the same calls.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmlens.enums import as_enum
from mmlens.errors import InputError
from mmlens.influence.config import (
    FitArguments,
    HessianSolver,
    InfluenceArguments,
    NegForm,
    Preconditioner,
    Relative,
    Role,
)
from mmlens.influence.data import BatchPartition, PairData
from mmlens.influence.objective import (
    PARTS,
    batch_loss,
    max_negative_probability,
    pair_terms,
    removal_masks,
    similarity,
)
from mmlens.influence.solvers import InverseOperator, NystromPreconditioner, build_inverse, projection_sketch
from mmlens.influence.task import ContrastiveTask, Encoded, subset
from mmlens.models.contrastive import ContrastiveModel
from mmlens.models.distributed import DistributedWork
from mmlens.progress import progress_bar

BatchResult = TypeVar("BatchResult")
HVP_ROWS = 16  # Hessian-vector products computed together in one batched double backward


#: Pair indices: any sequence of ints or an integer numpy array.
Indices = Sequence[int] | np.ndarray


@dataclass(frozen=True)
class FitResult:
    """A fitted group: its parameters, the initialisation and the recorded partition (enough to retrain)."""

    params: torch.Tensor
    theta0: torch.Tensor
    partition: BatchPartition
    args: FitArguments
    risk: float
    grad_norm: float  # largest entry of the summed risk's gradient at the fit
    seconds: float
    evaluations: int = 0  # risk-and-gradient evaluations of the fit (0: unknown, e.g. a fit saved before they were)

    @property
    def converged(self) -> bool:
        """Whether the fit reached its stated tolerance: largest entry of grad R / N <= ``args.tolerance_grad``.
        ECIF assumes grad R(theta_hat) = 0; scores from a fit that did not converge are not ECIF's."""
        return bool(self.grad_norm <= self.args.tolerance_grad * self.partition.n_pairs)

    def save(self, folder: str | Path) -> None:
        """Write fit.safetensors, partition.json and fit.json into ``folder``, each file atomically."""
        from mmlens.io import atomic_text_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "fit.safetensors"
        tmp = folder / f".fit.safetensors.tmp-{os.getpid()}"
        try:
            save_file({"params": self.params.contiguous(), "theta0": self.theta0.contiguous()}, str(tmp))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        with atomic_text_file(folder / "partition.json") as handle:
            handle.write(self.partition.to_json())
        with atomic_text_file(folder / "fit.json") as handle:
            handle.write(
                json.dumps(
                    {
                        "args": asdict(self.args),
                        "risk": self.risk,
                        "grad_norm": self.grad_norm,
                        "seconds": self.seconds,
                        "evaluations": self.evaluations,
                    }
                )
            )

    @classmethod
    def load(cls, folder: str | Path) -> FitResult:
        folder = Path(folder)
        try:
            tensors = load_file(str(folder / "fit.safetensors"))
            meta = json.loads((folder / "fit.json").read_text())
            partition = BatchPartition.from_json((folder / "partition.json").read_text())
            return cls(
                tensors["params"],
                tensors["theta0"],
                partition,
                FitArguments(**meta["args"]),
                meta["risk"],
                meta["grad_norm"],
                meta["seconds"],
                int(meta.get("evaluations", 0)),
            )
        except (OSError, SafetensorError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise InputError(
                f"{folder} holds no complete fit (fit.safetensors, fit.json, partition.json): {err}"
            ) from None


@dataclass(frozen=True)
class PairScores:
    """Per-pair ``delta_val_loss_if_removed`` split by role: ``pos`` and ``neg[form]`` (see the module docstring)."""

    pos: np.ndarray
    neg: dict[str, np.ndarray]
    max_negative_prob: np.ndarray = field(repr=False)

    def role(self, role: Role | str = Role.BOTH, form: NegForm | str = NegForm.EXACT) -> np.ndarray:
        role, form = as_enum(Role, role, "role"), as_enum(NegForm, form, "neg_form")
        if role is Role.POS:
            return self.pos
        if role is Role.NEG:
            return self.neg[form.value]
        return self.pos + self.neg[form.value]

    def variants(self) -> dict[str, np.ndarray]:
        """Every role x form combination by name: pos, neg_<form>, both_<form>."""
        out = {"pos": self.pos}
        for form in NegForm:
            out[f"neg_{form.value}"] = self.neg[form.value]
            out[f"both_{form.value}"] = self.pos + self.neg[form.value]
        return out


@dataclass(frozen=True)
class TraceResult:
    """Trace-back of test pairs: ``delta_test_loss_if_removed[t, n]`` and its relative (RelatIF) version."""

    delta_test_loss_if_removed: np.ndarray
    relative_influence: np.ndarray
    relative: Relative

    def top(self, t: int, k: int = 10) -> np.ndarray:
        """Indices of the k training pairs that most raised test pair t's loss (most negative relative score)."""
        return np.argsort(self.relative_influence[t])[:k]


class _Converged(Exception):
    """Raised by a preconditioned fit's closure at the first point that meets the fit's own stopping rule."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.theta = theta


def _minimise(
    value_and_grad: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    hvp_at: Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]],
    theta0: torch.Tensor,
    args: FitArguments,
    n_pairs: int,
    preconditioner_at: Callable[[torch.Tensor], NystromPreconditioner | None] | None = None,
) -> tuple[torch.Tensor, float, float, int]:
    """Minimise the summed risk to ``args.tolerance_grad`` per pair: L-BFGS, then (if it stopped above the
    tolerance) trust-region Newton-CG with exact Hessian-vector products. ``value_and_grad(theta) -> (risk,
    gradient)``, both detached; ``hvp_at(theta)`` returns ``v -> H(theta) v`` of the summed risk. Returns (theta,
    risk, largest entry of the risk's gradient, evaluations of the risk and of Hessian-vector products).

    Both stages see the risk divided by ``n_pairs`` (the mean pair loss plus the prior ``l2 / (2 n_pairs)``: the
    same minimiser), so the tolerance bounds the gradient per pair. A bound on the summed gradient is not scale-free:
    the summed loss and its rounding grow with N, so a fixed bound becomes unreachable at large N and the line search
    stalls on float noise after many evaluations.

    Why the second stage: from a trained model's weights with a weak prior the risk's optimum can lie far away
    (the memorised tier's heads: 0.67 of their norm) along a curved valley. L-BFGS gets there but then converges
    only linearly on the ill-conditioned optimum (the tier's fit: 1,250 evaluations to a per-pair gradient of 1e-4,
    2,200 to 1e-6); Newton-CG converges quadratically from there.

    Preconditioning (``preconditioner_at(theta) -> M^-1``, after ``args.precondition_after`` evaluations without
    convergence): the prior is fixed while the data curvature grows with N, so plain L-BFGS needs more and more
    evaluations; it continues on z with theta = theta_k + M^-1/2 z (the same minimiser) and stops at the first
    evaluated point whose per-pair gradient of the risk meets ``tolerance_grad`` - the unpreconditioned rule - or
    when its step or risk change stalls below 1e-15, as plain L-BFGS does."""
    scale = 1.0 / max(1, n_pairs)
    evaluations = 0

    def run(start: torch.Tensor, max_iter: int, precond: NystromPreconditioner | None) -> tuple[torch.Tensor, bool]:
        """L-BFGS from ``start`` (on z when preconditioned); returns (theta, budget used up)."""
        nonlocal evaluations
        variable = (torch.zeros_like(start) if precond is not None else start.detach().clone()).requires_grad_(True)
        max_eval = int(max_iter * 1.25)
        opt = torch.optim.LBFGS(
            [variable],
            lr=1.0,
            max_iter=max_iter,
            max_eval=max_eval,
            # preconditioned: the rule is checked on the gradient in theta (the closure), never on the one in z
            tolerance_grad=args.tolerance_grad if precond is None else 0.0,
            tolerance_change=1e-15,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def theta_of(var: torch.Tensor) -> torch.Tensor:
            return var.detach() if precond is None else start + precond.sqrt_apply(var.detach())

        def closure():
            nonlocal evaluations
            evaluations += 1
            theta = theta_of(variable)
            loss, grad = value_and_grad(theta)
            if precond is None:
                variable.grad = grad * scale
            else:
                if float(grad.abs().max()) * scale <= args.tolerance_grad:
                    raise _Converged(theta)
                variable.grad = precond.sqrt_apply(grad) * scale
            return loss * scale

        start_evals = evaluations
        try:
            opt.step(closure)
        except _Converged as done:
            return done.theta, False
        state = opt.state[variable]
        used_up = state.get("n_iter", 0) >= max_iter or evaluations - start_evals >= max_eval
        return theta_of(variable), used_up

    budget = args.max_iter
    first = budget if preconditioner_at is None or args.precondition_after == 0 else args.precondition_after
    theta, used_up = run(theta0, min(first, budget), None)
    if used_up and first < budget and preconditioner_at is not None:
        precond = preconditioner_at(theta)
        theta, _ = run(theta, budget - first, precond)
    found = theta.detach()
    loss, grad = value_and_grad(found)
    if float(grad.abs().max()) * scale > args.tolerance_grad and args.newton_max_iter > 0:
        found, newton_evaluations = _newton_cg(value_and_grad, hvp_at, found, args, scale)
        evaluations += newton_evaluations
        loss, grad = value_and_grad(found)
    return found, float(loss), float(grad.abs().max()), evaluations


class _BudgetSpent(Exception):
    """The Newton stage used its Hessian-vector products (raised inside scipy's iteration, caught by the caller)."""


#: Hessian-vector products allowed per Newton iteration, on average (the inner CG of one iteration has no cap in
#: scipy; on a group whose tolerance is out of reach, e.g. float32, the stage then ends at a bounded cost).
PRODUCTS_PER_NEWTON_ITER = 25


def _newton_cg(
    value_and_grad: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    hvp_at: Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]],
    start: torch.Tensor,
    args: FitArguments,
    scale: float,
) -> tuple[torch.Tensor, int]:
    """scipy's trust-region Newton-CG (Steihaug: safe under negative curvature) on ``risk * scale`` from
    ``start``, stopping when the gradient's Euclidean norm is below ``args.tolerance_grad``, after
    ``args.newton_max_iter`` iterations, or after ``PRODUCTS_PER_NEWTON_ITER`` x that many Hessian-vector products
    (then at its last accepted iterate). Returns (theta, evaluations: risk-and-gradient calls plus products)."""
    from scipy.optimize import minimize

    dtype = start.dtype
    calls, products, budget = 0, 0, PRODUCTS_PER_NEWTON_ITER * args.newton_max_iter
    state: dict[str, Any] = {"last": start.double().numpy().copy()}

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal calls
        calls += 1
        loss, grad = value_and_grad(torch.from_numpy(x).to(dtype))
        return float(loss) * scale, grad.double().numpy() * scale

    def hessp(x: np.ndarray, v: np.ndarray) -> np.ndarray:
        nonlocal calls, products
        if products >= budget:
            raise _BudgetSpent
        calls, products = calls + 1, products + 1
        key = x.tobytes()
        if state.get("key") != key:  # one graph per point, reused by the CG iterations at that point
            state.update(key=key, product=hvp_at(torch.from_numpy(x.copy()).to(dtype)))
        return state["product"](torch.from_numpy(v).to(dtype)).double().numpy() * scale

    def accepted(x: np.ndarray) -> None:
        state["last"] = x.copy()

    try:
        result = minimize(
            fun,
            state["last"],
            jac=True,
            hessp=hessp,
            method="trust-ncg",
            callback=accepted,
            options={"gtol": args.tolerance_grad, "maxiter": args.newton_max_iter},
        )
        found = result.x
    except _BudgetSpent:
        found = state["last"]
    theta = torch.from_numpy(np.asarray(found)).to(dtype)
    # Near the optimum the trust region's acceptance test compares risk differences below the risk's rounding and
    # stalls (measured: a retraining stopped at 7e-9 per pair); finish with Newton steps judged by the gradient's norm.
    for _ in range(10):
        g = value_and_grad(theta)[1] * scale
        calls += 1
        if float(g.abs().max()) <= args.tolerance_grad or products >= budget:
            break
        step, used = _cg_solve(_scaled(hvp_at(theta), scale), -g, budget - products)
        calls, products = calls + used, products + used
        if step is None:
            break  # negative curvature: not a minimum's neighbourhood, Newton steps would not go to one
        for t in (1.0, 0.5, 0.25, 0.125):
            candidate = theta + t * step
            calls += 1
            if float((value_and_grad(candidate)[1] * scale).norm()) < float(g.norm()):
                theta = candidate
                break
        else:
            break
    return theta, calls


def _scaled(product: Callable[[torch.Tensor], torch.Tensor], scale: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda v: product(v) * scale


def _cg_solve(
    product: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, budget: int, rtol: float = 1e-6
) -> tuple[torch.Tensor | None, int]:
    """x with H x = b by conjugate gradients (None on negative curvature), and the products used."""
    x = torch.zeros_like(b)
    r, used = b.clone(), 0
    p, rr = r.clone(), float(r @ r)
    target = rtol**2 * rr
    while used < budget and rr > target:
        hp = product(p)
        used += 1
        curvature = float(p @ hp)
        if curvature <= 0:
            return None, used
        alpha = rr / curvature
        x, r = x + alpha * p, r - alpha * hp
        rr_new = float(r @ r)
        p, rr = r + (rr_new / rr) * p, rr_new
    return x, used


class InfluenceAnalyzer:
    """ECIF over one task, one training set and its recorded batch partition.

    Typical use::

        task = HeadTask(load_model("zoo:digits-clip"))
        analyzer = InfluenceAnalyzer(task, train_pairs)
        analyzer.fit()                                  # or analyzer.use_fit(FitResult.load(...))
        scores = analyzer.value(val_pairs)              # PairScores, delta_val_loss_if_removed by role and form
        model = analyzer.edited_model(np.argsort(scores.role())[:50])   # closed-form removal of the 50 worst
    """

    def __init__(
        self,
        task: ContrastiveTask,
        train: PairData,
        *,
        args: InfluenceArguments | None = None,
        fit_args: FitArguments | None = None,
        partition: BatchPartition | None = None,
        progress: bool = False,
        work: DistributedWork | None = None,
        encoded: Encoded | None = None,
        chunk_pairs: int = 4096,
    ) -> None:
        if chunk_pairs < 2:
            raise InputError(f"chunk_pairs must be >= 2, got {chunk_pairs}")
        self.task, self.train = task, train
        # the processes the per-pair work is split across (default: the current launch; one process without one)
        self.work = work if work is not None else DistributedWork.from_environment()
        self.args = args or InfluenceArguments()
        self.fit_args = fit_args or FitArguments()
        self.progress = progress
        self.n = len(train)
        self.partition = partition or BatchPartition.random(self.n, self.fit_args.batch_size, self.fit_args.seed)
        if sorted(i for b in self.partition.batches for i in b) != list(range(self.n)):
            raise InputError(f"the batch partition must cover the {self.n} training pairs exactly once")
        # the encoded pairs (e.g. cached tower outputs, possibly read back from disk by mmlens.influence.streaming)
        self.encoded = task.encode(train) if encoded is None else encoded
        if len(next(iter(self.encoded.values()))) != self.n:
            raise InputError(f"the encoded pairs hold {len(next(iter(self.encoded.values())))} rows for {self.n} pairs")
        self.theta0 = task.space.flatten(task.initial_params()).to(self._dtype)
        self._index = torch.as_tensor(self.partition.index_matrix())
        # Passes over the whole training set (fit, retraining, Hessian-vector products) are summed over chunks of
        # whole batches of at most ``chunk_pairs`` pairs, each chunk's autograd graph freed before the next, so their
        # memory does not grow with the number of pairs. One chunk = the previous single-graph computation.
        per_chunk = max(1, chunk_pairs // max(1, self.partition.max_batch))
        self._chunks = [slice(s, min(s + per_chunk, len(self._index))) for s in range(0, len(self._index), per_chunk)]
        self.fitted: FitResult | None = None
        self._per_chunk = per_chunk
        self._inverse: InverseOperator | None = None
        self._hvp_state: tuple[torch.Tensor, torch.Tensor] | None = None
        # (Pi, H Pi^T) at the fit over all pairs: the projected operator's sketch, reused by CG's preconditioner
        self._sketch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._precond: NystromPreconditioner | None = None

    @property
    def _dtype(self) -> torch.dtype:
        return self.task.dtype

    # ------------------------------------------------------------------------------------------------ risk
    def _flags(self, indices: Indices) -> torch.Tensor:
        flags = torch.zeros(self.n, dtype=torch.bool)
        if len(indices):
            idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
            if int(idx.min()) < 0 or int(idx.max()) >= self.n:
                raise InputError(f"pair indices must be in [0, {self.n}), got {int(idx.min())}..{int(idx.max())}")
            flags[idx] = True
        return flags

    def loss(
        self, theta: torch.Tensor, remove: Indices = (), remove_neg: Indices = (), remove_pos: Indices = ()
    ) -> torch.Tensor:
        """Summed training loss over the recorded batches, with pairs removed (entirely / as negative / as positive)."""
        masks = removal_masks(self._index, self._flags(remove), self._flags(remove_neg), self._flags(remove_pos))
        return self._batched_loss(theta, self.encoded, self._index, masks)

    def _batched_loss(
        self,
        theta: torch.Tensor,
        encoded: Encoded,
        index: torch.Tensor,
        masks: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        img, txt = self.task.embed(self.task.space.unflatten(theta), encoded)
        safe = index.clamp_min(0)
        sim = similarity(txt[safe], img[safe], self.task.logit_scale, self.task.logit_bias)
        return batch_loss(sim, *masks, kind=self.task.loss_kind)

    def risk(self, theta: torch.Tensor, **removal) -> torch.Tensor:
        """R(theta) = summed batch losses + (l2 / 2) ||theta - theta_0||^2."""
        return self.loss(theta, **removal) + 0.5 * self.fit_args.l2 * (theta - self.theta0).pow(2).sum()

    def _chunk_loss(self, theta: torch.Tensor, rows: slice, masks) -> torch.Tensor:
        """Summed loss of the batches ``rows`` of the partition; only their pairs are embedded."""
        index = self._index[rows]
        members = index[index >= 0]
        local = torch.full((self.n,), -1, dtype=torch.long)
        local[members] = torch.arange(len(members))
        local_index = torch.where(index >= 0, local[index.clamp_min(0)], index)
        return self._batched_loss(theta, subset(self.encoded, members), local_index, tuple(m[rows] for m in masks))

    def risk_and_grad(
        self, theta: torch.Tensor, remove: Indices = (), remove_neg: Indices = (), remove_pos: Indices = ()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(R(theta), grad R(theta)), detached, summed chunk by chunk (memory bounded by ``chunk_pairs``)."""
        removal = {"remove": remove, "remove_neg": remove_neg, "remove_pos": remove_pos}
        theta = theta.detach().clone().requires_grad_(True)
        if len(self._chunks) == 1:
            value = self.risk(theta, **removal)
            return value.detach(), torch.autograd.grad(value, theta)[0]
        masks = removal_masks(self._index, self._flags(remove), self._flags(remove_neg), self._flags(remove_pos))
        value = 0.5 * self.fit_args.l2 * (theta - self.theta0).pow(2).sum()
        (grad,) = torch.autograd.grad(value, theta)
        value = value.detach()
        for rows in self._chunks:
            part = self._chunk_loss(theta, rows, masks)
            grad = grad + torch.autograd.grad(part, theta)[0]
            value = value + part.detach()
        return value, grad

    # ------------------------------------------------------------------------------------------- fitting
    def fit(self) -> FitResult:
        """Fit the group on all pairs from theta_0 over the recorded partition (L-BFGS to convergence)."""
        t0 = time.time()
        theta, risk, grad, evaluations = _minimise(
            self.risk_and_grad, self.hvp_at, self.theta0, self.fit_args, self.n, self._fit_preconditioner
        )
        fit = FitResult(
            theta, self.theta0.clone(), self.partition, self.fit_args, risk, grad, time.time() - t0, evaluations
        )
        self.use_fit(fit)
        return fit

    def use_fit(self, fit: FitResult) -> None:
        """Adopt a saved fit (same pairs, same partition)."""
        if fit.params.numel() != self.task.space.size:
            raise InputError(f"the fit has {fit.params.numel()} parameters, the task's group {self.task.space.size}")
        if fit.partition.batches != self.partition.batches:
            raise InputError("the fit was made over another batch partition; pass partition=fit.partition")
        self.fitted = fit
        self._inverse, self._hvp_state, self._sketch, self._precond = None, None, None, None

    def retrain(
        self, remove: Indices = (), remove_neg: Indices = (), remove_pos: Indices = (), warm_start: bool = False
    ) -> torch.Tensor:
        """Parameters refitted without some pairs, from the same theta_0 (or from the fit) and partition."""
        start = self._theta_hat() if warm_start else self.theta0
        removal = {"remove": remove, "remove_neg": remove_neg, "remove_pos": remove_pos}
        theta, _, _, _ = _minimise(
            lambda th: self.risk_and_grad(th, **removal),
            lambda th: self.hvp_at(th, **removal),
            start,
            self.fit_args,
            self.n,
            self._fit_preconditioner,
        )
        return theta

    def hvp_at(
        self, theta: torch.Tensor, remove: Indices = (), remove_neg: Indices = (), remove_pos: Indices = ()
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """``v -> H v`` of the summed risk (with the given removals) at ``theta``, for one vector [P]. One graph is
        kept when the partition is one chunk; otherwise each product is summed chunk by chunk (memory bounded)."""
        removal = {"remove": remove, "remove_neg": remove_neg, "remove_pos": remove_pos}
        theta = theta.detach().clone().requires_grad_(True)
        if len(self._chunks) == 1:
            (grad,) = torch.autograd.grad(self.risk(theta, **removal), theta, create_graph=True)
            return lambda v: torch.autograd.grad(grad, theta, v, retain_graph=True)[0]
        masks = removal_masks(self._index, self._flags(remove), self._flags(remove_neg), self._flags(remove_pos))

        def product(v: torch.Tensor) -> torch.Tensor:
            out = self.fit_args.l2 * v.clone()
            for rows in self._chunks:
                (grad,) = torch.autograd.grad(self._chunk_loss(theta, rows, masks), theta, create_graph=True)
                out = out + torch.autograd.grad(grad, theta, v)[0]
            return out

        return product

    def _theta_hat(self) -> torch.Tensor:
        if self.fitted is None:
            raise InputError("fit the analyzer first (analyzer.fit() or analyzer.use_fit(FitResult.load(...)))")
        return self.fitted.params

    # ------------------------------------------------------------------------------------------ curvature
    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H v (or a batch [Q, P] -> [Q, P]) at the fitted parameters."""
        if len(self._chunks) > 1:
            return self._chunked_hvp(v)
        if self._hvp_state is None:
            theta = self._theta_hat().detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.risk(theta), theta, create_graph=True)
            self._hvp_state = (theta, grad)
        theta, grad = self._hvp_state
        if v.ndim == 1:
            return torch.autograd.grad(grad, theta, v, retain_graph=True)[0]
        # rows in blocks: a batched double backward holds one copy of the graph's intermediates per row
        return torch.cat([self._batched_grad(grad, theta, v[s : s + HVP_ROWS]) for s in range(0, len(v), HVP_ROWS)])

    @staticmethod
    def _batched_grad(grad: torch.Tensor, theta: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if len(rows) == 1:
            return torch.autograd.grad(grad, theta, rows[0], retain_graph=True)[0].unsqueeze(0)
        try:
            return torch.autograd.grad(grad, theta, rows, retain_graph=True, is_grads_batched=True)[0]
        except RuntimeError:  # an op without a batching rule: one product per row
            return torch.stack([torch.autograd.grad(grad, theta, row, retain_graph=True)[0] for row in rows])

    def _chunked_hvp(self, v: torch.Tensor, rows_per_pass: int = 1) -> torch.Tensor:
        """H v summed over the chunks of the partition: each chunk's double-backward graph is built, used for
        ``rows_per_pass`` vectors at a time and freed (memory bounded; the first backward is recomputed per call).
        One row per pass by default: on a chunk of thousands of pairs a batched double backward
        (``is_grads_batched``) measured 2x slower per row than single products on the retained graph."""
        single = v.ndim == 1
        vs = v.unsqueeze(0) if single else v
        none = torch.zeros(self.n, dtype=torch.bool)
        masks = removal_masks(self._index, none, none, none)
        theta = self._theta_hat().detach().clone().requires_grad_(True)
        out = self.fit_args.l2 * vs.clone()  # the Hessian of the L2 term
        for rows in self._chunks:
            (grad,) = torch.autograd.grad(self._chunk_loss(theta, rows, masks), theta, create_graph=True)
            for start in range(0, len(vs), rows_per_pass):
                block = vs[start : start + rows_per_pass]
                out[start : start + len(block)] += self._batched_grad(grad, theta, block)
        return out[0] if single else out

    def _data_hvp(self, theta: torch.Tensor, vs: torch.Tensor, n_rows: int) -> torch.Tensor:
        """Rows [Q, P] times the Hessian of the summed loss (no prior) of the first ``n_rows`` batches of the
        partition at ``theta``, chunk by chunk, one vector per double backward."""
        none = torch.zeros(self.n, dtype=torch.bool)
        masks = removal_masks(self._index, none, none, none)
        theta = theta.detach().clone().requires_grad_(True)
        out = torch.zeros_like(vs)
        for start in range(0, n_rows, self._per_chunk):
            rows = slice(start, min(start + self._per_chunk, n_rows))
            (grad,) = torch.autograd.grad(self._chunk_loss(theta, rows, masks), theta, create_graph=True)
            for i in range(len(vs)):
                out[i] += torch.autograd.grad(grad, theta, vs[i], retain_graph=True)[0]
        return out

    def _subsample_rows(self, n_pairs: int) -> tuple[int, int]:
        """(batches, pairs) of the shortest prefix of the (random) partition holding at least ``n_pairs`` pairs."""
        total = 0
        for rows, batch in enumerate(self.partition.batches, start=1):
            total += len(batch)
            if total >= n_pairs:
                return rows, total
        return len(self.partition.batches), total

    def _nystrom(self, theta: torch.Tensor, rank: int, n_pairs: int, shift: float) -> NystromPreconditioner:
        """Nystrom preconditioner of H = (data Hessian) + shift I at ``theta`` from ``rank`` seeded test vectors,
        the data Hessian estimated on a prefix of whole batches holding >= ``n_pairs`` pairs, scaled to all pairs."""
        gen = torch.Generator().manual_seed(self.args.seed)
        size = self.task.space.size
        k = min(rank, size)
        omega = torch.randn(k, size, generator=gen, dtype=self._dtype) / k**0.5
        rows, pairs = self._subsample_rows(n_pairs)
        sketch = self._data_hvp(theta, omega, rows) * (self.n / pairs)
        return NystromPreconditioner.from_sketch(omega, sketch, shift)

    def _fit_preconditioner(self, theta: torch.Tensor) -> NystromPreconditioner | None:
        if self.fit_args.l2 <= 0:  # no prior: nothing fixes the preconditioner's floor
            return None
        fa = self.fit_args
        return self._nystrom(theta, fa.precondition_rank, fa.precondition_pairs, fa.l2)

    def _projection_sketch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Pi, H Pi^T) at the fit over all pairs (computed once per fit)."""
        if self._sketch is None:
            self._sketch = projection_sketch(self.args, self.hvp, self.task.space.size, self._dtype)
        return self._sketch

    @property
    def _preconditioned(self) -> bool:
        return self.args.preconditioner is not Preconditioner.NONE and self.fit_args.l2 + self.args.damping > 0

    def cg_preconditioner(self) -> NystromPreconditioner | None:
        """CG's preconditioner (``args.preconditioner``): Nystrom at the fit from ``proj_dim`` Hessian-vector
        products - over all pairs (the projected sketch, shared with the self-influence operator) when there are at
        most ``args.precond_pairs`` pairs, else over a prefix of whole batches holding ``precond_pairs`` pairs,
        scaled to all (a cost that does not grow with N). The choice depends on the data only, not on what was
        computed before, so a solve gives the same answer in every command. None for plain CG or without prior
        and damping. Either way CG stops at the same residual tolerance."""
        shift = self.fit_args.l2 + self.args.damping
        if not self._preconditioned:
            return None
        if self._precond is None:
            if self.n <= self.args.precond_pairs:
                proj, sketched = self._projection_sketch()
                self._precond = NystromPreconditioner.from_sketch(proj, sketched - self.fit_args.l2 * proj, shift)
            else:
                self._precond = self._nystrom(self._theta_hat(), self.args.proj_dim, self.args.precond_pairs, shift)
        return self._precond

    def inverse(self) -> InverseOperator:
        """H^-1 (the solver of ``args``), built once per fit."""
        if self._inverse is None:
            sketch = self._projection_sketch() if self.args.solver is HessianSolver.PROJECTED else None
            self._inverse = build_inverse(
                self.args,
                self.hvp,
                self.hvp,
                self.task.space.size,
                self._dtype,
                sketch=sketch,
                preconditioner=self.cg_preconditioner if self._preconditioned else None,
            )
        return self._inverse

    def batched_inverse(self) -> InverseOperator:
        """An operator that is cheap on many vectors: the chosen one if it is, else a projected approximation."""
        inv = self.inverse()
        if inv.batched:
            return inv
        return build_inverse(
            replace(self.args, solver=HessianSolver.PROJECTED),
            self.hvp,
            self.hvp,
            self.task.space.size,
            self._dtype,
            sketch=self._projection_sketch(),
        )

    # -------------------------------------------------------------------------------- per-pair gradients
    def _terms_gradients(
        self, theta: torch.Tensor, encoded: Encoded, parts: Sequence[str]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Gradients of the chosen per-pair terms of ONE batch (``encoded``), with the whole batch in the graph:
        one forward, then a vmapped VJP per (term, pair). Returns {part: [B, P]} and max negative probability."""
        space, task = self.task.space, self.task
        params = space.unflatten(theta.detach())
        (img, txt), vjp_fn = torch.func.vjp(lambda p: task.embed(p, encoded), params)

        def terms(img_, txt_):
            sim = similarity(txt_, img_, task.logit_scale, task.logit_bias)
            t = pair_terms(sim, task.loss_kind)
            return torch.stack([t[p] for p in parts])

        jac_img, jac_txt = torch.func.jacrev(terms, argnums=(0, 1))(img, txt)  # [n_parts, B, B, D]
        b, d = img.shape
        cotangents = (jac_img.reshape(-1, b, d), jac_txt.reshape(-1, b, d))
        try:
            (grads,) = torch.func.vmap(vjp_fn)(cotangents)
            flat = space.flatten_batched(grads)
        except RuntimeError:  # a model op without a vmap rule: fall back to one VJP per row
            flat = torch.stack([space.flatten(vjp_fn((ci, ct))[0]) for ci, ct in zip(*cotangents)])
        flat = flat.view(len(parts), b, -1)
        with torch.no_grad():
            maxp = max_negative_probability(similarity(txt, img, task.logit_scale, task.logit_bias))
        return {p: flat[i] for i, p in enumerate(parts)}, maxp

    def iter_pair_gradients(
        self, parts: Sequence[str] = PARTS, theta: torch.Tensor | None = None
    ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor], torch.Tensor]]:
        """Per batch: (pair indices, {part: gradient [B, P]}, max negative probability [B]), every batch in this
        process (not split across processes; the analyzer's own loops split them)."""
        theta = self._theta_hat() if theta is None else theta
        for batch in progress_bar(
            self.partition.batches,
            desc="per-pair gradients",
            enabled=self.progress and self.work.is_main_process,
        ):
            idx = np.asarray(batch)
            grads, maxp = self._terms_gradients(theta, subset(self.encoded, torch.as_tensor(idx)), parts)
            yield idx, grads, maxp

    def _map_partition(self, fn: Callable[[np.ndarray], BatchResult], desc: str) -> list[BatchResult]:
        """``fn(pair indices of the batch)`` for every batch of the partition, the batches split across processes
        (whole batches: each one is computed exactly as in a single process); the results in batch order, on every
        process. ``fn`` should return CPU arrays/tensors (they are pickled between processes)."""
        local = self.work.local_items(self.partition.batches)
        bar = progress_bar(local, desc=desc, enabled=self.progress and self.work.is_main_process)
        return self.work.gather([fn(np.asarray(batch)) for batch in bar])

    def _map_pair_gradients(
        self,
        fn: Callable[[np.ndarray, dict[str, torch.Tensor], torch.Tensor], BatchResult],
        parts: Sequence[str] = PARTS,
        theta: torch.Tensor | None = None,
    ) -> list[BatchResult]:
        """``fn(indices, {part: gradient [B, P]}, max negative probability [B])`` per batch, split as
        :meth:`_map_partition` (the distributed form of :meth:`iter_pair_gradients`)."""
        theta = self._theta_hat() if theta is None else theta

        def one_batch(idx: np.ndarray) -> BatchResult:
            grads, maxp = self._terms_gradients(theta, subset(self.encoded, torch.as_tensor(idx)), parts)
            return fn(idx, grads, maxp)

        return self._map_partition(one_batch, "per-pair gradients")

    # ---------------------------------------------------------------------------------------- measurements
    def measurement_partition(self, n: int, batch_size: int | None = None, seed: int = 0) -> BatchPartition:
        """The seeded batches of the measurement L' over ``n`` validation pairs (the contrastive loss depends on
        them): shared by :meth:`measurement_gradients`, :meth:`validation_loss` and the peer library."""
        return BatchPartition.random(n, batch_size or self.fit_args.batch_size, seed)

    def measurement_gradients(
        self, data: PairData, per_batch: bool = False, batch_size: int | None = None, seed: int = 0
    ) -> tuple[torch.Tensor, float]:
        """Gradient(s) of the summed contrastive loss on ``data`` (its own seeded batches): [1, P] or one row per
        batch, and the loss value."""
        encoded = self.task.encode(data)
        index = torch.as_tensor(self.measurement_partition(len(data), batch_size, seed).index_matrix())
        none = torch.zeros(len(data), dtype=torch.bool)
        masks = removal_masks(index, none, none, none)
        theta = self._theta_hat().detach().clone().requires_grad_(True)
        if not per_batch:
            loss = self._batched_loss(theta, encoded, index, masks)
            return torch.autograd.grad(loss, theta)[0].unsqueeze(0), float(loss.detach())
        rows, total = [], 0.0
        for m in range(len(index)):
            sub = tuple(x[m : m + 1] for x in masks)
            loss = self._batched_loss(theta, encoded, index[m : m + 1], sub)
            rows.append(torch.autograd.grad(loss, theta)[0])
            total += float(loss.detach())
        return torch.stack(rows), total

    def validation_loss(
        self,
        theta: torch.Tensor,
        data: PairData | Encoded,
        batch_size: int | None = None,
        seed: int = 0,
        per_batch: bool = False,
    ) -> float | np.ndarray:
        """Summed contrastive loss of ``data`` under ``theta`` in its own seeded batches (the measurement L')."""
        encoded = self.task.encode(data) if isinstance(data, PairData) else data
        n = len(next(iter(encoded.values())))
        index = torch.as_tensor(self.measurement_partition(n, batch_size, seed).index_matrix())
        none = torch.zeros(n, dtype=torch.bool)
        rm, cm, w = removal_masks(index, none, none, none)
        with torch.no_grad():
            img, txt = self.task.embed(self.task.space.unflatten(theta), encoded)
            safe = index.clamp_min(0)
            sim = similarity(txt[safe], img[safe], self.task.logit_scale, self.task.logit_bias)
            per = torch.stack([batch_loss(sim[m], rm[m], cm[m], w[m], self.task.loss_kind) for m in range(len(index))])
        return per.numpy() if per_batch else float(per.sum())

    # -------------------------------------------------------------------------------------------- scores
    def _terms_jvp(self, theta: torch.Tensor, encoded: Encoded, directions: torch.Tensor) -> torch.Tensor:
        """d term_n / d theta . direction for every part, pair of ONE batch and direction: [Q, n_parts, B].
        Forward mode: one pass per direction gives the dot products of all per-pair gradients with it."""
        task, space = self.task, self.task.space

        def terms(th):
            img, txt = task.embed(space.unflatten(th), encoded)
            t = pair_terms(similarity(txt, img, task.logit_scale, task.logit_bias), task.loss_kind)
            return torch.stack([t[p] for p in PARTS])

        return torch.stack([torch.func.jvp(terms, (theta,), (d,))[1] for d in directions])

    def query_scores(
        self, queries: torch.Tensor, inverse: InverseOperator | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """For measurement gradients ``queries [Q, P]``: {part: [N, Q]} of (H^-1 q)^T grad part_n, and the max
        negative probability per pair. One inverse solve per query (not per pair), then one forward-mode pass
        per batch and query."""
        solved = (inverse or self.inverse()).apply(queries.to(self._dtype)).detach()
        theta = self._theta_hat().detach()

        def one_batch(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            enc = subset(self.encoded, torch.as_tensor(idx))
            dots = self._terms_jvp(theta, enc, solved)  # [Q, parts, B]
            with torch.no_grad():
                img, txt = self.task.embed(self.task.space.unflatten(theta), enc)
                maxp_b = max_negative_probability(similarity(txt, img, self.task.logit_scale, self.task.logit_bias))
            return dots.detach().cpu().numpy(), maxp_b.cpu().numpy()

        out = {p: np.zeros((self.n, len(queries))) for p in PARTS}
        maxp = np.zeros(self.n)
        for batch, (dots, maxp_b) in zip(self.partition.batches, self._map_partition(one_batch, "scoring pairs")):
            idx = np.asarray(batch)
            for i, p in enumerate(PARTS):
                out[p][idx] = dots[:, i, :].T
            maxp[idx] = maxp_b
        return out, maxp

    def value(self, val: PairData, batch_size: int | None = None, seed: int = 0) -> PairScores:
        """``delta_val_loss_if_removed`` of every training pair for the validation pairs ``val``, by role and form."""
        grad, _ = self.measurement_gradients(val, batch_size=batch_size, seed=seed)
        parts, maxp = self.query_scores(grad)
        return PairScores(parts["pos"][:, 0], {f.value: parts[f"neg_{f.value}"][:, 0] for f in NegForm}, maxp)

    def self_influence(self, form: NegForm | str = NegForm.EXACT, role: Role | str = Role.BOTH) -> np.ndarray:
        """g_n^T H^-1 g_n with g_n the chosen role's gradient (batched operator; projected if the solver is not)."""
        form, role = as_enum(NegForm, form, "neg_form"), as_enum(Role, role, "role")
        inv = self.batched_inverse()

        def one_batch(idx, grads, _) -> np.ndarray:
            g = {
                Role.POS: grads["pos"],
                Role.NEG: grads[f"neg_{form.value}"],
                Role.BOTH: grads["pos"] + grads[f"neg_{form.value}"],
            }[role]
            return (inv.apply(g) * g).sum(1).detach().cpu().numpy()

        return self._assemble(self._map_pair_gradients(one_batch))

    def tracin_self_influence(self) -> np.ndarray:
        """TracIn self-influence at the final parameters: ||grad of the pair's own loss (Pos)||^2."""
        return self._assemble(
            self._map_pair_gradients(
                lambda idx, grads, _: grads["pos"].pow(2).sum(1).detach().cpu().numpy(), parts=("pos",)
            )
        )

    def _assemble(self, per_batch: Sequence[np.ndarray]) -> np.ndarray:
        """One value per pair from one array per batch of the partition (in batch order)."""
        out = np.zeros(self.n)
        for batch, values in zip(self.partition.batches, per_batch):
            out[np.asarray(batch)] = values
        return out

    def trace(
        self,
        test: PairData,
        negatives: PairData | None = None,
        relative: Relative | str = Relative.THETA,
        form: NegForm | str = NegForm.EXACT,
    ) -> TraceResult:
        """Which training pairs raised each test pair's loss. The measurement is the test pair's contrastive loss
        (Pos) in one batch made of the test pairs and ``negatives``; scores follow the module's sign convention."""
        relative, form = as_enum(Relative, relative, "relative"), as_enum(NegForm, form, "neg_form")
        batch = (
            test if negatives is None else PairData(test.images + negatives.images, test.captions + negatives.captions)
        )
        if len(batch) < 2:
            raise InputError("trace needs at least 2 pairs in the test batch: give more test pairs or negatives")
        theta = self._theta_hat()
        grads, _ = self._terms_gradients(theta, self.task.encode(batch), ("pos",))
        test_grads = grads["pos"][: len(test)].detach()
        solved = self.inverse().apply(test_grads)
        norm_inv = self.batched_inverse() if relative is not Relative.NONE else None

        def one_batch(idx, g, _) -> tuple[np.ndarray, np.ndarray | None]:
            total = (g["pos"] + g[f"neg_{form.value}"]).detach()
            norm_b = None
            if norm_inv is not None:
                step = norm_inv.apply(total)
                norm_b = (
                    (step.norm(dim=1) if relative is Relative.THETA else (step * total).sum(1).clamp_min(0).sqrt())
                    .detach()
                    .cpu()
                    .numpy()
                )
            return (solved @ total.T).detach().cpu().numpy(), norm_b

        raw = np.zeros((len(test), self.n))
        norm = np.ones(self.n)
        per_batch = self._map_pair_gradients(one_batch, parts=("pos", f"neg_{form.value}"))
        for pairs_b, (raw_b, norm_b) in zip(self.partition.batches, per_batch):
            idx = np.asarray(pairs_b)
            raw[:, idx] = raw_b
            if norm_b is not None:
                norm[idx] = norm_b
        return TraceResult(raw, raw / np.maximum(norm, 1e-30), relative)

    # ----------------------------------------------------------------------------------- closed-form edit
    def removal_gradient(self, indices: Indices, form: NegForm | str | None = None) -> torch.Tensor:
        """sum_{n in D} grad (Pos_n + Neg_n). With the exact form the set is deleted from its batches at once
        (grad of L_full - L_without_D), which keeps the interactions of members sharing a batch."""
        form = as_enum(NegForm, form or self.args.neg_form, "neg_form")
        theta = self._theta_hat().detach().clone().requires_grad_(True)
        if form is NegForm.EXACT:
            diff = self.loss(theta) - self.loss(theta, remove=indices)
            return torch.autograd.grad(diff, theta)[0]
        chosen = self._flags(indices).numpy()

        def one_batch(idx, grads, _) -> torch.Tensor | None:
            keep = chosen[idx]
            if not keep.any():
                return None
            return (grads["pos"][keep] + grads[f"neg_{form.value}"][keep]).sum(0).detach().cpu()

        total = torch.zeros_like(theta).detach()
        # summed in batch order, as one process does: the same floating-point result under a launcher
        for part_sum in self._map_pair_gradients(one_batch, parts=("pos", f"neg_{form.value}")):
            if part_sum is not None:
                total += part_sum.to(total.device)
        return total

    def removal_edit(self, indices: Indices, form: NegForm | str | None = None) -> torch.Tensor:
        """Closed-form parameters without ``indices``: theta + H^-1 sum grad (Pos + Neg) (first order)."""
        if len(indices) == 0:
            return self._theta_hat().clone()
        step = self.inverse().apply(self.removal_gradient(indices, form).unsqueeze(0))[0]
        return (self._theta_hat() + step).detach()

    def to_model(self, theta: torch.Tensor | None = None) -> ContrastiveModel:
        """The model with the group set to ``theta`` (default: the fit)."""
        theta = self._theta_hat() if theta is None else theta
        return self.task.to_model(self.task.space.unflatten(theta))

    def edited_model(self, indices: Indices, form: NegForm | str | None = None) -> ContrastiveModel:
        """A loadable model without ``indices`` by the closed-form edit (save it with ``save_model``)."""
        return self.to_model(self.removal_edit(indices, form))


def save_model(model: ContrastiveModel, folder: str | Path) -> Path:
    """Save an (edited) model as a plain transformers folder, LoRA adapters merged, written atomically."""
    from mmlens.io import atomic_folder

    inner = model.model
    merged = inner.merge_and_unload() if hasattr(inner, "merge_and_unload") else inner
    plain = ContrastiveModel(merged, model.processor, tokenizer=model.tokenizer, image_processor=model.image_processor)
    with atomic_folder(folder) as tmp:
        plain.save_pretrained(tmp)
    return Path(folder)


__all__ = ["FitResult", "InfluenceAnalyzer", "PairScores", "TraceResult", "save_model"]
