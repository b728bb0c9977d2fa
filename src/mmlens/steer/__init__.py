"""Steering vision-language models (and text-only causal LMs) with concept and shift vectors.

Public API::

    # vectors: made, named source -> target, saved as safetensors with their provenance
    SteeringVector, VectorKind, ShiftReducer, coarse_vector, vector_from_labels, concept_vectors, finetuning_shift_vectors,
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
    # equal terms: one alpha rule on validation for steering and every baseline, the test read once, intervals
    AlphaRule, compare_arms, summarise, verdict, wilson_interval
    # report
    write_steering_report
"""

# The public names are listed in __init__.pyi; each submodule is imported on first use, so that importing the
# package (the CLI does) does not import torch and transformers.
import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
