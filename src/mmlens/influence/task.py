"""Tasks: how a parameter group turns pairs into embeddings (the user-writable part, after kronfluence's ``Task``).

A task encodes pairs once (``encode``) into tensors indexed by pair, and maps a parameter dict and encoded pairs to
normalised (image, text) embeddings (``embed``), purely functionally (``torch.func.functional_call``), so that
per-pair gradients, Hessian-vector products and retraining all reuse it.

* :class:`HeadTask` - the group lives in the last module of each tower (CLIP's projections, SigLIP's heads, or
  peft LoRA adapters placed on them). The frozen towers run once; their outputs are cached, so an embedding costs
  one small matmul and retraining takes seconds.
* :class:`ModelTask` - any group (``last_k_layers``, ``all``, LoRA anywhere): a full forward per call.
"""

from __future__ import annotations

import contextlib
import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mmlens.enums import as_enum
from mmlens.errors import InputError
from mmlens.influence.data import PairData
from mmlens.models.contrastive import ContrastiveModel, LossKind, ParamGroup
from mmlens.models.distributed import DistributedWork
from mmlens.models.hooks import hook_scope
from mmlens.progress import progress_bar

Params = dict[str, torch.Tensor]
Encoded = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ParamSpace:
    """Names and shapes of a parameter group; flattens dicts to vectors and back."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def size(self) -> int:
        return sum(int(torch.Size(s).numel()) for s in self.shapes)

    def flatten(self, params: Params) -> torch.Tensor:
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def flatten_batched(self, params: Params) -> torch.Tensor:
        """[Q, *shape] per name -> [Q, P]."""
        return torch.cat([params[n].reshape(params[n].shape[0], -1) for n in self.names], dim=1)

    def unflatten(self, vector: torch.Tensor) -> Params:
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes):
            size = int(torch.Size(shape).numel())
            out[name] = vector[start : start + size].view(shape)
            start += size
        return out


def subset(encoded: Encoded, index: torch.Tensor) -> Encoded:
    return {k: v[index] for k, v in encoded.items()}


class ContrastiveTask(ABC):
    """What ECIF needs from a model: a parameter group, encoded inputs and a functional embedding."""

    loss_kind: LossKind
    logit_scale: float
    logit_bias: float | None
    space: ParamSpace
    dtype: torch.dtype

    @abstractmethod
    def encode(self, data: PairData) -> Encoded:
        """Tensors with a leading pair dimension (cached features or processed pixels and token ids)."""

    @abstractmethod
    def embed(self, params: Params, encoded: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        """(image_emb, text_emb), each [N, D], L2-normalised, differentiable w.r.t. ``params``."""

    @abstractmethod
    def initial_params(self) -> Params:
        """Detached copies of the group's current values (theta_0)."""

    @abstractmethod
    def to_model(self, params: Params) -> ContrastiveModel:
        """A copy of the model with the group set to ``params`` (a loadable, evaluable model)."""


def _dtype(name: str) -> torch.dtype:
    """float64 for small heads keeps leave-one-out effects above round-off; float32 for full models."""
    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if name not in dtypes:
        raise InputError(f"dtype must be float32 or float64, got {name!r}")
    return dtypes[name]


