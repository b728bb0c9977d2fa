"""`mmlens audit` on tiny random models and a tiny exported world: the site, which stages apply, caching and
reruns, failures reported while the other stages complete, and bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from mmlens.audit import (
    AuditConfig,
    ConceptsStage,
    HallucinationStage,
    InfluenceStage,
    ShiftStage,
    Stage,
    StageStatus,
    SteeringStage,
    parse_shift_grid,
    parse_stages,
    run_audit,
)
from mmlens.errors import InputError


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Tiny random models saved as folders (a CLIP and two LLaVAs) and 24 exported world scenes."""
    from mmlens.models.tiny import tiny_model
    from mmlens.world import World, WorldConfig, export_world

    root = tmp_path_factory.mktemp("audit-assets")
    tiny_model("clip").save_pretrained(root / "clip")
    tiny_model("llava", seed=2).save_pretrained(root / "vlm")
    tiny_model("llava", seed=3).save_pretrained(root / "vlm-tuned")
    export_world(root / "data", World(WorldConfig(), seed=0), 24, split="test")
    return root


def _vlm_config(assets: Path, out: Path, **overrides) -> AuditConfig:
    """Sizes for seconds: a hashing text embedder, few permutations and estimator epochs."""
    settings = {
        "model": str(assets / "vlm"),
        "data": str(assets / "data"),
        "out_dir": out,
        "shift": ShiftStage(
            grid=parse_shift_grid("fog:5,keyboard:5,contrast:5"),
            n_items=16,
            text_embedder="hashing",
            n_permutations=5,
            n_bootstrap=5,
            max_epochs=5,
            batch_size=16,
        ),
        "concepts": ConceptsStage(n_items=40, n_concepts=4, batch_size=16),
        "steering": SteeringStage(n_items=60, alphas=(1.0, 4.0), batch_size=32),
        "hallucination": HallucinationStage(n_images=12, max_new_tokens=8, batch_size=16),
    }
    settings.update(overrides)
    return AuditConfig(**settings)


def _audit_json(out: Path) -> dict:
    return json.loads((out / "audit.json").read_text())


def _links(page: Path) -> list[str]:
    return re.findall(r'href="([^"]+)"', page.read_text())


