"""Type stub of the lazy front door of ``mmlens.shift``: every public name, explicitly (IDEs and type checkers
read it; ``lazy_loader`` loads the submodule of a name on first use)."""

from .analysis import (
    BOUNDS as BOUNDS,
)
from .analysis import (
    ShiftResult as ShiftResult,
)
from .analysis import (
    SplitEmbeddings as SplitEmbeddings,
)
from .analysis import (
    analyse as analyse,
)
from .analysis import (
    analyse_embeddings as analyse_embeddings,
)
from .analysis import (
    bound_value as bound_value,
)
from .analysis import (
    correlation as correlation,
)
from .analysis import (
    embed_splits as embed_splits,
)
from .analysis import (
    emi as emi,
)
from .analysis import (
    emi_replicates as emi_replicates,
)
from .analysis import (
    emid_replicates as emid_replicates,
)
from .analysis import (
    fit_estimator as fit_estimator,
)
from .analysis import (
    fuse as fuse,
)
from .analysis import (
    split_correlation as split_correlation,
)
from .analysis import (
    training_pairs as training_pairs,
)
from .data import (
    ShiftSplit as ShiftSplit,
)
from .data import (
    assign_language_control as assign_language_control,
)
from .data import (
    llava_bench_conditions as llava_bench_conditions,
)
from .data import (
    llava_bench_family as llava_bench_family,
)
from .data import (
    load_llava_bench_shift as load_llava_bench_shift,
)
from .data import (
    load_references as load_references,
)
from .data import (
    load_released_results as load_released_results,
)
from .data import (
    load_split as load_split,
)
from .data import (
    load_splits as load_splits,
)
from .divergence import (
    RJSDResult as RJSDResult,
)
from .divergence import (
    rjsd as rjsd,
)
from .divergence import (
    rjsd_test as rjsd_test,
)
from .divergence import (
    von_neumann_entropy as von_neumann_entropy,
)
from .estimators import (
    ESTIMATORS as ESTIMATORS,
)
from .estimators import (
    GaussianTask as GaussianTask,
)
from .estimators import (
    MIEnsemble as MIEnsemble,
)
from .estimators import (
    MIEstimator as MIEstimator,
)
from .estimators import (
    club_from_conditional as club_from_conditional,
)
from .estimators import (
    estimate_mi as estimate_mi,
)
from .estimators import (
    load_estimator as load_estimator,
)
from .generate import (
    default_scenarios as default_scenarios,
)
from .generate import (
    generate_for_splits as generate_for_splits,
)
from .generate import (
    generate_responses as generate_responses,
)
from .judge import (
    CallableChatJudge as CallableChatJudge,
)
from .judge import (
    LocalModelJudge as LocalModelJudge,
)
from .judge import (
    OpenAICompatibleJudge as OpenAICompatibleJudge,
)
from .judge import (
    judge_prompt as judge_prompt,
)
from .judge import (
    judge_split as judge_split,
)
from .judge import (
    parse_score_pair as parse_score_pair,
)
from .judge import (
    relative_preference as relative_preference,
)
from .judge import (
    win_rate as win_rate,
)
from .options import (
    BoundKind as BoundKind,
)
from .options import (
    EarlyStoppingSplit as EarlyStoppingSplit,
)
from .options import (
    EstimatorData as EstimatorData,
)
from .options import (
    EstimatorKind as EstimatorKind,
)
from .options import (
    Fusion as Fusion,
)
from .options import (
    ImageFeatureMode as ImageFeatureMode,
)
from .options import (
    LogBase as LogBase,
)
from .options import (
    LogvarActivation as LogvarActivation,
)
from .options import (
    Mixture as Mixture,
)
from .options import (
    Preset as Preset,
)
from .options import (
    TermValues as TermValues,
)
from .report import (
    write_shift_report as write_shift_report,
)
from .settings import (
    EstimatorConfig as EstimatorConfig,
)
from .settings import (
    GenerateConfig as GenerateConfig,
)
from .settings import (
    ShiftConfig as ShiftConfig,
)
