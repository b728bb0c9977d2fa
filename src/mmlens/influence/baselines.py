"""Baselines on the same pairs and model: CLIPScore, negCLIPLoss, LEMoN, and kronfluence EK-FAC (the peer library).

Every detection score here is oriented "higher = more likely misaligned".
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from mmlens.errors import InputError
from mmlens.influence.analyzer import InfluenceAnalyzer
from mmlens.influence.objective import pair_terms, similarity


def _embeddings(analyzer: InfluenceAnalyzer) -> tuple[torch.Tensor, torch.Tensor]:
    fit = analyzer.fitted
    if fit is None:
        raise InputError("the baselines read the fitted group: call analyzer.fit() first")
    with torch.no_grad():
        return analyzer.task.embed(analyzer.task.space.unflatten(fit.params), analyzer.encoded)


def clip_score(analyzer: InfluenceAnalyzer) -> np.ndarray:
    """Misalignment score from CLIPScore: minus the cosine of each pair under the fitted model."""
    img, txt = _embeddings(analyzer)
    return -(img * txt).sum(1).numpy()


def neg_clip_loss(analyzer: InfluenceAnalyzer) -> np.ndarray:
    """negCLIPLoss-style score: the pair's own contrastive loss Pos(n) in its recorded batch (no H^-1, no
    validation gradient; the ablation the ECIF spec asks for). Higher = worse aligned."""
    img, txt = _embeddings(analyzer)
    out = np.zeros(analyzer.n)
    task = analyzer.task
    for batch in analyzer.partition.batches:
        idx = torch.as_tensor(batch)
        sim = similarity(txt[idx], img[idx], task.logit_scale, task.logit_bias)
        out[np.asarray(batch)] = pair_terms(sim, task.loss_kind)["pos"].numpy()
    return out


@dataclass(frozen=True)
class LemonArguments:
    """LEMoN's fixed hyperparameters (arXiv 2407.18941): k neighbours, weights beta/gamma, temperatures tau1/tau2."""

    k: int = 30
    beta: float = 5.0
    gamma: float = 5.0
    tau1: float = 0.1
    tau2: float = 5.0


def lemon_score(image_emb: torch.Tensor, text_emb: torch.Tensor, args: LemonArguments = LemonArguments()) -> np.ndarray:
    """LEMoN: s = d_mm + beta s_n + gamma s_m with cosine distances d.

    d_mm = d(x_i, y_i); s_n = mean over the k image neighbours j of x_i of d(y_i, y_j) exp(-tau1 d(x_i, x_j));
    s_m = mean over the k text neighbours j of y_i of d(x_i, x_j) exp(-tau2 d(y_i, y_j)). Our reading of the paper
    with its fixed hyperparameters (no tuning on noisy labels). Higher = more likely misaligned.
    """
    x = torch.nn.functional.normalize(image_emb.double(), dim=1)
    y = torch.nn.functional.normalize(text_emb.double(), dim=1)
    n = len(x)
    k = min(args.k, n - 1)
    if k < 1:
        raise InputError("LEMoN needs at least 2 pairs")
    dx, dy = 1 - x @ x.T, 1 - y @ y.T
    eye = torch.eye(n, dtype=torch.bool)
    d_mm = 1 - (x * y).sum(1)
    nn_x = dx.masked_fill(eye, float("inf")).topk(k, largest=False).indices
    nn_y = dy.masked_fill(eye, float("inf")).topk(k, largest=False).indices
    rows = torch.arange(n).unsqueeze(1)
    s_n = (dy[rows, nn_x] * torch.exp(-args.tau1 * dx[rows, nn_x])).mean(1)
    s_m = (dx[rows, nn_y] * torch.exp(-args.tau2 * dy[rows, nn_y])).mean(1)
    return (d_mm + args.beta * s_n + args.gamma * s_m).numpy()


def lemon(analyzer: InfluenceAnalyzer, args: LemonArguments = LemonArguments()) -> np.ndarray:
    img, txt = _embeddings(analyzer)
    return lemon_score(img, txt, args)