def test_contrastive_audit_site_cache_and_rerun(assets, tmp_path):
    out = tmp_path / "clip-audit"
    config = AuditConfig(
        model=str(assets / "clip"),
        data=str(assets / "data"),
        out_dir=out,
        influence=InfluenceStage(inject_swap_rate=0.25, batch_size=8),
    )
    result = run_audit(config, progress=False)
    status = {s.stage: s.status for s in result.stages}
    assert status[Stage.INFLUENCE] is StageStatus.DONE
    for stage in (Stage.SHIFT, Stage.CONCEPTS, Stage.STEERING, Stage.HALLUCINATION):
        assert status[stage] is StageStatus.SKIPPED
        assert "not a vision-language model" in result.stage(stage).reason
    page = (out / "index.html").read_text()
    assert "with the highest self-influence" in page and "injected caption swaps" in page and "AUROC" in page
    numbers = result.stage(Stage.INFLUENCE).summary
    before, after = numbers["val_loss"], numbers["val_loss_without_flagged"]
    assert any(
        f"from {before:.2f} to {after:.2f} ({after - before:+.2f};" in f.text
        for f in result.stage(Stage.INFLUENCE).findings
    )
    assert "influence/index.html" in _links(out / "index.html")
    assert "not a vision-language model" in page  # the skipped stages, with their reasons
    for name in ("index.html", "data.json", "stage.json"):
        assert (out / "influence" / name).is_file(), name
    data = json.loads((out / "influence" / "data.json").read_text())
    assert len(data["rows"]) == 24 and sum(r["injected_swap"] for r in data["rows"]) == data["summary"]["n_injected"]
    audit = _audit_json(out)
    first = audit["stages"]["influence"]
    assert first["status"] == "done"
    # the summary's numbers recomputed from the written rows (a range check could not fail)
    from sklearn.metrics import roc_auc_score

    rows, summary = data["rows"], first["summary"]
    truth = [r["injected_swap"] for r in rows]
    assert summary["auroc_self_influence"] == pytest.approx(
        roc_auc_score(truth, [r["self_influence"] for r in rows]), abs=1e-4
    )
    assert summary["auroc_value"] == pytest.approx(
        roc_auc_score(truth, [-r["delta_val_loss_if_removed"] for r in rows]), abs=1e-4
    )
    flagged = rows[: summary["n_flagged"]]  # rows are ranked by self-influence
    assert summary["flagged_precision"] == pytest.approx(
        sum(r["injected_swap"] for r in flagged) / len(flagged), abs=1e-4
    )
    assert summary["n_harmful"] == sum(r["delta_val_loss_if_removed"] < 0 for r in rows)
    assert summary["predicted_val_loss_change"] == pytest.approx(
        sum(r["delta_val_loss_if_removed"] for r in flagged), rel=1e-3, abs=1e-4
    )  # the JSON rounds to 4 places
    assert audit["kind"] == "contrastive" and audit["seconds"] > 0

    again = run_audit(config, progress=False)  # same settings: reused, not recomputed
    cached = _audit_json(out)["stages"]["influence"]
    assert again.stage(Stage.INFLUENCE).status is StageStatus.CACHED
    assert cached["status"] == "cached" and cached["seconds"] == 0.0
    assert cached["computed_at"] == first["computed_at"] and cached["summary"] == first["summary"]

    changed = AuditConfig(
        model=config.model,
        data=config.data,
        out_dir=out,
        influence=InfluenceStage(inject_swap_rate=0.25, batch_size=8, flag_fraction=0.2),
    )
    run_audit(changed, progress=False)
    recomputed = _audit_json(out)["stages"]["influence"]
    assert recomputed["status"] == "done" and recomputed["computed_at"] != first["computed_at"]
    assert recomputed["summary"]["n_flagged"] == 5 != first["summary"]["n_flagged"]
    assert len(list((out / "_work").glob("influence-*"))) == 1  # the old settings' work folder is gone


def _cycled_folder(assets: Path, folder: Path, n: int) -> Path:
    """An export-layout folder of ``n`` records cycling the 24 exported scenes (their images referenced in place)."""
    lines = (assets / "data" / "data.jsonl").read_text().splitlines()
    folder.mkdir()
    records = []
    for i in range(n):
        record = json.loads(lines[i % len(lines)])
        record["image"] = str((assets / "data" / record["image"]).resolve())
        record["scene_id"] = f"copy{i}"
        records.append(json.dumps(record))
    (folder / "data.jsonl").write_text("\n".join(records) + "\n")
    return folder


def test_influence_scores_every_pair_and_names_its_validation_data(assets, tmp_path):
    """608 records (more than the old 600-pair cap): every pair is scored by default; the summary page says how many
    pairs were scored and against which validation data; sampling happens only when asked, and is named."""
    data = _cycled_folder(assets, tmp_path / "big", 608)

    def audit(name: str, **stage) -> tuple[dict, str]:
        out = tmp_path / name
        config = AuditConfig(
            model=str(assets / "clip"),
            data=str(data),
            out_dir=out,
            stages=(Stage.INFLUENCE,),
            influence=InfluenceStage(batch_size=16, **stage),
        )
        result = run_audit(config, progress=False)
        assert result.stage(Stage.INFLUENCE).status is StageStatus.DONE
        rows = json.loads((out / "influence" / "data.json").read_text())["rows"]
        assert len(rows) == result.stage(Stage.INFLUENCE).summary["n_scored"]
        return result.stage(Stage.INFLUENCE).summary, (out / "index.html").read_text()

    held_out, page = audit("default")
    assert held_out["n_pairs_in_data"] == 608 and held_out["n_scored"] == 608 and held_out["n_val"] == 152
    assert not held_out["sampled"] and held_out["flagged_by"] == "self_influence"
    assert (
        "Influence scored 608 training pairs: all 608 pairs of the data; validation data: 152 pairs of the same" in page
    )
    assert "flagged by self-influence only" in page and "used part of the same data" in page

    trusted, page = audit("trusted", val=str(assets / "data"), max_pairs=100)
    assert trusted["n_scored"] == 100 and trusted["n_val"] == 24 and trusted["validation"] == str(assets / "data")
    assert trusted["sampled"] and trusted["n_pairs_in_data"] == 608
    assert trusted["flagged_by"] == "delta_val_loss_if_removed"
    assert "a random sample of 100 of the 608 pairs of the data (max_pairs = 100)" in page
    assert f"validation data: the trusted validation set {assets / 'data'} (24 pairs)" in page
    assert "self-influence only" not in page

    with pytest.raises(InputError, match="validation data .* not found"):
        AuditConfig(
            model=str(assets / "clip"),
            data=str(data),
            out_dir=tmp_path / "x",
            influence=InfluenceStage(val=str(tmp_path / "missing")),
        )


