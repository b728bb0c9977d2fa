"""Reports in a real browser: headless Debian Chromium opens every page of a report from disk (following the
report's own links), and each must load without console errors, uncaught exceptions or failed loads, with every
image decoded.

Chromium is driven over the DevTools protocol on ``--remote-debugging-pipe`` (file descriptors 3 and 4, messages
separated by NUL bytes) with the standard library only. Needs ``/usr/bin/chromium`` (Debian/Ubuntu:
``apt-get install -y chromium``); skipped without it.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
from PIL import Image

from mmlens.html import CardLine, HtmlReport, ImageCard

CHROMIUM = Path(os.environ.get("MMLENS_CHROMIUM", "/usr/bin/chromium"))
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium) to run the browser tests",
)
PAGE_TIMEOUT_S = 60.0
#: The window every page is checked in: a laptop's 1280 px, where a report must need no horizontal scrolling.
WINDOW_WIDTH = 1280

# Resolves once every <img> has loaded or failed; returns what the page shows and links to.
PAGE_SUMMARY_JS = """
(async () => {
  const images = Array.from(document.images);
  await Promise.all(images.map(img => img.complete ? null :
      new Promise(done => { img.addEventListener('load', done); img.addEventListener('error', done); })));
  return {
    url: location.href,
    title: document.title,
    images: images.map(img => ({src: img.getAttribute('src'), complete: img.complete, width: img.naturalWidth,
                                height: img.naturalHeight})),
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
    text_length: document.body ? document.body.innerText.length : 0,
    page_width: document.documentElement.scrollWidth,
    window_width: window.innerWidth,
    // tables wider than the box they sit in (their last columns behind a scrollbar)
    clipped_tables: Array.from(document.querySelectorAll('table')).filter(
        t => t.scrollWidth > t.parentElement.clientWidth + 1).length,
  };
})()
"""


@dataclass
class PageCheck:
    """What one page did in the browser."""

    url: str
    title: str = ""
    images: list[dict[str, Any]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    text_length: int = 0
    page_width: int = 0
    window_width: int = 0
    clipped_tables: int = 0

    @property
    def broken_images(self) -> list[str]:
        return [img["src"] for img in self.images if not img["complete"] or img["width"] == 0]


class Chromium:
    """A headless Chromium driven over ``--remote-debugging-pipe``; a context manager that always ends it."""

    def __init__(self, profile_dir: Path):
        self._profile_dir = profile_dir
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self._inbox: queue.Queue = queue.Queue()

    def __enter__(self) -> Chromium:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Lift the browser's ends above 9, so that moving them onto fds 3 and 4 cannot close one of them.
        to_browser_r, from_browser_w = (_above_nine(fd) for fd in (to_browser_r, from_browser_w))
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-extensions",
            "--remote-debugging-pipe",
            f"--user-data-dir={self._profile_dir}",
            "about:blank",
        ]
        # The protocol pipe must be the browser's fds 3 (commands in) and 4 (messages out): bash moves them
        # (dash's redirections take single-digit fds only).
        script = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        self._process = subprocess.Popen(
            ["/bin/bash", "-c", script, str(CHROMIUM), *flags],
            pass_fds=(to_browser_r, from_browser_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._stderr: list[bytes] = []
        threading.Thread(target=self._read_messages, daemon=True).start()
        threading.Thread(target=lambda: self._stderr.extend(self._process.stderr), daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):  # already gone or stuck: the wait/kill below ends it
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._to_browser)

    def _read_messages(self) -> None:
        buffer = b""
        with os.fdopen(self._from_browser, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for message in messages:
                    self._inbox.put(json.loads(message))
        self._inbox.put(None)  # the browser closed its end

    def _receive(self, deadline: float) -> dict[str, Any]:
        try:
            message = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError("Chromium did not answer in time") from None
        if message is None:
            tail = b"".join(self._stderr).decode(errors="replace")[-2000:]
            raise RuntimeError(f"Chromium exited (code {self._process.poll()}): {tail}")
        return message

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float = PAGE_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are kept for :meth:`events`."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    def wait_for_event(
        self, method: str, session: str, *, after: int = 0, timeout: float = PAGE_TIMEOUT_S
    ) -> dict[str, Any]:
        """The first ``method`` event of ``session`` among the events from index ``after`` on (waits for it)."""
        deadline = time.monotonic() + timeout
        for event in self._events[after:]:
            if event["method"] == method and event.get("sessionId") == session:
                return event
        while True:
            event = self._receive(deadline)
            if "method" in event:
                self._events.append(event)
                if event["method"] == method and event.get("sessionId") == session:
                    return event

    def events(self, session: str) -> list[dict[str, Any]]:
        return [e for e in self._events if e.get("sessionId") == session]

    def check_page(self, url: str) -> PageCheck:
        """Open ``url`` in a fresh tab; report console errors, exceptions, failed loads, images and links."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            for domain in ("Runtime", "Log", "Page"):
                self.call(f"{domain}.enable", session=session)
            self.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": WINDOW_WIDTH, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            before_navigation = len(self._events)
            navigation = self.call("Page.navigate", {"url": url}, session=session)
            check = PageCheck(url)
            if navigation.get("errorText"):
                check.errors.append(f"navigation failed: {navigation['errorText']}")
                return check
            self.wait_for_event("Page.loadEventFired", session, after=before_navigation)
            summary = self.call(
                "Runtime.evaluate",
                {"expression": PAGE_SUMMARY_JS, "awaitPromise": True, "returnByValue": True},
                session=session,
            )
            if "exceptionDetails" in summary:
                raise RuntimeError(f"the page summary script failed on {url}: {summary['exceptionDetails']}")
            value = summary["result"]["value"]
            if value["url"] != url:
                raise RuntimeError(f"the tab shows {value['url']}, not {url}")
            check.title, check.images, check.links = value["title"], value["images"], value["links"]
            check.text_length = value["text_length"]
            check.page_width, check.window_width = value["page_width"], value["window_width"]
            check.clipped_tables = value["clipped_tables"]
            check.errors = _page_errors(self.events(session))
            return check
        finally:
            self.call("Target.closeTarget", {"targetId": target})


