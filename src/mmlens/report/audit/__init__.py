"""``mmlens audit``: one command, one report. The analyses that apply to a model and its data (influence for
contrastive models; shift, concepts, steering and hallucination probes for vision-language models), run as a typed
plan of stages with caching, written as one static HTML site with a plain-language summary page.

Public API::

    AuditConfig, InfluenceStage, ShiftStage, ConceptsStage, SteeringStage, HallucinationStage   # the plan
    Stage, StageStatus, ModelKind, parse_shift_grid, parse_stages
    run_audit(config) -> AuditResult (per stage: StageResult with status, seconds, summary numbers, findings)
    AuditData, load_audit_data          # the data folder (the layout of `mmlens world export`), validated
"""

from mmlens.report.audit.config import (
    AuditConfig,
    ConceptsStage,
    HallucinationStage,
    InfluenceStage,
    ModelKind,
    ShiftStage,
    Stage,
    StageStatus,
    SteeringStage,
    parse_shift_grid,
    parse_stages,
)
from mmlens.report.audit.data import AuditData, load_audit_data
from mmlens.report.audit.runner import (
    AuditResult,
    StageResult,
    findings_section,
    run_audit,
)

__all__ = [
    "AuditConfig", "AuditData", "AuditResult", "ConceptsStage", "HallucinationStage", "InfluenceStage", "ModelKind",
    "ShiftStage", "Stage", "StageResult", "StageStatus", "SteeringStage", "findings_section", "load_audit_data",
    "parse_shift_grid", "parse_stages", "run_audit",
]