def test_vlm_audit_with_finetuned_model(assets, tmp_path):
    out = tmp_path / "vlm-audit"
    result = run_audit(_vlm_config(assets, out, finetuned=str(assets / "vlm-tuned")), progress=False)
    status = {s.stage: s.status for s in result.stages}
    assert status[Stage.INFLUENCE] is StageStatus.SKIPPED
    assert "not a contrastive model" in result.stage(Stage.INFLUENCE).reason
    for stage in (Stage.SHIFT, Stage.CONCEPTS, Stage.HALLUCINATION):
        assert status[stage] is StageStatus.DONE, (stage, result.stage(stage).error)
    # A random model never answers yes or no: found while running, the steering stage is skipped with that reason.
    assert status[Stage.STEERING] is StageStatus.SKIPPED
    assert "does not answer both 'yes' and 'no'" in result.stage(Stage.STEERING).reason
    page = (out / "index.html").read_text()
    assert "does not answer both" in page
    links = _links(out / "index.html")
    for target in (
        "shift/index.html",
        "concepts/index.html",
        "concepts/compare/index.html",
        "hallucination/index.html",
    ):
        assert target in links, target
        assert (out / target).is_file() and (out / target).with_name("data.json").is_file()
    assert not any(link.startswith("steering/") for link in links)
    audit = _audit_json(out)
    shift = audit["stages"]["shift"]["summary"]
    assert set(shift["splits"]) == {"fog_5", "keyboard_5", "contrast_5"}
    # the words follow the intervals: a shift is called distinguishable from clean only if its interval excludes 0
    shift_findings = [f.text for f in result.stage(Stage.SHIFT).findings]
    for split, numbers in shift["splits"].items():
        lo, hi = numbers["emid_ci"]
        text = next(t for t in shift_findings if t.startswith(f"Under {split.replace('_', ' severity ')} "))
        assert ("includes 0, not distinguishable" in text) == (lo <= 0 <= hi), (text, lo, hi)
        assert f"[{lo:.3f}, {hi:.3f}]" in text
    n_above = sum(s["emid_ci"][0] > 0 for s in shift["splits"].values())
    assert shift_findings[0].startswith(f"Of 3 shifts, {n_above} lower" if n_above else "None of the 3 shifts")
    concepts = audit["stages"]["concepts"]["summary"]["finetuning"]
    assert concepts["frac_improved"] is not None
    compare_text = result.stage(Stage.CONCEPTS).findings[1].text
    assert ("not more than every baseline" in compare_text) == (not concepts["beats_every_baseline"])
    halluc = audit["stages"]["hallucination"]["summary"]
    assert set(halluc) == {str(assets / "vlm"), str(assets / "vlm-tuned")}
    assert {"pope_adversarial_acc", "pope_random_acc", "chair_i", "recall"} <= set(halluc[str(assets / "vlm")])
    gap_lo, gap_hi = halluc[str(assets / "vlm")]["pope_gap_ci"]
    pope_text = result.stage(Stage.HALLUCINATION).findings[0].text
    assert ("no sign that co-occurring objects" in pope_text) == (gap_lo <= 0 <= gap_hi), pope_text
    # every image a page shows is on disk
    for html in out.rglob("index.html"):
        for src in re.findall(r'src="([^"]+)"', html.read_text()):
            assert (html.parent / src).is_file(), (html, src)


