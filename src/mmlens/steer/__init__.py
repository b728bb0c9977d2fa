"""Steering vision-language models (and text-only causal LMs) with concept and shift vectors.

Public API::

    # vectors: made, named source -> target, saved as safetensors with their provenance
    SteeringVector, VectorKind, ShiftReducer, coarse_vector, vector_from_labels, concept_vectors, shift_vectors,
    random_like, shuffled_vector, dictionary_matrix, save_vectors, load_vectors
    # from a model's own activations (capture of mmlens.concepts)
    capture_examples, answer_labels, vectors_from_capture
    # application: a context manager over one or more decoder layers, with position rules
    SteerPositions, SteerCondition, SteerConfig, steer, SteeringTrace, position_mask, logit_bias, logit_bias_direction,
    Steering, LogitBias
    # evaluation and selection
    VQAExample, FlipTarget, load_vqa_jsonl, normalise_answer, generate_answers, accuracy_by_type, steering_effect,
    evaluate_interventions, alpha_sweep, layer_sweep, sweep_with_baselines, choose_alpha, evaluate_vectors,
    SelectionScore, selection_score, Selected, select_vectors
    # report and benchmark
    write_report, SteerBenchConfig, steer_benchmark, caption_metrics
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SteeringVector": "vectors", "VectorKind": "vectors", "ShiftReducer": "vectors", "coarse_vector": "vectors",
    "vector_from_labels": "vectors", "concept_vectors": "vectors", "shift_vectors": "vectors",
    "random_like": "vectors", "shuffled_vector": "vectors", "dictionary_matrix": "vectors",
    "save_vectors": "vectors", "load_vectors": "vectors",
    "capture_examples": "build", "answer_labels": "build", "vectors_from_capture": "build",
    "SteerPositions": "apply", "SteerCondition": "apply", "SteerConfig": "apply", "steer": "apply", "SteeringTrace": "apply",
    "position_mask": "apply", "logit_bias": "apply", "logit_bias_direction": "apply", "Steering": "apply",
    "LogitBias": "apply",
    "VQAExample": "evaluate", "FlipTarget": "evaluate", "normalise_answer": "evaluate",
    "generate_answers": "evaluate", "accuracy_by_type": "evaluate", "steering_effect": "evaluate",
    "evaluate_interventions": "evaluate", "alpha_sweep": "evaluate", "layer_sweep": "evaluate",
    "SelectionScore": "evaluate", "selection_score": "evaluate", "Selected": "evaluate",
    "select_vectors": "evaluate", "sweep_with_baselines": "evaluate", "choose_alpha": "evaluate",
    "SweepKind": "evaluate",
    "evaluate_vectors": "evaluate",
    "load_vqa_jsonl": "data",
    "write_report": "report",
    "SteerBenchConfig": "bench", "steer_benchmark": "bench", "caption_metrics": "bench",
}

__all__ = [
    "FlipTarget",
    "LogitBias",
    "Selected",
    "SelectionScore",
    "ShiftReducer",
    "SteerBenchConfig",
    "SteerCondition",
    "SteerConfig",
    "SteerPositions",
    "Steering",
    "SteeringTrace",
    "SteeringVector",
    "VQAExample",
    "VectorKind",
    "accuracy_by_type",
    "alpha_sweep",
    "answer_labels",
    "caption_metrics",
    "capture_examples",
    "choose_alpha",
    "coarse_vector",
    "concept_vectors",
    "dictionary_matrix",
    "evaluate_interventions",
    "evaluate_vectors",
    "generate_answers",
    "layer_sweep",
    "load_vectors",
    "load_vqa_jsonl",
    "logit_bias",
    "logit_bias_direction",
    "normalise_answer",
    "position_mask",
    "random_like",
    "save_vectors",
    "select_vectors",
    "selection_score",
    "shift_vectors",
    "shuffled_vector",
    "steer",
    "steer_benchmark",
    "steering_effect",
    "sweep_with_baselines",
    "SweepKind",
    "vector_from_labels",
    "vectors_from_capture",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"mmlens.steer.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'mmlens.steer' has no attribute {name!r}")
