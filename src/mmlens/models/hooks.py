"""Forward hooks as context managers that always remove themselves.

Used on the handles of the adapters (``decoder_layers``, ``final_norm``, tower layers): capture hidden states for
concept dictionaries, add steering vectors to the residual stream. Decoder layers return either a tensor or a
tuple whose first element is the hidden state; both are handled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


@contextlib.contextmanager
def hook_scope() -> Iterator[Callable[[RemovableHandle], RemovableHandle]]:
    """Yield ``keep``: every handle passed to it (``keep(module.register_forward_hook(...))``) is removed when the
    block exits, also on error and also when a later registration fails. The one place hooks are cleaned up."""
    with contextlib.ExitStack() as stack:

        def keep(handle: RemovableHandle) -> RemovableHandle:
            stack.callback(handle.remove)
            return handle

        yield keep


def hidden_state(output: Any) -> torch.Tensor:
    """The hidden states of a module output (decoder layers return a tuple whose first item they are)."""
    return output[0] if isinstance(output, tuple) else output


def with_hidden_state(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` with its hidden states replaced by ``hidden`` (same tuple structure)."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextlib.contextmanager
def capture_outputs(
    modules: Mapping[str, nn.Module], *, detach: bool = True, to_cpu: bool = False
) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record each module's output hidden state ([B, T, D] for decoder layers), one entry per forward call.

    ``with capture_outputs({"l3": vlm.decoder_layers[3]}) as acts: vlm.forward(batch)`` then ``acts["l3"][0]``.
    During ``generate`` each decoding step is one call, so lists grow per step.
    """
    store: dict[str, list[torch.Tensor]] = {name: [] for name in modules}

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            h = hidden_state(output)
            h = h.detach() if detach else h
            store[name].append(h.cpu() if to_cpu else h)

        return hook

    with hook_scope() as keep:
        for name, module in modules.items():
            keep(module.register_forward_hook(make_hook(name)))
        yield store


@contextlib.contextmanager
def add_to_output(
    module: nn.Module, vector: torch.Tensor, *, scale: float = 1.0, positions: torch.Tensor | None = None
) -> Iterator[None]:
    """Add ``scale * vector`` ([D]) to the module's output hidden state while the context is open (steering).

    ``positions``: optional BoolTensor[B, T] selecting where to add (e.g. ``~image_token_mask``) for the first
    forward call of that shape; positions are ignored for calls with a different sequence length (decoding steps
    then get the vector everywhere).
    """

    def hook(mod: nn.Module, args: Any, output: Any) -> Any:
        h = hidden_state(output)
        delta = (scale * vector).to(device=h.device, dtype=h.dtype)
        if positions is not None and positions.shape == h.shape[:2]:
            delta = positions.to(h.device).unsqueeze(-1).to(h.dtype) * delta
        return with_hidden_state(output, h + delta)

    with hook_scope() as keep:
        keep(module.register_forward_hook(hook))
        yield
