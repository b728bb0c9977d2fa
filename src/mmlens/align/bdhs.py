"""Bias-Driven Hallucination Sampling (BDHS): rejected answers from the model's own language prior.

For each SFT example (image, prompt, chosen answer): split the answer into sentences; per sentence optionally swap a
leading yes/no, keep a random prefix and let the model complete it while most image tokens are hidden from attention
(:mod:`mmlens.align.masking`), conditioned on the ground-truth earlier sentences, so every sentence of every example
is completed in one batched ``generate`` call. The joined result is accepted as the rejected answer when its
sentence-embedding cosine similarity to the chosen one is below ``eps_s``; otherwise mask and pivots are redrawn, up to
``max_tries`` times, the last try generating the whole answer unguided (and accepted regardless).

Every random decision of an example (yes/no flip, prefix cut, image-token mask) comes from a generator seeded by
``(seed, example index, try)``, so it does not depend on batching or on which process handles the example: under
``accelerate launch`` the generation batches of each try are split across the processes and gathered in order, and
every process returns the single-process pairs.
Spec: ``docs/methods/preference-alignment.md`` section 3 (arXiv 2407.02477, Algorithm 1).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature

from mmlens.align.data import PreferencePair, SFTExample, check_examples
from mmlens.align.masking import block_image_tokens, draw_hidden_image_tokens
from mmlens.align.settings import BDHSConfig, ImageCorruption, PivotUnit
from mmlens.errors import InputError
from mmlens.models.distributed import DistributedWork
from mmlens.models.embed import TextEmbedder
from mmlens.models.generative import PromptStyle, VisionLanguageModel
from mmlens.progress import progress_bar


@dataclass
class BDHSStats:
    """What the generator did: ``accepted_by_try[i]`` pairs accepted at try i+1 (the last try is unguided)."""

    accepted_by_try: list[int]
    n_examples: int
    n_pairs: int
    n_dropped: int  # rejected answer empty or the same tokens as the chosen one: no preference signal
    seconds: float
    mean_similarity: float
    mean_visible_tokens: float
    mean_length_ratio: float  # words(rejected) / words(chosen)
    similarity_by_try: list[float] = field(default_factory=list)
    generation_seconds: float = 0.0  # the masked generate calls alone (no embedding, no bookkeeping)
    tried_by_try: list[int] = field(default_factory=list)  # examples still pending at each try

    @property
    def acceptance_by_try(self) -> list[float]:
        """Fraction of the examples tried at each try that were accepted there (non-similar, or the last try)."""
        return [a / t if t else 0.0 for a, t in zip(self.accepted_by_try, self.tried_by_try)]

    @property
    def cumulative_non_similar(self) -> list[float]:
        """Fraction of all examples accepted as non-similar within the first k tries (the paper: > 74 % after one,
        > 90 % after four); a forced acceptance at the last try (max_tries > 1) does not count."""
        n, out, total = max(1, self.n_examples), [], 0
        for a in self.accepted_by_try:
            total += a
            out.append(total / n)
        return out

    @property
    def seconds_per_pair(self) -> float:
        return self.seconds / max(1, self.n_examples)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted_by_try": self.accepted_by_try,
            "n_examples": self.n_examples,
            "n_pairs": self.n_pairs,
            "n_dropped": self.n_dropped,
            "seconds": round(self.seconds, 3),
            "seconds_per_pair": round(self.seconds_per_pair, 5),
            "mean_similarity": round(self.mean_similarity, 4),
            "mean_visible_tokens": round(self.mean_visible_tokens, 3),
            "mean_length_ratio": round(self.mean_length_ratio, 4),
            "similarity_by_try": [round(s, 4) for s in self.similarity_by_try],
            "generation_seconds": round(self.generation_seconds, 3),
            "tried_by_try": self.tried_by_try,
            "acceptance_by_try": [round(a, 4) for a in self.acceptance_by_try],
        }


# ------------------------------------------------------------------------------------------------ text helpers
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "mr.", "mrs.", "ms.", "dr.", "st.", "no.", "fig.")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: cut after . ! ? followed by whitespace, except after common abbreviations and single
    letters ("e.g. a", "J. Smith"); decimals ("3.5") are never cut since no whitespace follows the dot."""
    text = text.strip()
    if not text:
        return []
    parts, current = [], ""
    for piece in _SENTENCE_END.split(text):
        current = f"{current} {piece}" if current else piece
        last = current.split()[-1].lower()
        if last in _ABBREVIATIONS or re.fullmatch(r"[a-z]\.", last):
            continue
        parts.append(current)
        current = ""
    if current:
        parts.append(current)
    return parts


