"""Influence at dataset scale: every training pair scored in shards, written as it comes, resumable, split across
processes.

:func:`score_pairs` scores every pair of an :class:`~mmlens.influence.analyzer.InfluenceAnalyzer` (fitted) in shards
of whole batches of its recorded partition. Per batch it computes the pairs' role gradients once (a vmapped VJP with
the whole batch in the graph, as the in-memory methods do) and reduces them at once to per-pair numbers:

* ``delta_val_loss_if_removed`` and its parts ``pos`` / ``neg_<form>``: ``h^T grad term_n`` with ``h = H^-1 grad L'``
  of the validation pairs, one inverse solve in total (saved in the folder, so a resumed run reuses it);
* ``self_influence``: ``g_n^T H^-1 g_n`` of the chosen role and form (the analyzer's batched inverse);
* ``max_negative_prob``.

Only one batch's gradients exist at a time; each finished shard is written atomically (``shards/NNNNN.npz``), so
an interrupted run restarts at the first missing shard and gives the same scores. Under ``accelerate launch`` the
missing shards are split across the processes (:class:`~mmlens.models.distributed.DistributedWork`); every process
writes its own shards and all of them return the assembled scores.

:func:`encode_cached` keeps the task's encoded pairs (for the projection group: the frozen towers' outputs) in one
safetensors file keyed by the data, so a resumed or repeated run does not run the towers again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmlens.enums import as_enum
from mmlens.errors import InputError
from mmlens.influence.analyzer import InfluenceAnalyzer, PairScores
from mmlens.influence.config import NegForm, Role
from mmlens.influence.data import PairData
from mmlens.influence.objective import PARTS
from mmlens.influence.task import ContrastiveTask, Encoded, subset
from mmlens.progress import progress_bar

MANIFEST = "manifest.json"
QUERY_FILE = "query.safetensors"
SHARD_DIR = "shards"
COLUMNS = ("delta_val_loss_if_removed", *PARTS, "self_influence", "max_negative_prob")


def pair_fingerprint(data: PairData) -> str:
    """A hash of the pairs' pixels and captions (the key of cached encodings and of a scoring folder)."""
    digest = hashlib.sha256()
    for image, caption in zip(data.images, data.captions):
        digest.update(f"{image.mode}{image.size}".encode())
        digest.update(image.tobytes())
        digest.update(caption.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _save_tensors_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def encode_cached(task: ContrastiveTask, data: PairData, folder: str | Path, key: str = "") -> Encoded:
    """``task.encode(data)``, read from ``folder/encoded-<hash>.safetensors`` when an earlier run wrote it (the hash
    covers the pairs, the task's class, group and ``key``: e.g. the model's name), else computed and written there
    atomically (by the main process)."""
    group = getattr(getattr(task, "group", None), "value", "")
    name = hashlib.sha256(f"{pair_fingerprint(data)}|{type(task).__name__}|{group}|{key}".encode()).hexdigest()[:16]
    path = Path(folder) / f"encoded-{name}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))
        except (OSError, SafetensorError):  # a damaged cache is recomputed
            pass
    encoded = task.encode(data)
    work = getattr(task, "work", None)
    if work is None or work.is_main_process:
        _save_tensors_atomic({k: v.cpu() for k, v in encoded.items()}, path)
    return encoded


@dataclass(frozen=True)
class StreamedScores:
    """Every pair's scores from a sharded run (one array per column of :data:`COLUMNS`, in pair order).

    ``delta_val_loss_if_removed`` (both roles, the analyzer's ``neg_form``) is NaN for every pair when no
    validation pairs were given; the other forms' parts are NaN unless computed (``all_forms``). ``reused_shards`` of ``n_shards`` came from an earlier run (resume)."""

    columns: dict[str, np.ndarray] = field(repr=False)
    n_shards: int
    reused_shards: int
    neg_form: NegForm
    n_val: int
    seconds: float
    #: wall seconds of this run's steps: ``query_solve`` (h = H^-1 grad L', 0 when reused or without validation
    #: pairs), ``self_influence_operator`` (the batched inverse), ``pairs`` (the per-pair shards), ``assemble``
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.columns["self_influence"])

    @property
    def value(self) -> np.ndarray:
        return self.columns["delta_val_loss_if_removed"]

    @property
    def self_influence(self) -> np.ndarray:
        return self.columns["self_influence"]

    def pair_scores(self) -> PairScores:
        """The value by role and form, as :meth:`InfluenceAnalyzer.value` returns it."""
        if self.n_val == 0:
            raise InputError("these scores were computed without validation pairs: no value by role")
        if any(np.isnan(self.columns[f"neg_{f.value}"]).all() for f in NegForm):
            raise InputError("these scores hold one negative form only: score with all_forms=True")
        return PairScores(
            self.columns["pos"],
            {f.value: self.columns[f"neg_{f.value}"] for f in NegForm},
            self.columns["max_negative_prob"],
        )


