"""Type stub of the lazy front door of ``mmlens.influence``: every public name, explicitly (IDEs and type checkers
read it; ``lazy_loader`` loads the submodule of a name on first use)."""

from .analyzer import (
    FitResult as FitResult,
)
from .analyzer import (
    InfluenceAnalyzer as InfluenceAnalyzer,
)
from .analyzer import (
    PairScores as PairScores,
)
from .analyzer import (
    TraceResult as TraceResult,
)
from .analyzer import (
    save_model as save_model,
)
from .baselines import (
    KronfluencePeer as KronfluencePeer,
)
from .baselines import (
    clip_score as clip_score,
)
from .baselines import (
    detection_metrics as detection_metrics,
)
from .baselines import (
    lemon_score as lemon_score,
)
from .baselines import (
    neg_clip_loss as neg_clip_loss,
)
from .config import (
    FitArguments as FitArguments,
)
from .config import (
    HessianSolver as HessianSolver,
)
from .config import (
    InfluenceArguments as InfluenceArguments,
)
from .config import (
    NegForm as NegForm,
)
from .config import (
    NoiseKind as NoiseKind,
)
from .config import (
    ParamGroup as ParamGroup,
)
from .config import (
    Preconditioner as Preconditioner,
)
from .config import (
    Relative as Relative,
)
from .config import (
    Role as Role,
)
from .data import (
    BatchPartition as BatchPartition,
)
from .data import (
    NoisyPairs as NoisyPairs,
)
from .data import (
    PairData as PairData,
)
from .data import (
    inject_noise as inject_noise,
)
from .data import (
    load_pair_data as load_pair_data,
)
from .streaming import (
    StreamedScores as StreamedScores,
)
from .streaming import (
    encode_cached as encode_cached,
)
from .streaming import (
    score_pairs as score_pairs,
)
from .task import (
    ContrastiveTask as ContrastiveTask,
)
from .task import (
    HeadTask as HeadTask,
)
from .task import (
    ModelTask as ModelTask,
)
from .task import (
    attach_lora as attach_lora,
)
