"""``mmlens audit``: one command, one report. The analyses that apply to a model and its data (influence for
contrastive models; shift, concepts, steering and hallucination probes for vision-language models), run as a typed
plan of stages with caching, written as one static HTML site with a plain-language summary page.

Public API::

    AuditConfig, InfluenceStage, ShiftStage, ConceptsStage, SteeringStage, HallucinationStage   # the plan
    Stage, StageStatus, ModelKind, parse_shift_grid, parse_stages
    run_audit(config) -> AuditResult (per stage: StageResult with status, seconds, summary numbers, findings)
    AuditData, load_audit_data          # the data folder (the layout of `mmlens world export`), validated
"""

# The public names are listed in __init__.pyi; each submodule is imported on first use, so that importing the
# package (the CLI does) does not import torch and transformers.
import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
