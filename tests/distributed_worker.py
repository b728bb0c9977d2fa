"""Worker of tests/test_distributed.py: activation capture and shift response generation on a tiny random LLaVA.

Run once single-process and once under ``torchrun --nproc_per_node 2`` (gloo on CPU); the main process writes
``<out>/result.safetensors`` (activations, sample indices) and ``<out>/texts.json`` (generated texts), and the
capture and shift folders, so that the test can compare the two runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

from mmlens.concepts.capture import CaptureConfig, PositionKind, PositionRule, capture_activations, load_capture
from mmlens.models.distributed import DistributedWork
from mmlens.models.tiny import tiny_model
from mmlens.shift.generate import GenerateConfig, generate_responses

N = 11  # odd, not a multiple of the batch size: the processes get unequal blocks and one partial batch
PROMPTS = ["what colour is the shape in the middle of the image?", "describe it.", "is there a red square?",
           "how many objects are there?", "describe the image.", "what shape is it?", "is it big?"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "white", "orange"]


def inputs() -> tuple[list[Image.Image], list[str]]:
    images = [Image.new("RGB", (24 + 3 * (i % 5), 32), COLOURS[i % 7]) for i in range(N)]
    prompts = [PROMPTS[(3 * i) % 7] for i in range(N)]  # different lengths: every batch is padded
    return images, prompts


def main(out: Path) -> None:
    work = DistributedWork.from_environment()
    model = tiny_model("llava")
    images, prompts = inputs()
    config = CaptureConfig(layers=(0, -1), final_norm=True, position=PositionRule(PositionKind.GENERATED_MEAN),
                           max_new_tokens=4, batch_size=2, shard_size=6)
    result = capture_activations(model, images, prompts, config, out_dir=out / "capture", progress=False)
    shift_config = GenerateConfig(max_new_tokens=5, batch_size=3,
                                  scenarios=((None, 0, None, 0), ("fog", 3, "keyboard", 3)))
    paths = generate_responses(model, images, prompts, [""] * N, out / "shift", shift_config, progress=False)
    if work.is_main_process:
        reloaded = load_capture(out / "capture")
        tensors = {f"act.{k}": v for k, v in result.activations.items()}
        tensors.update({f"reloaded.{k}": v for k, v in reloaded.activations.items()})
        tensors["sample_index"] = result.sample_index
        save_file(tensors, str(out / "result.safetensors"))
        splits = {p.stem: [json.loads(line)["text"] for line in p.read_text().splitlines()] for p in paths}
        (out / "texts.json").write_text(json.dumps({
            "num_processes": work.num_processes, "generated": result.generated,
            "reloaded_generated": reloaded.generated, "splits": splits}))
    work.wait_for_everyone()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]))
