"""``run_audit``: validate the input, run the stages that apply (reusing finished ones), write the summary site.

Site layout::

    DIR/index.html              the summary: findings in plain words with links, skipped/failed stages and why
    DIR/audit.json              the summary numbers, the status, time and fingerprint of every stage
    DIR/<stage>/index.html      the analysis's own report page, data.json beside it (and sub-pages)
    DIR/<stage>/stage.json      the stage's fingerprint and result (what a rerun reuses)
    DIR/_work/<stage>-<fp>/     intermediate results of a stage (resumable captures, response splits)
    DIR/_data/                  the exported world, for data "world" / "world:N"

Each stage is written atomically (built in a temporary sibling folder, renamed into place when complete), so an
interrupted run leaves finished stages reusable and no half-written one.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mmlens.audit import stages as stage_functions
from mmlens.audit.config import AuditConfig, ModelKind, Stage, StageStatus
from mmlens.audit.data import (
    AuditData,
    export_world_data,
    load_audit_data,
    parse_world_spec,
)
from mmlens.audit.stages import Finding, StageContext, StageOutcome
from mmlens.errors import InputError, ModelLoadError
from mmlens.html import HtmlReport
from mmlens.io import atomic_folder, json_default, write_json_atomic

STAGE_FILE = "stage.json"
AUDIT_FILE = "audit.json"
#: Bump when a stage's computation changes in a way its settings do not show (invalidates every cached stage).
FINGERPRINT_VERSION = 2


def stage_function(stage: Stage) -> Callable[[StageContext, Path, Path], StageOutcome]:
    """The function of ``stage`` in :mod:`mmlens.audit.stages` (looked up at call time, so a test can
    replace one)."""
    return {
        Stage.INFLUENCE: stage_functions.run_influence,
        Stage.SHIFT: stage_functions.run_shift,
        Stage.CONCEPTS: stage_functions.run_concepts,
        Stage.STEERING: stage_functions.run_steering,
        Stage.HALLUCINATION: stage_functions.run_hallucination,
    }[stage]


STAGE_TITLES: Mapping[Stage, str] = MappingProxyType(
    {
        Stage.INFLUENCE: "Training pairs (influence, ECIF)",
        Stage.SHIFT: "Distribution shift (EMI / EMID)",
        Stage.CONCEPTS: "Concepts in the hidden states",
        Stage.STEERING: "Steering (yes -> no)",
        Stage.HALLUCINATION: "Hallucination probes (POPE, CHAIR)",
    }
)


@dataclass(frozen=True)
class StageResult:
    """The record of one stage in one run."""

    stage: Stage
    status: StageStatus
    seconds: float = 0.0  # of this run (0 when cached)
    fingerprint: str = ""
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    findings: tuple[Finding, ...] = ()
    pages: tuple[str, ...] = ()
    reason: str = ""  # why skipped
    error: str = ""  # why failed
    computed_at: str = ""  # when its result was computed (unchanged when reused)
    compute_seconds: float = 0.0  # how long computing it took (the run that computed it)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["stage"], out["status"] = self.stage.value, self.status.value
        out["findings"] = [dataclasses.asdict(f) for f in self.findings]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageResult:
        return cls(
            Stage(data["stage"]),
            StageStatus(data["status"]),
            data.get("seconds", 0.0),
            data.get("fingerprint", ""),
            data.get("summary", {}),
            tuple(Finding(**f) for f in data.get("findings", ())),
            tuple(data.get("pages", ())),
            data.get("reason", ""),
            data.get("error", ""),
            data.get("computed_at", ""),
            data.get("compute_seconds", 0.0),
        )


@dataclass(frozen=True)
class AuditResult:
    config: AuditConfig
    kind: ModelKind
    stages: tuple[StageResult, ...]
    seconds: float
    index: Path

    def stage(self, stage: Stage) -> StageResult:
        return next(s for s in self.stages if s.stage is stage)


def location_fingerprint(spec: str) -> str:
    """Identifies the weights behind a spec: for a local folder the names, sizes and modification times of all its
    files (a rebuilt zoo model gets a new fingerprint); for a hub id the id."""
    from mmlens.models.loading import resolve_spec

    return _location_fingerprint(str(spec), Path(resolve_spec(spec)))


def _location_fingerprint(spec: str, location: Path) -> str:
    digest = hashlib.sha256(spec.encode())
    if location.is_dir():
        for path in sorted(p for p in location.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"{path.relative_to(location)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    elif location.is_file():
        stat = location.stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def text_embedder_fingerprint(spec: str) -> str:
    """The text embedder of the shift stage: ``sentence:PATH`` / ``embedding-layer:PATH`` name a local model whose
    files count like the audited model's; the others are fixed by their spec."""
    _, _, arg = spec.partition(":")
    if not arg:  # "minilm", "hashing", "embedding-layer": fixed by the spec (never the working directory)
        return hashlib.sha256(spec.encode()).hexdigest()[:16]
    return _location_fingerprint(spec, Path(arg).expanduser())


