"""Distribution-shift risk of multimodal LLMs: EMI, EMID and its bound (Oh et al., ICML 2025, arXiv 2502.00577).

Public API::

    # data
    ShiftSplit, load_split, load_splits, load_references, load_llava_bench_shift, load_released_results
    # embedders
    SentenceEmbedder (default: offline MiniLM), EmbeddingLayerTextEmbedder, HashingTextEmbedder,
    ClipImageEmbedder, fuse, text_embedder
    # estimators
    EstimatorConfig, MIEstimator, MIEnsemble, load_estimator, estimate_mi, club_from_conditional, GaussianTask
    # divergences
    rjsd, rjsd_test, RJSDResult, von_neumann_entropy
    # analysis
    ShiftConfig, analyse, analyse_embeddings, embed_splits, training_pairs, fit_estimator, emi, emi_replicates,
    emid_replicates, bound_value, correlation, split_correlation, ShiftResult, SplitEmbeddings
    # judge
    relative_preference, win_rate, parse_score_pair, judge_prompt, judge_split,
    CallableJudge, OpenAICompatibleJudge, LocalModelJudge
    # responses and report
    GenerateConfig, generate_world_splits, generate_responses, generate_for_splits, write_report
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ShiftSplit": "data", "load_split": "data", "load_splits": "data", "load_references": "data",
    "load_llava_bench_shift": "data", "load_released_results": "data", "llava_bench_family": "data",
    "SentenceEmbedder": "embed", "EmbeddingLayerTextEmbedder": "embed", "HashingTextEmbedder": "embed",
    "ClipImageEmbedder": "embed", "fuse": "embed", "text_embedder": "embed", "default_text_embedder": "embed",
    "minilm_path": "embed",
    "EstimatorConfig": "estimators", "MIEstimator": "estimators", "estimate_mi": "estimators",
    "club_from_conditional": "estimators", "GaussianTask": "estimators", "ESTIMATORS": "estimators",
    "rjsd": "divergence", "rjsd_test": "divergence", "RJSDResult": "divergence",
    "von_neumann_entropy": "divergence",
    "ShiftConfig": "analysis", "analyse": "analysis", "analyse_embeddings": "analysis",
    "embed_splits": "analysis", "fit_estimator": "analysis", "emi": "analysis", "bound_value": "analysis",
    "correlation": "analysis", "ShiftResult": "analysis", "SplitEmbeddings": "analysis", "BOUNDS": "analysis",
    "relative_preference": "judge", "win_rate": "judge", "parse_score_pair": "judge", "judge_prompt": "judge",
    "judge_split": "judge", "CallableJudge": "judge", "OpenAICompatibleJudge": "judge",
    "LocalModelJudge": "judge",
    "GenerateConfig": "generate", "generate_world_splits": "generate", "generate_responses": "generate", "generate_for_splits": "generate",
    "default_scenarios": "generate", "world_eval_set": "generate",
    "write_report": "report",
    "EstimatorKind": "options", "LogvarActivation": "options", "EstimatorData": "options", "Fusion": "options",
    "BoundKind": "options", "LogBase": "options", "Mixture": "options", "TermValues": "options",
    "ImageFeatureMode": "options", "EarlyStoppingSplit": "options", "Preset": "options",
    "MIEnsemble": "estimators", "load_estimator": "estimators",
    "training_pairs": "analysis", "emi_replicates": "analysis", "emid_replicates": "analysis",
    "split_correlation": "analysis",
    "reference_embedders": "embed", "lexical_embedder": "embed",
    "assign_language_control": "data", "llava_bench_conditions": "data",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"mmlens.shift.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'mmlens.shift' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
