"""Type stub of the lazy front door of ``mmlens.concepts``: every public name, explicitly (IDEs and type checkers
read it; ``lazy_loader`` loads the submodule of a name on first use)."""

from .activations import (
    CaptureConfig as CaptureConfig,
)
from .activations import (
    CaptureResult as CaptureResult,
)
from .activations import (
    PositionKind as PositionKind,
)
from .activations import (
    PositionRule as PositionRule,
)
from .activations import (
    capture_activations as capture_activations,
)
from .activations import (
    common_samples as common_samples,
)
from .activations import (
    layer_key as layer_key,
)
from .activations import (
    load_capture as load_capture,
)
from .activations import (
    record_emitters as record_emitters,
)
from .compare import (
    CompareConfig as CompareConfig,
)
from .compare import (
    ConceptScale as ConceptScale,
)
from .compare import (
    Drift as Drift,
)
from .compare import (
    Recovery as Recovery,
)
from .compare import (
    ShiftAnalysis as ShiftAnalysis,
)
from .compare import (
    Shifts as Shifts,
)
from .compare import (
    ShiftStatistic as ShiftStatistic,
)
from .compare import (
    compare_models as compare_models,
)
from .compare import (
    concept_drift as concept_drift,
)
from .compare import (
    concept_shift_vectors as concept_shift_vectors,
)
from .compare import (
    concepts_in_feature_scale as concepts_in_feature_scale,
)
from .compare import (
    match_concepts as match_concepts,
)
from .compare import (
    recovery as recovery,
)
from .compare import (
    split_half_recovery as split_half_recovery,
)
from .decompose import (
    ConceptDictionary as ConceptDictionary,
)
from .decompose import (
    DecomposerConfig as DecomposerConfig,
)
from .decompose import (
    DecomposerKind as DecomposerKind,
)
from .decompose import (
    load_decomposer as load_decomposer,
)
from .grounding import (
    DEFAULT_STOP_WORDS as DEFAULT_STOP_WORDS,
)
from .grounding import (
    TextGrounder as TextGrounder,
)
from .grounding import (
    TextGroundingConfig as TextGroundingConfig,
)
from .grounding import (
    attribute_purity as attribute_purity,
)
from .grounding import (
    random_purity as random_purity,
)
from .grounding import (
    top_samples as top_samples,
)
from .metrics import (
    disentanglement as disentanglement,
)
from .metrics import (
    mas_overlap as mas_overlap,
)
from .metrics import (
    mean_t_overlap as mean_t_overlap,
)
from .metrics import (
    t_overlap as t_overlap,
)
