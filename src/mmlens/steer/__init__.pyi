"""Type stub of the lazy front door of ``mmlens.steer``: every public name, explicitly (IDEs and type checkers
read it; ``lazy_loader`` loads the submodule of a name on first use)."""

from .apply import (
    LogitBias as LogitBias,
)
from .apply import (
    Steering as Steering,
)
from .apply import (
    SteeringTrace as SteeringTrace,
)
from .apply import (
    logit_bias as logit_bias,
)
from .apply import (
    logit_bias_direction as logit_bias_direction,
)
from .apply import (
    position_mask as position_mask,
)
from .apply import (
    steer as steer,
)
from .build import (
    answer_labels as answer_labels,
)
from .build import (
    capture_examples as capture_examples,
)
from .build import (
    vectors_from_capture as vectors_from_capture,
)
from .compare import (
    AlphaRule as AlphaRule,
)
from .compare import (
    compare_arms as compare_arms,
)
from .compare import (
    summarise_arms as summarise_arms,
)
from .compare import (
    verdict as verdict,
)
from .compare import (
    wilson_interval as wilson_interval,
)
from .data import (
    load_vqa_jsonl as load_vqa_jsonl,
)
from .evaluate import (
    FlipTarget as FlipTarget,
)
from .evaluate import (
    Selected as Selected,
)
from .evaluate import (
    SelectionScore as SelectionScore,
)
from .evaluate import (
    SweepKind as SweepKind,
)
from .evaluate import (
    VQAExample as VQAExample,
)
from .evaluate import (
    accuracy_by_type as accuracy_by_type,
)
from .evaluate import (
    alpha_sweep as alpha_sweep,
)
from .evaluate import (
    choose_alpha as choose_alpha,
)
from .evaluate import (
    evaluate_interventions as evaluate_interventions,
)
from .evaluate import (
    evaluate_vectors as evaluate_vectors,
)
from .evaluate import (
    generate_answers as generate_answers,
)
from .evaluate import (
    layer_sweep as layer_sweep,
)
from .evaluate import (
    normalise_answer as normalise_answer,
)
from .evaluate import (
    select_vectors as select_vectors,
)
from .evaluate import (
    selection_score as selection_score,
)
from .evaluate import (
    steering_effect as steering_effect,
)
from .evaluate import (
    sweep_with_baselines as sweep_with_baselines,
)
from .report import (
    write_steering_report as write_steering_report,
)
from .settings import (
    EvalSettings as EvalSettings,
)
from .settings import (
    GenerationSettings as GenerationSettings,
)
from .settings import (
    SteerCondition as SteerCondition,
)
from .settings import (
    SteerConfig as SteerConfig,
)
from .settings import (
    SteerPositions as SteerPositions,
)
from .vectors import (
    ShiftReducer as ShiftReducer,
)
from .vectors import (
    SteeringVector as SteeringVector,
)
from .vectors import (
    VectorKind as VectorKind,
)
from .vectors import (
    coarse_vector as coarse_vector,
)
from .vectors import (
    concept_vectors as concept_vectors,
)
from .vectors import (
    dictionary_matrix as dictionary_matrix,
)
from .vectors import (
    finetuning_shift_vectors as finetuning_shift_vectors,
)
from .vectors import (
    load_vectors as load_vectors,
)
from .vectors import (
    random_like as random_like,
)
from .vectors import (
    save_vectors as save_vectors,
)
from .vectors import (
    shuffled_vector as shuffled_vector,
)
from .vectors import (
    vector_from_labels as vector_from_labels,
)
