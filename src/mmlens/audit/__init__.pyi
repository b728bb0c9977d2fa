"""Type stub of the lazy front door of ``mmlens.audit``: every public name, explicitly (IDEs and type checkers
read it; ``lazy_loader`` loads the submodule of a name on first use)."""

from .config import (
    AuditConfig as AuditConfig,
)
from .config import (
    ConceptsStage as ConceptsStage,
)
from .config import (
    HallucinationStage as HallucinationStage,
)
from .config import (
    InfluenceStage as InfluenceStage,
)
from .config import (
    ModelKind as ModelKind,
)
from .config import (
    ShiftStage as ShiftStage,
)
from .config import (
    Stage as Stage,
)
from .config import (
    StageStatus as StageStatus,
)
from .config import (
    SteeringStage as SteeringStage,
)
from .config import (
    parse_shift_grid as parse_shift_grid,
)
from .config import (
    parse_stages as parse_stages,
)
from .data import (
    AuditData as AuditData,
)
from .data import (
    load_audit_data as load_audit_data,
)
from .runner import (
    AuditResult as AuditResult,
)
from .runner import (
    StageResult as StageResult,
)
from .runner import (
    findings_section as findings_section,
)
from .runner import (
    run_audit as run_audit,
)
