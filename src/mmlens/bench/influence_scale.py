"""``mmlens bench influence-scale``: how the cost of scoring every training pair grows with the number of pairs.

For N = 10^3, 10^4, 10^5 training pairs (digits of sklearn's train split, repeated with augmentation - a random
shift of up to one pixel and pixel noise, so every image is distinct and runs through the vision tower - with
templated captions) and two parameter groups of the zoo's ``digits-clip``:

* ``projection``: both projection matrices (not convex: the normalised embeddings give negative curvature),
* ``lora``: rank-4 LoRA adapters on both projections (A·B: non-convex),

one run = encode the pairs (the frozen towers, once), fit the group by L-BFGS over the recorded partition, then
:func:`mmlens.influence.score_pairs` (every pair's ``delta_val_loss_if_removed`` against the 450 clean pairs of the
digits test split, and its self-influence) into shard files. The settings are the audit's (batch 64, l2 300, CG,
exact negative form). Each (group, N) runs in a fresh Python process, so its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at its end) is its own; wall time is measured around the three steps
(model loading and process start-up excluded, reported apart). The exponent is the least-squares slope of
log(seconds) on log(N).

Result layout: ``{group: {n: {seconds, peak_rss_mb, process_cpu_seconds, encode_seconds, fit_seconds,
score_seconds, ...}}, exponent: {group: value}, exponent_cpu: {group: value}, settings: {...}}``; with ``plot`` a
PNG of both curves.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

GROUPS = ("projection", "lora")
SIZES = (1_000, 10_000, 100_000)
IMAGE_SIZE = 16  # digits-clip's input size
LORA_RANK = 4


def augmented_digit_pairs(n: int, seed: int = 0):
    """``n`` training pairs from the digits train split, cycled; every copy after the first is augmented (a shift
    of -1..1 pixel per axis and Gaussian pixel noise of sd 8), so no two images are equal."""
    from PIL import Image

    from mmlens.influence.data import PairData
    from mmlens.world.digits import digit_caption, digits_pairs

    base = digits_pairs("train", seed=seed, image_size=IMAGE_SIZE)
    arrays = [np.asarray(p.image, dtype=np.int16) for p in base]
    rng = np.random.default_rng([seed, 20])
    images, captions, labels = [], [], []
    for i in range(n):
        k = i % len(base)
        arr = arrays[k]
        if i >= len(base):
            dy, dx = rng.integers(-1, 2, size=2)
            arr = np.roll(arr, (int(dy), int(dx)), axis=(0, 1)) + rng.normal(0, 8, arr.shape).round().astype(np.int16)
        images.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))
        captions.append(base[k].caption if i < len(base) else digit_caption(base[k].label, rng))
        labels.append(base[k].label)
    return PairData(tuple(images), tuple(captions), labels=tuple(labels))


def validation_pairs(seed: int = 0):
    """The clean held-out validation set: the 450 pairs of the digits test split."""
    from mmlens.influence.data import PairData
    from mmlens.world.digits import digits_pairs

    test = digits_pairs("test", seed=seed, image_size=IMAGE_SIZE)
    return PairData(tuple(p.image for p in test), tuple(p.caption for p in test))


def run_one(model: str, group: str, n: int, work_dir: Path, seed: int = 0) -> dict[str, Any]:
    """One measured run in this process (see the module); returns its timings and this process's peak RSS."""
    import torch

    from mmlens.influence import FitArguments, HeadTask, InfluenceAnalyzer, attach_lora, encode_cached, score_pairs
    from mmlens.models import ContrastiveModel, load_model

    t_start = time.perf_counter()
    adapter = load_model(model, expect=ContrastiveModel)
    if group == "lora":
        adapter = attach_lora(adapter, rank=LORA_RANK, seed=seed)
    train, val = augmented_digit_pairs(n, seed), validation_pairs(seed)
    setup = time.perf_counter() - t_start

    t0 = time.perf_counter()
    task = HeadTask(adapter, group)
    encoded = encode_cached(task, train, work_dir / "cache", key=model)
    t1 = time.perf_counter()
    analyzer = InfluenceAnalyzer(
        task, train, fit_args=FitArguments(batch_size=64, l2=300.0, seed=seed, precondition_after=64), encoded=encoded
    )
    fit = analyzer.fit()
    t2 = time.perf_counter()
    scores = score_pairs(analyzer, work_dir / "scores", val, val_seed=seed)
    t3 = time.perf_counter()
    solves = analyzer.inverse().info.get("solves", [])
    if not (np.isfinite(scores.value).all() and np.isfinite(scores.self_influence).all()):
        raise RuntimeError(f"non-finite scores for {group} at n={n}")
    usage = resource.getrusage(resource.RUSAGE_SELF)  # ru_maxrss in kilobytes on Linux
    return {
        "seconds": t3 - t0,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "process_cpu_seconds": usage.ru_utime + usage.ru_stime,
        "encode_seconds": t1 - t0,
        "fit_seconds": t2 - t1,
        "score_seconds": t3 - t2,
        "setup_seconds": setup,
        "n_pairs_scored": int(np.isfinite(scores.value).sum()),
        "n_val": len(val),
        "n_params": task.space.size,
        "fit_grad_norm": fit.grad_norm,
        "fit_evaluations": fit.evaluations,
        "cg_iterations": [int(x["iterations"]) for x in solves],
        "cg_preconditioned_from": [x.get("preconditioned_from") for x in solves],
        "cg_preconditioner": analyzer.inverse().info.get("preconditioner"),
        "score_step_seconds": {k: round(v, 3) for k, v in scores.timings.items()},
        "torch_threads": torch.get_num_threads(),
    }


