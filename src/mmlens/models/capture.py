"""Activation capture: hidden states of chosen decoder layers at chosen token positions, through generation.

One ``generate`` call per batch (left-padded, with the attention mask, KV cache on). A forward hook on every chosen
layer (a context manager that always removes itself) keeps, per forward call, only what a position rule can need:
the prefill's last position plus any fixed prompt positions, then the single new position of each cached decoding
step. Stacked in time these are the *emitters*: step ``t`` holds the residual that predicts generated token ``t``
(the reference code's pairing, which :class:`PositionKind.TOKEN_OF_INTEREST` uses).

With ``out_dir`` the result is written as safetensors shards (one per ``shard_size`` inputs) plus a JSON manifest;
an interrupted run resumes by skipping the shards the manifest lists as finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import hashlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from mmlens.errors import InputError
from mmlens.io import write_json_atomic
from mmlens.models.distributed import DistributedWork
from mmlens.models.generative import CausalLanguageModel, VisionLanguageModel
from mmlens.models.hooks import hidden_state, hook_scope
from mmlens.progress import progress_bar

MANIFEST = "manifest.json"
FORMAT = "mmlens.models.capture/1"
FINAL_NORM_KEY = "final_norm"

GenerativeModel = VisionLanguageModel | CausalLanguageModel


class PositionKind(enum.Enum):
    """Which token position of each sample gives its activation vector."""

    #: The position that *emits* the token of interest: first match in the generated text, over the word's
    #: sub-token variants ("word", "Word", " word", " Word"); the reference code's "TOI representation".
    TOKEN_OF_INTEREST = "token_of_interest"
    #: Like TOKEN_OF_INTEREST for any word of a class (e.g. all colour words); the matched word is recorded.
    TOKEN_CLASS = "token_class"
    #: Mean over the positions that emit the generated answer tokens (EOS and padding excluded).
    GENERATED_MEAN = "generated_mean"
    #: The last prompt token (the emitter of the first generated token); also without generation.
    LAST_PROMPT = "last_prompt"
    #: A fixed index into each sample's own (unpadded) prompt tokens; negative counts from the end (-1 = last).
    FIXED_INDEX = "fixed_index"


@dataclass(frozen=True)
class PositionRule:
    """A :class:`PositionKind` and its argument: ``words`` for the token kinds, ``index`` for FIXED_INDEX."""

    kind: PositionKind
    words: tuple[str, ...] = ()
    index: int = -1

    def __post_init__(self) -> None:
        if not isinstance(self.kind, PositionKind):
            raise InputError(f"position kind must be a PositionKind, got {self.kind!r}")
        object.__setattr__(self, "words", tuple(self.words))
        if self.kind in (PositionKind.TOKEN_OF_INTEREST, PositionKind.TOKEN_CLASS):
            if not self.words or not all(isinstance(w, str) and w.strip() for w in self.words):
                raise InputError(f"position {self.kind.value} needs non-empty words")

    @property
    def needs_generation(self) -> bool:
        return self.kind in (PositionKind.TOKEN_OF_INTEREST, PositionKind.TOKEN_CLASS, PositionKind.GENERATED_MEAN)


@dataclass(frozen=True)
class CaptureConfig:
    """What to capture. ``layers`` are decoder-layer indices (negative from the end); ``final_norm`` adds the
    final-normed residual (key ``"final_norm"``). Filters keep a sample only if one of ``filter_words`` (default:
    the position's words) occurs as a word in its ground truth / its generated text. ``max_new_tokens=0`` runs a
    single forward pass (LAST_PROMPT and FIXED_INDEX only)."""

    layers: tuple[int, ...] = (-1,)
    position: PositionRule = field(default_factory=lambda: PositionRule(PositionKind.LAST_PROMPT))
    final_norm: bool = False
    max_new_tokens: int = 16
    batch_size: int = 16
    require_in_ground_truth: bool = False
    require_in_prediction: bool = False
    filter_words: tuple[str, ...] = ()
    shard_size: int = 512  # inputs per safetensors shard when writing to out_dir

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        object.__setattr__(self, "filter_words", tuple(self.filter_words))
        if not self.layers and not self.final_norm:
            raise InputError("capture needs at least one layer or final_norm=True")
        if self.batch_size < 1 or self.shard_size < 1:
            raise InputError("batch_size and shard_size must be >= 1")
        if self.max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.max_new_tokens == 0 and (self.position.needs_generation or self.require_in_prediction):
            raise InputError(
                f"position {self.position.kind.value} and the prediction filter need generated "
                "tokens: set max_new_tokens >= 1"
            )
        if (self.require_in_ground_truth or self.require_in_prediction) and not self.words_for_filters:
            raise InputError("the ground-truth/prediction filters need filter_words (or position words)")

    @property
    def words_for_filters(self) -> tuple[str, ...]:
        return self.filter_words or self.position.words

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["position"] = {
            "kind": self.position.kind.value,
            "words": list(self.position.words),
            "index": self.position.index,
        }
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CaptureConfig:
        d = dict(d)
        p = d.pop("position")
        rule = PositionRule(PositionKind(p["kind"]), tuple(p.get("words", ())), int(p.get("index", -1)))
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(position=rule, **fields)


def layer_key(index: int) -> str:
    """Key of a (non-negative) decoder layer's tensor in :attr:`CaptureResult.activations`."""
    return f"layer.{index}"


@dataclass
class CaptureResult:
    """Captured vectors of the kept samples.

    ``activations[key]`` is a float32 tensor (n_kept, hidden) per layer key (``layer.N``, ``final_norm``);
    ``sample_index[i]`` is the input index of row ``i``; ``generated`` holds the generated text of *every* input
    (empty without generation); ``matched_word[i]`` the word whose token was found (token kinds, else "");
    ``position[i]`` the step (generated-token index) or prompt index the row was taken at (-1 for means).
    """

    activations: dict[str, torch.Tensor]
    sample_index: torch.Tensor
    generated: list[str]
    matched_word: list[str]
    position: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.sample_index.numel())

    @property
    def keys(self) -> list[str]:
        return list(self.activations)

    def layer(self, index: int | str) -> torch.Tensor:
        """Activations of decoder layer ``index`` (negative from the end) or of a key such as ``"final_norm"``."""
        if isinstance(index, str):
            return self.activations[index]
        n = int(self.metadata.get("num_layers", 0))
        key = layer_key(index % n if n else index)
        if key not in self.activations:
            raise InputError(f"layer {index} was not captured; captured: {', '.join(self.activations)}")
        return self.activations[key]

    @property
    def kept_generated(self) -> list[str]:
        return [self.generated[i] for i in self.sample_index.tolist()] if self.generated else []

    def select(self, input_indices: Sequence[int]) -> CaptureResult:
        """The rows whose input index is in ``input_indices``, in that order (each must have been kept)."""
        row_of = {int(s): r for r, s in enumerate(self.sample_index.tolist())}
        missing = [i for i in input_indices if int(i) not in row_of]
        if missing:
            raise InputError(f"{len(missing)} requested samples were not kept (e.g. input {missing[0]})")
        rows = torch.tensor([row_of[int(i)] for i in input_indices], dtype=torch.long)
        return CaptureResult(
            {k: v[rows] for k, v in self.activations.items()},
            self.sample_index[rows],
            list(self.generated),
            [self.matched_word[r] for r in rows.tolist()],
            self.position[rows],
            dict(self.metadata),
        )