def flip_yes_no(sentence: str, *, word_boundary: bool = True) -> str | None:
    """The sentence with a leading yes/no swapped (case kept), or None when it does not start with one. Without
    ``word_boundary`` this is the published pattern, which also turns "Not" into "Yest"."""
    pattern = r"^(\s*)(Yes|yes|No|no)" + (r"\b" if word_boundary else "")
    m = re.match(pattern, sentence)
    if m is None:
        return None
    swap = {"Yes": "No", "yes": "no", "No": "Yes", "no": "yes"}[m.group(2)]
    return m.group(1) + swap + sentence[m.end() :]


def first_sentence(text: str) -> str:
    """``text`` up to and including its first sentence end (the completion stops at the first full stop)."""
    m = re.search(r"[.!?](\s|$)", text)
    return text[: m.start() + 1].strip() if m else text.strip()


# ----------------------------------------------------------------------------------- batched continuation
def continuation_batch(
    vlm: VisionLanguageModel, images: Sequence[Image.Image], prompts: Sequence[str], partials: Sequence[str]
) -> BatchFeature:
    """A left-padded generation batch whose rows end with the start of the assistant's answer (``partials``).

    The prompt is built by the adapter as for any generation; the partial answer's tokens are appended to each row
    (so the same code serves chat templates and PaliGemma's prefix format), and every per-token field is re-padded.
    """
    base = vlm.prepare(list(images), list(prompts))
    tok = vlm.tokenizer
    extra = [tok(p, add_special_tokens=False)["input_ids"] if p else [] for p in partials]
    ids, attn = base["input_ids"], base["attention_mask"]
    shape = tuple(ids.shape)
    per_token = [
        k
        for k, v in base.items()
        if isinstance(v, torch.Tensor)
        and tuple(v.shape) == shape
        and not k.startswith("pixel")
        and not k.startswith("image")
    ]
    lengths = attn.sum(1).tolist()
    new_len = max(int(n) + len(e) for n, e in zip(lengths, extra))
    # PaliGemma: token type 1 marks answer (causal) tokens, 0 the bidirectional prefix.
    answer_type = 1 if vlm.family.prompt_style is PromptStyle.PREFIX else 0
    out = dict(base)
    for key in per_token:
        pad_value = tok.pad_token_id if key == "input_ids" else 0
        fill = {"input_ids": None, "attention_mask": 1, "token_type_ids": answer_type}.get(key, 0)
        old = base[key]
        new = torch.full((shape[0], new_len), pad_value, dtype=old.dtype)
        for row, (n, e) in enumerate(zip(lengths, extra)):
            n = int(n)
            tail = torch.tensor(e, dtype=old.dtype) if fill is None else torch.full((len(e),), fill, dtype=old.dtype)
            content = torch.cat([old[row, shape[1] - n :], tail])
            new[row, new_len - len(content) :] = content
        out[key] = new
    return BatchFeature(out)


