"""Preference alignment against hallucination: BDHS preference pairs, offline / online / mixed DPO through TRL,
and the hallucination metrics (POPE, CHAIR with recall, image-dependence gap).

>>> from mmlens.align import bdhs_pairs, BDHSConfig, train_dpo, DPOSettings
>>> pairs, stats = bdhs_pairs(vlm, examples, BDHSConfig(rho=0.99))       # doctest: +SKIP
>>> aligned, log = train_dpo(vlm, pairs, DPOSettings(steps=200))          # doctest: +SKIP

Spec: ``docs/methods/preference-alignment.md`` (arXiv 2407.02477). Docs: ``docs/align.md``.
"""

# The public names are listed in __init__.pyi; each submodule is imported on first use, so that importing the
# package (the CLI does) does not import torch and transformers.
import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
