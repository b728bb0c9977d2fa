"""What a concept means: words through the unembedding, images by its most-activating samples, and (on the
miniature world) how pure the ground-truth attributes of those samples are."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmlens.concepts.decompose import as_matrix
from mmlens.errors import InputError

#: Function words (and chat-template roles) dropped from text groundings by default.
DEFAULT_STOP_WORDS: tuple[str, ...] = (
    "the",
    "and",
    "are",
    "there",
    "what",
    "where",
    "how",
    "many",
    "this",
    "that",
    "with",
    "for",
    "from",
    "was",
    "were",
    "has",
    "have",
    "its",
    "into",
    "onto",
    "than",
    "then",
    "them",
    "they",
    "you",
    "your",
    "our",
    "his",
    "her",
    "she",
    "him",
    "not",
    "but",
    "all",
    "any",
    "can",
    "will",
    "would",
    "could",
    "should",
    "about",
    "which",
    "who",
    "whom",
    "also",
    "been",
    "being",
    "does",
    "did",
    "doing",
    "such",
    "very",
    "some",
    "each",
    "other",
    "over",
    "under",
    "image",
    "picture",
    "photo",
    "user",
    "assistant",
    "system",
)


@dataclass(frozen=True)
class TextGroundingConfig:
    """Top ``top_tokens`` tokens of W_U u_k (W_U Norm(u_k) with ``apply_final_norm``), decoded, lower-cased, then
    kept if they are words (``alphabetic_only``) of at least ``min_chars`` characters outside ``stop_words`` (and
    inside ``vocabulary`` when given); the first ``keep`` survivors are the concept's words."""

    top_tokens: int = 50
    keep: int = 10
    apply_final_norm: bool = False
    min_chars: int = 3
    alphabetic_only: bool = True
    stop_words: tuple[str, ...] = DEFAULT_STOP_WORDS
    vocabulary: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.top_tokens < 1 or self.keep < 1:
            raise InputError("top_tokens and keep must be >= 1")


class TextGrounder:
    """Words of concepts through one model's unembedding (and optionally its final norm), detached from the model."""

    def __init__(
        self,
        unembedding: torch.Tensor,
        token_strings: Sequence[str],
        final_norm: torch.nn.Module | None,
        config: TextGroundingConfig | None = None,
    ) -> None:
        self.unembedding = unembedding.detach().float().cpu()
        self.token_strings = [t.strip().lower() for t in token_strings]
        self.final_norm = final_norm
        self.config = config or TextGroundingConfig()
        if self.config.apply_final_norm and final_norm is None:
            raise InputError("apply_final_norm needs the model's final norm")
        cfg = self.config
        stop, vocab = set(cfg.stop_words), set(cfg.vocabulary) if cfg.vocabulary is not None else None
        self._allowed = np.array(
            [
                len(t) >= cfg.min_chars
                and (t.isalpha() or not cfg.alphabetic_only)
                and t not in stop
                and (vocab is None or t in vocab)
                for t in self.token_strings
            ]
        )

    @classmethod
    def from_model(cls, model: Any, config: TextGroundingConfig | None = None) -> TextGrounder:
        """From a :class:`~mmlens.models.VisionLanguageModel` or :class:`~mmlens.models.CausalLanguageModel`."""
        tok = model.tokenizer
        weight = model.lm_head.weight
        strings = [tok.decode([i]) for i in range(weight.shape[0])]
        norm = copy.deepcopy(model.final_norm).float().cpu().eval() if config and config.apply_final_norm else None
        return cls(weight, strings, norm, config)

    @torch.no_grad()
    def logits(self, concepts: Any) -> np.ndarray:
        u = torch.from_numpy(as_matrix(concepts, name="concepts")).float()
        if u.shape[1] != self.unembedding.shape[1]:
            raise InputError(f"concepts have {u.shape[1]} features, the unembedding {self.unembedding.shape[1]}")
        if self.final_norm is not None and self.config.apply_final_norm:
            u = self.final_norm(u)
        return (u @ self.unembedding.T).numpy()

    def __call__(self, concepts: Any) -> list[list[str]]:
        """The words of each concept (rows of ``concepts``), best first."""
        cfg = self.config
        out = []
        for row in self.logits(concepts):
            top = np.argsort(-row, kind="stable")[: cfg.top_tokens]
            words: list[str] = []
            for i in top:
                word = self.token_strings[i]
                if self._allowed[i] and word not in words:
                    words.append(word)
                if len(words) == cfg.keep:
                    break
            out.append(words)
        return out


def top_samples(activations: Any, n_top: int = 5) -> np.ndarray:
    """(K, n_top) row indices of the most activating samples of each concept (visual grounding), best first."""
    v = as_matrix(activations, name="concept activations")
    n_top = min(n_top, len(v))
    return np.argsort(-v, axis=0, kind="stable")[:n_top].T


def _modal_share(values: Sequence[str]) -> float:
    return Counter(values).most_common(1)[0][1] / len(values) if len(values) else float("nan")


def attribute_purity(top_rows: np.ndarray, attributes: Mapping[str, Sequence[str]]) -> dict[str, np.ndarray]:
    """Per attribute, per concept: the share of the concept's top samples that hold the attribute's most common
    value among them (1.0 = all top samples agree). ``attributes[name][row]`` is the ground truth of sample row."""
    if not attributes:
        raise InputError("attribute purity needs at least one ground-truth attribute")
    out = {}
    for name, values in attributes.items():
        values = list(values)
        if top_rows.size and int(top_rows.max()) >= len(values):
            raise InputError(f"attribute {name!r} has {len(values)} values but samples go up to row {top_rows.max()}")
        out[name] = np.array([_modal_share([values[r] for r in rows]) for rows in top_rows])
    return out


def random_sets(n_samples: int, n_top: int, *, n_draws: int = 200, seed: int = 0) -> np.ndarray:
    """(n_draws, n_top) rows of ``n_top`` distinct samples drawn at random (the sets of :func:`random_purity`)."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(n_samples, size=min(n_top, n_samples), replace=False) for _ in range(n_draws)])


def random_purity(
    n_samples: int, n_top: int, attributes: Mapping[str, Sequence[str]], *, n_draws: int = 200, seed: int = 0
) -> dict[str, float]:
    """The baseline of :func:`attribute_purity`: expected purity of ``n_top`` samples drawn at random."""
    rows = random_sets(n_samples, n_top, n_draws=n_draws, seed=seed)
    return {k: float(v.mean()) for k, v in attribute_purity(rows, attributes).items()}
