"""Steering vectors: how they are made (coarse, concept differences, fine-tuning shifts, controls) and stored.

A :class:`SteeringVector` is a direction in the residual stream after one decoder layer, named source -> target
(adding it moves the model from the source behaviour toward the target), with the provenance needed to reuse it:
the model, the layer, the capture position and how it was made. Files are safetensors with that provenance as JSON
metadata, so a vector can be inspected or loaded without mmlens.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmlens.errors import InputError

METADATA_KEY = "mmlens.steer.vectors"
FORMAT_VERSION = 1


class VectorKind(enum.Enum):
    """How a steering vector was made."""

    COARSE = "coarse"  # mean(target activations) - mean(source activations)
    CONCEPT = "concept"  # u_target - u_source between two concepts of a dictionary
    SHIFT = "shift"  # mean(fine-tuned - original) activations of the same samples (globally or per concept)
    RANDOM = "random"  # control: a random direction with the norm of another vector
    SHUFFLED = "shuffled"  # control: the mean difference after shuffling the source/target labels
    CUSTOM = "custom"  # given by the user


class ShiftReducer(enum.Enum):
    """How per-sample shifts b_m - a_m are averaged into one vector."""

    MEAN = "mean"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed_mean"  # 10% trimmed on each side, per coordinate


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """A direction added to the output hidden state of decoder layer ``layer`` (0-based), named source -> target.

    ``reference`` is the mean source activation at that layer when known: the logit-bias baseline pushes the vector
    through the final norm linearised there. ``contrasts`` (m, hidden) are the centres of the other concepts (other
    answers, other dictionary concepts): with ``SteerCondition.SOURCE_CONCEPT`` a sample is steered only when its
    activation is nearer ``reference`` than every contrast. ``info`` holds JSON-serialisable provenance.
    """

    vector: torch.Tensor
    layer: int
    kind: VectorKind
    source: str = "source"
    target: str = "target"
    model: str = ""
    position: str = ""
    reference: torch.Tensor | None = None
    info: Mapping[str, Any] = field(default_factory=dict)
    contrasts: torch.Tensor | None = None

    def __post_init__(self) -> None:
        vec = _as_tensor(self.vector, "the steering vector")
        if vec.ndim != 1 or vec.numel() == 0:
            raise InputError(f"a steering vector must be 1-D (hidden,), got shape {tuple(vec.shape)}")
        _check_finite(vec, "the steering vector")
        object.__setattr__(self, "vector", vec)
        if self.reference is not None:
            ref = _as_tensor(self.reference, "the reference activation")
            if ref.shape != vec.shape:
                raise InputError(f"reference shape {tuple(ref.shape)} does not match the vector {tuple(vec.shape)}")
            object.__setattr__(self, "reference", ref)
        if self.contrasts is not None:
            con = _as_tensor(self.contrasts, "the contrast concepts")
            if con.ndim != 2 or con.shape[1] != vec.numel():
                raise InputError(f"contrasts must be (m, {vec.numel()}), got shape {tuple(con.shape)}")
            _check_finite(con, "the contrast concepts")
            object.__setattr__(self, "contrasts", con)
        if not isinstance(self.kind, VectorKind):
            object.__setattr__(self, "kind", VectorKind(self.kind))
        if int(self.layer) < 0:
            raise InputError(f"layer must be >= 0 (0 = output of the first decoder layer), got {self.layer}")
        object.__setattr__(self, "layer", int(self.layer))

    @property
    def hidden_size(self) -> int:
        return int(self.vector.numel())

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    @property
    def name(self) -> str:
        return f"{self.kind.value}:{self.source}->{self.target}@L{self.layer}"

    def with_vector(self, vector: torch.Tensor, kind: VectorKind, **info: Any) -> SteeringVector:
        """The same site and names with another direction (used for the controls)."""
        return SteeringVector(
            vector,
            self.layer,
            kind,
            self.source,
            self.target,
            self.model,
            self.position,
            self.reference,
            {**self.info, **info},
            self.contrasts,
        )

    def describe(self) -> dict[str, Any]:
        """JSON-ready provenance (no tensors)."""
        return {
            "name": self.name,
            "kind": self.kind.value,
            "layer": self.layer,
            "source": self.source,
            "target": self.target,
            "model": self.model,
            "position": self.position,
            "norm": round(self.norm, 6),
            "hidden_size": self.hidden_size,
            "n_contrasts": 0 if self.contrasts is None else int(self.contrasts.shape[0]),
            "info": dict(self.info),
        }


# ------------------------------------------------------------------------------------------------ validation
def _as_tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{what} must be a torch tensor or numpy array, got {type(value).__name__}")
    return value.detach().to("cpu", torch.float32)


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not torch.isfinite(t).all():
        raise InputError(f"{what} contains NaN or infinite values")


def _activations(acts: Any, what: str) -> torch.Tensor:
    t = _as_tensor(acts, what)
    if t.ndim != 2:
        raise InputError(f"{what} must be 2-D (samples, hidden), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise InputError(f"{what} is empty: no samples to average")
    _check_finite(t, what)
    return t


# ---------------------------------------------------------------------------------------------- construction
def coarse_vector(
    source_acts: Any,
    target_acts: Any,
    *,
    layer: int,
    source: str = "source",
    target: str = "target",
    model: str = "",
    position: str = "",
    contrasts: Any = None,
) -> SteeringVector:
    """Coarse steering: mean(target) - mean(source) over activations at one layer (e.g. answers "no" vs "yes").
    ``contrasts``: centres of other concepts, for conditional application (see :class:`SteeringVector`)."""
    src = _activations(source_acts, f"the source activations ({source})")
    tgt = _activations(target_acts, f"the target activations ({target})")
    if src.shape[1] != tgt.shape[1]:
        raise InputError(f"source and target activations differ in hidden size: {src.shape[1]} vs {tgt.shape[1]}")
    src_mean = src.mean(0)
    return SteeringVector(
        tgt.mean(0) - src_mean,
        layer,
        VectorKind.COARSE,
        source,
        target,
        model,
        position,
        reference=src_mean,
        info={"n_source": int(src.shape[0]), "n_target": int(tgt.shape[0])},
        contrasts=contrasts,
    )


def _label_rows(labels: Sequence[str], value: str) -> torch.Tensor:
    return torch.tensor([lab == value for lab in labels], dtype=torch.bool)


def vector_from_labels(
    acts: Any,
    labels: Sequence[str],
    source: str,
    target: str,
    *,
    layer: int,
    model: str = "",
    position: str = "",
    ignore: Sequence[str] = ("",),
) -> SteeringVector:
    """:func:`coarse_vector` from one activation matrix and a label per row (e.g. the model's answers). The mean
    of every other label (except ``ignore``) becomes a contrast: conditional steering then acts on the samples
    nearer the source than any other answer except the target (steering a target-like sample is harmless)."""
    t = _activations(acts, "the activations")
    if len(labels) != t.shape[0]:
        raise InputError(f"got {len(labels)} labels for {t.shape[0]} activation rows")
    src, tgt = _label_rows(labels, source), _label_rows(labels, target)
    if not src.any() or not tgt.any():
        missing = source if not src.any() else target
        raise InputError(f"no activation is labelled {missing!r}: cannot build a {source}->{target} vector")
    others = sorted({lab for lab in labels} - {source, target, *ignore})
    contrasts = torch.stack([t[_label_rows(labels, lab)].mean(0) for lab in others]) if others else None
    return coarse_vector(
        t[src], t[tgt], layer=layer, source=source, target=target, model=model, position=position, contrasts=contrasts
    )


def shuffled_vector(
    acts: Any,
    labels: Sequence[str],
    source: str,
    target: str,
    *,
    layer: int,
    seed: int = 0,
    model: str = "",
    position: str = "",
) -> SteeringVector:
    """Control: the source/target mean difference after permuting the labels of the source+target rows. It keeps
    the real vector's reference and contrasts, so a conditional application gates it exactly like the real one."""
    t = _activations(acts, "the activations")
    real = vector_from_labels(t, labels, source, target, layer=layer, model=model, position=position)
    keep = (_label_rows(labels, source) | _label_rows(labels, target)).numpy()
    shuffled = np.random.default_rng(seed).permutation(np.asarray(labels, dtype=object)[keep])
    kept = t[torch.from_numpy(keep)]
    direction = kept[torch.from_numpy(shuffled == target)].mean(0) - kept[torch.from_numpy(shuffled == source)].mean(0)
    return real.with_vector(direction, VectorKind.SHUFFLED, seed=seed)


def random_like(vector: SteeringVector, *, seed: int = 0) -> SteeringVector:
    """Control: a uniformly random direction with the same norm (and site) as ``vector``."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(vector.hidden_size, generator=gen)
    return vector.with_vector(
        direction / direction.norm() * vector.norm, VectorKind.RANDOM, seed=seed, matched=vector.name
    )


def dictionary_matrix(dictionary: Any) -> torch.Tensor:
    """The (k, hidden) concept matrix of a dictionary: a tensor/array, a fitted decomposer exposing ``concepts``,
    ``concepts_``, ``components_`` or ``cluster_centers_`` (sklearn style), or the path of a saved
    ``mmlens.concepts`` decomposer."""
    if isinstance(dictionary, (str, os.PathLike)):
        dictionary = _load_decomposer(Path(dictionary))
    if not isinstance(dictionary, (torch.Tensor, np.ndarray)):
        for attr in ("concepts", "concepts_", "components_", "cluster_centers_"):
            value = getattr(dictionary, attr, None)
            if isinstance(value, (torch.Tensor, np.ndarray)):
                dictionary = value
                break
        else:
            raise InputError(f"cannot read concepts from a {type(dictionary).__name__}: pass a (k, hidden) tensor")
    matrix = _activations(dictionary, "the concept dictionary")
    if matrix.shape[0] < 2:
        raise InputError("a concept dictionary needs at least 2 concepts to form differences")
    return matrix


def _load_decomposer(path: Path) -> Any:
    """A dictionary file: any safetensors file holding one (k, hidden) matrix (key ``concepts``/``components``, or
    the only tensor). A saved ``mmlens.concepts`` ``ConceptDictionary`` keeps its concepts under ``components``, so
    it is read here without importing that package."""
    if not path.is_file():
        raise InputError(f"concept dictionary not found: {path}")
    tensors = _read_safetensors(path)
    for key in ("concepts", "components", "components_", "cluster_centers_"):
        if key in tensors:
            return tensors[key]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise InputError(f"{path} holds tensors {sorted(tensors)}; none is a (k, hidden) concept matrix")


def concept_vectors(
    dictionary: Any,
    *,
    layer: int,
    names: Sequence[str] | None = None,
    pairs: Iterable[tuple[int, int]] | None = None,
    model: str = "",
    position: str = "",
) -> list[SteeringVector]:
    """Fine-grained steering: u_target - u_source for ordered pairs of concepts (all pairs by default).

    The vector named ``i->j`` moves from concept i toward concept j (the reference code stores u_i - u_j under
    "concept i to j"; here the name and the sign agree). ``reference`` is the source concept itself.
    """
    matrix = dictionary_matrix(dictionary)
    k = matrix.shape[0]
    labels = list(names) if names is not None else [f"c{i}" for i in range(k)]
    if len(labels) != k:
        raise InputError(f"got {len(labels)} names for {k} concepts")
    chosen = list(pairs) if pairs is not None else [(i, j) for i in range(k) for j in range(k) if i != j]
    out = []
    for i, j in chosen:
        if not (0 <= i < k and 0 <= j < k) or i == j:
            raise InputError(f"bad concept pair ({i}, {j}) for a dictionary of {k} concepts")
        rest = [c for c in range(k) if c not in (i, j)]
        out.append(
            SteeringVector(
                matrix[j] - matrix[i],
                layer,
                VectorKind.CONCEPT,
                labels[i],
                labels[j],
                model,
                position,
                reference=matrix[i],
                info={"source_index": i, "target_index": j},
                contrasts=matrix[rest] if rest else None,
            )
        )
    return out


def _reduce(deltas: torch.Tensor, reducer: ShiftReducer) -> torch.Tensor:
    if reducer is ShiftReducer.MEAN:
        return deltas.mean(0)
    if reducer is ShiftReducer.MEDIAN:
        return deltas.median(0).values
    from scipy.stats import trim_mean

    return torch.from_numpy(np.asarray(trim_mean(deltas.numpy(), 0.1, axis=0), dtype=np.float32))


def finetuning_shift_vectors(
    original_acts: Any,
    finetuned_acts: Any,
    *,
    layer: int,
    dictionary: Any = None,
    assignments: Sequence[int] | None = None,
    reducer: ShiftReducer = ShiftReducer.MEAN,
    names: Sequence[str] | None = None,
    model: str = "",
    position: str = "",
    original: str = "original",
    finetuned: str = "finetuned",
) -> list[SteeringVector]:
    """Fine-tuning shift vectors from the activations of the original and the fine-tuned model on the same samples.

    The first vector is the global shift (reduced b_m - a_m over all samples); it steers the original model toward
    the fine-tuned behaviour. With a ``dictionary`` of the original model's concepts (each sample assigned by the
    rule of ``mmlens.concepts``: argmax_k |v_k(x)| of the dictionary's ``assign``; a bare matrix counts as k-means
    centroids, i.e. the nearest one) or explicit ``assignments``, one vector per concept k follows: the shift Delta_k of its samples.
    """
    a = _activations(original_acts, f"the {original} model's activations")
    b = _activations(finetuned_acts, f"the {finetuned} model's activations")
    if a.shape != b.shape:
        raise InputError(
            f"original and fine-tuned activations must hold the same samples: {tuple(a.shape)} vs {tuple(b.shape)}"
        )
    deltas = b - a
    out = [
        SteeringVector(
            _reduce(deltas, reducer),
            layer,
            VectorKind.SHIFT,
            original,
            finetuned,
            model,
            position,
            reference=a.mean(0),
            info={"n_samples": int(a.shape[0]), "reducer": reducer.value, "scope": "global"},
        )
    ]
    if dictionary is not None and assignments is not None:
        raise InputError("pass either a dictionary or assignments, not both")
    if dictionary is not None:
        if isinstance(dictionary, (str, os.PathLike)):
            dictionary = _load_decomposer(Path(dictionary))
        matrix = dictionary_matrix(dictionary)
        if matrix.shape[1] != a.shape[1]:
            raise InputError(
                f"the dictionary's hidden size {matrix.shape[1]} differs from the activations' {a.shape[1]}"
            )
        # One assignment rule with mmlens.concepts: argmax_k |v_k(x)| of the dictionary's own encoding (its
        # ``assign``); a bare matrix is read as k-means centroids, whose argmax activation is the nearest centroid.
        assign = getattr(dictionary, "assign", None)
        if callable(assign):
            assigned = torch.as_tensor(np.asarray(assign(a.numpy())), dtype=torch.long)
        else:
            assigned = torch.cdist(a, matrix).argmin(1)
        k = matrix.shape[0]
    elif assignments is not None:
        if len(assignments) != a.shape[0]:
            raise InputError(f"got {len(assignments)} assignments for {a.shape[0]} samples")
        assigned = torch.as_tensor(list(assignments), dtype=torch.long)
        k = int(assigned.max()) + 1
    else:
        return out
    labels = list(names) if names is not None else [f"c{i}" for i in range(k)]
    present = [c for c in range(k) if (assigned == c).any()]  # an empty concept has no samples to shift
    centres = {c: a[assigned == c].mean(0) for c in present}
    for concept in present:
        rows = assigned == concept
        rest = [centres[c] for c in present if c != concept]
        out.append(
            SteeringVector(
                _reduce(deltas[rows], reducer),
                layer,
                VectorKind.SHIFT,
                f"{original}:{labels[concept]}",
                f"{finetuned}:{labels[concept]}",
                model,
                position,
                reference=centres[concept],
                info={"n_samples": int(rows.sum()), "reducer": reducer.value, "scope": "concept", "concept": concept},
                contrasts=torch.stack(rest) if rest else None,
            )
        )
    return out


# ----------------------------------------------------------------------------------------------- persistence
def save_vectors(path: str | os.PathLike[str], vectors: SteeringVector | Sequence[SteeringVector]) -> Path:
    """Write vectors to a safetensors file (atomically) with their provenance as JSON metadata."""
    vecs = [vectors] if isinstance(vectors, SteeringVector) else list(vectors)
    if not vecs:
        raise InputError("no steering vectors to save")
    tensors: dict[str, torch.Tensor] = {}
    entries = []
    for index, vec in enumerate(vecs):
        tensors[f"{index}.vector"] = vec.vector.contiguous().clone()  # no shared storage: safetensors refuses it
        if vec.reference is not None:
            tensors[f"{index}.reference"] = vec.reference.contiguous().clone()
        if vec.contrasts is not None:
            tensors[f"{index}.contrasts"] = vec.contrasts.contiguous().clone()
        entries.append({**vec.describe(), "index": index})
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        save_file(
            tensors, str(tmp), metadata={METADATA_KEY: json.dumps({"version": FORMAT_VERSION, "vectors": entries})}
        )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"{path} is not a readable safetensors file ({err})") from None


def load_vectors(path: str | os.PathLike[str]) -> list[SteeringVector]:
    """Read the vectors written by :func:`save_vectors` (clear errors for a missing or foreign file)."""
    source = Path(path)
    if not source.is_file():
        raise InputError(f"steering vector file not found: {source}")
    tensors = _read_safetensors(source)
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if METADATA_KEY not in metadata:
        raise InputError(f"{source} has no mmlens steering metadata: write it with mmlens.steer.save_vectors")
    out = []
    try:
        entries = json.loads(metadata[METADATA_KEY])["vectors"]
        for entry in entries:
            index = entry["index"]
            out.append(
                SteeringVector(
                    tensors[f"{index}.vector"],
                    entry["layer"],
                    VectorKind(entry["kind"]),
                    entry["source"],
                    entry["target"],
                    entry.get("model", ""),
                    entry.get("position", ""),
                    reference=tensors.get(f"{index}.reference"),
                    info=entry.get("info", {}),
                    contrasts=tensors.get(f"{index}.contrasts"),
                )
            )
    except InputError:  # e.g. a NaN in a stored vector: already a clear message
        raise
    except (ValueError, KeyError, TypeError) as err:  # json.JSONDecodeError is a ValueError
        raise InputError(f"{source} has corrupt mmlens steering metadata ({type(err).__name__}: {err})") from None
    return out