def _settings_key(
    analyzer: InfluenceAnalyzer,
    val: PairData | None,
    shard_batches: int,
    role: Role,
    val_batch_size: int | None,
    val_seed: int,
    all_forms: bool,
    with_self_influence: bool = True,
) -> str:
    fit = analyzer.fitted
    assert fit is not None
    digest = hashlib.sha256()
    digest.update(fit.params.detach().cpu().numpy().tobytes())
    digest.update(fit.partition.to_json().encode())
    digest.update(
        json.dumps(
            {
                "args": asdict(analyzer.args),
                "shard_batches": shard_batches,
                "role": role.value,
                "val_batch_size": val_batch_size,
                "val_seed": val_seed,
                "n": analyzer.n,
                "all_forms": all_forms,
                # absent when on, so folders written before the option keep their key
                **({} if with_self_influence else {"self_influence": False}),
                "task": type(analyzer.task).__name__,
            },
            default=str,
        ).encode()
    )
    digest.update(b"no-val" if val is None else pair_fingerprint(val).encode())
    # the encoded pairs themselves (a cheap summary: their sums per tensor) guard against another model/data
    for name, tensor in sorted(analyzer.encoded.items()):
        digest.update(f"{name}{tuple(tensor.shape)}{float(tensor.double().sum())}".encode())
    return digest.hexdigest()[:20]


def _read_shard(path: Path, size: int) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as shard:
            out = {c: shard[c] for c in (*COLUMNS, "index")}
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return out if all(len(v) == size for v in out.values()) else None


