"""Hiding image tokens from attention without moving any position (BDHS's mask, spec section 4).

The mask is an additive bias of the dtype's minimum on the *key columns* of hidden image positions, applied in
every chosen decoder layer, for every query, through KV-cached decoding. It is installed as forward pre-hooks on the
decoder layers' ``self_attn`` modules that rewrite the ``attention_mask`` they receive, so:

- the 2-D ``attention_mask`` of the batch is never touched, hence the position ids that generation derives from it
  (and Qwen2-VL's M-RoPE index) stay the native ones;
- each query keeps its own key (the diagonal) visible, so no softmax row is all masked;
- when nothing is hidden the layer's mask passes through unchanged: blocking 0% is bit-identical to no blocking.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from mmlens.errors import InputError
from mmlens.models.hooks import hook_scope


def draw_hidden_image_tokens(
    image_mask: torch.Tensor,
    group: Sequence[int] | None,
    *,
    rho: float,
    visible_tokens: int | None,
    rng: np.random.Generator,
    draws: dict | None = None,
) -> torch.Tensor:
    """Which image positions to hide: BoolTensor like ``image_mask`` ([B, T]).

    Rows with the same ``group`` id (e.g. the sentences of one answer) share one draw (the paper's one mask per
    iteration). Eq. 6: draw rho_i ~ U(0, 1) per image token and keep it iff rho_i >= ``rho``; with
    ``visible_tokens`` exactly that many image tokens stay visible instead (rho is ill-suited to few tokens:
    0.99 of 4 tokens keeps none). Pass the same ``draws`` dict to successive calls so that a group split across
    batches keeps its mask.
    """
    if not 0.0 <= rho <= 1.0:
        raise InputError(f"rho={rho} must be in [0, 1]")
    if visible_tokens is not None and visible_tokens < 0:
        raise InputError(f"visible_tokens={visible_tokens} must be >= 0")
    image_mask = image_mask.bool()
    n_rows = image_mask.shape[0]
    group = list(range(n_rows)) if group is None else list(group)
    if len(group) != n_rows:
        raise InputError(f"got {len(group)} group ids for {n_rows} rows")
    hidden = torch.zeros_like(image_mask)
    draws = {} if draws is None else draws
    for row, g in enumerate(group):
        cols = image_mask[row].nonzero().flatten()
        k = len(cols)
        if g not in draws or len(draws[g]) != k:
            if visible_tokens is not None:
                keep = np.zeros(k, dtype=bool)
                keep[rng.permutation(k)[: min(visible_tokens, k)]] = True
            else:
                keep = rng.random(k) >= rho
            draws[g] = keep
        hidden[row, cols] = torch.from_numpy(~draws[g])
    return hidden


def _combine(
    mask: torch.Tensor | None, hidden: torch.Tensor, q_len: int, k_len: int, dtype: torch.dtype
) -> torch.Tensor:
    """The layer's attention mask with hidden key columns added, as [B, 1, Q, K]."""
    batch, t0 = hidden.shape
    device = hidden.device
    cols = torch.zeros(batch, k_len, dtype=torch.bool, device=device)
    n = min(t0, k_len)
    cols[:, :n] = hidden[:, :n]  # keys past the prompt (generated tokens) are never hidden
    query_pos = torch.arange(k_len - q_len, k_len, device=device)
    key_pos = torch.arange(k_len, device=device)
    not_self = query_pos[:, None] != key_pos[None, :]  # a query always sees itself
    block = cols[:, None, None, :] & not_self[None, None]  # [B, 1, Q, K]
    if mask is None:
        # SDPA's implicit causal mask (is_causal) must become explicit now that there is a mask.
        causal = key_pos[None, :] <= query_pos[:, None]
        allowed = causal[None, None] & ~block
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    if mask.dtype == torch.bool:  # True = attend
        return mask & ~block
    return mask.masked_fill(block, torch.finfo(mask.dtype).min)


def _attention_modules(layers: nn.ModuleList, which: Sequence[int] | None) -> list[nn.Module]:
    idx = range(len(layers)) if which is None else which
    modules = []
    for i in idx:
        if not -len(layers) <= i < len(layers):
            raise InputError(f"mask layer {i} out of range for {len(layers)} decoder layers")
        attn = getattr(layers[i], "self_attn", None)
        if attn is None:
            raise InputError(f"decoder layer {i} ({type(layers[i]).__name__}) has no self_attn module to mask")
        modules.append(attn)
    return modules


@contextlib.contextmanager
def block_image_tokens(
    decoder_layers: nn.ModuleList, hidden: torch.Tensor, *, layers: Sequence[int] | None = None
) -> Iterator[None]:
    """While open, keys at ``hidden`` positions (BoolTensor[B, T] over the *prompt* the next forward/generate call
    receives) are invisible to every query of the chosen decoder ``layers`` (default all), in every later decoding
    step too. The hooks are removed on exit, also on error.
    """
    hidden = hidden.bool()
    any_hidden = bool(hidden.any())

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if not any_hidden:
            return args, kwargs
        states = kwargs.get("hidden_states", args[0] if args else None)
        if states is None or "attention_mask" not in kwargs and len(args) > 1:
            raise RuntimeError(f"{type(module).__name__} is not called with keyword arguments; cannot mask it")
        if states.shape[0] != hidden.shape[0]:
            raise InputError(f"the image mask has {hidden.shape[0]} rows but the model runs {states.shape[0]}")
        mask = kwargs.get("attention_mask")
        q_len = states.shape[1]
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
                raise InputError(
                    f"cannot add an image mask to a {type(mask).__name__} attention mask: use "
                    "attn_implementation='sdpa' or 'eager'"
                )
            k_len = mask.shape[-1]
        else:
            cache = kwargs.get("past_key_values")
            past = cache.get_seq_length(module.layer_idx) if cache is not None else 0
            k_len = past + q_len
        kwargs["attention_mask"] = _combine(mask, hidden.to(states.device), q_len, k_len, states.dtype)
        return args, kwargs

    with hook_scope() as keep:
        for m in _attention_modules(decoder_layers, layers):
            keep(m.register_forward_pre_hook(pre_hook, with_kwargs=True))
        yield


__all__ = ["block_image_tokens", "draw_hidden_image_tokens"]
