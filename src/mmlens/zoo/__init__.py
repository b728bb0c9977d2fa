"""The zoo: small models mmlens trains itself, reproducibly, on 2 CPU cores.

Models (in dependency order):

- ``digits-clip``: a ``CLIPModel`` trained from scratch on sklearn's handwritten digits with caption templates.
- ``mini-clip``: a ``CLIPModel`` trained from scratch on captions of the procedural world.
- ``mini-clip-noisy-random`` / ``mini-clip-noisy-confusable``: the same, trained end to end on pairs with injected
  misalignment (random or confusable-shape swaps), the injected flags saved beside the model (``noise_flags.json``).
- ``mini-llava``: a ``LlavaForConditionalGeneration`` whose vision tower starts from mini-clip's, trained on world
  captions and VQA with the world's co-occurrence bias on (so POPE adversarial < POPE random).
- ``mini-llava-colour``: mini-llava fine-tuned on colour-focused captions, with intermediate checkpoints
  (``checkpoints/step-N/``) for concept-drift analyses.
- ``mini-llava-swap``: mini-llava fine-tuned so that red and blue trade names, with the held-out list of answers that
  must move and must stay (``change_list.json``).
- ``mini-llava-prior`` (opt-in: built only when named): mini-llava built with a language prior (text-only decoder
  pretraining, projector alignment, instruction tuning, then a final phase on images whose partners beside their
  anchor are hidden), the ``prior`` diagnostics in its ``metrics.json``.

Built models are looked up in ``$MMLENS_HOME/zoo`` (local builds) first, then in the zoo shipped with the package
(``mmlens/zoo/shipped``, written by ``mmlens zoo ship``, verified against its manifest at load; see
:mod:`mmlens.zoo.shipping`).

Every model directory is a plain ``save_pretrained`` directory (model + processor) plus ``metrics.json`` (metrics,
training config, seconds, the ``WorldConfig`` used). Builds are atomic: a model is built in a temporary directory
and renamed into place only when complete.

>>> from mmlens import zoo
>>> zoo.build(["digits-clip"])            # doctest: +SKIP
>>> zoo.list_zoo()                        # doctest: +SKIP
"""

# The public names are listed in __init__.pyi; each submodule is imported on first use (the CLI imports the
# package without torch).
import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