def _write_shard(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    try:
        np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as the allow_pickle flag
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def score_pairs(
    analyzer: InfluenceAnalyzer,
    folder: str | Path,
    val: PairData | None = None,
    *,
    shard_batches: int = 32,
    self_influence_role: Role | str = Role.BOTH,
    all_forms: bool = False,
    val_batch_size: int | None = None,
    val_seed: int = 0,
    on_shard: Callable[[int], None] | None = None,
    with_self_influence: bool = True,
) -> StreamedScores:
    """Score every training pair of the fitted ``analyzer`` in shards written to ``folder`` (see the module).

    ``val``: validation pairs of ``delta_val_loss_if_removed`` (None: self-influence only). ``shard_batches``:
    batches of the partition per shard file. ``all_forms``: also the value parts of the negative forms other
    than the analyzer's ``neg_form`` (NaN otherwise; computing them doubles the per-pair gradients).
    ``with_self_influence=False``: the ``self_influence`` column is NaN and its batched inverse (for the CG solver
    a projected Hessian: ``proj_dim`` Hessian-vector products over all pairs) is not built. ``on_shard(i)`` is called after shard ``i`` is written (progress;
    an exception raised there interrupts the run like a crash: rerun to resume). A folder written with other
    settings (fit, data, validation pairs, arguments) is cleared first."""
    if analyzer.fitted is None:
        raise InputError("fit the analyzer first (analyzer.fit() or analyzer.use_fit(FitResult.load(...)))")
    if shard_batches < 1:
        raise InputError(f"shard_batches must be >= 1, got {shard_batches}")
    role = as_enum(Role, self_influence_role, "role")
    form = analyzer.args.neg_form
    work = analyzer.work
    t0 = time.time()
    folder = Path(folder)
    key = _settings_key(analyzer, val, shard_batches, role, val_batch_size, val_seed, all_forms, with_self_influence)
    parts = PARTS if all_forms else ("pos", f"neg_{form.value}")
    batches = analyzer.partition.batches
    shards = [batches[s : s + shard_batches] for s in range(0, len(batches), shard_batches)]
    manifest = {
        "key": key,
        "n_pairs": analyzer.n,
        "n_shards": len(shards),
        "shard_batches": shard_batches,
        "n_val": 0 if val is None else len(val),
        "neg_form": form.value,
        "self_influence_role": role.value,
        "columns": list(COLUMNS),
    }
    shard_dir = folder / SHARD_DIR
    if work.is_main_process:
        previous = None
        try:
            previous = json.loads((folder / MANIFEST).read_text()).get("key")
        except (OSError, json.JSONDecodeError, AttributeError):
            pass
        if previous != key:  # another run's shards (or none): start clean
            shutil.rmtree(shard_dir, ignore_errors=True)
            (folder / QUERY_FILE).unlink(missing_ok=True)
            from mmlens.io import write_json_atomic

            write_json_atomic(folder / MANIFEST, manifest)
        shard_dir.mkdir(parents=True, exist_ok=True)
    work.wait_for_everyone()

    # the self-influence operator first: for the CG solver its sketch (proj_dim Hessian-vector products over all
    # pairs) also preconditions the solve below
    timings: dict[str, float] = {}
    t_step = time.time()
    inverse = analyzer.batched_inverse() if with_self_influence else None
    timings["self_influence_operator"] = time.time() - t_step
    # h = H^-1 grad L' (one solve), kept in the folder so a resumed run reuses exactly the same vector
    t_step = time.time()
    solved = None
    if val is not None:
        query_path = folder / QUERY_FILE
        if query_path.is_file():
            try:
                solved = load_file(str(query_path))["h"]
            except (OSError, SafetensorError, KeyError):
                solved = None
        if solved is None:
            grad, _ = analyzer.measurement_gradients(val, batch_size=val_batch_size, seed=val_seed)
            solved = analyzer.inverse().apply(grad.to(analyzer.task.dtype))[0].detach()
            if work.is_main_process:
                _save_tensors_atomic({"h": solved.cpu()}, query_path)
        work.wait_for_everyone()
    timings["query_solve"] = time.time() - t_step
    t_step = time.time()
    theta = analyzer.fitted.params.detach()

    def path_of(i: int) -> Path:
        return shard_dir / f"{i:05d}.npz"

    sizes = [sum(len(b) for b in shard) for shard in shards]
    done = [i for i in range(len(shards)) if _read_shard(path_of(i), sizes[i]) is not None]
    pending = [i for i in range(len(shards)) if i not in set(done)]
    work.wait_for_everyone()  # every process has listed the same missing shards before any is written
    local = work.local_items(pending)
    bar = progress_bar(local, desc="scoring pairs (shards)", enabled=analyzer.progress and work.is_main_process)
    for i in bar:
        rows: dict[str, list[np.ndarray]] = {c: [] for c in (*COLUMNS, "index")}
        for batch in shards[i]:
            idx = np.asarray(batch)
            grads, maxp = analyzer._terms_gradients(theta, subset(analyzer.encoded, torch.as_tensor(idx)), parts)
            rows["index"].append(idx)
            for part in PARTS:
                rows[part].append(
                    np.full(len(idx), np.nan)
                    if solved is None or part not in grads
                    else (grads[part] @ solved).detach().cpu().numpy()
                )
            rows["delta_val_loss_if_removed"].append(rows["pos"][-1] + rows[f"neg_{form.value}"][-1])
            g = {
                Role.POS: grads["pos"],
                Role.NEG: grads[f"neg_{form.value}"],
                Role.BOTH: grads["pos"] + grads[f"neg_{form.value}"],
            }[role].detach()
            rows["self_influence"].append(
                np.full(len(idx), np.nan) if inverse is None else (inverse.apply(g) * g).sum(1).detach().cpu().numpy()
            )
            rows["max_negative_prob"].append(maxp.detach().cpu().numpy())
        _write_shard(path_of(i), {c: np.concatenate(v) for c, v in rows.items()})
        if on_shard is not None:
            on_shard(i)
    work.wait_for_everyone()
    timings["pairs"] = time.time() - t_step
    t_step = time.time()

    columns = {c: np.full(analyzer.n, np.nan) for c in COLUMNS}
    for i in range(len(shards)):
        shard = _read_shard(path_of(i), sizes[i])
        if shard is None:
            raise InputError(f"shard {path_of(i)} is missing or damaged after scoring: rerun to recompute it")
        for c in COLUMNS:
            columns[c][shard["index"]] = shard[c]
    timings["assemble"] = time.time() - t_step
    n_val = 0 if val is None else len(val)
    return StreamedScores(columns, len(shards), len(done), form, n_val, time.time() - t0, timings)


__all__ = ["COLUMNS", "StreamedScores", "encode_cached", "pair_fingerprint", "score_pairs"]