def test_a_failing_stage_is_reported_and_the_others_complete(assets, tmp_path, monkeypatch):
    from mmlens.audit import stages

    def broken(*args, **kwargs):
        raise RuntimeError("the capture ran out of memory")

    monkeypatch.setattr(stages, "run_concepts", broken)
    out = tmp_path / "failing"
    result = run_audit(_vlm_config(assets, out, stages=(Stage.CONCEPTS, Stage.HALLUCINATION)), progress=False)
    assert result.stage(Stage.CONCEPTS).status is StageStatus.FAILED
    assert result.stage(Stage.CONCEPTS).error == "RuntimeError: the capture ran out of memory"
    assert result.stage(Stage.HALLUCINATION).status is StageStatus.DONE
    assert result.stage(Stage.SHIFT).reason == "not requested (--stages)"
    page = (out / "index.html").read_text()
    assert "the capture ran out of memory" in page
    assert not (out / "concepts").exists()
    assert _audit_json(out)["stages"]["concepts"]["status"] == "failed"


def test_steering_findings_follow_their_measurements(assets, tmp_path, monkeypatch):
    """A random model answers neither yes nor no; label the build half by the truth (as if it answered correctly)
    so the steering stage runs end to end, then check that its sentences say what its numbers say."""
    import mmlens.steer

    def truth_labels(generated, examples, **kwargs):
        return [mmlens.steer.normalise_answer(e.answer) for e in examples]

    monkeypatch.setattr(mmlens.steer, "answer_labels", truth_labels)
    out = tmp_path / "steer"
    config = _vlm_config(
        assets,
        out,
        finetuned=str(assets / "vlm-tuned"),
        stages=(Stage.STEERING,),
        steering=SteeringStage(
            n_items=60, alphas=(1.0, 4.0), shift_alphas=(1.0, 4.0), n_describe=12, describe_tokens=6, batch_size=32
        ),
    )
    result = run_audit(config, progress=False).stage(Stage.STEERING)
    assert result.status is StageStatus.DONE, result.error
    summary = result.summary
    steer_text, finetune_text = (f.text for f in result.findings)
    if summary["n_source"]:
        assert f"of the {summary['n_source']} held-out 'yes' answers" in steer_text
        assert "nan" not in steer_text
    else:
        assert "answers 'yes' to none of the held-out yes/no questions" in steer_text
    extra = summary["finetuning"]
    (p_lo, p_hi), (r_lo, r_hi) = extra["gain_over_plain_ci"], extra["gain_over_random_ci"]
    assert p_lo <= p_hi and r_lo <= r_hi
    moved = p_lo > 0 and r_lo > 0
    assert ("does not measurably move" in finetune_text) == (not moved), finetune_text
    assert f"[{p_lo:+.3f}, {p_hi:+.3f}]" in finetune_text
    assert (out / "steering" / "finetune" / "index.html").is_file()


