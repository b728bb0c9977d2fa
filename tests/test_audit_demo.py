"""`mmlens demo` on a zoo built at the smoke budget: the report is complete and its numbers are the zoo's."""

from __future__ import annotations

import json
import re

import pytest

from mmlens.audit import ShiftStage
from mmlens.audit.demo import ZOO_TARGETS, DemoConfig, run_demo, target_rows


def test_target_rows_judge_each_target():
    metrics = {
        "digits-clip": {"zero_shot_acc": 0.96},
        "mini-clip": {"retrieval_top1": 0.5},
        "mini-llava": {
            "vqa_acc": {"yes_no": 0.9, "number": 0.84, "other": 0.86},
            "pope_random_acc": 0.9,
            "pope_adversarial_acc": 0.86,
        },
    }
    rows = {(r["model"], r["metric"]): r for r in target_rows(metrics)}
    met = {key[1]: row["met"] for key, row in rows.items()}
    assert met["zero-shot accuracy (held-out digits)"] is True
    assert met["image-to-caption retrieval top-1"] is False
    assert met["VQA accuracy, number"] is False and met["VQA accuracy, yes/no"] is True
    assert met["language bias: POPE random - adversarial"] is False  # gap 0.04 < 0.05
    assert abs(rows[("mini-llava", "language bias: POPE random - adversarial")]["measured"] - 0.04) < 1e-9
    missing = target_rows({})
    assert len(missing) == len(ZOO_TARGETS) and not any(r["met"] for r in missing)


def test_demo_site_on_smoke_zoo(smoke_zoo_home, monkeypatch, tmp_path):
    """A fresh clone's demo: the zoo (here the smoke zoo) ships with the package, MMLENS_HOME is empty, and nothing
    is trained."""
    from mmlens import zoo
    from mmlens.zoo import registry

    shipped = tmp_path / "shipped"
    zoo.ship(source=smoke_zoo_home, dest=shipped, recipes="smoke")
    monkeypatch.setenv("MMLENS_SHIPPED_ZOO", str(shipped))
    monkeypatch.setattr(registry, "_builder", lambda name: pytest.fail(f"the demo built {name}, which is shipped"))
    out = tmp_path / "demo"
    config = DemoConfig(
        out_dir=out,
        examples=3,
        seed=1,
        clip_scenes=40,
        llava_scenes=24,
        shift=ShiftStage(
            n_items=16,
            image_model="zoo:mini-clip",
            text_embedder="hashing",
            n_permutations=5,
            n_bootstrap=5,
            max_epochs=5,
        ),
    )
    index = run_demo(config, progress=False)
    page = index.read_text()
    links = re.findall(r'href="([^"]+)"', page)
    for target in (
        "mini-clip/index.html",
        "mini-llava/index.html",
        "zoo/index.html",
        "mini-clip/influence/index.html",
        "mini-llava/hallucination/index.html",
    ):
        assert target in links, target
        assert (out / target).is_file(), target
    assert "What was found: zoo:mini-clip" in page and "What was found: zoo:mini-llava" in page
    assert "shipped with mmlens (digits-clip, mini-clip, mini-llava, mini-llava-colour)" in page
    assert "built on this machine" not in page and not zoo.zoo_dir().exists()
    assert "injected caption swaps" in page and "not a contrastive model" in page
    summary = json.loads((out / "audit.json").read_text())
    assert summary["audit_seconds"] > 0 and summary["audit_budget_seconds"] == 900.0
    assert summary["stages_reused"] == 0 and "reused from an earlier run" not in page
    clip = summary["audits"]["mini-clip"]["stages"]
    assert clip["influence"]["status"] == "done"
    rows = json.loads((out / "mini-clip" / "influence" / "data.json").read_text())["rows"]
    from sklearn.metrics import roc_auc_score

    assert clip["influence"]["summary"]["auroc_self_influence"] == pytest.approx(
        roc_auc_score([r["injected_swap"] for r in rows], [r["self_influence"] for r in rows]), abs=1e-4
    )
    # 10% of the training pairs (without a trusted validation set every pair is trained and scored)
    assert clip["influence"]["summary"]["n_train"] == 40
    assert clip["influence"]["summary"]["n_injected"] == 4
    llava = summary["audits"]["mini-llava"]["stages"]
    assert llava["influence"]["status"] == "skipped"
    assert {llava[s]["status"] for s in ("shift", "concepts", "hallucination")} == {"done"}

    zoo_page = (out / "zoo" / "index.html").read_text()
    for title in ("The zoo against its targets", "digits-clip", "mini-clip", "mini-llava:", "mini-llava-colour"):
        assert title in zoo_page, title
    sources = re.findall(r'src="([^"]+)"', zoo_page)
    assert len(sources) >= 1 + 3 * 3  # the plot and three example images per model section
    for src in sources:
        assert (out / "zoo" / src).is_file(), src
    data = json.loads((out / "zoo" / "data.json").read_text())
    from mmlens.audit.demo import DEMO_MODELS

    built = {name: record["metrics"] for name, built, record in zoo.list_zoo() if built and name in DEMO_MODELS}
    assert data["metrics"] == json.loads(json.dumps(built))  # the report shows the zoo's own numbers
    assert len(data["examples"]["digits-clip"]) == 3
    assert {"question", "answer", "predicted"} <= set(data["examples"]["mini-llava"][0])

    again = run_demo(config, progress=False)  # a rerun reuses every finished stage
    assert again == index
    rerun_summary = json.loads((out / "audit.json").read_text())
    rerun = rerun_summary["audits"]
    assert rerun["mini-clip"]["stages"]["influence"]["status"] == "cached"
    assert rerun["mini-llava"]["stages"]["shift"]["status"] == "cached"
    # the page says the stages were reused and how long they took when computed
    assert rerun_summary["stages_reused"] == rerun_summary["stages_run_or_reused"] > 0
    assert rerun_summary["audit_compute_seconds"] == summary["audit_compute_seconds"]
    assert "reused from an earlier run" in again.read_text()