def generate_continuations(
    vlm: VisionLanguageModel,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    partials: Sequence[str],
    *,
    groups: Sequence[int] | None = None,
    rho: float | None = None,
    visible_tokens: int | None = None,
    mask_layers: Sequence[int] | None = None,
    rng: np.random.Generator | None = None,
    max_new_tokens: int = 48,
    do_sample: bool = False,
    temperature: float = 1.0,
    batch_size: int = 64,
    progress: bool = False,
    group_rng: Callable[[int], np.random.Generator] | None = None,
    noise_step: int | None = None,
    noise_rng: Callable[[int], np.random.Generator] | None = None,
) -> tuple[list[str], list[int]]:
    """Complete each partial answer, batched; with ``rho`` (or ``visible_tokens``) image tokens are hidden, rows of
    one ``group`` sharing a mask. Returns the new texts and the number of visible image tokens per row.

    ``group_rng(group)``, when given, returns a fresh generator for a group's mask (instead of drawing from ``rng``
    in row order), so a group's mask does not depend on the batches or on which rows this call receives.
    ``noise_step``: diffuse the processed pixels to that step of POVID's schedule first (x~ = sqrt(a) x +
    sqrt(1 - a) eps), one noise draw per group (from ``noise_rng(group)``, else from ``rng``)."""
    n = len(prompts)
    if not (len(images) == len(partials) == n):
        raise InputError("images, prompts and partial answers must have the same length")
    if noise_step is not None and not 0 <= noise_step <= 999:
        raise InputError(f"noise_step={noise_step} must be in [0, 999]")
    rng = rng if rng is not None else np.random.default_rng(0)
    groups = list(range(n)) if groups is None else list(groups)
    masked = rho is not None or visible_tokens is not None
    tok = vlm.tokenizer
    texts: list[str] = []
    visible: list[int] = []
    draws: dict = {}
    noises: dict = {}
    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "pad_token_id": tok.pad_token_id,
    }
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    starts = range(0, n, batch_size)
    for lo in progress_bar(starts, desc="complete", enabled=progress and len(starts) > 1):
        hi = min(lo + batch_size, n)
        batch = continuation_batch(vlm, images[lo:hi], prompts[lo:hi], partials[lo:hi])
        if noise_step is not None:
            batch["pixel_values"] = _noised_pixels(batch, groups[lo:hi], noise_step, noises, noise_rng, rng)
        batch = vlm.to_device(batch)
        image_mask = vlm.image_token_mask(batch)
        if masked:
            if group_rng is not None:
                for row, g in enumerate(groups[lo:hi]):
                    if g not in draws:
                        draw_hidden_image_tokens(
                            image_mask[row : row + 1].cpu(),
                            [g],
                            rho=rho if rho is not None else 1.0,
                            visible_tokens=visible_tokens,
                            rng=group_rng(g),
                            draws=draws,
                        )
            hidden = draw_hidden_image_tokens(
                image_mask.cpu(),
                groups[lo:hi],
                rho=rho if rho is not None else 1.0,
                visible_tokens=visible_tokens,
                rng=rng,
                draws=draws,
            )
        else:
            hidden = torch.zeros_like(image_mask, device="cpu")
        visible.extend((image_mask.cpu() & ~hidden).sum(1).tolist())
        with torch.no_grad(), block_image_tokens(vlm.decoder_layers, hidden.to(vlm.device), layers=mask_layers):
            generated = vlm.model.generate(**batch, **gen_kwargs)
        new = generated[:, batch["input_ids"].shape[1] :]
        texts.extend(t.strip() for t in tok.batch_decode(new, skip_special_tokens=True))
    return texts, visible


def _noised_pixels(
    batch: BatchFeature,
    groups: Sequence[int],
    noise_step: int,
    noises: dict,
    noise_rng: Callable[[int], np.random.Generator] | None,
    rng: np.random.Generator,
) -> torch.Tensor:
    """The batch's pixels diffused to ``noise_step`` (POVID's distortion), one noise tensor per group."""
    from mmlens.align.baselines import povid_noise_schedule

    if "pixel_values" not in batch:
        raise InputError("the noise variant needs a model whose processor returns pixel_values")
    pv = batch["pixel_values"]
    if pv.shape[0] != len(groups):
        raise InputError("the noise variant needs one image (pixel_values row) per batch row")
    alpha_bar = float(povid_noise_schedule()[noise_step])
    out = []
    for row, g in enumerate(groups):
        if g not in noises:
            source = noise_rng(g) if noise_rng is not None else rng
            gen = torch.Generator().manual_seed(int(source.integers(2**62)))
            noises[g] = torch.randn(tuple(pv.shape[1:]), generator=gen, dtype=torch.float32)
        out.append(np.sqrt(alpha_bar) * pv[row].float() + np.sqrt(1 - alpha_bar) * noises[g])
    return torch.stack(out).to(pv.dtype)


# -------------------------------------------------------------------------------------------------- BDHS
def _cut(sentence: str, unit: PivotUnit, keep_whole: bool, rng: np.random.Generator, tok) -> str:
    """A random prefix of ``sentence`` (never the whole of it unless ``keep_whole`` may be drawn)."""
    if unit is PivotUnit.WORD:
        pieces = sentence.split()
        j = int(rng.integers(0, len(pieces) + (1 if keep_whole else 0)))
        return " ".join(pieces[:j])
    if unit is PivotUnit.CHAR:
        j = int(rng.integers(0, len(sentence) + (1 if keep_whole else 0)))
        return sentence[:j]
    ids = tok(sentence, add_special_tokens=False)["input_ids"]
    j = int(rng.integers(0, len(ids) + (1 if keep_whole else 0)))
    return tok.decode(ids[:j], skip_special_tokens=True) if j else ""


def _join(prefix: str, completion: str) -> str:
    return f"{prefix} {completion}".strip() if prefix else completion.strip()


