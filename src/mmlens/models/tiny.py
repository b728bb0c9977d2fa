"""Tiny random models of the real transformers classes, built offline, for tests and examples.

Each factory builds the model from a tiny config (hidden 32, 1-2 layers), a word-level tokenizer trained on
:data:`TINY_CORPUS` and a real processor of the family, and wraps them in the adapter that ``load_model`` would
return for a real checkpoint of the same class. ``adapter.save_pretrained(path)`` + ``load_model(path)`` round-trips.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
from transformers import (
    BertConfig,
    CLIPConfig,
    CLIPModel,
    CLIPProcessor,
    CLIPVisionConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    SiglipConfig,
    SiglipModel,
    SiglipProcessor,
    VisionTextDualEncoderConfig,
    VisionTextDualEncoderModel,
    VisionTextDualEncoderProcessor,
)
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from mmlens.errors import ModelLoadError
from mmlens.models.contrastive import ContrastiveModel
from mmlens.models.generative import CausalLanguageModel, VisionLanguageModel
from mmlens.models.processors import Qwen2_5_VLImageOnlyProcessor, Qwen2VLImageOnlyProcessor
from mmlens.models.tokenizers import (
    IMAGE_TOKEN,
    make_chat_template,
    make_image_processor,
    make_llava_processor,
    train_word_tokenizer,
)

#: A few sentences in the style of the procedural world; every tiny tokenizer is trained on these.
TINY_CORPUS: tuple[str, ...] = (
    "a photo of a red square on the left.",
    "a photo of a blue circle on the right.",
    "a green triangle in the middle of a white background.",
    "what colour is the shape? the shape is red.",
    "how many objects are there? there are two objects.",
    "is there a yellow star in the image? yes, there is.",
    "describe the image. a small purple circle above a large orange square.",
    "no, there is no dog in the picture.",
    "answer en where is the cat? the cat is below the box.",
    "caption en a black and white striped pattern.",
)

_SMALL = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2)
IMAGE_SIZE, PATCH_SIZE = 32, 8


def _llama_text(tok, *, layers: int = 2, **extra) -> dict:
    return dict(
        model_type="llama",
        vocab_size=len(tok),
        num_hidden_layers=layers,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
        **_SMALL,
        **extra,
    )


def _clip_vision(**extra) -> dict:
    return dict(num_hidden_layers=1, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, **_SMALL, **extra)


def _clip() -> ContrastiveModel:
    tok = train_word_tokenizer(TINY_CORPUS, extra_special_tokens=(), chat_template=None, add_bos_eos=True)
    tok.padding_side = "right"  # CLIP's text tower uses absolute positions from 0
    text = dict(
        vocab_size=len(tok),
        num_hidden_layers=1,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **_SMALL,
    )
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=_clip_vision(), projection_dim=16))
    return ContrastiveModel(model, CLIPProcessor(image_processor=make_image_processor(IMAGE_SIZE), tokenizer=tok))


def _siglip() -> ContrastiveModel:
    tok = train_word_tokenizer(TINY_CORPUS, extra_special_tokens=(), chat_template=None, add_bos_eos=True)
    tok.padding_side = "right"
    # SigLIP pools the last position and was trained with padding="max_length": keep max_length small here.
    text = dict(
        vocab_size=len(tok),
        num_hidden_layers=1,
        max_position_embeddings=24,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        projection_size=32,
        **_SMALL,
    )
    vision = dict(num_hidden_layers=1, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, **_SMALL)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    improc = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return ContrastiveModel(model, SiglipProcessor(image_processor=improc, tokenizer=tok))


def _dual_encoder() -> ContrastiveModel:
    tok = train_word_tokenizer(TINY_CORPUS, extra_special_tokens=(), chat_template=None, add_bos_eos=True)
    tok.padding_side = "right"
    vision = CLIPVisionConfig(**_clip_vision())
    text = BertConfig(
        vocab_size=len(tok), num_hidden_layers=1, max_position_embeddings=64, pad_token_id=tok.pad_token_id, **_SMALL
    )
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vision, text, projection_dim=16)
    model = VisionTextDualEncoderModel(config=config)
    proc = VisionTextDualEncoderProcessor(image_processor=make_image_processor(IMAGE_SIZE), tokenizer=tok)
    return ContrastiveModel(model, proc)


def _llava() -> VisionLanguageModel:
    tok = train_word_tokenizer(TINY_CORPUS)
    proc = make_llava_processor(tok, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", **_clip_vision()),
        text_config=_llama_text(tok),
        image_token_id=proc.image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        pad_token_id=tok.pad_token_id,
    )
    return VisionLanguageModel(LlavaForConditionalGeneration(config), proc)


def _llava_next() -> VisionLanguageModel:
    tok = train_word_tokenizer(TINY_CORPUS)
    pinpoints = [[IMAGE_SIZE, IMAGE_SIZE], [IMAGE_SIZE, 2 * IMAGE_SIZE], [2 * IMAGE_SIZE, IMAGE_SIZE]]
    improc = LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=pinpoints,
    )
    proc = LlavaNextProcessor(
        image_processor=improc,
        tokenizer=tok,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tok.chat_template,
        image_token=IMAGE_TOKEN,
    )
    config = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", **_clip_vision()),
        text_config=_llama_text(tok),
        image_token_id=proc.image_token_id,
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        pad_token_id=tok.pad_token_id,
    )
    return VisionLanguageModel(LlavaNextForConditionalGeneration(config), proc)


_QWEN_SPECIALS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def _qwen_common(tok):
    # Qwen2-VL's "patch" is 14 px and 2x2 patches merge into one token; here 4 px patches, so a 32 px image
    # gives 8x8 patches -> 16 image tokens.
    improc = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32}, patch_size=4, temporal_patch_size=2, merge_size=2
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    text = _llama_text(tok, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4})
    text.pop("model_type")
    return improc, ids, text


def _qwen2_vl() -> VisionLanguageModel:
    tok = train_word_tokenizer(
        TINY_CORPUS,
        extra_special_tokens=_QWEN_SPECIALS,
        chat_template=make_chat_template("<|vision_start|><|image_pad|><|vision_end|>"),
    )
    improc, ids, text = _qwen_common(tok)
    vision = dict(
        depth=1, embed_dim=32, hidden_size=32, num_heads=2, patch_size=4, spatial_merge_size=2, temporal_patch_size=2
    )
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    proc = Qwen2VLImageOnlyProcessor(image_processor=improc, tokenizer=tok, chat_template=tok.chat_template)
    return VisionLanguageModel(Qwen2VLForConditionalGeneration(config), proc)


def _qwen2_5_vl() -> VisionLanguageModel:
    tok = train_word_tokenizer(
        TINY_CORPUS,
        extra_special_tokens=_QWEN_SPECIALS,
        chat_template=make_chat_template("<|vision_start|><|image_pad|><|vision_end|>"),
    )
    improc, ids, text = _qwen_common(tok)
    vision = dict(
        depth=1,
        hidden_size=32,
        intermediate_size=64,
        out_hidden_size=32,
        num_heads=2,
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=16,
        fullatt_block_indexes=[0],
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    proc = Qwen2_5_VLImageOnlyProcessor(image_processor=improc, tokenizer=tok, chat_template=tok.chat_template)
    return VisionLanguageModel(Qwen2_5_VLForConditionalGeneration(config), proc)


def _idefics3() -> VisionLanguageModel:
    # The processor writes tile markers <row_i_col_j>, <fake_token_around_image> and <global-img>: all must be
    # single tokens of the vocabulary.
    tiles = tuple(f"<row_{i}_col_{j}>" for i in range(1, 5) for j in range(1, 5))
    specials = (IMAGE_TOKEN, "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", *tiles)
    tok = train_word_tokenizer(TINY_CORPUS, extra_special_tokens=specials)
    # Images are resized so the longest edge is <= 2 tiles, then split into 32 px tiles plus a global view.
    improc = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE}, do_image_splitting=True
    )
    scale = 2
    seq_len = (IMAGE_SIZE // PATCH_SIZE) ** 2 // scale**2
    proc = Idefics3Processor(
        image_processor=improc, tokenizer=tok, image_seq_len=seq_len, chat_template=tok.chat_template
    )
    vision = dict(num_hidden_layers=1, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, **_SMALL)
    text = _llama_text(tok)
    config = Idefics3Config(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        scale_factor=scale,
        pad_token_id=tok.pad_token_id,
    )
    return VisionLanguageModel(Idefics3ForConditionalGeneration(config), proc)


def _paligemma() -> VisionLanguageModel:
    tok = train_word_tokenizer(TINY_CORPUS, chat_template=None)
    improc = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    improc.image_seq_length = (IMAGE_SIZE // PATCH_SIZE) ** 2
    proc = PaliGemmaProcessor(image_processor=improc, tokenizer=tok)  # adds <loc>/<seg> tokens to the tokenizer
    vision = dict(
        model_type="siglip_vision_model",
        num_hidden_layers=1,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=32,
        **_SMALL,
    )
    text = dict(
        model_type="gemma",
        vocab_size=len(tok),
        num_hidden_layers=2,
        num_key_value_heads=1,
        head_dim=16,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **_SMALL,
    )
    config = PaliGemmaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=proc.image_token_id,
        projection_dim=32,
        hidden_size=32,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
    )
    return VisionLanguageModel(PaliGemmaForConditionalGeneration(config), proc)


def _llama() -> CausalLanguageModel:
    tok = train_word_tokenizer(TINY_CORPUS, extra_special_tokens=())
    return CausalLanguageModel(
        LlamaForCausalLM(LlamaConfig(**{k: v for k, v in _llama_text(tok).items() if k != "model_type"})), tok
    )


_FACTORIES: Mapping[str, Callable[[], ContrastiveModel | VisionLanguageModel | CausalLanguageModel]] = MappingProxyType(
    {
        "clip": _clip,
        "siglip": _siglip,
        "vision-text-dual-encoder": _dual_encoder,
        "llava": _llava,
        "llava-next": _llava_next,
        "qwen2-vl": _qwen2_vl,
        "qwen2.5-vl": _qwen2_5_vl,
        "idefics3": _idefics3,
        "paligemma": _paligemma,
        "llama": _llama,
    }
)

#: Architecture names accepted by :func:`tiny_model`.
TINY_ARCHITECTURES: tuple[str, ...] = tuple(_FACTORIES)
CONTRASTIVE_ARCHITECTURES: tuple[str, ...] = ("clip", "siglip", "vision-text-dual-encoder")
VISION_LANGUAGE_ARCHITECTURES: tuple[str, ...] = (
    "llava",
    "llava-next",
    "qwen2-vl",
    "qwen2.5-vl",
    "idefics3",
    "paligemma",
)


def tiny_model(arch: str, *, seed: int = 0, device: str | torch.device = "cpu"):
    """A randomly initialised tiny model of architecture ``arch`` (one of :data:`TINY_ARCHITECTURES`), wrapped."""
    if arch not in _FACTORIES:
        raise ModelLoadError(f"unknown tiny architecture {arch!r}: choose one of {', '.join(TINY_ARCHITECTURES)}")
    # fork_rng keeps the caller's global RNG untouched while making the weights depend only on the seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = _FACTORIES[arch]()
    adapter.model.eval()
    return adapter.to(device)
