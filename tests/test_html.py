from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image

from mmlens.html import CardLine, HtmlReport, ImageCard


def _report() -> HtmlReport:
    report = HtmlReport("Title <b>", subtitle="sub", data={"x": 1.5})
    section = report.section("Metrics & more")
    section.text("a paragraph with <script>")
    section.table(
        [
            {"metric": "acc", "value": 0.91234, "meets target": True},
            {"metric": "f1", "value": 0.5, "meets target": False},
        ]
    )
    section.images(
        [ImageCard(Image.new("RGB", (8, 8), "red"), "red square", (CardLine("yes", ok=True), CardLine("no", ok=False)))]
    )
    fig, ax = plt.subplots()
    ax.bar(["a"], [1])
    section.figure(fig, "a plot")
    return report


def test_report_writes_page_assets_and_data(tmp_path):
    index = _report().write(tmp_path / "rep")
    page = index.read_text()
    assert "&lt;script&gt;" in page and "<script>" not in page  # text is escaped
    assert "0.912" in page and 'class="pass"' in page and 'class="fail"' in page
    assets = sorted(p.name for p in (tmp_path / "rep" / "assets").rglob("*.png"))
    assert len(assets) == 2
    for src in [part.split('"')[0] for part in page.split('src="')[1:]]:
        assert (tmp_path / "rep" / src).is_file(), src
    thumb = Image.open(next((tmp_path / "rep" / "assets").rglob("img-*.png")))
    assert thumb.size[0] >= 160  # tiny images are upscaled for reading
    assert json.loads((tmp_path / "rep" / "data.json").read_text()) == {"x": 1.5}


def test_report_replaces_existing_folder_atomically(tmp_path):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    _report().write(out)
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]  # no temporary folders left behind


def test_influence_cards_are_red_only_beyond_the_stand_out_threshold():
    """Clean scores (half of them negative) colour no card; a planted harmful score is the one red card; the legend
    states the threshold."""
    import numpy as np

    from mmlens.influence.data import PairData
    from mmlens.influence.report import ranking_report

    n = 40
    pairs = PairData(tuple(Image.new("RGB", (8, 8), "red") for _ in range(n)), tuple(f"c{i}" for i in range(n)))

    def page(values):
        order = np.argsort(values)
        rows = [
            {
                "rank": r,
                "index": int(i),
                "id": str(i),
                "caption": f"c{i}",
                "delta_val_loss_if_removed": float(values[i]),
            }
            for r, i in enumerate(order, 1)
        ]
        return ranking_report(
            pairs,
            rows,
            title="t",
            subtitle="",
            explanation="",
            card_scores=("delta_val_loss_if_removed",),
            cards=8,
            ranking_title="r",
        ).render()

    clean = np.random.default_rng(0).normal(0.0, 1e-5, n)
    html = page(clean)
    assert (clean < 0).sum() >= 8 and 'class="line bad"' not in html
    assert "red = harmful beyond the threshold" in html and "robust sd" in html
    planted = clean.copy()
    planted[3] = -1e-3
    assert page(planted).count('class="line bad"') == 1
