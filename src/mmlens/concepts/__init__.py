"""Concept dictionaries over hidden states, and what fine-tuning shifted (issue 5).

Capture activations at a token position through generation (:func:`capture_activations`), learn a dictionary of
concepts (:class:`ConceptDictionary`: k-means, semi-NMF, PCA, sparse dictionary learning, top-norm samples), ground
each concept in words (:class:`TextGrounder`) and images (:func:`top_samples`, :func:`attribute_purity`), and
compare two models (:func:`compare_models`: matching, shift vectors, recovery against baselines, alpha sweep;
:func:`concept_drift` over fine-tuning checkpoints).
"""

# The public names are listed in __init__.pyi; each submodule is imported on first use, so that importing the
# package (the CLI does) does not import torch and transformers.
import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
