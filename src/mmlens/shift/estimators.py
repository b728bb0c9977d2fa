"""Neural mutual-information estimators: CLUB (upper bound), InfoNCE and NWJ (lower bounds).

All three share one estimator class, :class:`MIEstimator` (sklearn-style ``fit`` / ``estimate`` / ``save`` /
``load``). Training uses a held-out split of the pairs with early stopping on the held-out objective, a fixed seed,
and records its provenance (data size, best epoch, losses) in ``history_``.

- **CLUB** (Cheng et al., ICML 2020, arXiv 2006.12013): a variational Gaussian q(y|x) = N(mu(x), diag sigma^2(x))
  trained by maximum likelihood; the estimate on N pairs is
  ``(1/N) sum_i sum_d [-(y_id - mu_d(x_i))^2 + (1/N) sum_j (y_jd - mu_d(x_i))^2] / (2 sigma_d^2(x_i))``.
  The default architecture is the reference code's (arXiv 2502.00577): mu = Linear-Tanh-Linear and
  log sigma^2 = Linear-Tanh-Linear-Tanh, i.e. log sigma^2 in (-1, 1). With the *true* conditional CLUB equals
  I(X;Y) + E_x KL(P_Y || P_{Y|x}), so it is an upper bound that stays loose even at the optimum.
- **InfoNCE** (van den Oord et al. 2018): ``mean_i [f(x_i,y_i) - logsumexp_j f(x_i,y_j)] + log B`` per batch of B;
  a lower bound capped at log B.
- **NWJ** (Nguyen, Wainwright, Jordan 2010; "f-GAN KL"/MINE-f): ``E_P[f] - e^{-1} E_{P_X x P_Y}[e^f]``.

The critic of InfoNCE and NWJ is separable with scalar heads, ``f(x,y) = g(x)^T h(y) + a(x) + b(y)``, so one batch
of B pairs costs 2B network evaluations and a B x B product (the concatenation critic costs B^2 evaluations).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmlens.errors import InputError
from mmlens.progress import progress_bar
from mmlens.shift.options import EstimatorKind, LogvarActivation
from mmlens.shift.settings import EstimatorConfig as EstimatorConfig

ESTIMATORS = tuple(EstimatorKind)


def as_matrix(a: Any, name: str) -> torch.Tensor:
    """A finite float32 [N, D] tensor from a numpy array / tensor / list, or an InputError saying what is wrong."""
    t = torch.as_tensor(np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float32))
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise InputError(f"{name} must be a [N, D] matrix, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise InputError(f"{name} is empty")
    if not torch.isfinite(t).all():
        raise InputError(f"{name} contains NaN or infinite values ({int((~torch.isfinite(t)).sum())} entries)")
    return t


def _group_split(groups: Any, n: int, val_fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(val, train) row indices with whole groups on one side; the held-out groups are drawn with ``gen``."""
    labels = [str(g) for g in (groups.tolist() if hasattr(groups, "tolist") else list(groups))]
    if len(labels) != n:
        raise InputError(f"groups must have one label per pair: {len(labels)} labels for {n} pairs")
    unique = sorted(set(labels))
    if len(unique) < 2:
        raise InputError("an early-stopping split by group needs at least 2 groups")
    order = torch.randperm(len(unique), generator=gen).tolist()
    n_val = min(len(unique) - 1, max(1, int(round(len(unique) * val_fraction))))
    held = {unique[i] for i in order[:n_val]}
    mask = torch.tensor([g in held for g in labels])
    return torch.nonzero(mask).flatten(), torch.nonzero(~mask).flatten()