def fitted_exponent(sizes: list[int], seconds: list[float]) -> float:
    """Slope of log(seconds) on log(N) (least squares)."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def influence_scale_benchmark(
    model: str = "zoo:digits-clip",
    groups: tuple[str, ...] = GROUPS,
    sizes: tuple[int, ...] = SIZES,
    seed: int = 0,
    out: str | Path | None = None,
    jobs: int = 1,
    plot: str | Path | None = None,
    progress_cb=None,
    fresh: bool = False,
) -> dict[str, Any]:
    """Every (group, N) in a fresh process (its own peak memory), smallest N first; returns the result layout of
    the module. With ``out``, the result so far is written there atomically after every run and a rerun with the
    same settings resumes after the runs already in it (an entry is complete or absent). ``jobs`` runs at once
    (more than 1 shares the cores between the runs: their wall times grow, ``process_cpu_seconds`` much less).
    ``plot``: the scaling plot, redrawn with the file. ``fresh``: ignore the runs in ``out`` (after a code change
    that alters what a run does). Every entry records the commit it ran at and the load average around it."""
    from mmlens.io import write_json_atomic

    unknown = set(groups) - set(GROUPS)
    if unknown:
        from mmlens.errors import InputError

        raise InputError(f"unknown groups {sorted(unknown)}: choose among {', '.join(GROUPS)}")
    settings = {
        "model": model,
        "sizes": list(sizes),
        "groups": list(groups),
        "seed": seed,
        "batch_size": 64,
        "l2": 300.0,
        "solver": "cg",
        "neg_form": "exact",
        "self_influence": "projected inverse, proj_dim 256",
        "lora_rank": LORA_RANK,
        "validation": "digits test split (450 clean pairs)",
        "data": "digits train split (1347) cycled, copies augmented (shift <= 1 px, noise sd 8)",
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "jobs": jobs,
        "fit_stopping": "L-BFGS on the risk / N: largest entry of the per-pair gradient <= 1e-9 (scale-free)",
        "preconditioning": "CG: plain for 32 iterations, then restarted with a Nystrom preconditioner of rank 256 "
        "sketched on min(N, 2048) pairs (same residual tolerance 1e-8); fit: after 64 plain L-BFGS evaluations, "
        "L-BFGS on theta_k + M^-1/2 z with M Nystrom of rank 256 on 2048 pairs (same stopping rule)",
        "measured": "seconds = wall time of encode + fit + score_pairs in a fresh process (model loading "
        "apart, setup_seconds); process_cpu_seconds = its user + system CPU time; "
        "peak_rss_mb = its ru_maxrss",
    }
    result: dict[str, Any] = {g: {} for g in groups}
    if out is not None and Path(out).is_file() and not fresh:
        # the file of an earlier run of this benchmark (written atomically: complete JSON) is resumed; any other
        # file is the user's and is not overwritten
        try:
            previous = json.loads(Path(out).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = None
        if not isinstance(previous, dict) or not isinstance(previous.get("settings"), dict):
            from mmlens.errors import InputError

            raise InputError(f"{out} exists and is not a result of this benchmark; remove it or choose another --out")
        if {k: v for k, v in previous["settings"].items() if k != "load_average"} == settings:
            result.update({g: previous.get(g, {}) for g in groups})
    # a wrong or unknown model is refused before any file is written (each run loads it in its own process)
    from mmlens.models import ContrastiveModel, load_model

    load_model(model, expect=ContrastiveModel)
    todo = [(group, n) for n in sizes for group in groups if str(n) not in result[group]]
    lock = threading.Lock()

    def write_partial() -> None:
        """The runs so far, their exponents where a group has two sizes or more, and the plot: an interrupted
        benchmark leaves a consistent file (``complete`` false) that a rerun completes."""
        _add_exponents(result, groups)
        result["settings"] = {**settings, "load_average": list(os.getloadavg())}
        result["complete"] = all(str(n) in result[g] for g in groups for n in sizes)
        if out is not None:
            write_json_atomic(out, result)
        if plot is not None and any(result[g] for g in groups):
            plot_scaling(result, plot)

    write_partial()

    def measure(group: str, n: int) -> None:
        if progress_cb is not None:
            progress_cb(f"{group} n={n}")
        load_before = list(os.getloadavg())
        with tempfile.TemporaryDirectory(prefix="mmlens-influence-scale-") as tmp:
            cmd = [sys.executable, "-m", "mmlens.bench.influence_scale", model, group, str(n), tmp, str(seed)]
            done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), check=False)
        if done.returncode != 0:
            raise RuntimeError(f"influence-scale run {group} n={n} failed:\n{done.stderr[-3000:]}")
        entry = json.loads(done.stdout.strip().splitlines()[-1])
        entry.update(
            commit=_commit(),
            finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            load_average_before=load_before,
            load_average_after=list(os.getloadavg()),
        )
        with lock:
            result[group][str(n)] = entry
            write_partial()

    # smallest N first; with jobs > 1 that many runs at once (each still in its own process, its own peak memory)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(measure, g, n) for g, n in todo]:
            future.result()
    write_partial()
    return result


def _commit() -> str:
    """The source tree's git commit (with ``+dirty`` when it has uncommitted changes), or "unknown"."""
    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=root, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _add_exponents(result: dict[str, Any], groups: tuple[str, ...]) -> None:
    """``exponent`` (wall time) and ``exponent_cpu`` (process CPU time) per group with at least two sizes."""
    for key, field in (("exponent", "seconds"), ("exponent_cpu", "process_cpu_seconds")):
        result[key] = {}
        for g in groups:
            ns = sorted(int(n) for n in result[g])
            if len(ns) >= 2:
                result[key][g] = fitted_exponent(ns, [result[g][str(n)][field] for n in ns])


