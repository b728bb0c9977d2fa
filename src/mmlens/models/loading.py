"""``load_model``: one entry point from a model spec (zoo name, local path, Hugging Face id) to an adapter."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar, overload

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PretrainedConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    SiglipConfig,
    SiglipModel,
    VisionTextDualEncoderConfig,
    VisionTextDualEncoderModel,
)

from mmlens.errors import ModelLoadError
from mmlens.models.contrastive import ContrastiveModel
from mmlens.models.generative import CausalLanguageModel, VisionLanguageModel
from mmlens.models.processors import Qwen2_5_VLImageOnlyProcessor, Qwen2VLImageOnlyProcessor

ZOO_PREFIX = "zoo:"
#: Entry-point group of model sources: ``NAME = "package.module:function"`` resolves ``NAME:...`` specs.
MODEL_SOURCES_GROUP = "mmlens.model_sources"

Adapter = ContrastiveModel | VisionLanguageModel | CausalLanguageModel


@dataclass(frozen=True)
class _Route:
    """How to load one config class: the model class, the adapter, and the processor class."""

    model_class: Any
    adapter: type
    # AutoProcessor picks the PIL image processors when torchvision is missing; Qwen needs the image-only variant.
    processor_class: Any = AutoProcessor


_ROUTES: Mapping[type[PretrainedConfig], _Route] = MappingProxyType(
    {
        CLIPConfig: _Route(CLIPModel, ContrastiveModel),
        SiglipConfig: _Route(SiglipModel, ContrastiveModel),
        VisionTextDualEncoderConfig: _Route(VisionTextDualEncoderModel, ContrastiveModel),
        LlavaConfig: _Route(LlavaForConditionalGeneration, VisionLanguageModel),
        LlavaNextConfig: _Route(LlavaNextForConditionalGeneration, VisionLanguageModel),
        Qwen2VLConfig: _Route(Qwen2VLForConditionalGeneration, VisionLanguageModel, Qwen2VLImageOnlyProcessor),
        Qwen2_5_VLConfig: _Route(Qwen2_5_VLForConditionalGeneration, VisionLanguageModel, Qwen2_5_VLImageOnlyProcessor),
        Idefics3Config: _Route(Idefics3ForConditionalGeneration, VisionLanguageModel),
        PaliGemmaConfig: _Route(PaliGemmaForConditionalGeneration, VisionLanguageModel),
    }
)


def _first_line(err: BaseException) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def resolve_spec(spec: str | os.PathLike[str]) -> str:
    """A loadable location for ``spec``: ``SOURCE:NAME`` for a registered model source (``zoo:NAME`` -> the zoo
    model's directory) -> that source's answer; paths (``~`` expanded) and hub ids as given.

    Model sources register through the ``mmlens.model_sources`` entry-point group (a function ``name -> location``),
    so this layer never imports the packages above it that provide them (the zoo).
    """
    spec = str(spec)
    prefix, sep, name = spec.partition(":")
    if sep and prefix:
        source = _model_source(prefix)
        if source is not None:
            return str(source(name))
        if prefix == ZOO_PREFIX.rstrip(":"):
            raise ModelLoadError(
                "this mmlens installation has no model zoo (no 'zoo' entry in the "
                "mmlens.model_sources entry points: reinstall mmlens)"
            )
    return os.path.expanduser(spec)  # "~/models/clip" is a path the shell did not expand (e.g. quoted)


def _model_source(prefix: str) -> Callable[[str], str | os.PathLike[str]] | None:
    found = entry_points(group=MODEL_SOURCES_GROUP, name=prefix)
    return next(iter(found)).load() if found else None


def _load_config(location: str, spec: str) -> PretrainedConfig:
    is_local = Path(location).exists()
    if not is_local and location.startswith((".", "/", "~")):
        raise ModelLoadError(f"model path {location} does not exist: check the path or use a Hugging Face id")
    try:
        return AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as err:
        if is_local:
            raise ModelLoadError(f"{spec}: no loadable config.json in {location} ({_first_line(err)})") from err
        raise ModelLoadError(
            f"cannot load {spec!r}: not a local directory and not in the Hugging Face cache "
            "(offline?): download it first with `huggingface-cli download` or pass a local path"
        ) from err


_ADAPTER_KINDS: Mapping[type, str] = MappingProxyType(
    {
        ContrastiveModel: "contrastive image-text model",
        VisionLanguageModel: "vision-language model",
        CausalLanguageModel: "causal language model",
    }
)


AdapterT = TypeVar("AdapterT", ContrastiveModel, VisionLanguageModel, CausalLanguageModel)


@overload
def load_model(
    spec: str | os.PathLike[str],
    *,
    device: str | torch.device = ...,
    torch_dtype: torch.dtype | None = ...,
    expect: type[AdapterT],
) -> AdapterT: ...
@overload
def load_model(
    spec: str | os.PathLike[str],
    *,
    device: str | torch.device = ...,
    torch_dtype: torch.dtype | None = ...,
    expect: None = ...,
) -> Adapter: ...
def load_model(
    spec: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    torch_dtype: torch.dtype | None = None,
    expect: type[Any] | None = None,
) -> Adapter:
    """Load ``spec`` (``zoo:NAME``, a local directory, or a Hugging Face id) and wrap it in its adapter.

    Dispatches on the config class: CLIP / SigLIP / dual encoders -> :class:`ContrastiveModel`; LLaVA, LLaVA-NeXT,
    Qwen2-VL, Qwen2.5-VL, Idefics3 (SmolVLM), PaliGemma -> :class:`VisionLanguageModel`; any other config with a
    causal-LM head -> :class:`CausalLanguageModel`. With ``expect`` (one of those classes), any other kind of model
    is a :class:`ModelLoadError`, raised from the config before any weights are loaded.
    """
    location = resolve_spec(spec)
    config = _load_config(location, str(spec))
    route = next((r for cls, r in _ROUTES.items() if type(config) is cls), None)
    if expect is not None and (route.adapter if route else CausalLanguageModel) is not expect:
        raise ModelLoadError(f"{spec} is not a {_ADAPTER_KINDS[expect]} (its config is {type(config).__name__})")
    kwargs: dict[str, Any] = {} if torch_dtype is None else {"dtype": torch_dtype}
    if torch.device(device).type != "cpu":
        kwargs["device_map"] = str(device)  # load straight onto the accelerator instead of via CPU RAM
    try:
        if route is None:
            model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(location)
            adapter: Adapter = CausalLanguageModel(model, tokenizer)
        else:
            model = route.model_class.from_pretrained(location, **kwargs)
            adapter = route.adapter(model, route.processor_class.from_pretrained(location))
    except ValueError as err:
        if route is None and "Unrecognized configuration class" in str(err):
            raise ModelLoadError(
                f"{spec}: unsupported architecture {type(config).__name__} "
                "(mmlens supports CLIP/SigLIP/dual encoders, LLaVA-style VLMs and causal LMs)"
            ) from err
        raise
    except OSError as err:
        raise ModelLoadError(f"cannot load weights or processor of {spec!r}: {_first_line(err)}") from err
    except ImportError as err:
        # e.g. a sentencepiece-only tokenizer (SigLIP) without the sentencepiece package installed
        raise ModelLoadError(f"{spec}: a dependency is missing: {_first_line(err)}") from err
    adapter.model.eval()
    return adapter.to(device)
