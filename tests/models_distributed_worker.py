"""Worker of tests/test_models_distributed.py: activation capture, shift response generation and BDHS pairs on a tiny
random LLaVA, influence scores on a tiny random CLIP (Python API and ``mmlens influence value``).

Run once single-process and once under ``accelerate launch`` with two processes (gloo on CPU); the main process
writes ``<out>/result.safetensors`` (activations, sample indices), ``<out>/texts.json`` (generated texts, BDHS
pairs), ``<out>/influence.safetensors`` (scores) and the capture, shift and influence folders, so that the test can
compare the two runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from mmlens.align.bdhs import BDHSConfig, bdhs_pairs
from mmlens.align.data import PreferencePair, SFTExample, write_pairs
from mmlens.influence import FitArguments, HeadTask, InfluenceAnalyzer, PairData
from mmlens.models.capture import (
    CaptureConfig,
    PositionKind,
    PositionRule,
    capture_activations,
    load_capture,
)
from mmlens.models.distributed import DistributedWork
from mmlens.models.embed import HashingTextEmbedder
from mmlens.models.tiny import tiny_model
from mmlens.shift.generate import GenerateConfig, generate_responses

N = 11  # odd, not a multiple of the batch size: the processes get unequal blocks and one partial batch
PROMPTS = [
    "what colour is the shape in the middle of the image?",
    "describe it.",
    "is there a red square?",
    "how many objects are there?",
    "describe the image.",
    "what shape is it?",
    "is it big?",
]
COLOURS = ["red", "blue", "green", "yellow", "purple", "white", "orange"]


def inputs() -> tuple[list[Image.Image], list[str]]:
    images = [Image.new("RGB", (24 + 3 * (i % 5), 32), COLOURS[i % 7]) for i in range(N)]
    prompts = [PROMPTS[(3 * i) % 7] for i in range(N)]  # different lengths: every batch is padded
    return images, prompts


ANSWERS = [
    "yes. the square is red.",
    "a red square on the left. no dog. it is small.",
    "no.",
    "the shape is red. it sits in the middle.",
]
N_PAIRS = 30  # 4 batches of 8 (the last one partial), split 2 + 2
RGB = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 210, 40), (200, 60, 200), (250, 250, 250)]
WORDS = ["red", "green", "blue", "yellow", "purple", "white"]


def colour_pairs(n: int, seed: int) -> PairData:
    """Two-colour squares captioned "a red and blue square", each with a random dark stripe."""
    rng = np.random.default_rng(seed)
    combos = [(a, b) for a in range(6) for b in range(6) if a != b]
    images, captions = [], []
    for i in range(n):
        a, b = combos[(7 * i + seed) % len(combos)]
        arr = np.zeros((16, 16, 3), dtype=np.uint8)
        arr[:, :8], arr[:, 8:] = RGB[a], RGB[b]
        arr[rng.integers(16), :, :] = 0
        images.append(Image.fromarray(arr))
        captions.append(f"a {WORDS[a]} and {WORDS[b]} square")
    return PairData(tuple(images), tuple(captions))


def export_pairs(folder: Path, data: PairData) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "data.jsonl", "w") as f:
        for i, (image, caption) in enumerate(zip(data.images, data.captions)):
            image.save(folder / f"{i}.png")
            f.write(json.dumps({"image": f"{i}.png", "caption": caption}) + "\n")
    return folder / "data.jsonl"


def influence_part(out: Path, work: DistributedWork) -> None:
    """Scores, self-influence, TracIn, trace-back and a removal gradient of the projection group; then the CLI."""
    clip = tiny_model("clip")
    with torch.no_grad():  # sharper similarities than the random init: scores with some spread
        clip.base_model.visual_projection.weight.mul_(10)
        clip.base_model.text_projection.weight.mul_(10)
    train, val, test = colour_pairs(N_PAIRS, 0), colour_pairs(12, 2), colour_pairs(3, 7)
    task = HeadTask(clip, batch_size=7)  # several tower chunks: the encoding is split too
    analyzer = InfluenceAnalyzer(task, train, fit_args=FitArguments(batch_size=8, l2=50.0))
    analyzer.fit()
    scores = analyzer.value(val)
    trace = analyzer.trace(test, colour_pairs(5, 11))
    tensors = {f"value.{name}": torch.as_tensor(v) for name, v in scores.variants().items()}
    tensors["value.max_negative_prob"] = torch.as_tensor(scores.max_negative_prob)
    tensors["self_influence"] = torch.as_tensor(analyzer.self_influence())
    tensors["tracin_self_influence"] = torch.as_tensor(analyzer.tracin_self_influence())
    tensors["trace.delta"] = torch.as_tensor(trace.delta_test_loss_if_removed)
    tensors["trace.relative"] = torch.as_tensor(trace.relative_influence)
    tensors["removal_gradient_prob"] = analyzer.removal_gradient([1, 5, 17, 29], form="prob")
    tensors["encoded.image"] = analyzer.encoded["image"]
    if work.is_main_process:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "influence.safetensors"))
        clip.save_pretrained(out / "inputs" / "clip")
        export_pairs(out / "inputs" / "train", train)
        export_pairs(out / "inputs" / "val", val)
    work.wait_for_everyone()  # the inputs of the CLI run exist for every process
    from mmlens.cli import main as mmlens_main

    try:
        mmlens_main(
            [
                "influence",
                "value",
                "--model",
                str(out / "inputs" / "clip"),
                "--data",
                str(out / "inputs" / "train" / "data.jsonl"),
                "--val",
                str(out / "inputs" / "val" / "data.jsonl"),
                "--out",
                str(out / "influence"),
                "--batch-size",
                "8",
                "--l2",
                "50",
            ]
        )
    except SystemExit as done:
        if done.code not in (0, None):
            raise


def bdhs_part(model, work: DistributedWork) -> list[dict]:
    """BDHS pairs of a few examples: greedy with three tries, and one sampled try."""
    examples = [
        SFTExample(
            Image.new("RGB", (24 + 2 * i, 32), COLOURS[i % 7]),
            PROMPTS[i % 7],
            ANSWERS[i % len(ANSWERS)],
            example_id=str(i),
        )
        for i in range(7)
    ]
    rows = []
    for config in (
        BDHSConfig(rho=0.7, max_tries=3, max_new_tokens=4, eps_s=0.999, batch_size=3),
        BDHSConfig(rho=0.7, max_tries=1, max_new_tokens=4, do_sample=True, batch_size=4, seed=5),
    ):
        pairs, stats = bdhs_pairs(model, examples, config, embedder=HashingTextEmbedder(), progress=False, work=work)
        rows.append(
            {
                "pairs": [[p.prompt, p.chosen, p.rejected, p.meta] for p in pairs],
                "accepted_by_try": stats.accepted_by_try,
                "n_dropped": stats.n_dropped,
            }
        )
    return rows


def dpo_part(out: Path, model, work: DistributedWork) -> None:
    """``mmlens align dpo`` on 8 pairs for 2 steps of 4 pairs: one process with batches of 4, or two processes with
    2 pairs each (TRL's data-parallel training through accelerate: the same steps)."""
    if work.is_main_process:
        model.save_pretrained(out / "inputs" / "llava")
        pairs = [
            PreferencePair(
                Image.new("RGB", (24, 32), COLOURS[i % 7]),
                PROMPTS[i % 7],
                ANSWERS[i % 4],
                f"a {COLOURS[(i + 3) % 7]} dog. it is big.",
            )
            for i in range(8)
        ]
        write_pairs(pairs, out / "inputs" / "pairs", with_dataset=False)
    work.wait_for_everyone()
    from mmlens.cli import main as mmlens_main

    try:
        mmlens_main(
            [
                "align",
                "dpo",
                "--model",
                str(out / "inputs" / "llava"),
                "--pairs",
                str(out / "inputs" / "pairs"),
                "--out",
                str(out / "dpo"),
                "--steps",
                "2",
                "--batch-size",
                str(4 // work.num_processes),
                "--seed",
                "0",
            ]
        )
    except SystemExit as done:
        if done.code not in (0, None):
            raise


def cli_part(out: Path, images, prompts, work: DistributedWork) -> None:
    """``mmlens shift generate`` and ``mmlens concepts extract`` as a user launches them: every process runs the
    command, the main one writes and prints (the test counts the printed lines)."""
    from mmlens.cli import main as mmlens_main

    data = out / "inputs" / "questions" / "q.jsonl"
    if work.is_main_process:
        data.parent.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images[:3]):
            image.save(data.parent / f"{i}.png")
        data.write_text(
            "".join(json.dumps({"image": f"{i}.png", "prompt": prompts[i], "reference": "a"}) + "\n" for i in range(3))
        )
    work.wait_for_everyone()
    model = str(out / "inputs" / "llava")
    for argv in (
        [
            "shift",
            "generate",
            "-m",
            model,
            "--data",
            str(data),
            "--out",
            str(out / "shift-cli"),
            "--visual",
            "fog",
            "--severities",
            "3",
            "--max-new-tokens",
            "2",
            "--batch-size",
            "2",
        ],
        [
            "concepts",
            "extract",
            "-m",
            model,
            "--data",
            str(data),
            "--out",
            str(out / "concepts-cli"),
            "--position",
            "last_prompt",
            "--max-new-tokens",
            "0",
            "--batch-size",
            "2",
        ],
    ):
        try:
            mmlens_main(argv)
        except SystemExit as done:
            if done.code not in (0, None):
                raise


def main(out: Path) -> None:
    work = DistributedWork.from_environment()
    out.mkdir(parents=True, exist_ok=True)
    model = tiny_model("llava")
    images, prompts = inputs()
    config = CaptureConfig(
        layers=(0, -1),
        final_norm=True,
        position=PositionRule(PositionKind.GENERATED_MEAN),
        max_new_tokens=4,
        batch_size=2,
        shard_size=6,
    )
    result = capture_activations(model, images, prompts, config, out_dir=out / "capture", progress=False)
    shift_config = GenerateConfig(
        max_new_tokens=5, batch_size=3, scenarios=((None, 0, None, 0), ("fog", 3, "keyboard", 3))
    )
    paths = generate_responses(model, images, prompts, [""] * N, out / "shift", shift_config, progress=False)
    bdhs = bdhs_part(model, work)
    influence_part(out, work)
    dpo_part(out, model, work)
    cli_part(out, images, prompts, work)
    if work.is_main_process:
        reloaded = load_capture(out / "capture")
        tensors = {f"act.{k}": v for k, v in result.activations.items()}
        tensors.update({f"reloaded.{k}": v for k, v in reloaded.activations.items()})
        tensors["sample_index"] = result.sample_index
        save_file(tensors, str(out / "result.safetensors"))
        splits = {p.stem: [json.loads(line)["text"] for line in p.read_text().splitlines()] for p in paths}
        (out / "texts.json").write_text(
            json.dumps(
                {
                    "num_processes": work.num_processes,
                    "generated": result.generated,
                    "reloaded_generated": reloaded.generated,
                    "splits": splits,
                    "bdhs": bdhs,
                }
            )
        )
    work.wait_for_everyone()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]))