def detection_metrics(is_noisy: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """AUROC, AUPRC and precision at k (k = number of noisy pairs) of a "higher = noisier" score."""
    is_noisy = np.asarray(is_noisy, dtype=bool)
    score = np.asarray(score, dtype=float)
    if not np.isfinite(score).all():
        raise InputError("detection scores contain NaN or inf")
    k = int(is_noisy.sum())
    if k == 0 or k == len(is_noisy):
        raise InputError("detection metrics need both noisy and clean pairs")
    top = np.argsort(-score, kind="stable")[:k]
    return {
        "auroc": round(float(roc_auc_score(is_noisy, score)), 4),
        "auprc": round(float(average_precision_score(is_noisy, score)), 4),
        "precision_at_k": round(float(is_noisy[top].mean()), 4),
    }


class KronfluencePeer:
    """kronfluence's EK-FAC influence run on the same fitted heads, batches and validation pairs (training pairs
    in the recorded partition, validation pairs in the measurement's seeded batches).

    kronfluence's per-sample gradients come from hooks on the summed batch loss, so they mix a pair's positive and
    negative roles (ECIF spec, section 6); that is the method as shipped. Works with :class:`HeadTask` only.
    Scores are mapped to this package's sign: ``delta_val_loss_if_removed = +pairwise score`` summed over the
    validation pairs (kronfluence scores are grad f^T (G + lambda)^-1 grad L_train: positive = helpful).
    """

    def __init__(self, analyzer: InfluenceAnalyzer, damping: float | None = None) -> None:
        from mmlens.influence.task import HeadTask

        if not isinstance(analyzer.task, HeadTask):
            raise InputError("the kronfluence peer runs on HeadTask (projection / LoRA-on-projection) only")
        self.analyzer, self.damping = analyzer, damping

    def _setup(self):
        import copy

        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments, ScoreArguments
        from kronfluence.task import Task

        an = self.analyzer
        task = an.task
        params = task.space.unflatten(an.fitted.params.float())

        class Heads(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.image = copy.deepcopy(task._modules["image"]).float()
                self.text = copy.deepcopy(task._modules["text"]).float()
                named = dict(self.named_parameters())
                with torch.no_grad():
                    for name, value in params.items():
                        tower, local = task._names[name]
                        named[f"{tower}.{local}"].copy_(value)
                for name, p in self.named_parameters():
                    p.requires_grad_(any(f"{task._names[k][0]}.{task._names[k][1]}" == name for k in params))

            def forward(self, img, txt):
                out_i, out_t = self.image(img), self.text(txt)
                out_i = out_i if isinstance(out_i, torch.Tensor) else out_i[0]
                out_t = out_t if isinstance(out_t, torch.Tensor) else out_t[0]
                return torch.nn.functional.normalize(out_i, dim=-1), torch.nn.functional.normalize(out_t, dim=-1)

        def summed_loss(batch, model):
            img, txt = model(batch[0], batch[1])
            sim = similarity(txt, img, task.logit_scale, task.logit_bias)
            return pair_terms(sim, task.loss_kind)["pos"].sum()

        model = Heads().eval()
        tracked = [
            name
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and any(p.requires_grad for p in m.parameters(recurse=False))
        ]

        class ContrastiveKfTask(Task):
            def compute_train_loss(self, batch, model, sample=False):
                return summed_loss(batch, model)

            def compute_measurement(self, batch, model):
                return summed_loss(batch, model)

            def get_influence_tracked_modules(self):
                return tracked

        kf_task = ContrastiveKfTask()
        model = prepare_model(model, kf_task)
        return model, kf_task, Analyzer, FactorArguments, ScoreArguments

    def scores(self, val_encoded: dict[str, torch.Tensor] | None) -> dict[str, np.ndarray]:
        """{"self": EK-FAC self-influence [N], "value": delta_val_loss_if_removed [N] (if val given)}."""
        an = self.analyzer
        model, kf_task, Analyzer, FactorArguments, ScoreArguments = self._setup()
        order = np.concatenate([np.asarray(b) for b in an.partition.batches])
        train = torch.utils.data.TensorDataset(an.encoded["image"][order].float(), an.encoded["text"][order].float())
        bsz = an.fit_args.batch_size
        out: dict[str, np.ndarray] = {}
        # kronfluence 1.0.1 constructs deprecated CUDA GradScalers even on CPU: silence only those warnings, here
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="kronfluence")
            kf = Analyzer("mmlens", model, kf_task, cpu=True, disable_tqdm=True, output_dir=tmp)
            kf.fit_all_factors(
                "ekfac",
                train,
                per_device_batch_size=bsz,
                factor_args=FactorArguments(strategy="ekfac", use_empirical_fisher=True),
                overwrite_output_dir=True,
            )
            score_args = ScoreArguments(damping_factor=self.damping)
            kf.compute_self_scores(
                "self",
                "ekfac",
                train,
                per_device_train_batch_size=bsz,
                score_args=score_args,
                overwrite_output_dir=True,
            )
            self_scores = kf.load_self_scores("self")["all_modules"].double().numpy()
            out["self"] = np.empty(an.n)
            out["self"][order] = self_scores
            if val_encoded is not None:
                # the validation pairs in the batches of ECIF's measurement L' (kronfluence's loader cuts its
                # batches in order): the contrastive loss depends on the batches, so both score the same L'
                n_val = len(val_encoded["image"])
                val_order = np.concatenate([np.asarray(b) for b in an.measurement_partition(n_val).batches])
                val = torch.utils.data.TensorDataset(
                    val_encoded["image"][val_order].float(), val_encoded["text"][val_order].float()
                )
                kf.compute_pairwise_scores(
                    "pairwise",
                    "ekfac",
                    val,
                    train,
                    per_device_query_batch_size=bsz,
                    per_device_train_batch_size=bsz,
                    score_args=score_args,
                    overwrite_output_dir=True,
                )
                pair = kf.load_pairwise_scores("pairwise")["all_modules"].double().numpy().sum(0)
                out["value"] = np.empty(an.n)
                out["value"][order] = pair
        return out


__all__ = [
    "KronfluencePeer",
    "LemonArguments",
    "clip_score",
    "detection_metrics",
    "lemon",
    "lemon_score",
    "neg_clip_loss",
]
