"""Every command against every class of bad input a user can give (issue 19): missing, empty and malformed files,
an unreadable image, empty or non-string captions, non-finite and out-of-range numbers, the wrong model kind, an
unknown id while offline, an output that is a file / a folder / not writable, and bad config files.

Each case must end with exit code 2 and exactly one stderr line ``mmlens: error: ...`` (no traceback, no progress
output before it: the input is checked before any work), and leave the folder exactly as it was (no output, no
stray temporary file). Models are tiny random ones saved locally, so the matrix needs no zoo."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from cli_helpers import run_cli


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Good inputs (a tiny CLIP, a tiny LLaVA, pairs, VQA questions, probes) and bad ones, in one folder."""
    from mmlens.models.tiny import tiny_model

    root = tmp_path_factory.mktemp("bad-input")
    tiny_model("clip").save_pretrained(root / "clip")
    tiny_model("llava").save_pretrained(root / "vlm")
    for i, colour in enumerate(["red", "blue", "green", "white"]):
        Image.new("RGB", (24, 24), colour).save(root / f"{i}.png")
    (root / "broken.png").write_bytes(b"not a png at all")

    def jsonl(name, rows):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    jsonl("pairs.jsonl", [{"image": f"{i}.png", "caption": c} for i, c in enumerate(["red", "blue", "green", "white"])])
    jsonl(
        "vqa.jsonl",
        [
            {"image": f"{i}.png", "question": "is there a circle ?", "answer": a, "answer_type": "yes/no"}
            for i, a in enumerate(["yes", "no", "yes", "no"])
        ],
    )
    jsonl("pope.jsonl", [{"image": f"{i}.png", "question": "is there a circle ?", "label": "yes"} for i in range(4)])
    jsonl("broken-image.jsonl", [{"image": "0.png", "caption": "red"}, {"image": "broken.png", "caption": "x"}])
    jsonl("broken-image-vqa.jsonl", [{"image": "broken.png", "question": "is there a circle ?", "answer": "no"}])
    jsonl("empty-caption.jsonl", [{"image": "0.png", "caption": "red"}, {"image": "1.png", "caption": "  "}])
    jsonl("number-caption.jsonl", [{"image": "0.png", "caption": "red"}, {"image": "1.png", "caption": 7}])
    (root / "empty.jsonl").write_text("")
    (root / "malformed.jsonl").write_text('{"image": "0.png", "caption": "red"}\n{"image": \n')
    (root / "a-file").write_text("I am a file\n")
    (root / "a-folder").mkdir()
    (root / "unknown-key.yaml").write_text("number_of_scenes: 3\n")
    (root / "wrong-type.yaml").write_text("n: many\n")
    (root / "nan.yaml").write_text("bias_strength: .nan\n")
    return root