def _pair(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = as_matrix(x, "x"), as_matrix(y, "y")
    if len(x) != len(y):
        raise InputError(f"x and y must have the same number of rows, got {len(x)} and {len(y)}")
    return x, y


def club_from_conditional(mu: torch.Tensor, logvar: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CLUB's estimate for a given Gaussian conditional: ``mu``, ``logvar`` [N, D] at x_i and targets ``y`` [N, D].

    Computed in O(N D) with ``mean_j (y_j - mu_i)^2 = mean_j y_j^2 - 2 mu_i ybar + mu_i^2`` (no N x N matrix), in
    float64: the expansion cancels, and in float32 it drifts ~1e-5 from the direct N x N form on 768-d inputs.
    """
    mu, logvar, y = mu.double(), logvar.double(), y.double()
    inv = torch.exp(-logvar)
    positive = -((y - mu) ** 2) * inv / 2.0
    y_mean = y.mean(0, keepdim=True)
    y2_mean = (y**2).mean(0, keepdim=True)
    negative = -(y2_mean - 2 * mu * y_mean + mu**2) * inv / 2.0
    return (positive.sum(-1) - negative.sum(-1)).mean()


class _CLUBNet(nn.Module):
    def __init__(self, dx: int, dy: int, hidden: int, logvar_activation: LogvarActivation) -> None:
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(dx, hidden), nn.Tanh(), nn.Linear(hidden, dy))
        layers: list[nn.Module] = [nn.Linear(dx, hidden), nn.Tanh(), nn.Linear(hidden, dy)]
        if logvar_activation is LogvarActivation.TANH:
            layers.append(nn.Tanh())
        self.logvar = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu(x), self.logvar(x)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Negative Gaussian log-likelihood (without constants), the reference code's training loss."""
        mu, logvar = self(x)
        return (((y - mu) ** 2) * torch.exp(-logvar) + logvar).sum(-1).mean()

    def estimate(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mu, logvar = self(x)
        return club_from_conditional(mu, logvar, y)


class _SeparableCritic(nn.Module):
    """f(x, y) = g(x)^T h(y) + a(x) + b(y), evaluated on all B x B pairs of a batch."""

    def __init__(self, dx: int, dy: int, hidden: int, embed_dim: int) -> None:
        super().__init__()
        self.g = nn.Sequential(
            nn.Linear(dx, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim + 1)
        )
        self.h = nn.Sequential(
            nn.Linear(dy, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim + 1)
        )
        # linear skips: the bilinear part x^T W y of a Gaussian critic is then easy to represent
        self.g_lin = nn.Linear(dx, embed_dim + 1, bias=False)
        self.h_lin = nn.Linear(dy, embed_dim + 1, bias=False)
        with torch.no_grad():  # small initial scores: NWJ's exp term is not shift-invariant and blows up otherwise
            for layer in (self.g[-1], self.h[-1], self.g_lin, self.h_lin):
                layer.weight.mul_(0.1)

    def scores(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gx, hy = self.g(x) + self.g_lin(x), self.h(y) + self.h_lin(y)
        return gx[:, :-1] @ hy[:, :-1].T + gx[:, -1:] + hy[:, -1][None, :]


def _infonce(scores: torch.Tensor) -> torch.Tensor:
    n = scores.shape[0]
    return (scores.diagonal() - torch.logsumexp(scores, dim=1)).mean() + math.log(n)


def _nwj(scores: torch.Tensor) -> torch.Tensor:
    n = scores.shape[0]
    joint = scores.diagonal().mean()
    off = ~torch.eye(n, dtype=torch.bool, device=scores.device)
    # E_q[e^{f-1}] over the off-diagonal (product-of-marginals) pairs, in log space for stability
    log_marg = torch.logsumexp(scores[off] - 1.0, dim=0) - math.log(off.sum().item())
    return joint - log_marg.exp()


class MIEstimator:
    """A mutual-information estimator I(X; Y) trained on pairs (x_i, y_i).

    >>> est = MIEstimator(EstimatorConfig(kind="club")).fit(x, y)
    >>> est.estimate(x_split, y_split)   # float, nats
    >>> est.save("club.pt"); MIEstimator.load("club.pt")
    """

    def __init__(self, config: EstimatorConfig = EstimatorConfig()) -> None:
        self.config = config
        self.net_: nn.Module | None = None
        self.dims_: tuple[int, int] | None = None
        self.history_: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------- build
    def _build(self, dx: int, dy: int) -> nn.Module:
        c = self.config
        if c.kind is EstimatorKind.CLUB:
            return _CLUBNet(dx, dy, c.hidden, c.logvar_activation)
        return _SeparableCritic(dx, dy, c.hidden, c.embed_dim)

    def _objective(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Quantity to minimise on one batch."""
        if self.config.kind is EstimatorKind.CLUB:
            return net.loss(x, y)
        scores = net.scores(x, y)
        return -(_infonce(scores) if self.config.kind is EstimatorKind.INFONCE else _nwj(scores))

    # --------------------------------------------------------------------------------------------- fit
    def fit(self, x: Any, y: Any, *, groups: Any = None, progress: bool = False) -> MIEstimator:
        """Train on the pairs (x_i, y_i); a ``val_fraction`` of them is held out for early stopping.

        ``groups`` (one label per pair, e.g. the query's item id): the held-out part is a ``val_fraction`` of the
        *groups*, so pairs of one query never sit on both sides of the early-stopping split (pairs of one query
        are near-duplicates of each other, and a split by pair would let the held-out objective leak)."""
        x, y = _pair(x, y)
        c = self.config
        n = len(x)
        if n < 8:
            raise InputError(f"need at least 8 pairs to train an MI estimator, got {n}")
        gen = torch.Generator().manual_seed(c.seed)
        if groups is None:
            perm = torch.randperm(n, generator=gen)
            n_val = max(2, int(round(n * c.val_fraction)))
            val_idx, train_idx = perm[:n_val], perm[n_val:]
        else:
            val_idx, train_idx = _group_split(groups, n, c.val_fraction, gen)
        xt, yt, xv, yv = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
        # fork_rng: the initial weights depend only on the seed, and the caller's global RNG is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            net = self._build(x.shape[1], y.shape[1])
        opt = torch.optim.Adam(net.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        batch = min(c.batch_size, len(xt))
        best, best_state, best_epoch, bad, step = math.inf, None, -1, 0, 0
        train_curve, val_curve = [], []
        epochs = range(c.max_epochs)
        epochs = progress_bar(epochs, desc=f"train {c.kind}", enabled=progress)
        for epoch in epochs:
            net.train()
            order = torch.randperm(len(xt), generator=gen)
            losses = []
            for start in range(0, len(xt) - batch + 1, batch):
                idx = order[start : start + batch]
                loss = self._objective(net, xt[idx], yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
                step += 1
            val = self._val_objective(net, xv, yv)
            train_curve.append(float(np.mean(losses)))
            val_curve.append(val)
            if val < best - 1e-6:
                best, best_epoch, bad = val, epoch, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                bad += 1
            if bad >= c.patience or step >= c.max_steps:
                break
        if best_state is None:
            raise InputError(
                f"{c.kind} estimator training diverged (held-out objective never finite): "
                "standardise x and y, or lower the learning rate"
            )
        net.load_state_dict(best_state)
        net.eval()
        self.net_, self.dims_ = net, (x.shape[1], y.shape[1])
        self.history_ = {
            "n_pairs": n,
            "n_train": len(xt),
            "n_val": len(xv),
            "early_stopping_split": "pair" if groups is None else "group",
            "epochs": len(val_curve),
            "steps": step,
            "best_epoch": best_epoch,
            "best_val_objective": best,
            "train_objective": train_curve,
            "val_objective": val_curve,
            "seed": c.seed,
        }
        return self

    @torch.no_grad()
    def _val_objective(self, net: nn.Module, xv: torch.Tensor, yv: torch.Tensor) -> float:
        net.eval()
        if self.config.kind is EstimatorKind.CLUB:
            return net.loss(xv, yv).item()
        return -self._batched_bound(net, xv, yv)

    def _batched_bound(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        """InfoNCE/NWJ averaged over consecutive eval batches (the last partial batch is merged)."""
        b = min(self.config.eval_batch_size, len(x))
        starts = list(range(0, len(x) - b + 1, b)) or [0]
        values, weights = [], []
        for k, s in enumerate(starts):
            e = len(x) if k == len(starts) - 1 else s + b
            scores = net.scores(x[s:e], y[s:e])
            values.append((_infonce(scores) if self.config.kind is EstimatorKind.INFONCE else _nwj(scores)).item())
            weights.append(e - s)
        return float(np.average(values, weights=weights))

    # ------------------------------------------------------------------------------------------ score
    def _fitted_net(self, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
        if self.net_ is None:
            raise InputError("this MIEstimator is not fitted; call fit(x, y) or MIEstimator.load(path)")
        if (x.shape[1], y.shape[1]) != self.dims_:
            raise InputError(f"estimator was fitted on dimensions {self.dims_}, got {(x.shape[1], y.shape[1])}")
        return self.net_

    @torch.no_grad()
    def estimate(self, x: Any, y: Any) -> float:
        """I(X; Y) in nats on these pairs (CLUB: on the whole set at once, as the reference code does)."""
        x, y = _pair(x, y)
        net = self._fitted_net(x, y)
        if len(x) < 2:
            raise InputError("need at least 2 pairs to estimate mutual information")
        if self.config.kind is EstimatorKind.CLUB:
            return float(net.estimate(x, y))
        return self._batched_bound(net, x, y)

    @torch.no_grad()
    def conditional(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """CLUB only: (mu, log sigma^2) of q(y|x)."""
        if self.config.kind is not EstimatorKind.CLUB:
            raise InputError("conditional() is defined for CLUB only")
        x = as_matrix(x, "x")
        if self.net_ is None:
            raise InputError("this MIEstimator is not fitted")
        mu, logvar = self.net_(x)
        return mu.numpy(), logvar.numpy()

    # -------------------------------------------------------------------------------------- save/load
    def save(self, path: str | os.PathLike) -> Path:
        """Write weights, config and training history to one file (atomically)."""
        if self.net_ is None or self.dims_ is None:
            raise InputError("cannot save an unfitted MIEstimator")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        # plain strings in the config: a weights_only load refuses enum classes
        config = {k: str(v) if isinstance(v, str) else v for k, v in asdict(self.config).items()}
        torch.save(
            {
                "config": config,
                "dims": list(self.dims_),
                "history": json.loads(json.dumps(self.history_)),
                "state_dict": self.net_.state_dict(),
            },
            tmp,
        )
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> MIEstimator:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"estimator file not found: {path}")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input
            raise InputError(f"cannot read estimator file {path}: {str(err).splitlines()[0]}") from None
        if isinstance(blob, dict) and "ensemble" in blob:
            raise InputError(
                f"{path} holds an ensemble of {len(blob['ensemble'])} estimators: load it with "
                "MIEnsemble.load (or load_estimator)"
            )
        if _is_official_club(blob):
            return cls._from_official(blob, path)
        try:
            est = cls(EstimatorConfig(**blob["config"]))
            est.dims_ = tuple(blob["dims"])
            est.net_ = est._build(*est.dims_)
            est.net_.load_state_dict(blob["state_dict"])
            est.history_ = blob["history"]
        except (KeyError, TypeError, RuntimeError) as err:  # a torch file, but not one MIEstimator.save wrote
            raise InputError(
                f"{path} is not an mmlens estimator file ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''})"
            ) from None
        est.net_.eval()
        return est

    @classmethod
    def _from_official(cls, state: dict[str, torch.Tensor], path: Path) -> MIEstimator:
        """The EMI authors' ``CLUB_global.pt``: a bare state dict with ``p_mu.{0,2}.*`` / ``p_logvar.{0,2}.*``,
        the same network as mmlens's reference CLUB (``mu`` / ``logvar`` heads, Tanh on log sigma^2)."""
        try:
            hidden, dx = state["p_mu.0.weight"].shape
            dy = state["p_mu.2.weight"].shape[0]
            est = cls(
                EstimatorConfig(kind=EstimatorKind.CLUB, hidden=int(hidden), logvar_activation=LogvarActivation.TANH)
            )
            est.dims_ = (int(dx), int(dy))
            est.net_ = est._build(*est.dims_)
            renamed = {
                ("mu." + k[len("p_mu.") :]) if k.startswith("p_mu.") else ("logvar." + k[len("p_logvar.") :]): v
                for k, v in state.items()
            }
            est.net_.load_state_dict(renamed)
        except (KeyError, ValueError, RuntimeError) as err:
            raise InputError(
                f"{path} looks like an official CLUB checkpoint (p_mu.*/p_logvar.*) but does not fit "
                f"its architecture: {str(err).splitlines()[0]}"
            ) from None
        est.net_.eval()
        est.history_ = {
            "source": "official CLUB checkpoint (p_mu/p_logvar state dict)",
            "path": str(path),
            "dims": [int(dx), int(dy)],
            "hidden": int(hidden),
        }
        return est


_OFFICIAL_KEYS = {
    f"{head}.{layer}.{p}" for head in ("p_mu", "p_logvar") for layer in (0, 2) for p in ("weight", "bias")
}


def _is_official_club(blob: Any) -> bool:
    """A bare state dict with exactly the keys of the EMI authors' CLUB (``p_mu.*`` / ``p_logvar.*``)."""
    return isinstance(blob, dict) and set(blob) == _OFFICIAL_KEYS


class MIEnsemble:
    """Several :class:`MIEstimator` trained with different seeds (initialisation, early-stopping split and data
    order); ``estimate`` is their mean and ``estimates`` the per-member values, whose spread the analysis puts
    into every interval. One member (e.g. a loaded checkpoint) is a valid ensemble without seed spread."""

    def __init__(self, members: list[MIEstimator]) -> None:
        if not members:
            raise InputError("an estimator ensemble needs at least one member")
        if any(m.dims_ is None for m in members):
            raise InputError("every ensemble member must be fitted (or loaded) first")
        dims = {m.dims_ for m in members}
        if len(dims) != 1:
            raise InputError(f"ensemble members were fitted on different dimensions: {sorted(map(str, dims))}")
        self.members = list(members)

    @classmethod
    def fit(
        cls,
        x: Any,
        y: Any,
        config: EstimatorConfig = EstimatorConfig(),
        *,
        n_members: int = 5,
        groups: Any = None,
        progress: bool = False,
    ) -> MIEnsemble:
        if n_members < 1:
            raise InputError(f"n_members must be >= 1, got {n_members}")
        members = []
        seeds = range(config.seed, config.seed + n_members)
        seeds = progress_bar(seeds, desc="estimator seeds", enabled=progress)
        for s in seeds:
            members.append(MIEstimator(replace(config, seed=s)).fit(x, y, groups=groups))
        return cls(members)

    @property
    def config(self) -> EstimatorConfig:
        return self.members[0].config

    @property
    def dims_(self) -> tuple[int, int] | None:
        return self.members[0].dims_

    @property
    def history_(self) -> dict[str, Any]:
        first = self.members[0].history_
        return {
            **{k: v for k, v in first.items() if k not in ("seed",)},
            "n_members": len(self.members),
            "seeds": [m.history_.get("seed") for m in self.members],
            "best_epochs": [m.history_.get("best_epoch") for m in self.members],
            "members": [m.history_ for m in self.members],
        }

    def __len__(self) -> int:
        return len(self.members)

    def estimates(self, x: Any, y: Any) -> np.ndarray:
        """One estimate per member (nats)."""
        return np.array([m.estimate(x, y) for m in self.members])

    def estimate(self, x: Any, y: Any) -> float:
        return float(self.estimates(x, y).mean())

    def save(self, path: str | os.PathLike) -> Path:
        """All members in one file (atomically); a one-member ensemble is saved as a plain estimator file."""
        if len(self.members) == 1:
            return self.members[0].save(path)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        blobs = []
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            for k, m in enumerate(self.members):
                blobs.append(torch.load(m.save(Path(tmp) / f"{k}.pt"), map_location="cpu", weights_only=True))
        tmp_path = path.with_name(f".{path.name}.tmp")
        torch.save({"ensemble": blobs}, tmp_path)
        tmp_path.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> MIEnsemble:
        """An ensemble file, a single mmlens estimator file or the official ``CLUB_global.pt``."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"estimator file not found: {path}")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input
            raise InputError(f"cannot read estimator file {path}: {str(err).splitlines()[0]}") from None
        if not (isinstance(blob, dict) and "ensemble" in blob):
            return cls([MIEstimator.load(path)])
        members = []
        with tempfile.TemporaryDirectory() as tmp:
            for k, b in enumerate(blob["ensemble"]):
                torch.save(b, Path(tmp) / f"{k}.pt")
                members.append(MIEstimator.load(Path(tmp) / f"{k}.pt"))
        return cls(members)


def as_ensemble(estimator: MIEstimator | MIEnsemble) -> MIEnsemble:
    return estimator if isinstance(estimator, MIEnsemble) else MIEnsemble([estimator])


def load_estimator(path: str | os.PathLike) -> MIEnsemble:
    """Any estimator file mmlens reads (ensemble, single estimator, official CLUB checkpoint) as an ensemble."""
    return MIEnsemble.load(path)


def estimate_mi(
    x: Any, y: Any, config: EstimatorConfig = EstimatorConfig(), *, x_test: Any = None, y_test: Any = None
) -> float:
    """One call: fit on (x, y) and estimate on (x_test, y_test) if given, else on (x, y)."""
    est = MIEstimator(config).fit(x, y)
    if x_test is None:
        return est.estimate(x, y)
    return est.estimate(x_test, y_test)


@dataclass
class GaussianTask:
    """X ~ N(0, I_d), Y = rho X + sqrt(1 - rho^2) eps: I(X;Y) = -d/2 log(1 - rho^2) nats, known exactly.

    ``club_true_conditional`` is CLUB with q = p(y|x): tr(Sigma_eps^-1 A Sigma_X A^T) = d rho^2 / (1 - rho^2).
    """

    dim: int
    mi: float
    rho: float = field(init=False)

    def __post_init__(self) -> None:
        if self.dim < 1 or self.mi <= 0:
            raise InputError("GaussianTask needs dim >= 1 and mi > 0")
        self.rho = math.sqrt(1.0 - math.exp(-2.0 * self.mi / self.dim))

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, self.dim))
        y = self.rho * x + math.sqrt(1 - self.rho**2) * rng.standard_normal((n, self.dim))
        return x.astype(np.float32), y.astype(np.float32)

    @property
    def club_true_conditional(self) -> float:
        return self.dim * self.rho**2 / (1 - self.rho**2)

    def true_conditional(self, x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        mu = torch.as_tensor(self.rho * x, dtype=torch.float32)
        return mu, torch.full_like(mu, math.log(1 - self.rho**2))
