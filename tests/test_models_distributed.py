"""Scale-out through accelerate: two CPU processes (gloo) give exactly the single-process results.

The worker (tests/models_distributed_worker.py) captures activations into a sharded folder, generates shift responses and
BDHS pairs on a tiny random LLaVA, computes influence scores on a tiny random CLIP (API and CLI), and trains the
LLaVA with ``mmlens align dpo`` (TRL); it runs once in this process and once under ``accelerate launch`` with two
processes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmlens.models.distributed import DistributedWork

WORKER = Path(__file__).with_name("models_distributed_worker.py")
ACCELERATE = Path(sys.executable).with_name("accelerate")


def _load_worker():
    spec = importlib.util.spec_from_file_location("models_distributed_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_single_process_helper_is_a_no_op():
    work = DistributedWork.from_environment()
    assert not work.is_distributed and work.is_main_process and work.state is None
    assert work.local_items([3, 1, 2]) == [3, 1, 2]
    assert work.map(lambda x: x * 10, [3, 1, 2]) == [30, 10, 20]
    calls = []

    def fn(lo, hi):
        calls.append((lo, hi))
        return list(range(lo, hi))

    assert work.map_batches(fn, 7, 3) == list(range(7)) and calls == [(0, 7)]
    with pytest.raises(ValueError):
        work.map_batches(lambda lo, hi: [0], 7, 3)  # one result for seven samples


def test_two_cpu_processes_equal_one(tmp_path):
    if not ACCELERATE.exists():
        pytest.skip(f"accelerate's launcher is not installed beside {sys.executable}")
    env = {
        **os.environ,
        "OMP_WAIT_POLICY": "PASSIVE",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
    }
    two = tmp_path / "two"
    launch = subprocess.Popen(
        [
            str(ACCELERATE),
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(_free_port()),
            str(WORKER),
            str(two),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # The single-process reference runs here while the two processes start up.
    one = tmp_path / "one"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _load_worker().main(one)
    finally:
        torch.set_num_threads(threads)
    output, _ = launch.communicate(timeout=300)
    assert launch.returncode == 0, output[-3000:]
    # the CLI commands run on both processes but print (and write) on the main one only
    assert output.count('"n_pairs": 30') == 1 and output.count("aligned model written") == 1, output[-3000:]
    assert output.count("wrote 2 splits") == 1 and output.count('"kept": 3') == 1, output[-3000:]  # printed twice

    texts_one = json.loads((one / "texts.json").read_text())
    texts_two = json.loads((two / "texts.json").read_text())
    assert texts_one["num_processes"] == 1 and texts_two["num_processes"] == 2
    for key in ("generated", "reloaded_generated", "splits"):
        assert texts_two[key] == texts_one[key], key
    assert set(texts_two["splits"]) == {"clean", "fog_3+keyboard_3"}

    acts_one, acts_two = load_file(str(one / "result.safetensors")), load_file(str(two / "result.safetensors"))
    assert set(acts_one) == set(acts_two) and "act.layer.0" in acts_one and "reloaded.final_norm" in acts_one
    for key, value in acts_one.items():
        assert value.shape == acts_two[key].shape, key
        if value.dtype.is_floating_point:
            torch.testing.assert_close(acts_two[key], value, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(acts_two[key], value), key

    # The main process wrote the same sharded folder a single process writes.
    manifest_one = json.loads((one / "capture" / "manifest.json").read_text())
    manifest_two = json.loads((two / "capture" / "manifest.json").read_text())
    assert manifest_two["shards"] == manifest_one["shards"] and len(manifest_two["shards"]) == 2
    assert manifest_two["complete"] and manifest_two["num_processes"] == 2
    assert sorted(p.name for p in (two / "shift").iterdir()) == sorted(p.name for p in (one / "shift").iterdir())

    # BDHS: the same random decisions per example and the same batches, hence the same pairs (greedy and sampled).
    assert texts_two["bdhs"] == texts_one["bdhs"]
    greedy, sampled = texts_one["bdhs"]
    assert len(greedy["pairs"]) + greedy["n_dropped"] == 7 and len(greedy["accepted_by_try"]) == 3
    assert len(sampled["pairs"]) + sampled["n_dropped"] == 7 and greedy["pairs"]

    # Influence: whole batches of the partition per process, so every per-pair number is bit-identical.
    infl_one = load_file(str(one / "influence.safetensors"))
    infl_two = load_file(str(two / "influence.safetensors"))
    assert set(infl_one) == set(infl_two) and {"value.both_exact", "self_influence", "trace.relative"} <= set(infl_one)
    for key, value in infl_one.items():
        assert torch.equal(infl_two[key], value), key
    assert infl_one["value.both_exact"].std() > 0 and infl_one["removal_gradient_prob"].abs().sum() > 0
    assert infl_one["value.both_exact"].shape == (30,) and infl_one["trace.delta"].shape == (3, 30)
    # ... and `mmlens influence value` under the launcher wrote one scores file, equal to the single-process one.
    assert (two / "influence" / "scores.jsonl").read_text() == (one / "influence" / "scores.jsonl").read_text()
    assert not list((two / "influence").glob(".*tmp*")) and (two / "influence" / "mmlens-config.yaml").is_file()

    # DPO: two processes with 2 pairs each train as one process with 4 (TRL's data-parallel steps, gradients
    # averaged by DDP): equal up to float32 summation order. The weights move by ~1e-3, 100x the tolerance.
    log_one = json.loads((one / "dpo" / "train_log.json").read_text())["steps"]
    log_two = json.loads((two / "dpo" / "train_log.json").read_text())["steps"]
    assert [s["step"] for s in log_two] == [s["step"] for s in log_one] == [1, 2]
    for a, b in zip(log_one, log_two):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5) and b["logps/chosen"] == pytest.approx(a["logps/chosen"])
    weights_one = load_file(str(one / "dpo" / "model.safetensors"))
    weights_two = load_file(str(two / "dpo" / "model.safetensors"))
    initial = load_file(str(one / "inputs" / "llava" / "model.safetensors"))
    moved = max(float((weights_one[k] - initial[k]).abs().max()) for k in initial)
    assert moved > 1e-4
    for key, value in weights_one.items():
        torch.testing.assert_close(weights_two[key], value, rtol=0, atol=1e-6)
