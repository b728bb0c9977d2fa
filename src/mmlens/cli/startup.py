"""The start-up time of the command line (``mmlens bench cli``): what a user waits for ``mmlens --help`` and for
each subcommand's ``--help``, each in a fresh process, as the user runs it.

It lives beside the CLI it measures (the benchmarks in :mod:`mmlens.bench` sit below the CLI and may not import it).
The machine is shared, so every number is kept with its statistic (the median over ``repeats`` fresh processes,
and the min) and the load average before and after the runs.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

#: The targets of issue 19 (seconds, on the 2-core development machine).
HELP_TARGET_S = 1.5
SUBCOMMAND_HELP_TARGET_S = 2.0


def leaf_commands() -> list[str]:
    """Every runnable command, e.g. ``influence detect`` (loads each subcommand module, in this process only)."""
    from mmlens.cli import SINGLE_COMMANDS, SUBCOMMANDS, load_subcommand

    names = []
    for name in SUBCOMMANDS:
        if name in SINGLE_COMMANDS:
            names.append(name)
        else:
            names.extend(f"{name} {sub}" for sub in load_subcommand(name).commands)
    return names


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time_help(words: list[str], repeats: int) -> dict[str, float]:
    """Wall-clock seconds (what the user waits) and CPU seconds (user + system: what the command costs, much less
    sensitive to the other processes sharing the cores) of ``mmlens WORDS --help``."""
    times, cpu = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), _children_cpu()
        done = subprocess.run(
            [sys.executable, "-m", "mmlens", *words, "--help"], capture_output=True, text=True, check=False
        )
        times.append(time.perf_counter() - start)
        cpu.append(_children_cpu() - cpu_start)
        if done.returncode != 0:
            raise RuntimeError(f"mmlens {' '.join(words)} --help failed: {done.stderr[-500:]}")
    return {
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "cpu_s": round(statistics.median(cpu), 3),
    }


def _commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return None
    return done.stdout.strip() or None


def cli_benchmark(repeats: int = 5, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``{help_s, subcommand_help_s: {command: seconds}}`` (medians) with mins, targets and the machine's load."""
    load_before = os.getloadavg()
    started = time.perf_counter()
    root = _time_help([], repeats)
    sub: dict[str, dict[str, float]] = {}
    for name in leaf_commands():
        if progress:
            progress(f"mmlens {name} --help")
        sub[name] = _time_help(name.split(), repeats)
    load_after = os.getloadavg()
    worst = max(v["median_s"] for v in sub.values())
    return {
        "help_s": root["median_s"],
        "subcommand_help_s": {k: v["median_s"] for k, v in sub.items()},
        "statistic": f"median of {repeats} fresh processes (python -m mmlens ... --help); min_s beside it",
        "help_min_s": root["min_s"],
        "subcommand_help_min_s": {k: v["min_s"] for k, v in sub.items()},
        "subcommand_help_max_s": worst,
        "help_cpu_s": root["cpu_s"],
        "subcommand_help_cpu_s": {k: v["cpu_s"] for k, v in sub.items()},
        "cpu_note": "cpu_s: median user + system CPU seconds of the process (the start-up's own cost; the wall-clock "
        "seconds above also contain the waits for a core on a shared machine)",
        "targets": {"help_s": HELP_TARGET_S, "subcommand_help_s": SUBCOMMAND_HELP_TARGET_S},
        "targets_met": {
            "help_s": root["median_s"] <= HELP_TARGET_S,
            "subcommand_help_s": worst <= SUBCOMMAND_HELP_TARGET_S,
        },
        "load_average": {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in load_after],
            "cores": os.cpu_count(),
        },
        "repeats": repeats,
        "seconds": round(time.perf_counter() - started, 1),
        "commit": _commit(),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }


__all__ = ["HELP_TARGET_S", "SUBCOMMAND_HELP_TARGET_S", "cli_benchmark", "leaf_commands"]
