"""Preference alignment against hallucination: BDHS preference pairs, offline / online / mixed DPO through TRL,
and the hallucination metrics (POPE, CHAIR with recall, image-dependence gap).

>>> from mmlens.align import bdhs_pairs, BDHSConfig, train_dpo, DPOSettings
>>> pairs, stats = bdhs_pairs(vlm, examples, BDHSConfig(rho=0.99))       # doctest: +SKIP
>>> aligned, log = train_dpo(vlm, pairs, DPOSettings(steps=200))          # doctest: +SKIP

Spec: ``docs/methods/preference-alignment.md`` (arXiv 2407.02477). Docs: ``docs/align.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "block_image_tokens": "masking",
    "draw_hidden_image_tokens": "masking",
    "BDHSConfig": "bdhs",
    "BDHSStats": "bdhs",
    "PivotUnit": "bdhs",
    "bdhs_pairs": "bdhs",
    "generate_continuations": "bdhs",
    "split_sentences": "bdhs",
    "flip_yes_no": "bdhs",
    "SFTExample": "data",
    "PreferencePair": "data",
    "load_sft_jsonl": "data",
    "load_pairs": "data",
    "write_pairs": "data",
    "pairs_to_dataset": "data",
    "substitution_pairs": "baselines",
    "noisy_image_pairs": "baselines",
    "world_substitutions": "baselines",
    "Substitutions": "baselines",
    "DPOSettings": "train",
    "LossType": "train",
    "FineTune": "train",
    "OnlineMode": "train",
    "train_dpo": "train",
    "train_online": "train",
    "PairwiseJudge": "judges",
    "WorldOracleJudge": "judges",
    "OracleJudge": "judges",
    "VLMJudge": "judges",
    "VLMJudgeMode": "judges",
    "CallableJudge": "judges",
    "pope_metrics": "eval",
    "chair_metrics": "eval",
    "vocabulary_parser": "eval",
    "answer_logprobs": "eval",
    "image_dependence_gap": "eval",
    "evaluate_on_world": "eval",
    "evaluate_files": "eval",
    "WorldEvalConfig": "eval",
    "EvalScenes": "eval",
    "world_eval_scenes": "eval",
    "world_sft_examples": "world_data",
    "world_for_model": "world_data",
    "AlignBenchConfig": "bench",
    "align_benchmark": "bench",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mmlens.align' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mmlens.align.{module}"), name)