# (case id, argv with {root} for the inputs folder and {out} for a fresh output path, expected words in the error)
CASES = [
    # missing, empty and malformed files
    ("embed-missing", "models embed -m {root}/clip --data {root}/nope.jsonl --out {out}.safetensors", "nope.jsonl"),
    ("embed-empty", "models embed -m {root}/clip --data {root}/empty.jsonl --out {out}.safetensors", "empty"),
    (
        "embed-malformed",
        "models embed -m {root}/clip --data {root}/malformed.jsonl --out {out}.safetensors",
        "malformed.jsonl",
    ),
    ("generate-missing", "models generate -m {root}/vlm --data {root}/nope.jsonl --out {out}.jsonl", "nope.jsonl"),
    (
        "detect-missing-data",
        "influence detect -m {root}/clip --data {root}/nope.jsonl --val {root}/pairs.jsonl --out {out}",
        "nope.jsonl",
    ),
    (
        "detect-empty-val",
        "influence detect -m {root}/clip --data {root}/pairs.jsonl --val {root}/empty.jsonl --out {out}",
        "empty",
    ),
    (
        "detect-malformed-val",
        "influence detect -m {root}/clip --data {root}/pairs.jsonl --val {root}/malformed.jsonl --out {out}",
        "malformed.jsonl",
    ),
    (
        "steer-build-empty",
        "steer build -m {root}/vlm --data {root}/empty.jsonl --out {out}.safetensors --source yes --target no",
        "empty",
    ),
    (
        "steer-eval-missing",
        "steer eval -m {root}/vlm --vectors {root}/nope.safetensors --data {root}/vqa.jsonl "
        "--out {out} --source yes --target no",
        "nope.safetensors",
    ),
    ("align-eval-missing", "align eval -m {root}/vlm --pope {root}/nope.jsonl --out {out}", "nope.jsonl"),
    ("shift-emi-missing", "shift emi --id {root}/nope.jsonl --ood {root}/nope2.jsonl --out {out}", "nope"),
    ("shift-generate-empty", "shift generate -m {root}/vlm --data {root}/empty.jsonl --out {out}", "empty"),
    # an unreadable image
    (
        "embed-broken-image",
        "models embed -m {root}/clip --data {root}/broken-image.jsonl --out {out}.safetensors",
        "broken.png",
    ),
    (
        "detect-broken-image",
        "influence detect -m {root}/clip --data {root}/broken-image.jsonl --val {root}/pairs.jsonl --out {out}",
        "broken.png",
    ),
    (
        "steer-apply-broken-image",
        "steer apply -m {root}/vlm --vectors {root}/nope.safetensors --data "
        "{root}/broken-image-vqa.jsonl --out {out}.jsonl",
        "broken.png",
    ),
    # empty and non-string captions: refused alike by every reader of pairs
    (
        "embed-empty-caption",
        "models embed -m {root}/clip --data {root}/empty-caption.jsonl --out {out}.safetensors",
        "caption",
    ),
    (
        "embed-number-caption",
        "models embed -m {root}/clip --data {root}/number-caption.jsonl --out {out}.safetensors",
        "caption",
    ),
    (
        "detect-empty-caption",
        "influence detect -m {root}/clip --data {root}/empty-caption.jsonl --val {root}/pairs.jsonl --out {out}",
        "caption",
    ),
    # non-finite numbers
    (
        "detect-l2-nan",
        "influence detect -m {root}/clip --data {root}/pairs.jsonl --val {root}/pairs.jsonl --out {out} --l2 nan",
        "finite",
    ),
    (
        "detect-l2-inf",
        "influence detect -m {root}/clip --data {root}/pairs.jsonl --val {root}/pairs.jsonl --out {out} --l2 inf",
        "finite",
    ),
    (
        "detect-damping-inf",
        "influence detect -m {root}/clip --data {root}/pairs.jsonl --val {root}/pairs.jsonl --out {out} --damping inf",
        "finite",
    ),
    (
        "detect-damping-nan",
        "influence detect -m {root}/clip --data {root}/pairs.jsonl --val {root}/pairs.jsonl --out {out} --damping nan",
        "finite",
    ),
    ("world-bias-nan", "world export {out} --n 3 --bias-strength nan", "finite"),
    (
        "steer-apply-alpha-inf",
        "steer apply -m {root}/vlm --vectors {root}/nope.safetensors --data {root}/vqa.jsonl "
        "--out {out}.jsonl --alpha inf",
        "finite",
    ),
    ("dpo-beta-nan", "align dpo -m {root}/vlm --out {out} --pairs {root}/pairs.jsonl --beta nan", "finite"),
    ("audit-l2-inf", "audit -m {root}/clip --data world --out {out} --influence-l2 inf", "finite"),
    ("shift-emi-h-nan", "shift emi --id {root}/vqa.jsonl --ood {root}/vqa.jsonl --out {out} --h-hat nan", "finite"),
    # out-of-range numbers
    ("world-n-0", "world export {out} --n 0", "--n"),
    (
        "embed-batch-0",
        "models embed -m {root}/clip --data {root}/pairs.jsonl --out {out}.safetensors --batch-size 0",
        "--batch-size",
    ),
    (
        "detect-top-negative",
        "influence detect -m {root}/clip --data {root}/pairs.jsonl --val {root}/pairs.jsonl --out {out} --top -1",
        "--top",
    ),
    (
        "dpo-mix-2",
        "align dpo -m {root}/vlm --out {out} --pairs {root}/pairs.jsonl --mix-probability 2",
        "mix_probability",
    ),
    (
        "audit-val-fraction",
        "audit -m {root}/clip --data world --out {out} --influence-val-fraction 1.5",
        "val_fraction",
    ),
    ("audit-stage", "audit -m {root}/clip --data world --out {out} --stages nothing", "stages"),
    ("dpo-loss", "align dpo -m {root}/vlm --out {out} --pairs {root}/pairs.jsonl --loss-type nope", "nope"),
    # the wrong model kind
    ("embed-with-vlm", "models embed -m {root}/vlm --data {root}/pairs.jsonl --out {out}.safetensors", "vlm"),
    ("generate-with-clip", "models generate -m {root}/clip --data {root}/pairs.jsonl --out {out}.jsonl", "clip"),
    (
        "detect-with-vlm",
        "influence detect -m {root}/vlm --data {root}/pairs.jsonl --val {root}/pairs.jsonl --out {out}",
        "vlm",
    ),
    (
        "steer-build-with-clip",
        "steer build -m {root}/clip --data {root}/vqa.jsonl --out {out}.safetensors --source yes --target no",
        "clip",
    ),
    # an unknown id while offline
    ("info-unknown-id", "models info no-such-org/no-such-model-xyz", "no-such-org/no-such-model-xyz"),
    (
        "embed-unknown-id",
        "models embed -m no-such-org/no-such-model-xyz --data {root}/pairs.jsonl --out {out}.safetensors",
        "no-such-org/no-such-model-xyz",
    ),
    # the output is a file where a folder goes, or a folder where a file goes
    (
        "detect-out-is-file",
        "influence detect -m {root}/clip --data {root}/pairs.jsonl --val {root}/pairs.jsonl --out {root}/a-file",
        "a-file",
    ),
    ("concepts-out-is-file", "concepts extract -m {root}/vlm --data {root}/vqa.jsonl --out {root}/a-file", "a-file"),
    ("world-out-is-file", "world export {root}/a-file --n 3", "a-file"),
    ("digits-out-is-file", "world digits {root}/a-file --n 5", "a-file"),
    ("digits-swap-nan", "world digits {out} --n 5 --swap-rate nan", "finite"),
    ("digits-split", "world digits {out} --n 5 --split val", "split"),
    ("align-eval-out-is-file", "align eval -m {root}/vlm --pope {root}/pope.jsonl --out {root}/a-file", "a-file"),
    (
        "steer-eval-out-is-file",
        "steer eval -m {root}/vlm --vectors {root}/nope.safetensors --data {root}/vqa.jsonl "
        "--out {root}/a-file --source yes --target no",
        "a-file",
    ),
    ("audit-out-is-file", "audit -m {root}/clip --data world --out {root}/a-file", "a-file"),
    (
        "shift-generate-out-is-file",
        "shift generate -m {root}/vlm --data {root}/vqa.jsonl --out {root}/a-file",
        "a-file",
    ),
    (
        "out-under-a-file",
        "influence detect -m {root}/clip --data {root}/pairs.jsonl --val {root}/pairs.jsonl --out {root}/a-file/sub",
        "a-file",
    ),
    ("embed-out-is-folder", "models embed -m {root}/clip --data {root}/pairs.jsonl --out {root}/a-folder", "a-folder"),
    (
        "generate-out-is-folder",
        "models generate -m {root}/vlm --data {root}/vqa.jsonl --out {root}/a-folder",
        "a-folder",
    ),
    (
        "steer-build-out-is-folder",
        "steer build -m {root}/vlm --data {root}/vqa.jsonl --out {root}/a-folder --source yes --target no",
        "a-folder",
    ),
    (
        "steer-apply-out-is-folder",
        "steer apply -m {root}/vlm --vectors {root}/nope.safetensors --data {root}/vqa.jsonl --out {root}/a-folder",
        "a-folder",
    ),
    # options made from the config dataclasses: refused by the dataclass, before any work
    ("world-grid-5", "world export {out} --n 3 --grid-size 5", "grid_size"),
    ("world-bias-pairs", "world export {out} --n 3 --bias-pairs triangle", "--bias-pairs"),
    (
        "detect-group-lora",
        "influence detect -m {root}/clip --data {root}/pairs.jsonl --val {root}/pairs.jsonl --out {out} --group lora",
        "lora",
    ),
    (
        "detect-k-0",
        "influence detect -m {root}/clip --data {root}/pairs.jsonl --val {root}/pairs.jsonl --out {out} --k 0",
        "--k",
    ),
    (
        "detect-batch-1",
        "influence detect -m {root}/clip --data {root}/pairs.jsonl --val {root}/pairs.jsonl --out {out} --batch-size 1",
        "batch_size",
    ),
    (
        "steer-eval-alphas-nan",
        "steer eval -m {root}/vlm --vectors {root}/nope.safetensors --data {root}/vqa.jsonl "
        "--out {out} --source yes --target no --alphas 1,nan",
        "finite",
    ),
    (
        "steer-eval-max-drop",
        "steer eval -m {root}/vlm --vectors {root}/nope.safetensors --data {root}/vqa.jsonl "
        "--out {out} --source yes --target no --max-drop 2",
        "max_drop",
    ),
    (
        "steer-apply-positions",
        "steer apply -m {root}/vlm --vectors {root}/nope.safetensors --data {root}/vqa.jsonl "
        "--out {out}.jsonl --positions nowhere",
        "nowhere",
    ),
    (
        "shift-emi-estimator-val",
        "shift emi --id {root}/vqa.jsonl --ood {root}/vqa.jsonl --out {out} --estimator-val-fraction 0.95",
        "val_fraction",
    ),
    (
        "concepts-words-with-token-of-interest",
        "concepts extract -m {root}/vlm --data {root}/vqa.jsonl --out {out} --words circle,star "
        "--position token_of_interest",
        "--words",
    ),
    (
        "concepts-words-with-another-position",
        "concepts extract -m {root}/vlm --data {root}/vqa.jsonl --out {out} --words circle,star --position last_prompt",
        "--words",
    ),
    (
        "shift-generate-batch-0",
        "shift generate -m {root}/vlm --data {root}/vqa.jsonl --out {out} --batch-size 0",
        "batch_size",
    ),
    # the influence scaling benchmark: the model and the outputs are checked before any file is written
    (
        "scale-with-vlm",
        "bench influence-scale --model {root}/vlm --out {out}.json --plot {out}.png",
        "vlm",
    ),
    (
        "scale-unknown-id",
        "bench influence-scale --model no-such-org/no-such-model-xyz --out {out}.json --plot {out}.png",
        "no-such-org/no-such-model-xyz",
    ),
    (
        "scale-out-is-folder",
        "bench influence-scale --model {root}/clip --out {root}/a-folder --plot {out}.png",
        "a-folder",
    ),
    (
        "scale-plot-is-folder",
        "bench influence-scale --model {root}/clip --out {out}.json --plot {root}/a-folder",
        "a-folder",
    ),
    (
        "scale-out-not-a-result",
        "bench influence-scale --model {root}/clip --out {root}/a-file --plot {out}.png",
        "a-file",
    ),
    ("scale-jobs-0", "bench influence-scale --model {root}/clip --out {out}.json --plot {out}.png --jobs 0", "--jobs"),
    # bad config files: unknown key, a value of the wrong type, a non-finite value
    ("config-unknown-key", "world export {out} --config {root}/unknown-key.yaml", "number_of_scenes"),
    ("config-wrong-type", "world export {out} --config {root}/wrong-type.yaml", "--n"),
    ("config-nan", "world export {out} --config {root}/nan.yaml", "finite"),
    # the parser's own errors
    ("unknown-option", "influence detect --no-such-option 3", "--no-such-option"),
    ("missing-option", "models embed --data {root}/pairs.jsonl", "--model"),
    ("unknown-command", "influence nothing", "nothing"),
]


