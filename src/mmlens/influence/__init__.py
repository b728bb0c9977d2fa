"""Influence of training pairs on contrastive models: ECIF (Hu et al., arXiv 2411.11667) with role-separated terms.

Sign convention: every score named ``delta_val_loss_if_removed`` (or ``delta_test_loss_if_removed``) is the
predicted change of the summed validation (test) loss if the pair were removed from training. Negative = harmful
pair, positive = helpful pair.

Public API::

    # arguments and choices
    FitArguments, InfluenceArguments, NegForm, Role, HessianSolver, Relative, NoiseKind, ParamGroup
    # data
    PairData, BatchPartition, load_pair_data, inject_noise, NoisyPairs
    # tasks (how a parameter group maps pairs to embeddings) and the analyzer
    ContrastiveTask, HeadTask, ModelTask, attach_lora, InfluenceAnalyzer, FitResult, PairScores, TraceResult,
    save_model
    # dataset scale: every pair scored in resumable shards, tower outputs cached on disk
    score_pairs, StreamedScores, encode_cached
    # baselines and metrics
    clip_score, neg_clip_loss, lemon_score, KronfluencePeer, detection_metrics
"""

# The public names are listed in __init__.pyi; each submodule is imported on first use, so that importing the
# package (the CLI does) does not import torch and transformers.
import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