def plot_scaling(result: dict[str, Any], path: str | Path) -> Path:
    """Time and peak memory against N (log-log), one line per group, with the fitted exponents."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in result if g not in ("exponent", "exponent_cpu", "settings", "complete") and result[g]]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9, 3.6))
    for g in groups:
        ns = sorted(int(n) for n in result[g])
        exponent = result.get("exponent", {}).get(g)
        ax_t.plot(
            ns,
            [result[g][str(n)]["seconds"] for n in ns],
            "o-",
            label=g if exponent is None else f"{g} (exponent {exponent:.2f})",
        )
        ax_m.plot(ns, [result[g][str(n)]["peak_rss_mb"] for n in ns], "o-", label=g)
    ns = sorted({int(n) for g in groups for n in result[g]})
    ref = result[groups[0]][str(ns[0])]["seconds"]
    ax_t.plot(ns, [ref * n / ns[0] for n in ns], ":", color="grey", label="linear")
    for ax, label in ((ax_t, "wall time (s): encode + fit + score"), (ax_m, "peak resident memory (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training pairs N")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("Influence of every pair (digits-clip, 2 shared CPU cores)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _main(argv: list[str]) -> None:
    """``python -m mmlens.bench.influence_scale MODEL GROUP N WORK_DIR SEED``: one run, its JSON on stdout."""
    model, group, n, work_dir, seed = argv
    print(json.dumps(run_one(model, group, int(n), Path(work_dir), int(seed))))


if __name__ == "__main__":
    _main(sys.argv[1:])


__all__ = [
    "augmented_digit_pairs",
    "fitted_exponent",
    "influence_scale_benchmark",
    "plot_scaling",
    "run_one",
    "validation_pairs",
]
