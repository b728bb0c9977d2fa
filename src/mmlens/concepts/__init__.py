"""Concept dictionaries over hidden states, and what fine-tuning shifted (issue 5).

Capture activations at a token position through generation (:func:`capture_activations`), learn a dictionary of
concepts (:class:`ConceptDictionary`: k-means, semi-NMF, PCA, sparse dictionary learning, top-norm samples), ground
each concept in words (:class:`TextGrounder`) and images (:func:`top_samples`, :func:`attribute_purity`), and
compare two models (:func:`compare_models`: matching, shift vectors, recovery against baselines, alpha sweep;
:func:`concept_drift` over fine-tuning checkpoints).
"""

from mmlens.concepts.capture import (
    CaptureConfig,
    CaptureResult,
    PositionKind,
    PositionRule,
    capture_activations,
    common_samples,
    layer_key,
    load_capture,
    record_emitters,
)
from mmlens.concepts.compare import (
    CompareConfig,
    Drift,
    Recovery,
    ShiftAnalysis,
    Shifts,
    ShiftStatistic,
    compare_models,
    concept_drift,
    match_concepts,
    recovery,
    shift_vectors,
    split_half_recovery,
)
from mmlens.concepts.decompose import ConceptDictionary, DecomposerConfig, DecomposerKind, load_decomposer
from mmlens.concepts.grounding import (
    DEFAULT_STOP_WORDS,
    TextGrounder,
    TextGroundingConfig,
    attribute_purity,
    random_purity,
    top_samples,
)
from mmlens.concepts.metrics import disentanglement, mas_overlap, mean_t_overlap, t_overlap

__all__ = [
    "CaptureConfig", "CaptureResult", "PositionKind", "PositionRule", "capture_activations", "common_samples",
    "layer_key", "load_capture", "record_emitters",
    "CompareConfig", "Drift", "Recovery", "ShiftAnalysis", "Shifts", "ShiftStatistic", "compare_models",
    "concept_drift", "match_concepts", "recovery", "shift_vectors", "split_half_recovery",
    "ConceptDictionary", "DecomposerConfig", "DecomposerKind", "load_decomposer",
    "DEFAULT_STOP_WORDS", "TextGrounder", "TextGroundingConfig", "attribute_purity", "random_purity", "top_samples",
    "disentanglement", "mas_overlap", "mean_t_overlap", "t_overlap",
]
