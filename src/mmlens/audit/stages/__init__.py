"""One module per audit stage, each calling its method's public API and report; :mod:`.common` holds what
they share."""

from mmlens.audit.stages.common import Finding, NotApplicable, StageContext, StageOutcome, skip_reason
from mmlens.audit.stages.concepts import run_concepts
from mmlens.audit.stages.hallucination import run_hallucination
from mmlens.audit.stages.influence import run_influence
from mmlens.audit.stages.shift import run_shift
from mmlens.audit.stages.steering import run_steering

__all__ = [
    "Finding",
    "NotApplicable",
    "StageContext",
    "StageOutcome",
    "run_concepts",
    "run_hallucination",
    "run_influence",
    "run_shift",
    "run_steering",
    "skip_reason",
]
