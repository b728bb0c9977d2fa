"""The model layer: one interface over contrastive models, vision-language models and causal LMs.

Public API (imported lazily so that ``mmlens.models.tokenizers`` stays cheap to import)::

    load_model(spec, *, device="cpu", torch_dtype=None, expect=None)  # "zoo:NAME", a local dir, or a HF id
    ContrastiveModel, VisionLanguageModel, CausalLanguageModel
    contrastive_loss, per_pair_loss, LossKind, ParamGroup
    capture_outputs, add_to_output                          # forward hooks as context managers
    tiny_model(arch, *, seed=0), TINY_ARCHITECTURES
    train_word_tokenizer, make_llava_processor
"""

# The public names are listed in __init__.pyi; each submodule is imported on first use, so that importing the
# package (the CLI does) does not import torch and transformers.
import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