def _check_stage_inputs(config: AuditConfig, model: Any, applies: set[Stage]) -> None:
    """Settings that name something the stages will use, checked before any stage runs."""
    from mmlens.models.loading import resolve_spec

    if Stage.STEERING in applies and config.steering.layer is not None:
        n = model.num_layers
        if not -n <= config.steering.layer < n:
            raise InputError(
                f"steering layer {config.steering.layer} is out of range: {config.model} has {n} "
                f"decoder layers (0..{n - 1}, or -{n}..-1 from the top)"
            )
    if Stage.SHIFT in applies and config.shift.image_model is not None:
        location = resolve_spec(config.shift.image_model)  # an unbuilt zoo model: ModelLoadError here
        if location.startswith((".", "/", "~")) and not Path(location).exists():
            raise InputError(f"image model {config.shift.image_model}: {location} does not exist")


def _kind_of(model: Any) -> ModelKind:
    from mmlens.models import ContrastiveModel, VisionLanguageModel

    if isinstance(model, ContrastiveModel):
        return ModelKind.CONTRASTIVE
    if isinstance(model, VisionLanguageModel):
        return ModelKind.VISION_LANGUAGE
    raise ModelLoadError(
        f"{type(model).__name__}: the audit needs a contrastive image-text model or a vision-language model"
    )


def stage_fingerprint(
    stage: Stage, config: AuditConfig, model_fp: str, finetuned_fp: str | None, data: AuditData
) -> str:
    """A hash of everything a stage's result depends on: its settings, the model (and the fine-tuned one for the
    stages that use it), the shift stage's embedders, the data and the seed."""
    uses_finetuned = stage in (Stage.CONCEPTS, Stage.STEERING, Stage.HALLUCINATION)
    embedders = None
    if stage is Stage.SHIFT:
        image = config.shift.image_model
        embedders = {
            "image": location_fingerprint(image) if image else None,
            "text": text_embedder_fingerprint(config.shift.text_embedder),
        }
    if stage is Stage.INFLUENCE and config.influence.val is not None:  # the validation files, not just their path
        embedders = {"val": _location_fingerprint(config.influence.val, Path(config.influence.val).expanduser())}
    key = {
        "stage": stage.value,
        "config": dataclasses.asdict(config.stage_config(stage)),
        "model": model_fp,
        "finetuned": finetuned_fp if uses_finetuned else None,
        "embedders": embedders,
        "data": data.fingerprint,
        "seed": config.seed,
        "version": FINGERPRINT_VERSION,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=json_default).encode()).hexdigest()[:16]


def _cached(folder: Path, fingerprint: str) -> StageResult | None:
    path = folder / STAGE_FILE
    if not path.is_file():
        return None
    try:
        saved = StageResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError):
        return None
    if saved.fingerprint != fingerprint or saved.status is not StageStatus.DONE:
        return None
    if not all((folder / page).is_file() for page in saved.pages):
        return None
    return dataclasses.replace(saved, status=StageStatus.CACHED, seconds=0.0)