def _tree(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(("argv", "words"), [pytest.param(a, w, id=i) for i, a, w in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(inputs, tmp_path, argv, words, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before_inputs, before_here = _tree(inputs), _tree(tmp_path)
    args = [a.format(root=inputs, out=tmp_path / "out") for a in argv.split()]
    code = run_cli(args)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, captured.out[-500:], err[-2000:])
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("mmlens: error: "), err
    assert words.lower() in err.lower(), err
    assert _tree(inputs) == before_inputs  # nothing written beside the inputs (no stray temporary file)
    assert _tree(tmp_path) == before_here  # no output, no resolved config


def test_every_command_is_in_the_matrix():
    """A new command must join the matrix (bench commands and zoo/demo, which take no user files, are exempt; the
    influence scaling benchmark takes any contrastive model, so it is in)."""
    from mmlens.cli.startup import leaf_commands

    covered = {" ".join(a.split()[:2]) if a.split()[0] not in ("audit",) else "audit" for _, a, _ in CASES}
    exempt = {
        c for c in leaf_commands() if (c.startswith(("bench ", "zoo ")) and c != "bench influence-scale") or c == "demo"
    }
    exempt |= {
        "concepts learn",
        "concepts compare",
        "influence value",
        "influence trace",
        "influence remove",
        "align bdhs",
    }  # share their readers and output checks with the commands above (see the cases below)
    assert set(leaf_commands()) - exempt - covered == set()


@pytest.mark.parametrize(
    "argv",
    [
        "influence value -m {root}/clip --data {root}/pairs.jsonl --val {root}/empty.jsonl --out {out}",
        "influence trace -m {root}/clip --data {root}/pairs.jsonl --test {root}/nope.jsonl --out {out}",
        "influence remove -m {root}/clip --data {root}/pairs.jsonl --out {out} --save-to {root}/a-file "
        "--indices {root}/a-file",
        "align bdhs -m {root}/clip --data {root}/vqa.jsonl --out {root}/a-file",
        "concepts learn --capture {root}/nope --out {out}",
        "concepts compare --a {root}/nope --b {root}/nope2 --out {root}/a-file",
    ],
    ids=["value", "trace", "remove", "bdhs", "learn", "compare"],
)
def test_the_other_commands_refuse_bad_input_alike(inputs, tmp_path, argv, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = _tree(inputs)
    code = run_cli([a.format(root=inputs, out=tmp_path / "out") for a in argv.split()])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("mmlens: error: "), err
    assert _tree(inputs) == before and not (tmp_path / "out").exists()


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(inputs, tmp_path, capsys, monkeypatch):
    """A read-only folder: refused in one line before loading anything. (Root writes anywhere, so the permission
    is withdrawn through ``os.access``, which the check asks; as another user chmod does the same.)"""
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:
        locked.chmod(0o555)
    else:
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode, **kw: False if Path(p) == locked else real_access(p, mode, **kw)
        )
    try:
        for argv in (
            f"influence detect -m {inputs}/clip --data {inputs}/pairs.jsonl --val {inputs}/pairs.jsonl "
            f"--out {locked}/run",
            f"models embed -m {inputs}/clip --data {inputs}/pairs.jsonl --out {locked}/e.safetensors",
            f"models generate -m {inputs}/vlm --data {inputs}/vqa.jsonl --out {locked}/r.jsonl",
            f"world export {locked}/w --n 3",
            f"concepts extract -m {inputs}/vlm --data {inputs}/vqa.jsonl --out {locked}/c",
        ):
            assert run_cli(argv.split()) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "not writable" in err and str(locked) in err, err
            assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_a_relative_path_in_a_config_file_is_relative_to_the_file(inputs, tmp_path, monkeypatch):
    """A config file works from any folder, and the resolved config it writes stores absolute paths."""
    import yaml

    from cli_helpers import run_ok

    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "pairs.jsonl").write_text(
        (inputs / "pairs.jsonl").read_text().replace('"image": "', f'"image": "{inputs}/')
    )
    (runs / "embed.yaml").write_text(f"model: {inputs}/clip\ndata: pairs.jsonl\nout: e.safetensors\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run_ok(["models", "embed", "--config", "../runs/embed.yaml"])
    assert (runs / "e.safetensors").is_file() and list(elsewhere.iterdir()) == []
    resolved = yaml.safe_load((runs / "e.safetensors.config.yaml").read_text())
    assert resolved["data"] == str(runs / "pairs.jsonl") and resolved["out"] == str(runs / "e.safetensors")
    assert resolved["model"] == str(inputs / "clip")


def test_concepts_and_steer_read_the_same_world_export(tmp_path):
    """`mmlens world export`'s data.jsonl is read by concepts extract as by steer (one input per VQA question)."""
    from cli_helpers import run_ok
    from mmlens.concepts.workflow import read_inputs
    from mmlens.steer import load_vqa_jsonl

    run_ok(["world", "export", str(tmp_path / "w"), "--n", "3", "--split", "val"])
    inputs = read_inputs(tmp_path / "w" / "data.jsonl", need_images=True)
    questions = load_vqa_jsonl(tmp_path / "w" / "data.jsonl")
    assert [i["prompt"] for i in inputs] == [q.question for q in questions] and len(inputs) >= 3
    assert all(Path(i["image"]).is_file() for i in inputs)


def test_concepts_words_alone_capture_at_the_class(inputs, tmp_path):
    """`concepts extract --words a,b` captures where any word of the class is emitted (it used to be ignored: the
    capture silently fell back to the token "circle"); the VQA JSONL of `steer` (question/answer) is read too."""
    import yaml

    from cli_helpers import run_ok

    run_ok(
        [
            "concepts",
            "extract",
            "-m",
            str(inputs / "vlm"),
            "--data",
            str(inputs / "vqa.jsonl"),
            "--out",
            str(tmp_path / "c"),
            "--words",
            "circle,star",
            "--max-new-tokens",
            "2",
        ]
    )
    meta = json.loads((tmp_path / "c" / "manifest.json").read_text())["config"]
    assert meta["position"]["kind"] == "token_class" and meta["position"]["words"] == ["circle", "star"]
    assert yaml.safe_load((tmp_path / "c" / "mmlens-config.yaml").read_text())["position"] is None  # as chosen