def _above_nine(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


def _page_errors(events: list[dict[str, Any]]) -> list[str]:
    errors = []
    for event in events:
        params = event.get("params", {})
        if event["method"] == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(
                "console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            )
        elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
    return errors


def check_site(browser: Chromium, index: Path) -> dict[Path, PageCheck]:
    """Every page reachable from ``index`` through links to ``.html`` files under its folder."""
    root = index.parent.resolve()
    pending, checks = [index.resolve()], {}
    while pending:
        page = pending.pop(0)
        if page in checks:
            continue
        check = checks[page] = browser.check_page(page.as_uri())
        for link in check.links:
            parsed = urlparse(link)
            if parsed.scheme != "file":
                continue
            target = Path(unquote(parsed.path)).resolve()
            if target.suffix == ".html" and target.is_relative_to(root) and target not in checks:
                pending.append(target)
    return checks


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with Chromium(tmp_path_factory.mktemp("chromium-profile")) as chromium:
        yield chromium


def _example_report(title: str) -> HtmlReport:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    report = HtmlReport(title, subtitle="a browser check", data={"accuracy": [0.5, 0.75]})
    section = report.section("Numbers")
    section.text("Two rows and a pass/fail column.").table(
        [{"model": "a", "accuracy": 0.5, "met": False}, {"model": "b", "accuracy": 0.75, "met": True}]
    )
    cards = [
        ImageCard(
            Image.new("RGB", (32, 32), colour),
            f"a {colour} square",
            (CardLine("predicted: square", True), CardLine("chair: 0", None)),
        )
        for colour in ("red", "green", "blue")
    ]
    report.section("Examples").images(cards)
    fig = Figure(figsize=(3, 2))
    fig.add_subplot().plot([0, 1, 2], [0.5, 0.6, 0.75])
    report.section("A plot").figure(fig, "accuracy over steps").text("Read the plot with care.", note=True)
    return report


def test_html_reports_load_cleanly_with_their_images(browser, tmp_path):
    first = _example_report("First report").write(tmp_path / "site" / "first")
    second = _example_report("Second report").write(tmp_path / "site" / "second")
    # A summary page linking to both, as a multi-page report does: the crawl must reach every page.
    index = tmp_path / "site" / "index.html"
    index.write_text(
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Summary</title></head>'
        '<body><a href="first/index.html">first</a> <a href="second/index.html">second</a>'
        '<a href="https://example.org/">outside</a></body></html>'
    )
    checks = check_site(browser, index)
    assert set(checks) == {index.resolve(), first.resolve(), second.resolve()}
    for page, check in checks.items():
        assert check.errors == [], (page, check.errors)
        assert check.broken_images == [], (page, check.broken_images)
    for page in (first, second):
        check = checks[page.resolve()]
        assert len(check.images) == 4 and check.text_length > 100  # three cards and the plot, rendered
        assert all(img["width"] >= 32 for img in check.images)
    assert checks[first.resolve()].title == "First report"


def test_the_checker_sees_broken_pages(browser, tmp_path):
    """The check can fail: a missing image, a script error and a console error are all reported."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Broken</title></head><body>'
        '<img src="missing.png" alt="gone"><script>console.error("bad number");'
        "undefinedFunction();</script></body></html>"
    )
    check = browser.check_page(page.as_uri())
    assert check.broken_images == ["missing.png"]
    joined = "\n".join(check.errors)
    assert "bad number" in joined and "undefinedFunction" in joined and "missing.png" in joined


def test_demo_report_loads_cleanly(browser, smoke_zoo_home, monkeypatch, tmp_path):
    from mmlens.audit.demo import DemoConfig, run_demo

    monkeypatch.setenv("MMLENS_HOME", str(smoke_zoo_home))
    index = run_demo(DemoConfig(out_dir=tmp_path / "demo", examples=2, seed=0))
    checks = check_site(browser, index)
    assert index.resolve() in checks
    for page, check in checks.items():
        assert check.errors == [], (page, check.errors)
        assert check.broken_images == [], (page, check.broken_images)
        assert check.images, page
        assert check.page_width <= check.window_width == WINDOW_WIDTH, (page, check.page_width)


def test_audit_site_loads_cleanly(browser, tmp_path):
    """A small audit site (a tiny random VLM against a second one as its "fine-tuned" version, on 24 exported world
    scenes): the summary and every page its links reach load without errors, with every image decoded."""
    from mmlens.audit import (
        AuditConfig,
        ConceptsStage,
        HallucinationStage,
        ShiftStage,
        SteeringStage,
        parse_shift_grid,
        run_audit,
    )
    from mmlens.models.tiny import tiny_model
    from mmlens.world import World, WorldConfig, export_world

    tiny_model("llava", seed=2).save_pretrained(tmp_path / "vlm")
    tiny_model("llava", seed=3).save_pretrained(tmp_path / "vlm-tuned")
    export_world(tmp_path / "data", World(WorldConfig(), seed=0), 24, split="test")
    out = tmp_path / "site"
    result = run_audit(
        AuditConfig(
            model=str(tmp_path / "vlm"),
            finetuned=str(tmp_path / "vlm-tuned"),
            data=str(tmp_path / "data"),
            out_dir=out,
            shift=ShiftStage(
                grid=parse_shift_grid("fog:5,keyboard:5"),
                n_items=12,
                text_embedder="hashing",
                n_permutations=5,
                n_bootstrap=5,
                max_epochs=5,
                batch_size=16,
            ),
            concepts=ConceptsStage(n_items=32, n_concepts=4, batch_size=16),
            steering=SteeringStage(n_items=40, alphas=(1.0,), batch_size=32),
            hallucination=HallucinationStage(n_images=8, max_new_tokens=8, batch_size=16),
        ),
        progress=False,
    )
    checks = check_site(browser, result.index)
    pages = {page.relative_to(out.resolve()).as_posix() for page in checks}
    assert pages >= {
        "index.html",
        "shift/index.html",
        "concepts/index.html",
        "concepts/compare/index.html",
        "hallucination/index.html",
    }, pages
    for page, check in checks.items():
        assert check.errors == [], (page, check.errors)
        assert check.broken_images == [], (page, check.broken_images)
        assert check.images and check.text_length > 100, page
        assert check.page_width <= check.window_width == WINDOW_WIDTH, (page, check.page_width)


def test_reports_fit_a_1280_px_window(browser, tmp_path):
    """The align eval table (every headline metric, three arms) and an influence ranking show every column in a
    1280 px window, headers broken at their underscores; a table wider than any window (23 metrics) scrolls in its
    own box, never the page. The check can fail: the same table without its box widens the page."""
    import numpy as np

    from mmlens.align.report import HEADLINE, metrics_report
    from mmlens.influence.data import PairData
    from mmlens.influence.report import ranking_report

    rng = np.random.default_rng(0)
    arms = ("sft", "dpo-bdhs", "dpo-mixed-online")
    align = metrics_report({a: {k: float(rng.uniform()) for k in HEADLINE} for a in arms}).write(tmp_path / "align")
    n = 30
    pairs = PairData(
        tuple(Image.new("RGB", (16, 16), "red") for _ in range(n)), tuple(f"a red square {i}" for i in range(n))
    )
    scores = rng.normal(0, 1e-5, n)
    rows = [
        {
            "rank": r,
            "index": int(i),
            "id": str(i),
            "caption": pairs.captions[i],
            "delta_val_loss_if_removed": scores[i],
            "pos": scores[i] / 2,
            "neg_exact": scores[i] / 3,
        }
        for r, i in enumerate(np.argsort(scores), 1)
    ]
    ranking = ranking_report(
        pairs,
        rows,
        title="r",
        subtitle="",
        explanation="",
        card_scores=("delta_val_loss_if_removed",),
        cards=12,
        ranking_title="Ranking",
    ).write(tmp_path / "ranking")
    wide_metrics = {
        f"pope_{kind}_{m}_{j}": 0.5
        for kind in ("random", "popular", "adversarial")
        for m in ("acc", "f1")
        for j in range(4)
    }
    wide = HtmlReport("wide")
    wide.section("all").table([{"arm": a, **wide_metrics} for a in arms])
    wide_page = wide.write(tmp_path / "wide")
    for page in (align, ranking, wide_page):
        check = browser.check_page(page.resolve().as_uri())
        assert check.errors == [] and check.window_width == WINDOW_WIDTH, (page, check.errors)
        assert check.page_width <= WINDOW_WIDTH, (page, check.page_width)
        assert check.clipped_tables == (1 if page == wide_page else 0), (page, check.clipped_tables)
    unboxed = tmp_path / "unboxed.html"
    unboxed.write_text(wide_page.read_text().replace('<div class="table-box">', "<div>"))
    assert browser.check_page(unboxed.resolve().as_uri()).page_width > WINDOW_WIDTH