def _run_stage(stage: Stage, ctx: StageContext, fingerprint: str) -> StageResult:
    out = ctx.config.out_dir
    scratch = out / "_work" / f"{stage.value}-{fingerprint}"
    scratch.mkdir(parents=True, exist_ok=True)
    function = stage_function(stage)
    started = time.perf_counter()
    with atomic_folder(out / stage.value) as tmp:
        outcome = function(ctx, tmp, scratch)
        seconds = round(time.perf_counter() - started, 1)
        result = StageResult(
            stage,
            StageStatus.DONE,
            seconds,
            fingerprint,
            outcome.summary,
            outcome.findings,
            outcome.pages,
            computed_at=datetime.datetime.now(datetime.UTC).isoformat(),
            compute_seconds=seconds,
        )
        write_json_atomic(tmp / STAGE_FILE, result.to_dict())
    for stale in scratch.parent.glob(f"{stage.value}-*"):  # work of other settings: never resumed again
        if stale != scratch:
            shutil.rmtree(stale, ignore_errors=True)
    return result


def run_audit(config: AuditConfig, *, progress: bool = True) -> AuditResult:
    """Run the audit of ``config.model`` on ``config.data`` into ``config.out_dir``; returns what each stage did.

    Bad input (missing data, an empty dataset, a corrupt image, a model that cannot load) raises before any
    analysis runs. A stage that fails is recorded with its error and the others still run."""
    from tqdm.auto import tqdm

    from mmlens.models import load_model
    from mmlens.progress import progress_bar

    started = time.perf_counter()
    out = config.out_dir
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder; choose another --out")
    # cheap checks first: a user's data folder is read before the models load, the world is exported after
    world_scenes = parse_world_spec(config.data, config.world_scenes)
    data = load_audit_data(config.data) if world_scenes is None else None
    model = load_model(config.model)
    kind = _kind_of(model)
    finetuned = None
    if config.finetuned is not None:
        finetuned = load_model(config.finetuned)
        if _kind_of(finetuned) is not kind:
            raise ModelLoadError(f"{config.finetuned} is not the same kind of model as {config.model}")
    if data is None:
        assert world_scenes is not None  # a world spec when no data folder was given
        data = load_audit_data(export_world_data(config.model, world_scenes, out / "_data"))
    reasons = {stage: stage_functions.skip_reason(stage, kind, data, config) for stage in Stage}
    _check_stage_inputs(config, model, {stage for stage, reason in reasons.items() if reason is None})
    ctx = StageContext(config, data, model, kind, finetuned)
    model_fp = location_fingerprint(config.model)
    finetuned_fp = location_fingerprint(config.finetuned) if config.finetuned else None

    results: list[StageResult] = []
    bar = progress_bar(list(Stage), desc="audit", unit="stage", enabled=progress, leave=True)
    for stage in bar:
        bar.set_postfix_str(stage.value)
        reason = reasons[stage]
        if reason is not None:
            result = StageResult(stage, StageStatus.SKIPPED, reason=reason)
        else:
            fingerprint = stage_fingerprint(stage, config, model_fp, finetuned_fp, data)
            cached = None if config.force else _cached(out / stage.value, fingerprint)
            if cached is not None:
                result = cached
            else:
                try:
                    result = _run_stage(stage, ctx, fingerprint)
                except stage_functions.NotApplicable as err:
                    result = StageResult(stage, StageStatus.SKIPPED, fingerprint=fingerprint, reason=str(err))
                except Exception as err:  # noqa: BLE001 - a failing stage is reported; the others still run
                    result = StageResult(
                        stage, StageStatus.FAILED, fingerprint=fingerprint, error=f"{type(err).__name__}: {err}"
                    )
                    if progress:
                        tqdm.write("".join(traceback.format_exception(err))[-3000:], file=sys.stderr)
        results.append(result)
        if progress:
            extra = result.reason or result.error or f"{result.seconds:.0f} s"
            tqdm.write(f"audit: {stage.value}: {result.status.value} ({extra})", file=sys.stderr)
    seconds = round(time.perf_counter() - started, 1)
    audit = AuditResult(config, kind, tuple(results), seconds, out / "index.html")
    write_json_atomic(out / AUDIT_FILE, audit_json(audit, data))
    summary_report(audit, data).write_page(out)
    return audit


