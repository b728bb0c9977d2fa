"""Distribution-shift risk of multimodal LLMs: EMI, EMID and its bound (Oh et al., ICML 2025, arXiv 2502.00577).

Public API::

    # data
    ShiftSplit, load_split, load_splits, load_references, load_llava_bench_shift, load_released_results
    # query fusion (the embedders themselves are shared plumbing: mmlens.models.embed -- SentenceEmbedder
    # (default: offline MiniLM), EmbeddingLayerTextEmbedder, HashingTextEmbedder, ClipImageEmbedder, text_embedder)
    fuse
    # estimators
    EstimatorConfig, MIEstimator, MIEnsemble, load_estimator, estimate_mi, club_from_conditional, GaussianTask
    # divergences
    rjsd, rjsd_test, RJSDResult, von_neumann_entropy
    # analysis
    ShiftConfig, analyse, analyse_embeddings, embed_splits, training_pairs, fit_estimator, emi, emi_replicates,
    emid_replicates, bound_value, correlation, split_correlation, ShiftResult, SplitEmbeddings
    # judge
    relative_preference, win_rate, parse_score_pair, judge_prompt, judge_split,
    CallableChatJudge, OpenAICompatibleJudge, LocalModelJudge
    # responses and report
    GenerateConfig, generate_responses, generate_for_splits, write_shift_report
"""

# The public names are listed in __init__.pyi; each submodule is imported on first use, so that importing the
# package (the CLI does) does not import torch and transformers.
import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
