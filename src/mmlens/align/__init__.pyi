"""Type stub of the lazy front door of ``mmlens.align``: every public name, explicitly (IDEs and type checkers
read it; ``lazy_loader`` loads the submodule of a name on first use)."""

from .baselines import (
    Substitutions as Substitutions,
)
from .baselines import (
    noisy_image_pairs as noisy_image_pairs,
)
from .baselines import (
    substitution_pairs as substitution_pairs,
)
from .baselines import (
    world_substitutions as world_substitutions,
)
from .bdhs import (
    BDHSStats as BDHSStats,
)
from .bdhs import (
    bdhs_pairs as bdhs_pairs,
)
from .bdhs import (
    flip_yes_no as flip_yes_no,
)
from .bdhs import (
    generate_continuations as generate_continuations,
)
from .bdhs import (
    split_sentences as split_sentences,
)
from .calibrate import (
    EpsCalibration as EpsCalibration,
)
from .calibrate import (
    calibrate_eps_s as calibrate_eps_s,
)
from .calibrate import (
    world_calibration_pairs as world_calibration_pairs,
)
from .data import (
    PreferencePair as PreferencePair,
)
from .data import (
    SFTExample as SFTExample,
)
from .data import (
    load_preference_pairs as load_preference_pairs,
)
from .data import (
    load_sft_jsonl as load_sft_jsonl,
)
from .data import (
    pairs_to_dataset as pairs_to_dataset,
)
from .data import (
    two_rejected_dataset as two_rejected_dataset,
)
from .data import (
    with_second_rejected as with_second_rejected,
)
from .data import (
    write_pairs as write_pairs,
)
from .eval import (
    EvalScenes as EvalScenes,
)
from .eval import (
    FailureEvalConfig as FailureEvalConfig,
)
from .eval import (
    WorldEvalConfig as WorldEvalConfig,
)
from .eval import (
    answer_logprobs as answer_logprobs,
)
from .eval import (
    chair_metrics as chair_metrics,
)
from .eval import (
    evaluate_failure as evaluate_failure,
)
from .eval import (
    evaluate_files as evaluate_files,
)
from .eval import (
    evaluate_on_world as evaluate_on_world,
)
from .eval import (
    image_dependence_gap as image_dependence_gap,
)
from .eval import (
    pope_metrics as pope_metrics,
)
from .eval import (
    vocabulary_parser as vocabulary_parser,
)
from .eval import (
    world_eval_scenes as world_eval_scenes,
)
from .intervals import (
    paired_difference as paired_difference,
)
from .intervals import (
    summarise as summarise,
)
from .intervals import (
    wilson as wilson,
)
from .judges import (
    CallablePairwiseJudge as CallablePairwiseJudge,
)
from .judges import (
    OracleJudge as OracleJudge,
)
from .judges import (
    PairwiseJudge as PairwiseJudge,
)
from .judges import (
    VLMJudge as VLMJudge,
)
from .judges import (
    VLMJudgeMode as VLMJudgeMode,
)
from .judges import (
    WorldOracleJudge as WorldOracleJudge,
)
from .masking import (
    block_image_tokens as block_image_tokens,
)
from .masking import (
    draw_hidden_image_tokens as draw_hidden_image_tokens,
)
from .settings import (
    BDHSConfig as BDHSConfig,
)
from .settings import (
    DPOSettings as DPOSettings,
)
from .settings import (
    FineTune as FineTune,
)
from .settings import (
    ImageCorruption as ImageCorruption,
)
from .settings import (
    LossType as LossType,
)
from .settings import (
    OnlineMode as OnlineMode,
)
from .settings import (
    PivotUnit as PivotUnit,
)
from .train import (
    train_dpo as train_dpo,
)
from .train import (
    train_online as train_online,
)
from .world_data import (
    world_sft_examples as world_sft_examples,
)