@contextlib.contextmanager
def _capture_inputs(modules: dict[str, nn.Module]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the first positional input of each module; the hooks are removed on exit, also on error."""
    store: dict[str, list[torch.Tensor]] = {k: [] for k in modules}
    with hook_scope() as keep:
        for key, module in modules.items():
            keep(module.register_forward_pre_hook(lambda mod, args, key=key: store[key].append(args[0].detach())))
        yield store


def _head_modules(adapter: ContrastiveModel) -> dict[str, tuple[str, nn.Module]]:
    """The last module of each tower, by tower: (its name in ``adapter.model``, the module)."""
    from transformers import SiglipModel

    base = adapter.base_model
    if isinstance(base, SiglipModel):
        wanted = {"image": base.vision_model.head, "text": base.text_model.head}
    else:
        wanted = {"image": base.visual_projection, "text": base.text_projection}
    names = {id(m): n for n, m in adapter.model.named_modules()}
    return {k: (names[id(m)], m) for k, m in wanted.items()}


class HeadTask(ContrastiveTask):
    """Group = parameters of the towers' last modules (projection heads, or LoRA adapters on them).

    ``group`` is ``projection`` (all head parameters) or ``lora`` (only ``lora_`` parameters inside the heads; attach
    them with :func:`attach_lora`). The towers are frozen and run once per distinct image / caption; under
    ``accelerate launch`` their chunks are split across the processes (``work``, default: the current launch).
    """

    def __init__(
        self,
        adapter: ContrastiveModel,
        group: ParamGroup | str = ParamGroup.PROJECTION,
        dtype: str = "float64",
        batch_size: int = 256,
        progress: bool = False,
        *,
        work: DistributedWork | None = None,
    ) -> None:
        group = as_enum(ParamGroup, group, "parameter group")
        if group not in (ParamGroup.PROJECTION, ParamGroup.LORA):
            raise InputError(f"HeadTask handles the projection and lora groups; use ModelTask for {group.value!r}")
        self.adapter, self.group, self.batch_size, self.progress = adapter, group, batch_size, progress
        self.work = work if work is not None else DistributedWork.from_environment()
        self.dtype = _dtype(dtype)
        self.loss_kind = adapter.loss_kind
        self.logit_scale = float(adapter.logit_scale.detach())
        bias = adapter.logit_bias
        self.logit_bias = None if bias is None else float(bias.detach())
        self.heads = _head_modules(adapter)
        self._modules = {
            k: copy.deepcopy(m).to(self.dtype).eval().requires_grad_(False) for k, (_, m) in self.heads.items()
        }
        self._names: dict[str, tuple[str, str]] = {}  # flat name -> (tower, local name)
        for tower, module in self._modules.items():
            for local, _ in module.named_parameters():
                if group is ParamGroup.LORA and "lora_" not in local:
                    continue
                self._names[f"{tower}.{local}"] = (tower, local)
        if not self._names:
            raise InputError(
                "no LoRA parameters in the projection heads: attach them with "
                "mmlens.influence.attach_lora(model, targets=('projection',))"
                if group is ParamGroup.LORA
                else "the projection heads have no parameters"
            )
        if group is ParamGroup.LORA:
            lora_total = len(adapter.lora_parameters())
            if lora_total > len(self._names):
                raise InputError("the model has LoRA adapters outside the projection heads: use ModelTask")
        init = self.initial_params()
        self.space = ParamSpace(tuple(init), tuple(tuple(v.shape) for v in init.values()))

    def initial_params(self) -> Params:
        return {
            n: dict(self._modules[t].named_parameters())[local].detach().clone()
            for n, (t, local) in self._names.items()
        }

    @torch.no_grad()
    def encode(self, data: PairData) -> Encoded:
        """Cached inputs of the heads; each distinct image object and caption text runs through its tower once."""
        adapter = self.adapter
        uniq_images = list({id(im): im for im in data.images}.values())
        image_pos = {id(im): i for i, im in enumerate(uniq_images)}
        uniq_texts = list(dict.fromkeys(data.captions))
        text_pos = {t: i for i, t in enumerate(uniq_texts)}
        feats = {}
        chunks = [("image", uniq_images[i : i + self.batch_size]) for i in range(0, len(uniq_images), self.batch_size)]
        chunks += [("text", uniq_texts[i : i + self.batch_size]) for i in range(0, len(uniq_texts), self.batch_size)]
        # Whole chunks are split across processes (each is encoded exactly as in one process) and gathered in
        # order; gathered on the CPU since the pickled tensors cross processes.
        local: list[tuple[str, torch.Tensor]] = []
        for tower, chunk in progress_bar(
            self.work.local_items(chunks), desc="encoding pairs", enabled=self.progress and self.work.is_main_process
        ):
            with _capture_inputs({tower: self.heads[tower][1]}) as store:
                if tower == "image":
                    adapter.model.get_image_features(pixel_values=adapter.image_inputs(chunk)["pixel_values"])
                else:
                    adapter.model.get_text_features(**adapter.text_inputs(chunk))
            local.append((tower, store[tower][0].to(self.dtype).cpu()))
        device = next(self._modules["image"].parameters()).device  # the heads' copies sit beside the towers
        out: dict[str, list[torch.Tensor]] = {"image": [], "text": []}
        for tower, feats_chunk in self.work.gather(local):
            out[tower].append(feats_chunk.to(device))
        for tower in ("image", "text"):
            cat = torch.cat(out[tower])  # images share one size, captions are pooled: shapes agree
            index = (
                [image_pos[id(im)] for im in data.images] if tower == "image" else [text_pos[t] for t in data.captions]
            )
            feats[tower] = cat[torch.as_tensor(index)]
        return feats

    def _head(self, params: Params, tower: str, x: torch.Tensor) -> torch.Tensor:
        local = {self._names[n][1]: v for n, v in params.items() if self._names[n][0] == tower}
        out = functional_call(self._modules[tower], local, (x,))
        out = out if isinstance(out, torch.Tensor) else out[0]
        return F.normalize(out, dim=-1)

    def embed(self, params: Params, encoded: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        return self._head(params, "image", encoded["image"]), self._head(params, "text", encoded["text"])

    def to_model(self, params: Params) -> ContrastiveModel:
        model = copy.deepcopy(self.adapter.model)
        named = dict(model.named_parameters())
        with torch.no_grad():
            for n, value in params.items():
                tower, local = self._names[n]
                target = named[f"{self.heads[tower][0]}.{local}"]
                target.copy_(value.to(target.dtype))
        return ContrastiveModel(
            model,
            self.adapter.processor,
            tokenizer=self.adapter.tokenizer,
            image_processor=self.adapter.image_processor,
        )


class ModelTask(ContrastiveTask):
    """Any parameter group through a full forward pass (``last_k_layers``, ``all``, LoRA anywhere)."""

    def __init__(
        self,
        adapter: ContrastiveModel,
        group: ParamGroup | str = ParamGroup.LAST_K_LAYERS,
        k: int = 1,
        dtype: str = "float32",
    ) -> None:
        self.group = as_enum(ParamGroup, group, "parameter group")
        self.dtype = _dtype(dtype)
        self.adapter = adapter
        self.loss_kind = adapter.loss_kind
        self.logit_scale = float(adapter.logit_scale.detach())
        bias = adapter.logit_bias
        self.logit_bias = None if bias is None else float(bias.detach())
        self._model = copy.deepcopy(adapter.base_model).to(self.dtype).eval().requires_grad_(False)
        # Hessian-vector products differentiate twice: the fused SDPA kernel has no double backward on CPU
        if hasattr(self._model, "set_attn_implementation"):
            self._model.set_attn_implementation("eager")
        chosen = {id(p) for p in adapter.parameter_group(self.group, k).values()}
        base_named = dict(adapter.base_model.named_parameters())
        self._names = tuple(n for n, p in base_named.items() if id(p) in chosen)
        init = self.initial_params()
        self.space = ParamSpace(tuple(init), tuple(tuple(v.shape) for v in init.values()))

    def initial_params(self) -> Params:
        named = dict(self._model.named_parameters())
        return {n: named[n].detach().clone() for n in self._names}

    @torch.no_grad()
    def encode(self, data: PairData) -> Encoded:
        pixels = self.adapter.image_inputs(list(data.images))["pixel_values"].to(self.dtype)
        text = self.adapter.text_inputs(list(data.captions))
        return {"pixel_values": pixels, **{k: v for k, v in text.items()}}

    def _forward(self, params: Params, encoded: Encoded):
        return functional_call(self._model, params, (), dict(encoded))

    def embed(self, params: Params, encoded: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._forward(params, encoded)
        return F.normalize(out.image_embeds, dim=-1), F.normalize(out.text_embeds, dim=-1)

    def to_model(self, params: Params) -> ContrastiveModel:
        model = copy.deepcopy(self.adapter.model)
        base = ContrastiveModel(
            model,
            self.adapter.processor,
            tokenizer=self.adapter.tokenizer,
            image_processor=self.adapter.image_processor,
        )
        named = dict(base.base_model.named_parameters())
        with torch.no_grad():
            for n, v in params.items():
                named[n].copy_(v.to(named[n].dtype))
        return base


def attach_lora(
    adapter: ContrastiveModel,
    rank: int = 4,
    alpha: float | None = None,
    targets: tuple[str, ...] = ("projection",),
    seed: int = 0,
) -> ContrastiveModel:
    """A copy of ``adapter`` with peft LoRA adapters (B = 0, so the model is unchanged) on the projection heads
    (``targets=("projection",)``) or on the named Linear modules (e.g. ``("q_proj", "v_proj")``)."""
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise InputError(f"LoRA rank must be >= 1, got {rank}")
    modules = []
    for t in targets:
        if t == "projection":
            modules += [name.split(".")[-1] for name, _ in _head_modules(adapter).values()]
        else:
            modules.append(t)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(
            copy.deepcopy(adapter.base_model),
            LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=modules, lora_dropout=0.0),
        )
    model.eval()
    return ContrastiveModel(
        model, adapter.processor, tokenizer=adapter.tokenizer, image_processor=adapter.image_processor
    )


__all__ = ["ContrastiveTask", "HeadTask", "ModelTask", "ParamSpace", "attach_lora", "subset"]