def test_fingerprint_follows_models_embedders_and_settings(assets, tmp_path):
    import os

    from mmlens.audit.data import load_audit_data
    from mmlens.audit.runner import location_fingerprint, stage_fingerprint

    data = load_audit_data(assets / "data")
    base = _vlm_config(assets, tmp_path / "o")
    model_fp = location_fingerprint(base.model)

    def shift_fp(config: AuditConfig, fp: str = model_fp) -> str:
        return stage_fingerprint(Stage.SHIFT, config, fp, None, data)

    first = shift_fp(base)
    assert shift_fp(base) == first
    assert shift_fp(_vlm_config(assets, tmp_path / "o", seed=1)) != first
    with_image = _vlm_config(assets, tmp_path / "o", shift=ShiftStage(image_model=str(assets / "clip")))
    image_fp = shift_fp(with_image)
    clip_weights = next((assets / "clip").glob("*.safetensors"))
    stat = clip_weights.stat()
    os.utime(clip_weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a rebuilt image model
    assert shift_fp(with_image) != image_fp
    # a local sentence encoder counts like a model; a spec without a path does not read the working directory
    from mmlens.audit.runner import text_embedder_fingerprint

    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "model.safetensors").write_bytes(b"1")
    encoder_fp = text_embedder_fingerprint(f"sentence:{encoder}")
    (encoder / "model.safetensors").write_bytes(b"22")
    assert text_embedder_fingerprint(f"sentence:{encoder}") != encoder_fp
    assert text_embedder_fingerprint("minilm") != text_embedder_fingerprint("hashing")
    weights = next((assets / "vlm").glob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a rebuilt audited model
    assert location_fingerprint(base.model) != model_fp
    # the fine-tuned model counts only for the stages that use it
    assert stage_fingerprint(Stage.SHIFT, base, model_fp, "a", data) == stage_fingerprint(
        Stage.SHIFT, base, model_fp, "b", data
    )
    assert stage_fingerprint(Stage.CONCEPTS, base, model_fp, "a", data) != stage_fingerprint(
        Stage.CONCEPTS, base, model_fp, "b", data
    )


def test_stages_are_skipped_when_the_records_lack_their_fields(assets, tmp_path):
    data = tmp_path / "bare"
    shutil.copytree(assets / "data", data)
    lines = [json.loads(line) for line in (data / "data.jsonl").read_text().splitlines()]
    bare = [{"image": rec["image"], "caption": rec["caption"]} for rec in lines]  # no vqa, objects or pope
    (data / "data.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in bare))
    result = run_audit(_vlm_config(assets, tmp_path / "out", data=str(data)), progress=False)
    reasons = {s.stage: s.reason for s in result.stages}
    assert all(s.status is StageStatus.SKIPPED for s in result.stages)
    assert "no VQA questions" in reasons[Stage.SHIFT] and "no VQA questions" in reasons[Stage.CONCEPTS]
    assert "no yes/no questions" in reasons[Stage.STEERING]
    assert "no object lists" in reasons[Stage.HALLUCINATION]
    assert "no object lists" in (tmp_path / "out" / "index.html").read_text()


def test_bad_input_fails_before_any_work(assets, tmp_path):
    clip = str(assets / "clip")
    with pytest.raises(InputError, match="not found"):
        run_audit(AuditConfig(model=clip, data=str(tmp_path / "missing"), out_dir=tmp_path / "o1"), progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "data.jsonl").write_text("")
    with pytest.raises(InputError, match="empty"):
        run_audit(AuditConfig(model=clip, data=str(empty), out_dir=tmp_path / "o2"), progress=False)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(assets / "data", corrupt)
    first = json.loads((corrupt / "data.jsonl").read_text().splitlines()[0])
    (corrupt / first["image"]).write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read image"):
        run_audit(AuditConfig(model=clip, data=str(corrupt), out_dir=tmp_path / "o3"), progress=False)
    with pytest.raises(InputError, match="unknown shift"):
        parse_shift_grid("fog:3,snow:5")
    with pytest.raises(InputError, match="severity"):
        parse_shift_grid("fog:9")
    assert parse_shift_grid("fog:3+keyboard:3") == ((None, 0, None, 0), ("fog", 3, "keyboard", 3))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3" / "index.html").exists()
    with pytest.raises(InputError, match="names no stage"):
        parse_stages(" , ")
    with pytest.raises(InputError, match="no stage requested"):
        AuditConfig(model=clip, data=str(assets / "data"), out_dir=tmp_path / "o4", stages=())
    with pytest.raises(InputError, match="fusion"):
        AuditConfig(model=clip, data=str(assets / "data"), out_dir=tmp_path / "o4", shift=ShiftStage(fusion="sum"))
    with pytest.raises(InputError, match="flag_fraction"):
        AuditConfig(
            model=clip, data=str(assets / "data"), out_dir=tmp_path / "o4", influence=InfluenceStage(flag_fraction=0.0)
        )
    # a steering layer the model does not have: refused after loading the model, before any stage runs
    with pytest.raises(InputError, match="steering layer 99 is out of range"):
        run_audit(_vlm_config(assets, tmp_path / "o5", steering=SteeringStage(layer=99)), progress=False)
    assert not any(p.name in {s.value for s in Stage} for p in (tmp_path / "o5").glob("*"))
