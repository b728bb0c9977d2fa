"""A static HTML report that opens from disk: sections of text, tables, image grids and plots.

Every analysis writes its results through :class:`HtmlReport` so that all reports look alike and the JSON behind
every table sits beside the page. The report is written atomically: it is built in a temporary folder next to the
target and moved into place only when complete, so an interrupted run never leaves a half-written report.
"""

from __future__ import annotations

import html
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mmlens.io import atomic_folder, atomic_text_file, json_default

_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #1d232a; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #dde3ea; }
.subtitle { color: #5a6672; margin-top: 0; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .92rem; }
th, td { border: 1px solid #dde3ea; padding: .3rem .6rem; text-align: left; }
th { background: #f3f6f9; overflow-wrap: break-word; font-size: .85rem; }
table { max-width: 100%; }  /* long metric names wrap at their underscores: the table fits a 1280 px window */
.table-box { overflow-x: auto; max-width: 100%; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.pass { color: #136f2e; font-weight: 600; } td.fail { color: #a3221b; font-weight: 600; }
.grid { display: flex; flex-wrap: wrap; gap: .8rem; }
.card { border: 1px solid #dde3ea; border-radius: 6px; padding: .5rem; width: 190px; font-size: .82rem; }
.card img { width: 100%; image-rendering: pixelated; border-radius: 3px; background: #eee; }
.card .line { margin: .15rem 0; } .card .ok { color: #136f2e; } .card .bad { color: #a3221b; }
figure { margin: 1rem 0; } figure img { max-width: 100%; } figcaption { color: #5a6672; font-size: .88rem; }
.note { background: #f7f9fb; border-left: 3px solid #8aa4bd; padding: .4rem .8rem; }
"""


@dataclass(frozen=True)
class CardLine:
    """One line under an image; ``ok`` colours it green (True), red (False) or leaves it plain (None)."""

    text: str
    ok: bool | None = None


@dataclass(frozen=True)
class ImageCard:
    image: Image.Image
    title: str
    lines: tuple[CardLine, ...] = ()


@dataclass
class _Block:
    html: str


@dataclass
class Section:
    """A titled part of a report; blocks render in the order they were added."""

    title: str
    _blocks: list[_Block] = field(default_factory=list)
    _assets: dict[str, Any] = field(default_factory=dict)

    def text(self, paragraph: str, *, note: bool = False) -> Section:
        css = ' class="note"' if note else ""
        self._blocks.append(_Block(f"<p{css}>{html.escape(paragraph)}</p>"))
        return self

    def table(self, rows: Sequence[Mapping[str, Any]], *, columns: Sequence[str] | None = None) -> Section:
        """A table of rows (dicts). A value that is a bool renders as pass/fail."""
        if not rows:
            return self.text("(no rows)")
        columns = list(columns or rows[0].keys())
        # long metric names break after their underscores (pope_adversarial_ / yes_ratio), never inside a word
        head = "".join(f"<th>{html.escape(str(c)).replace('_', '_<wbr>')}</th>" for c in columns)
        body = []
        for row in rows:
            cells = []
            for column in columns:
                cells.append(_cell(row.get(column, "")))
            body.append("<tr>" + "".join(cells) + "</tr>")
        # a table wider than the page (many metrics) scrolls inside its own box, never the whole page
        self._blocks.append(_Block(f'<div class="table-box"><table><tr>{head}</tr>{"".join(body)}</table></div>'))
        return self

    def images(self, cards: Sequence[ImageCard], *, thumb_size: int = 160) -> Section:
        parts = []
        for card in cards:
            name = f"img-{len(self._assets):04d}.png"
            thumb = card.image.convert("RGB")
            if max(thumb.size) < thumb_size:  # upscale tiny images without blurring them
                scale = max(1, thumb_size // max(thumb.size))
                thumb = thumb.resize((thumb.width * scale, thumb.height * scale), Image.Resampling.NEAREST)
            self._assets[name] = thumb
            lines = "".join(
                f'<div class="line{"" if line.ok is None else (" ok" if line.ok else " bad")}">'
                f"{html.escape(line.text)}</div>"
                for line in card.lines
            )
            parts.append(
                f'<div class="card"><img src="assets/{{section}}/{name}" alt="{html.escape(card.title)}">'
                f"<div><b>{html.escape(card.title)}</b></div>{lines}</div>"
            )
        self._blocks.append(_Block('<div class="grid">' + "".join(parts) + "</div>"))
        return self

    def bullets(self, items: Sequence[tuple[str, str | None]], *, link_text: str = "details") -> Section:
        """A bulleted list of sentences, each followed by a link to ``href`` (a path relative to the page) if given."""
        parts = []
        for text, href in items:
            link = f' <a href="{html.escape(href)}">{html.escape(link_text)}</a>' if href else ""
            parts.append(f"<li>{html.escape(text)}{link}</li>")
        self._blocks.append(_Block("<ul>" + "".join(parts) + "</ul>"))
        return self

    def figure(self, fig: Any, caption: str) -> Section:
        """A matplotlib figure, saved as PNG when the report is written (and closed then)."""
        name = f"fig-{len(self._assets):04d}.png"
        self._assets[name] = fig
        self._blocks.append(
            _Block(
                f'<figure><img src="assets/{{section}}/{name}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        )
        return self


def format_number(value: float) -> str:
    """A number at its scale: 3 significant digits, scientific notation below 1e-3 or from 1e5 (influence scores
    of ~1e-5 must not print as 0.000)."""
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.4g}"
    return f"{value:.2e}"


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return f'<td class="{"pass" if value else "fail"}">{"yes" if value else "no"}</td>'
    if isinstance(value, float):
        return f'<td class="num">{format_number(value)}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    return f"<td>{html.escape(str(value))}</td>"


@dataclass
class HtmlReport:
    """A one-page report. ``data`` is written beside it as ``data.json`` (the numbers behind every table)."""

    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def section(self, title: str) -> Section:
        sec = Section(title)
        self.sections.append(sec)
        return sec

    def render(self) -> str:
        body = []
        for index, sec in enumerate(self.sections):
            blocks = "\n".join(block.html.replace("{section}", f"s{index}") for block in sec._blocks)
            body.append(f"<section><h2>{html.escape(sec.title)}</h2>\n{blocks}</section>")
        subtitle = f'<p class="subtitle">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head>"
            f"<body><h1>{html.escape(self.title)}</h1>{subtitle}\n" + "\n".join(body) + "</body></html>\n"
        )

    def write(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write ``index.html``, ``data.json`` and ``assets/`` into ``out_dir`` (replaced atomically)."""
        out = Path(out_dir)
        with atomic_folder(out) as tmp:
            self._save_assets(tmp / "assets")
            (tmp / "index.html").write_text(self.render(), encoding="utf-8")
            (tmp / "data.json").write_text(json.dumps(self.data, indent=2, default=json_default), encoding="utf-8")
        return out / "index.html"

    def write_page(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``index.html``, ``data.json`` and ``assets/`` into ``folder`` (each replaced atomically) and leave
        the rest of the folder in place: the top page of a site whose sub-pages live in sub-folders."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_folder(folder / "assets") as tmp:
            self._save_assets(tmp)
        with atomic_text_file(folder / "data.json") as handle:
            handle.write(json.dumps(self.data, indent=2, default=json_default))
        with atomic_text_file(folder / "index.html") as handle:
            handle.write(self.render())
        return folder / "index.html"

    def _save_assets(self, assets_dir: Path) -> None:
        for index, sec in enumerate(self.sections):
            asset_dir = assets_dir / f"s{index}"
            for name, asset in sec._assets.items():
                asset_dir.mkdir(parents=True, exist_ok=True)
                if isinstance(asset, Image.Image):
                    asset.save(asset_dir / name)
                else:
                    asset.savefig(asset_dir / name, dpi=110, bbox_inches="tight")
                    _release_figure(asset)


def _release_figure(fig: Any) -> None:
    """Free a figure made through pyplot (which keeps a global registry); plain ``Figure`` objects need nothing."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