def same_tokens(tokenizer, a: str, b: str) -> bool:
    """Whether two answers are the same token sequence (a pair of them carries no preference signal); decoding may
    change spacing around punctuation ("diamond ," -> "diamond,") without changing the tokens."""
    ids = tokenizer([a.strip(), b.strip()], add_special_tokens=False)["input_ids"]
    return ids[0] == ids[1]


def default_embedder() -> TextEmbedder:
    """The offline MiniLM sentence encoder (``mmlens.models.embed.SentenceEmbedder``)."""
    from mmlens.models.embed import SentenceEmbedder

    return SentenceEmbedder(progress=False)


def answer_similarity(embedder: TextEmbedder, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """Cosine similarity row by row (empty texts count as identical: they carry no preference signal)."""
    a, b = list(a), list(b)
    sims = np.ones(len(a), dtype=np.float64)
    ok = [i for i in range(len(a)) if a[i].strip() and b[i].strip()]
    if ok:
        ea = np.asarray(embedder.embed([a[i] for i in ok]), dtype=np.float64)
        eb = np.asarray(embedder.embed([b[i] for i in ok]), dtype=np.float64)
        ea /= np.linalg.norm(ea, axis=1, keepdims=True).clip(1e-12)
        eb /= np.linalg.norm(eb, axis=1, keepdims=True).clip(1e-12)
        sims[ok] = (ea * eb).sum(1)
    return sims


def _row_generator(
    vlm: VisionLanguageModel,
    examples: Sequence[SFTExample],
    rows_example: list[int],
    rows_partial: list[str],
    config: BDHSConfig,
    attempt: int,
    progress: bool,
) -> Callable[[int, int], list[tuple[str, int]]]:
    """``(lo, hi) -> [(completion, visible image tokens)]`` of the rows ``lo:hi`` of one try, one
    ``generate_continuations`` call per batch; sampling draws from a torch generator seeded by (seed, try, batch
    start), so sampled completions do not depend on which process runs the batch either."""

    noise = config.corruption is ImageCorruption.NOISE

    def one_batch(lo: int, hi: int) -> tuple[list[str], list[int]]:
        return generate_continuations(
            vlm,
            [examples[i].image for i in rows_example[lo:hi]],
            [examples[i].prompt for i in rows_example[lo:hi]],
            rows_partial[lo:hi],
            groups=rows_example[lo:hi],
            rho=None if noise else config.rho,
            visible_tokens=None if noise else config.visible_tokens,
            mask_layers=config.mask_layers,
            group_rng=lambda g: example_rng(config.seed, g, attempt, 1),
            noise_step=config.noise_step if noise else None,
            noise_rng=lambda g: example_rng(config.seed, g, attempt, 3),
            max_new_tokens=config.max_new_tokens,
            do_sample=config.do_sample,
            temperature=config.temperature,
            batch_size=config.batch_size,
        )

    def generate_rows(lo: int, hi: int) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        starts = range(lo, hi, config.batch_size)
        for start in progress_bar(starts, desc="complete", enabled=progress and len(starts) > 1):
            stop = min(start + config.batch_size, hi)
            if config.do_sample:
                devices = [vlm.device] if vlm.device.type != "cpu" else []
                with torch.random.fork_rng(devices=devices, device_type=vlm.device.type):
                    seed = np.random.SeedSequence([config.seed % 2**64, attempt, start, 2]).generate_state(1)[0]
                    torch.manual_seed(int(seed))
                    texts, visible = one_batch(start, stop)
            else:
                texts, visible = one_batch(start, stop)
            out.extend(zip(texts, visible))
        return out

    return generate_rows


def example_rng(seed: int, example: int, attempt: int, stream: int) -> np.random.Generator:
    """The generator of one example's random decisions at one try (``stream`` 0: flips and cuts, 1: its mask)."""
    return np.random.default_rng([seed % 2**64, example, attempt, stream])


def bdhs_pairs(
    vlm: VisionLanguageModel,
    examples: Sequence[SFTExample],
    config: BDHSConfig = BDHSConfig(),
    *,
    embedder: TextEmbedder | None = None,
    progress: bool = True,
    on_try: Callable[[int, int], None] | None = None,
    work: DistributedWork | None = None,
) -> tuple[list[PreferencePair], BDHSStats]:
    """BDHS preference pairs (chosen = the SFT answer) and statistics per try.

    ``work`` (default: the current ``accelerate launch``, else one process) splits each try's generation batches
    across processes; every process returns all pairs (only the main one should write them) and ``on_try`` is called
    on the main process only."""
    examples = check_examples(examples)
    work = work if work is not None else DistributedWork.from_environment()
    embedder = embedder if embedder is not None else default_embedder()
    tok = vlm.tokenizer
    t0 = time.perf_counter()
    sentences = [split_sentences(ex.answer) for ex in examples]
    rejected: list[str | None] = [None] * len(examples)
    sim_of = np.ones(len(examples))
    tries_of = np.zeros(len(examples), dtype=int)
    visible_of = np.zeros(len(examples))
    accepted_by_try = [0] * config.max_tries
    similarity_by_try: list[float] = []
    tried_by_try: list[int] = []
    pending = list(range(len(examples)))
    generation_seconds = 0.0
    for attempt in range(1, config.max_tries + 1):
        if not pending:
            break
        if on_try is not None and work.is_main_process:
            on_try(attempt, len(pending))
        tried_by_try.append(len(pending))
        # the paper's last try is unguided; without guidance (the ablation) every try is
        unguided = not config.guided or (config.max_tries > 1 and attempt == config.max_tries)
        rows: list[tuple[int, str, str]] = []  # (example, kept prefix of the sentence, whole partial answer)
        for i in pending:
            if unguided:
                rows.append((i, "", ""))
                continue
            rng = example_rng(config.seed, i, attempt, 0)
            for k, sent in enumerate(sentences[i]):
                swap = rng.random() < config.flip_probability
                flipped = flip_yes_no(sent, word_boundary=config.yes_no_word_boundary) if swap else None
                prefix = _cut(
                    flipped if flipped is not None else sent, config.pivot_unit, flipped is not None, rng, tok
                )
                rows.append((i, prefix, _join(" ".join(sentences[i][:k]), prefix)))
        rows_example = [r[0] for r in rows]
        rows_prefix = [r[1] for r in rows]
        rows_partial = [r[2] for r in rows]
        t_gen = time.perf_counter()
        # whole generation batches per process (each padded as in one process), gathered in row order
        generated = work.map_batches(
            _row_generator(
                vlm, examples, rows_example, rows_partial, config, attempt, progress and work.is_main_process
            ),
            len(rows),
            config.batch_size,
        )
        completions, visible = [g[0] for g in generated], [g[1] for g in generated]
        generation_seconds += time.perf_counter() - t_gen
        candidate: dict[int, list[str]] = {i: [] for i in pending}
        for i, prefix, completion, vis in zip(rows_example, rows_prefix, completions, visible):
            completion = completion if unguided else first_sentence(completion)
            candidate[i].append(_join(prefix, completion))
            visible_of[i] = vis
        texts = [" ".join(candidate[i]) for i in pending]
        sims = answer_similarity(embedder, texts, [examples[i].answer for i in pending])
        similarity_by_try.append(float(np.mean(sims)))
        still = []
        for i, text, s in zip(pending, texts, sims):
            if s < config.eps_s or attempt == config.max_tries:
                rejected[i], sim_of[i], tries_of[i] = text, float(s), attempt
                accepted_by_try[attempt - 1] += 1
            else:
                still.append(i)
        pending = still
    tried_by_try += [0] * (config.max_tries - len(tried_by_try))  # tries never reached: one length for all runs
    pairs, dropped = [], 0
    for i, ex in enumerate(examples):
        text = rejected[i] or ""
        if not text.strip() or same_tokens(tok, text, ex.answer):
            dropped += 1
            continue
        pairs.append(
            PreferencePair(
                ex.image,
                ex.prompt,
                ex.answer,
                text,
                {
                    "source": "bdhs",
                    "try": int(tries_of[i]),
                    "similarity": round(float(sim_of[i]), 4),
                    "visible_image_tokens": int(visible_of[i]),
                    "id": ex.example_id,
                },
            )
        )
    ratio = [len(p.rejected.split()) / max(1, len(p.chosen.split())) for p in pairs]
    stats = BDHSStats(
        accepted_by_try,
        len(examples),
        len(pairs),
        dropped,
        time.perf_counter() - t0,
        float(np.mean(sim_of)),
        float(np.mean(visible_of)),
        float(np.mean(ratio)) if ratio else 0.0,
        similarity_by_try,
        generation_seconds,
        tried_by_try,
    )
    return pairs, stats


__all__ = [
    "BDHSStats",
    "bdhs_pairs",
    "continuation_batch",
    "default_embedder",
    "example_rng",
    "first_sentence",
    "flip_yes_no",
    "generate_continuations",
    "same_tokens",
    "answer_similarity",
    "split_sentences",
]