def audit_json(audit: AuditResult, data: AuditData) -> dict[str, Any]:
    return {
        "model": audit.config.model,
        "finetuned": audit.config.finetuned,
        "kind": audit.kind.value,
        "data": {
            "spec": audit.config.data,
            "folder": str(data.folder),
            "n_records": len(data),
            "fingerprint": data.fingerprint,
        },
        "seconds": audit.seconds,
        "config": audit.config.to_dict(),
        "stages": {s.stage.value: s.to_dict() for s in audit.stages},
    }


# ------------------------------------------------------------------------------------------------ summary page
def findings_section(report: HtmlReport, audits: list[tuple[str, AuditResult]], *, stage_table: bool = True) -> None:
    """'What was found' and 'skipped or failed' (and with ``stage_table`` the status and time of every stage) for
    one or more audits, given as (folder of the audit relative to the page, with a trailing slash, result)."""
    for prefix, audit in audits:
        title = f"What was found: {audit.config.model}" + (
            f" (fine-tuned: {audit.config.finetuned})" if audit.config.finetuned else ""
        )
        sec = report.section(title)
        items = []
        for result in audit.stages:
            if result.status in (StageStatus.DONE, StageStatus.CACHED):
                for finding in result.findings:
                    items.append(
                        (
                            f"{STAGE_TITLES[result.stage]}: {finding.text}",
                            f"{prefix}{result.stage.value}/{finding.page}",
                        )
                    )
        if items:
            sec.bullets(items, link_text="see the page")
        else:
            sec.text("No analysis produced a result (see below).")
        others = [
            (f"{STAGE_TITLES[r.stage]}: {r.status.value}: {r.reason or r.error}", None)
            for r in audit.stages
            if r.status in (StageStatus.SKIPPED, StageStatus.FAILED)
        ]
        if others:
            sec.text("Skipped or failed, and why:")
            sec.bullets(others)
        if stage_table:
            sec.table(
                [
                    {
                        "stage": r.stage.value,
                        "status": r.status.value,
                        "seconds (this run)": r.seconds,
                        "seconds (when computed)": r.compute_seconds,
                        "computed at": r.computed_at[:19].replace("T", " "),
                    }
                    for r in audit.stages
                ]
            )


def timing_figure(audits: list[tuple[str, AuditResult]]):
    """Seconds per stage (as computed) of one or more audits: where the time of the audit went."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 2.4))
    ax = fig.subplots()
    labels, values, colours = [], [], []
    palette = {StageStatus.DONE: "#2e6f9e", StageStatus.CACHED: "#7fa7c9", StageStatus.FAILED: "#c0392b"}
    for name, audit in audits:
        for r in audit.stages:
            if r.status in palette:
                labels.append(f"{name}\n{r.stage.value}" if len(audits) > 1 else r.stage.value)
                values.append(r.compute_seconds)
                colours.append(palette[r.status])
    ax.barh(range(len(values)), values, color=colours)
    ax.set_yticks(range(len(values)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds to compute (light: reused from an earlier run, red: failed)")
    fig.tight_layout()
    return fig


def summary_report(audit: AuditResult, data: AuditData) -> HtmlReport:
    config = audit.config
    report = HtmlReport(
        f"Audit of {config.model}",
        subtitle=f"{audit.kind.value} model on {config.data} ({len(data)} records) · "
        f"{audit.seconds:.0f} s on this machine · every finding links to its page",
    )
    findings_section(report, [("", audit)])
    pages = [
        (f"{STAGE_TITLES[r.stage]}: {page}", f"{r.stage.value}/{page}")
        for r in audit.stages
        if r.status in (StageStatus.DONE, StageStatus.CACHED)
        for page in r.pages
    ]
    if pages:
        report.section("Pages").bullets(pages, link_text="open")
    report.section("Time").figure(
        timing_figure([("", audit)]), f"Seconds per stage; the whole audit took {audit.seconds:.0f} s in this run."
    )
    report.data = audit_json(audit, data)
    return report


__all__ = [
    "AUDIT_FILE",
    "FINGERPRINT_VERSION",
    "AuditResult",
    "StageResult",
    "audit_json",
    "findings_section",
    "location_fingerprint",
    "run_audit",
    "stage_fingerprint",
    "stage_function",
    "summary_report",
    "text_embedder_fingerprint",
]
