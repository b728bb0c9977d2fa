"""Applying steering vectors while a model runs: position rules that follow generation across KV-cache steps.

``with steer(vlm, vectors, SteerConfig(alpha=4.0, positions=SteerPositions.FROM_LAST_PROMPT)): vlm.generate(...)``
adds ``alpha * vector`` to the output hidden state of each vector's decoder layer, at the positions the rule selects.

How positions are followed: a forward pre-hook on the whole model reads every call's ``input_ids``,
``attention_mask`` and the KV cache's length. A call on an empty cache is a prompt (prefill); later calls on the
same cache are decoding steps whose absolute positions start at the cache length. So a rule is evaluated on absolute
positions, the same whether the model decodes with a cache, without one (each step then re-reads the whole
sequence; a call that extends the previous prompt is recognised as its continuation), alone or in a padded batch.
Padding positions are never steered.

KV cache: keys and values computed under steering are cached, so toggling a vector mid-generation leaves the earlier
positions' effect in place; open the context before ``generate`` and keep it open until it returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mmlens.errors import InputError
from mmlens.models.hooks import hidden_state, hook_scope, with_hidden_state
from mmlens.steer.settings import SteerCondition as SteerCondition
from mmlens.steer.settings import SteerConfig as SteerConfig
from mmlens.steer.settings import SteerPositions as SteerPositions
from mmlens.steer.vectors import SteeringVector


@dataclass
class SteeringTrace:
    """What an open steering context did: per decoder-layer call, the layer and the BoolTensor[B, T] it steered
    (recorded only with ``record=True``)."""

    calls: list[tuple[int, torch.Tensor]] = field(default_factory=list)

    def masks(self, layer: int) -> list[torch.Tensor]:
        return [mask for lay, mask in self.calls if lay == layer]


def position_mask(
    rule: SteerPositions,
    *,
    offset: int,
    length: int,
    prompt_length: int,
    last_prompt: torch.Tensor,
    valid: torch.Tensor,
    image: torch.Tensor,
) -> torch.Tensor:
    """BoolTensor[B, length]: where ``rule`` steers in a forward call covering absolute positions
    ``offset .. offset + length - 1`` of a sequence whose prompt has ``prompt_length`` positions.

    ``last_prompt`` (LongTensor[B]) is each row's last real prompt position, ``valid`` (Bool[B, length]) the
    non-padding positions of the call, ``image`` (Bool[B, length]) its image-token positions.
    """
    pos = torch.arange(offset, offset + length, device=valid.device).unsqueeze(0)
    if rule is SteerPositions.ALL:
        chosen = torch.ones_like(valid)
    elif rule is SteerPositions.PROMPT_ONLY:
        chosen = (pos < prompt_length).expand_as(valid)
    elif rule is SteerPositions.GENERATED_ONLY:
        chosen = (pos >= prompt_length).expand_as(valid)
    elif rule is SteerPositions.FROM_LAST_PROMPT:
        chosen = pos >= last_prompt.to(valid.device).unsqueeze(1)
    elif rule is SteerPositions.TEXT_ONLY:
        chosen = ~image
    else:  # pragma: no cover - enum is exhaustive
        raise InputError(f"unknown position rule {rule}")
    return chosen & valid


def _call_inputs(args: tuple, kwargs: dict) -> tuple[torch.Tensor | None, tuple[int, int], Any, Any]:
    ids = kwargs.get("input_ids")
    if ids is None and args and isinstance(args[0], torch.Tensor):
        ids = args[0]
    if ids is not None:
        shape = (int(ids.shape[0]), int(ids.shape[-1]))
    else:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            raise InputError("steering needs input_ids or inputs_embeds in the model call")
        shape = (int(embeds.shape[0]), int(embeds.shape[1]))
    return ids, shape, kwargs.get("past_key_values"), kwargs.get("attention_mask")


class _PositionTracker:
    """Follows the model's calls and holds, for the call in flight, the steering mask of the position rule."""

    def __init__(self, rule: SteerPositions, image_token_id: int | None) -> None:
        self.rule = rule
        self.image_token_id = image_token_id
        self.prompt_ids: torch.Tensor | None = None
        self.prompt_length = 0
        self.last_prompt: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None  # BoolTensor[B, T] of the call in flight
        self.generation = 0  # counts prompts: per-sample decisions taken at a prompt hold until the next one
        self.offset = 0  # absolute position of the call's first token

    def _new_prompt(self, ids: torch.Tensor | None, shape: tuple[int, int], valid: torch.Tensor) -> None:
        batch, length = shape
        self.generation += 1
        self.prompt_ids = ids.detach().clone() if ids is not None else None
        self.prompt_length = length
        # Left padding puts every row's last prompt token at length-1; right padding would not, so ask the mask.
        index = torch.arange(length, device=valid.device).expand(batch, length)
        self.last_prompt = torch.where(valid, index, torch.full_like(index, -1)).max(1).values.clamp(min=0)

    def _continues_prompt(self, ids: torch.Tensor | None, shape: tuple[int, int]) -> bool:
        prompt = self.prompt_ids
        return (
            ids is not None
            and prompt is not None
            and shape[0] == prompt.shape[0]
            and shape[1] > prompt.shape[-1]
            and torch.equal(ids[:, : prompt.shape[-1]], prompt)
        )

    def before_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids, shape, cache, attention = _call_inputs(args, kwargs)
        batch, length = shape
        offset = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        device = ids.device if ids is not None else kwargs["inputs_embeds"].device  # _call_inputs ensured one
        if isinstance(attention, torch.Tensor) and attention.ndim == 2 and attention.shape[-1] >= length:
            valid = attention[:, -length:].to(device=device).bool()
        else:
            valid = torch.ones(batch, length, dtype=torch.bool, device=device)
        if offset == 0 and not self._continues_prompt(ids, shape):
            self._new_prompt(ids, shape, valid)
        elif self.last_prompt is None or self.last_prompt.shape[0] != batch:
            # Opened in the middle of a generation: treat everything cached so far as the prompt.
            self.generation += 1
            self.prompt_ids, self.prompt_length = None, offset
            self.last_prompt = torch.full((batch,), max(offset - 1, 0), device=device)
        if ids is not None and self.image_token_id is not None:
            image = ids == self.image_token_id
        else:
            image = torch.zeros(batch, length, dtype=torch.bool, device=device)
        self.offset = offset
        self.mask = position_mask(
            self.rule,
            offset=offset,
            length=length,
            prompt_length=self.prompt_length,
            last_prompt=self.last_prompt,
            valid=valid,
            image=image,
        )

    def after_call(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        self.mask = None  # a layer run outside the model's forward must not reuse a stale mask


class _SampleGate:
    """Per-sample decisions of ``SteerCondition.SOURCE_CONCEPT`` for the vectors of one layer, taken from the
    layer's output at each row's last prompt position and kept for the rest of that generation."""

    def __init__(self, vectors: Sequence[SteeringVector], tracker: _PositionTracker) -> None:
        for vec in vectors:
            if vec.reference is None or vec.contrasts is None:
                raise InputError(
                    f"vector {vec.name} has no reference/contrasts: the source_concept condition needs "
                    "vectors built from labelled activations or a dictionary"
                )
        # reference and contrasts are checked above
        self.centres = [torch.cat([vec.reference[None], vec.contrasts]) for vec in vectors]  # type: ignore[index]
        self.tracker = tracker
        self.generation = -1
        self.gates: torch.Tensor | None = None  # [n_vectors, B]

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        tracker = self.tracker
        if self.generation != tracker.generation or self.gates is None or self.gates.shape[1] != h.shape[0]:
            rows = torch.arange(h.shape[0], device=h.device)
            index = (
                (tracker.last_prompt.to(h.device) - tracker.offset).clamp(0, h.shape[1] - 1)
                if tracker.last_prompt is not None
                else torch.full_like(rows, h.shape[1] - 1)
            )
            at_prompt = h[rows, index].float()
            self.gates = torch.stack([torch.cdist(at_prompt, c.to(h.device)).argmin(1) == 0 for c in self.centres])
            self.generation = tracker.generation
        return self.gates


def _group_by_layer(vectors: Sequence[SteeringVector], hidden_size: int, n_layers: int) -> dict[int, torch.Tensor]:
    summed: dict[int, torch.Tensor] = {}
    for vec in vectors:
        if vec.hidden_size != hidden_size:
            raise InputError(
                f"vector {vec.name} has hidden size {vec.hidden_size}, the model's decoder has {hidden_size}"
            )
        if vec.layer >= n_layers:
            raise InputError(
                f"vector {vec.name} is for layer {vec.layer}, the model has {n_layers} decoder layers "
                f"(0..{n_layers - 1})"
            )
        summed[vec.layer] = summed.get(vec.layer, 0) + vec.vector
    return summed


def _decoder_hidden_size(model: Any) -> int:
    head = model.lm_head
    weight = getattr(head, "weight", None)
    if weight is None:
        raise InputError(f"cannot find the hidden size of {type(model).__name__}'s language model")
    return int(weight.shape[1])


def _as_vector_list(vectors: SteeringVector | Sequence[SteeringVector]) -> list[SteeringVector]:
    out = [vectors] if isinstance(vectors, SteeringVector) else list(vectors)
    if not out:
        raise InputError("no steering vectors to apply")
    if not all(isinstance(v, SteeringVector) for v in out):
        raise InputError("steer() takes SteeringVector objects (build them with mmlens.steer.coarse_vector & co.)")
    return out


@contextlib.contextmanager
def steer(
    model: Any,
    vectors: SteeringVector | Sequence[SteeringVector],
    config: SteerConfig = SteerConfig(),
    *,
    record: bool = False,
) -> Iterator[SteeringTrace]:
    """Add ``config.alpha * vector`` to the output of each vector's decoder layer (vectors on the same layer add up)
    at the positions of ``config.positions``, while the context is open; every hook is removed on exit and on error.

    ``model`` is a :class:`~mmlens.models.VisionLanguageModel` or :class:`~mmlens.models.CausalLanguageModel`.
    Works with batched ``generate`` and the KV cache. Yields a :class:`SteeringTrace` (filled if ``record``).
    """
    vecs = _as_vector_list(vectors)
    layers = model.decoder_layers
    per_layer = _group_by_layer(vecs, _decoder_hidden_size(model), len(layers))
    tracker = _PositionTracker(config.positions, getattr(model, "image_token_id", None))
    trace = SteeringTrace()
    alpha = float(config.alpha)
    conditional = config.condition is SteerCondition.SOURCE_CONCEPT
    on_layer = {layer: [v for v in vecs if v.layer == layer] for layer in per_layer}
    gates = {layer: _SampleGate(on_layer[layer], tracker) for layer in per_layer} if conditional else {}

    def make_hook(layer: int, direction: torch.Tensor):
        cache: dict[tuple, torch.Tensor] = {}

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            h = hidden_state(output)
            key = (h.device, h.dtype)
            if key not in cache:  # the scaled vector once per device/dtype, not per call
                cache[key] = (alpha * direction).to(device=h.device, dtype=h.dtype)
                if conditional:
                    cache[key] = torch.stack([alpha * v.vector for v in on_layer[layer]]).to(h.device, h.dtype)
            delta = cache[key]
            if conditional:  # [n_vectors, B] gates -> a per-row delta [B, 1, D]
                delta = (gates[layer](h).to(h.dtype).T @ delta).unsqueeze(1)
            mask = tracker.mask
            if mask is None or tuple(mask.shape) != tuple(h.shape[:2]):
                if config.positions is not SteerPositions.ALL:
                    raise InputError(
                        f"position rule {config.positions.value} needs the layer to run inside the "
                        "model's forward (call the adapter's model, not a layer directly)"
                    )
                mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
            if record:
                trace.calls.append((layer, mask.detach().cpu().clone()))
            if mask.all() and not conditional:
                return with_hidden_state(output, h + delta)
            return with_hidden_state(output, h + mask.unsqueeze(-1).to(h.dtype) * delta)

        return hook

    root = model.base_model
    with hook_scope() as keep:
        keep(root.register_forward_pre_hook(tracker.before_call, with_kwargs=True))
        keep(root.register_forward_hook(tracker.after_call, with_kwargs=True))
        for layer, direction in per_layer.items():
            keep(layers[layer].register_forward_hook(make_hook(layer, direction)))
        yield trace


def logit_bias_direction(model: Any, vector: SteeringVector) -> torch.Tensor:
    """The vector pushed through the final norm and the unembedding: W_U Norm(r + v) - W_U Norm(r), with r the
    vector's ``reference`` (its mean source activation; zero if unknown). At the last layer this is the first-order
    effect of steering at the reference point, a fixed logit bias."""
    head, norm = model.lm_head, model.final_norm
    param = next(head.parameters())
    v = vector.vector.to(param.device, param.dtype)
    ref = vector.reference.to(param.device, param.dtype) if vector.reference is not None else torch.zeros_like(v)
    with torch.no_grad():
        both = torch.stack([ref + v, ref]).unsqueeze(0)  # [1, 2, D]: norms expect a sequence axis
        logits = head(norm(both))[0]
    return (logits[0] - logits[1]).detach()


@contextlib.contextmanager
def logit_bias(
    model: Any, vector: SteeringVector, alpha: float = 1.0, condition: SteerCondition = SteerCondition.ALWAYS
) -> Iterator[torch.Tensor]:
    """Baseline: add ``alpha * logit_bias_direction(model, vector)`` to every logit the model computes while the
    context is open (every predicted token, the first answer token included). With ``SOURCE_CONCEPT``, only for the
    samples the same gate as :func:`steer` selects. Yields the bias [vocab]."""
    bias = alpha * logit_bias_direction(model, vector)
    tracker = _PositionTracker(SteerPositions.ALL, getattr(model, "image_token_id", None))
    gate = _SampleGate([vector], tracker) if condition is SteerCondition.SOURCE_CONCEPT else None
    state: dict[str, torch.Tensor] = {}

    def read_gate(module: nn.Module, args: Any, output: Any) -> None:
        assert gate is not None  # registered only with a gate
        state["gate"] = gate(hidden_state(output))[0]

    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        add = bias.to(device=output.device, dtype=output.dtype)
        if gate is not None:
            add = state["gate"].to(output.device, output.dtype).view(-1, *([1] * (output.ndim - 1))) * add
        return output + add

    with hook_scope() as keep:
        if gate is not None:
            root = model.base_model
            keep(root.register_forward_pre_hook(tracker.before_call, with_kwargs=True))
            keep(root.register_forward_hook(tracker.after_call, with_kwargs=True))
            keep(model.decoder_layers[vector.layer].register_forward_hook(read_gate))
        keep(model.lm_head.register_forward_hook(hook))
        yield bias


@dataclass(frozen=True, eq=False)
class Steering:
    """An intervention: steering vectors with a config (``Steering(vecs, cfg).apply(model)`` is a context)."""

    vectors: tuple[SteeringVector, ...]
    config: SteerConfig = SteerConfig()

    def apply(self, model: Any) -> contextlib.AbstractContextManager:
        return steer(model, self.vectors, self.config)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "steering",
            "alpha": self.config.alpha,
            "positions": self.config.positions.value,
            "condition": self.config.condition.value,
            "vectors": [v.name for v in self.vectors],
        }


@dataclass(frozen=True, eq=False)
class LogitBias:
    """The logit-bias baseline as an intervention."""

    vector: SteeringVector
    alpha: float = 1.0
    condition: SteerCondition = SteerCondition.ALWAYS

    def apply(self, model: Any) -> contextlib.AbstractContextManager:
        return logit_bias(model, self.vector, self.alpha, self.condition)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "logit_bias",
            "alpha": self.alpha,
            "condition": self.condition.value,
            "vector": self.vector.name,
        }
