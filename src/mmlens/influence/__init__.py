"""Influence of training pairs on contrastive models: ECIF (Hu et al., arXiv 2411.11667) with role-separated terms.

Sign convention: every score named ``delta_val_loss_if_removed`` (or ``delta_test_loss_if_removed``) is the
predicted change of the summed validation (test) loss if the pair were removed from training. Negative = harmful
pair, positive = helpful pair.

Public API::

    # arguments and choices
    FitArguments, InfluenceArguments, NegForm, Role, HessianSolver, Relative, NoiseKind, ParamGroup
    # data
    PairData, BatchPartition, load_pairs, inject_noise, NoisyPairs
    # tasks (how a parameter group maps pairs to embeddings) and the analyzer
    ContrastiveTask, HeadTask, ModelTask, attach_lora, InfluenceAnalyzer, FitResult, PairScores, TraceResult,
    save_model
    # baselines and metrics
    clip_score, neg_clip_loss, lemon_score, KronfluencePeer, detection_metrics
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FitArguments": "config", "InfluenceArguments": "config", "NegForm": "config", "Role": "config",
    "HessianSolver": "config", "Relative": "config", "NoiseKind": "config", "ParamGroup": "config",
    "PairData": "data", "BatchPartition": "data", "load_pairs": "data", "inject_noise": "data",
    "NoisyPairs": "data",
    "ContrastiveTask": "task", "HeadTask": "task", "ModelTask": "task", "attach_lora": "task",
    "InfluenceAnalyzer": "analyzer", "FitResult": "analyzer", "PairScores": "analyzer", "TraceResult": "analyzer",
    "save_model": "analyzer",
    "clip_score": "baselines", "neg_clip_loss": "baselines", "lemon_score": "baselines",
    "KronfluencePeer": "baselines", "detection_metrics": "baselines",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"mmlens.influence.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'mmlens.influence' has no attribute {name!r}")


__all__ = list(_EXPORTS)