def common_samples(a: CaptureResult, b: CaptureResult) -> tuple[CaptureResult, CaptureResult]:
    """The filter "token of interest in both models' predictions": both results restricted to the inputs both
    kept, row-aligned (row i of each is the same input)."""
    shared = sorted(set(a.sample_index.tolist()) & set(b.sample_index.tolist()))
    if not shared:
        raise InputError("the two captures keep no common sample: no input passed both models' filters")
    return a.select(shared), b.select(shared)


# ----------------------------------------------------------------------------------------------- matching
def contains_word(text: str, words: Sequence[str]) -> bool:
    """True if any of ``words`` occurs in ``text`` as a whole word (case-insensitive)."""
    lowered = text.lower()
    return any(re.search(rf"(?<![a-z0-9]){re.escape(w.lower())}(?![a-z0-9])", lowered) for w in words)


def token_variants(tokenizer: Any, word: str) -> list[tuple[int, ...]]:
    """Token-id sequences the tokenizer may produce for ``word`` in generated text: the word, capitalised and
    lower-cased, each with and without a leading space; sequences holding the unknown token are dropped."""
    forms = {word, word.lower(), word.capitalize()}
    unk = getattr(tokenizer, "unk_token_id", None)
    out: list[tuple[int, ...]] = []
    for form in sorted(forms):
        for text in (form, " " + form):
            ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
            if ids and unk not in ids and ids not in out:
                out.append(ids)
    return out


def _first_match(ids: Sequence[int], variants: Mapping[str, list[tuple[int, ...]]]) -> tuple[int, str] | None:
    """(step, word) of the earliest generated token that starts one of the variants' full id sequence."""
    for t in range(len(ids)):
        for word, seqs in variants.items():
            for seq in seqs:
                if tuple(ids[t : t + len(seq)]) == seq:
                    return t, word
    return None


# -------------------------------------------------------------------------------------------------- hooks
@contextlib.contextmanager
def record_emitters(
    modules: Mapping[str, nn.Module], prompt_positions: torch.Tensor
) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Forward hooks that keep, per module, the prefill rows at ``prompt_positions`` ([B, P] indices into the
    padded prompt) on the first call and the last position of every later (cached decoding) call.

    ``store[name][0]`` is [B, P, D]; ``store[name][t]`` for t >= 1 is [B, D], the emitter of generated token t.
    """
    store: dict[str, list[torch.Tensor]] = {name: [] for name in modules}

    def make_hook(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            h = hidden_state(output).detach()
            if not store[name]:
                idx = prompt_positions.to(h.device).unsqueeze(-1).expand(-1, -1, h.shape[-1])
                store[name].append(h.gather(1, idx).float().cpu())
            else:
                store[name].append(h[:, -1].float().cpu())

        return hook

    with hook_scope() as keep:
        for name, module in modules.items():
            keep(module.register_forward_hook(make_hook(name)))
        yield store


# ------------------------------------------------------------------------------------------------ capture
def _modules(model: GenerativeModel, config: CaptureConfig) -> dict[str, nn.Module]:
    n = model.num_layers
    modules: dict[str, nn.Module] = {}
    for i in config.layers:
        if not -n <= i < n:
            raise InputError(f"layer {i} does not exist: the model has {n} decoder layers (use -{n}..{n - 1})")
        modules[layer_key(i % n)] = model.decoder_layers[i % n]
    if config.final_norm:
        modules[FINAL_NORM_KEY] = model.final_norm
    return modules


def _eos_ids(model: GenerativeModel) -> set[int]:
    eos = getattr(model.base_model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = model.tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}


def model_fingerprint(model: GenerativeModel) -> str:
    """A short hash of the model's config and a few weights (cheap; tells two checkpoints apart)."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for tensor in (model.lm_head.weight, next(model.decoder_layers[-1].parameters())):
            flat = tensor.detach().flatten()
            sample = flat[:: max(1, flat.numel() // 100_000)].double()  # a strided sample: cheap on a 7B model
            h.update(f"{float(sample.sum()):.10e}|{float(sample.abs().sum()):.10e}".encode())
    return h.hexdigest()[:16]


def inputs_fingerprint(
    images: Sequence[Any] | None, prompts: Sequence[str], ground_truths: Sequence[str] | None
) -> str:
    h = hashlib.sha256(json.dumps([list(prompts), list(ground_truths or [])]).encode())
    for entry in images or []:
        for im in [] if entry is None else [entry] if hasattr(entry, "tobytes") else list(entry):
            h.update(hashlib.sha256(im.tobytes()).digest())
    return h.hexdigest()[:16]


def _validate(model: Any, images: Any, prompts: Sequence[str], ground_truths: Sequence[str] | None) -> None:
    if not isinstance(model, (VisionLanguageModel, CausalLanguageModel)):
        raise InputError(f"capture needs a VisionLanguageModel or CausalLanguageModel, got {type(model).__name__}")
    if not prompts:
        raise InputError("capture needs at least one prompt (the dataset is empty)")
    if isinstance(model, CausalLanguageModel) and images is not None:
        raise InputError("a text-only causal LM takes images=None")
    if images is not None and len(images) != len(prompts):
        raise InputError(f"got {len(images)} images for {len(prompts)} prompts: pass one per prompt")
    if ground_truths is not None and len(ground_truths) != len(prompts):
        raise InputError(f"got {len(ground_truths)} ground truths for {len(prompts)} prompts")


def _prompt_positions(attention_mask: torch.Tensor, rule: PositionRule) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, P] positions to keep at prefill, [B] validity): the last position always (column 0), plus the
    FIXED_INDEX position of each row among its own non-padding tokens (column 1)."""
    b, length = attention_mask.shape
    last = torch.full((b,), length - 1, dtype=torch.long)
    valid = torch.ones(b, dtype=torch.bool)
    if rule.kind is not PositionKind.FIXED_INDEX:
        return last.unsqueeze(1), valid
    fixed = torch.empty(b, dtype=torch.long)
    for row in range(b):
        real = attention_mask[row].nonzero().flatten()
        i = rule.index if rule.index >= 0 else len(real) + rule.index
        valid[row] = 0 <= i < len(real)
        fixed[row] = real[i] if valid[row] else length - 1
    return torch.stack([last, fixed], dim=1), valid


@torch.no_grad()
def _capture_batch(
    model: GenerativeModel,
    images: Sequence[Any] | None,
    prompts: list[str],
    ground_truths: list[str] | None,
    config: CaptureConfig,
    modules: dict[str, nn.Module],
    variants: dict[str, list[tuple[int, ...]]],
    eos: set[int],
) -> dict[str, Any]:
    """Capture one batch; returns kept rows (batch-local indices), their vectors and all generated texts."""
    if isinstance(model, VisionLanguageModel):
        batch = model.prepare(images, prompts)
    else:
        batch = model.prepare(prompts)
    batch.pop("labels", None)
    batch = model.to_device(batch)
    prompt_positions, valid = _prompt_positions(batch["attention_mask"].cpu(), config.position)
    tok = model.tokenizer
    with record_emitters(modules, prompt_positions) as store:
        if config.max_new_tokens == 0:
            model.model(**batch, use_cache=False)
            new_tokens = torch.empty(len(prompts), 0, dtype=torch.long)
        else:
            # Greedy, one beam: beam search reorders rows between steps, which would break the emitter pairing.
            kwargs = dict(
                max_new_tokens=config.max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tok.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            sequences = model.model.generate(**batch, **kwargs)
            new_tokens = sequences[:, batch["input_ids"].shape[1] :].cpu()
    # Answer length per row: up to (excluding) the first EOS.
    lengths = []
    for row in new_tokens.tolist():
        stop = next((t for t, i in enumerate(row) if i in eos), len(row))
        lengths.append(stop)
    texts = [tok.decode(row[:n], skip_special_tokens=True).strip() for row, n in zip(new_tokens.tolist(), lengths)]

    kind = config.position.kind
    words = config.words_for_filters
    kept, steps, matched = [], [], []
    for r in range(len(prompts)):
        if config.require_in_ground_truth and not contains_word((ground_truths or [])[r], words):
            continue
        if config.require_in_prediction and not contains_word(texts[r], words):
            continue
        if kind in (PositionKind.TOKEN_OF_INTEREST, PositionKind.TOKEN_CLASS):
            hit = _first_match(new_tokens[r, : lengths[r]].tolist(), variants)
            if hit is None:
                continue
            steps.append(hit[0])
            matched.append(hit[1])
        elif kind is PositionKind.GENERATED_MEAN:
            if lengths[r] == 0:
                continue
            steps.append(-1)
            matched.append("")
        elif kind is PositionKind.FIXED_INDEX:
            if not valid[r]:
                continue
            steps.append(int(config.position.index))
            matched.append("")
        else:
            steps.append(0)
            matched.append("")
        kept.append(r)

    vectors: dict[str, torch.Tensor] = {}
    for key, calls in store.items():
        prefill = calls[0]  # [B, P, D]
        if kind is PositionKind.FIXED_INDEX:
            vectors[key] = prefill[kept, 1]
            continue
        emitters = torch.stack([prefill[:, 0], *calls[1:]], dim=1)  # [B, steps, D]: step t emits token t
        if kind is PositionKind.GENERATED_MEAN:
            rows = [emitters[r, : lengths[r]].mean(0) for r in kept]
            vectors[key] = torch.stack(rows) if rows else emitters.new_zeros(0, emitters.shape[-1])
        else:
            vectors[key] = (
                emitters[kept, torch.tensor(steps, dtype=torch.long)]
                if kept
                else emitters.new_zeros(0, emitters.shape[-1])
            )
    return {"kept": kept, "steps": steps, "matched": matched, "vectors": vectors, "texts": texts}


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def _write_shard(path: Path, part: dict[str, Any]) -> None:
    tensors = {f"act.{k}": v.contiguous() for k, v in part["vectors"].items()}
    tensors["sample_index"] = torch.tensor(part["kept"], dtype=torch.long)
    tensors["position"] = torch.tensor(part["steps"], dtype=torch.long)
    meta = {"generated": json.dumps(part["texts"]), "matched_word": json.dumps(part["matched"])}
    # Written beside the target and renamed: a shard on disk is always complete.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_shard(path: Path) -> dict[str, Any]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for truncated files
        raise InputError(f"cannot read capture shard {path}: {err}") from err
    return {
        "kept": tensors["sample_index"].tolist(),
        "steps": tensors["position"].tolist(),
        "vectors": {k[4:]: v for k, v in tensors.items() if k.startswith("act.")},
        "texts": json.loads(meta.get("generated", "[]")),
        "matched": json.loads(meta.get("matched_word", "[]")),
    }


def _merge(
    parts: list[tuple[int, dict[str, Any]]], keys: list[str], hidden: int, n_inputs: int, metadata: dict[str, Any]
) -> CaptureResult:
    generated = [""] * n_inputs
    index: list[int] = []
    steps: list[int] = []
    matched: list[str] = []
    vectors: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for start, part in parts:
        generated[start : start + len(part["texts"])] = part["texts"]
        index.extend(start + r for r in part["kept"])
        steps.extend(part["steps"])
        matched.extend(part["matched"])
        for k in keys:
            vectors[k].append(part["vectors"][k])
    acts = {k: torch.cat(v) if v else torch.zeros(0, hidden) for k, v in vectors.items()}
    return CaptureResult(
        acts, torch.tensor(index, dtype=torch.long), generated, matched, torch.tensor(steps, dtype=torch.long), metadata
    )


def capture_activations(
    model: GenerativeModel,
    images: Sequence[Any] | None,
    prompts: Sequence[str],
    config: CaptureConfig,
    *,
    ground_truths: Sequence[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    work: DistributedWork | None = None,
) -> CaptureResult:
    """Capture activations of ``model`` (a :class:`VisionLanguageModel`, or a :class:`CausalLanguageModel` with
    ``images=None``) on ``prompts`` according to ``config``; see :class:`CaptureResult`.

    With ``out_dir``: shards + ``manifest.json`` are written there; rerunning with the same model, inputs and
    config resumes (finished shards are read back, not recomputed); a folder holding a different capture is refused.

    Under ``accelerate launch`` (``work``: default :meth:`DistributedWork.from_environment`) the batches of each
    shard are split across the processes and gathered; every process returns the full result, the main process
    writes the shards and the manifest, so the folder is the one a single process writes. The batches are the
    single-process ones, so the result equals the single-process result.
    """
    prompts = list(prompts)
    _validate(model, images, prompts, ground_truths)
    if config.require_in_ground_truth and ground_truths is None:
        raise InputError("require_in_ground_truth needs ground_truths (one text per prompt)")
    ground_truths = list(ground_truths) if ground_truths is not None else None
    images = list(images) if images is not None else None
    modules = _modules(model, config)
    keys = list(modules)
    hidden = int(model.lm_head.weight.shape[1])
    variants = {w: token_variants(model.tokenizer, w) for w in config.position.words}
    if config.position.kind in (PositionKind.TOKEN_OF_INTEREST, PositionKind.TOKEN_CLASS):
        unknown = [w for w, v in variants.items() if not v]
        if unknown:
            raise InputError(f"the tokenizer cannot write {unknown} (unknown tokens): choose words it knows")
    eos = _eos_ids(model)
    n = len(prompts)
    metadata: dict[str, Any] = {
        "format": FORMAT,
        "config": config.to_dict(),
        "model_class": type(model.base_model).__name__,
        "model_fingerprint": model_fingerprint(model),
        "n_inputs": n,
        "num_layers": model.num_layers,
        "hidden_size": hidden,
        "keys": keys,
    }
    shard_size = max(config.shard_size, 1)
    shards = [(k, s, min(s + shard_size, n)) for k, s in enumerate(range(0, n, shard_size))]
    done: dict[int, dict] = {}
    root = Path(out_dir) if out_dir is not None else None
    if root is not None:
        # Hashing every image costs a few percent of a tiny model's capture: only resumable runs need it.
        metadata["inputs_fingerprint"] = inputs_fingerprint(images, prompts, ground_truths)
        root.mkdir(parents=True, exist_ok=True)
        manifest_path = root / MANIFEST
        if manifest_path.is_file():
            old = json.loads(manifest_path.read_text())
            ours = json.loads(json.dumps(metadata))  # tuples -> lists, as they were stored
            same = all(old.get(k) == ours[k] for k in ("format", "config", "model_fingerprint", "inputs_fingerprint"))
            if not same:
                raise InputError(
                    f"{root} holds a capture of another model, inputs or config: choose another folder or delete it"
                )
            done = {int(s["shard"]): s for s in old.get("shards", []) if (root / s["file"]).is_file()}
    work = work if work is not None else DistributedWork.from_environment()
    metadata["num_processes"] = work.num_processes
    n_batches = sum(math.ceil((stop - start) / config.batch_size) for k, start, stop in shards if k not in done)
    bar = progress_bar(total=n_batches, desc="capture", enabled=progress and n_batches > 1 and work.is_main_process)
    parts: list[tuple[int, dict[str, Any]]] = []
    t0 = time.perf_counter()
    computed = 0

    def run_batch(lo: int, stop: int) -> dict[str, Any]:
        hi = min(lo + config.batch_size, stop)
        part = _capture_batch(
            model,
            images[lo:hi] if images is not None else None,
            prompts[lo:hi],
            ground_truths[lo:hi] if ground_truths is not None else None,
            config,
            modules,
            variants,
            eos,
        )
        if not work.is_distributed:
            bar.update(1)
        return part

    try:
        for k, start, stop in shards:
            if k in done:
                parts.append((start, _read_shard(root / done[k]["file"])))
                continue
            starts = list(range(start, stop, config.batch_size))
            # Batches (not samples) are split across processes: each batch is the single-process one.
            batch_parts = work.map(functools.partial(run_batch, stop=stop), starts)
            if work.is_distributed:
                bar.update(len(starts))
            batches = [(lo - start, p) for lo, p in zip(starts, batch_parts)]
            computed += stop - start
            shard = {
                "kept": [off + r for off, p in batches for r in p["kept"]],
                "steps": [s for _, p in batches for s in p["steps"]],
                "matched": [m for _, p in batches for m in p["matched"]],
                "texts": [t for _, p in batches for t in p["texts"]],
                "vectors": {key: torch.cat([p["vectors"][key] for _, p in batches]) for key in keys},
            }
            parts.append((start, shard))
            if root is not None:
                done[k] = {
                    "shard": k,
                    "file": _shard_name(k),
                    "start": start,
                    "stop": stop,
                    "n_kept": len(shard["kept"]),
                }
                if work.is_main_process:
                    _write_shard(root / _shard_name(k), shard)
                    write_json_atomic(
                        root / MANIFEST,
                        {**metadata, "shards": [done[j] for j in sorted(done)], "complete": len(done) == len(shards)},
                    )
    finally:
        bar.close()
    # The other processes return once the main one has written everything.
    work.wait_for_everyone()
    seconds = time.perf_counter() - t0
    metadata.update(
        computed_inputs=computed,
        seconds=round(seconds, 3),
        samples_per_s=round(computed / seconds, 3) if computed and seconds > 0 else None,
    )
    result = _merge(parts, keys, hidden, n, metadata)
    result.metadata["n_kept"] = len(result)
    return result


def load_capture(out_dir: str | os.PathLike[str]) -> CaptureResult:
    """Read a finished capture written by :func:`capture_activations` with ``out_dir``."""
    root = Path(out_dir)
    path = root / MANIFEST
    if not path.is_file():
        raise InputError(f"{root} holds no capture ({MANIFEST} is missing)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON: {err}") from err
    if manifest.get("format") != FORMAT:
        raise InputError(f"{path} is not an mmlens capture manifest")
    if not manifest.get("complete"):
        raise InputError(f"the capture in {root} is unfinished: rerun the same capture to resume it")
    parts = [(int(s["start"]), _read_shard(root / s["file"])) for s in manifest["shards"]]
    metadata = {k: v for k, v in manifest.items() if k not in ("shards", "complete")}
    result = _merge(parts, list(manifest["keys"]), int(manifest["hidden_size"]), int(manifest["n_inputs"]), metadata)
    result.metadata["n_kept"] = len(result)
    return result
