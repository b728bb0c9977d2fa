"""The settings of BDHS (:class:`BDHSConfig`) and of DPO training (:class:`DPOSettings`) and their choices, in a module without torch: the command line
builds its options from these fields (``mmlens align bdhs|dpo --help`` must not import the training stack)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mmlens.errors import InputError, check_finite


class LossType(enum.Enum):
    """TRL's pairwise DPO losses (``DPOConfig.loss_type``): sigmoid = DPO, ipo = IPO, hinge = SLiC's hinge."""

    SIGMOID = "sigmoid"
    IPO = "ipo"
    HINGE = "hinge"
    ROBUST = "robust"
    EXO_PAIR = "exo_pair"
    NCA_PAIR = "nca_pair"
    BCO_PAIR = "bco_pair"
    SPPO_HARD = "sppo_hard"
    APO_ZERO = "apo_zero"
    APO_DOWN = "apo_down"
    DISCOPOP = "discopop"
    SIGMOID_NORM = "sigmoid_norm"


class FineTune(enum.Enum):
    LORA = "lora"  # peft LoRA on the language model's linear layers; reference = adapters disabled / initial model
    FULL = "full"  # every parameter; reference = a frozen copy of the initial model


class OnlineMode(enum.Enum):
    ONLINE = "online"  # two policy samples per prompt, ranked by a judge
    MIXED = "mixed"  # per example: the offline pair with probability p, else an online judged pair
    ONLINE_BDHS = "online_bdhs"  # BDHS rejects regenerated from the current policy


@dataclass(frozen=True)
class DPOSettings:
    """Training settings. The spec's tiny-model range: beta 0.1, lr 1e-4..5e-4 (7B-scale rates do not move a tiny
    model)."""

    loss_type: LossType = LossType.SIGMOID
    beta: float = 0.1
    learning_rate: float = 2e-4
    steps: int = 64
    batch_size: int = 8
    finetune: FineTune = FineTune.LORA
    lora_rank: int = 16
    lora_alpha: int = 32
    seed: int = 0
    # online modes
    refresh_every: int = 8
    mix_probability: float = 0.5
    sample_temperature: float = 1.0
    max_new_tokens: int = 32
    max_judge_rounds: int = 3  # extra sampling rounds to replace ties before training on fewer pairs
    # Against DPO's length bias (rejected answers longer than chosen ones teach the policy to stop early): TRL's
    # `sft` loss on the chosen answers added with this weight (RPO-style; 0 = off), and LD-DPO's `ld_alpha` (weight
    # of the tokens beyond the shorter answer's length; None = plain DPO, 0 = masked). Settled in `mmlens bench align`.
    sft_weight: float = 0.0
    ld_alpha: float | None = None
    # On-policy online DPO: fresh pairs from the current policy for every batch (every optimizer step), topped up
    # with more samples when ties leave fewer than ``batch_size`` usable pairs, so no pair is trained on twice.
    # Off: pairs are made every ``refresh_every`` steps and reused within the round.
    on_policy: bool = False

    def __post_init__(self) -> None:
        check_finite(self)
        if self.steps < 1 or self.batch_size < 1 or self.refresh_every < 1:
            raise InputError("steps, batch_size and refresh_every must be >= 1")
        if self.beta <= 0 or self.learning_rate <= 0 or self.sample_temperature <= 0:
            raise InputError("beta, learning_rate and sample_temperature must be > 0")
        if self.lora_rank < 1 or self.lora_alpha < 1 or self.max_new_tokens < 1 or self.max_judge_rounds < 0:
            raise InputError("lora_rank, lora_alpha and max_new_tokens must be >= 1, max_judge_rounds >= 0")
        if not 0.0 <= self.mix_probability <= 1.0:
            raise InputError(f"mix_probability={self.mix_probability} must be in [0, 1]")
        if self.sft_weight < 0:
            raise InputError(f"sft_weight={self.sft_weight} must be >= 0")
        if self.ld_alpha is not None and not 0.0 <= self.ld_alpha <= 1.0:
            raise InputError(f"ld_alpha={self.ld_alpha} must be in [0, 1]")


class ImageCorruption(enum.Enum):
    """How BDHS hides the image from the completions: ``mask`` hides image tokens from attention (the method);
    ``noise`` diffuses the image instead (the paper's BDHS_noise ablation: POVID's schedule at ``noise_step``), with
    every image token visible."""

    MASK = "mask"
    NOISE = "noise"


class PivotUnit(enum.Enum):
    """Where a sentence may be cut before its completion."""

    WORD = "word"
    CHAR = "char"
    TOKEN = "token"


@dataclass(frozen=True)
class BDHSConfig:
    """BDHS options (spec section 5). ``rho``: each image token is hidden with probability ``rho`` (the paper's
    rho_th = 0.99); ``visible_tokens`` instead keeps exactly that many visible (for models with few image tokens).
    ``mask_layers``: decoder layers to mask (None = all). ``eps_s``: accept when similarity < eps_s (the paper's
    0.97 with mpnet; recalibrate per embedder: :func:`mmlens.align.calibrate.calibrate_eps_s`). ``max_tries``:
    N_BDHS, the last try unguided when > 1. ``guided=False`` is the paper's "masking without guidance" ablation:
    every try generates the whole answer from the corrupted input, with no prefix of the chosen answer.
    ``corruption``/``noise_step``: see :class:`ImageCorruption`."""

    rho: float = 0.99
    visible_tokens: int | None = None
    mask_layers: tuple[int, ...] | None = None
    pivot_unit: PivotUnit = PivotUnit.WORD
    flip_probability: float = 0.5
    yes_no_word_boundary: bool = True
    eps_s: float = 0.97
    max_tries: int = 5
    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float = 1.0
    batch_size: int = 64
    seed: int = 0
    guided: bool = True
    corruption: ImageCorruption = ImageCorruption.MASK
    noise_step: int = 500

    def __post_init__(self) -> None:
        check_finite(self)
        if not 0 <= self.noise_step <= 999:
            raise InputError(f"noise_step={self.noise_step} must be in [0, 999] (POVID's 1000-step schedule)")
        if not 0.0 <= self.rho <= 1.0:
            raise InputError(f"rho={self.rho} must be in [0, 1]")
        if not 0.0 <= self.flip_probability <= 1.0:
            raise InputError(f"flip_probability={self.flip_probability} must be in [0, 1]")
        if self.max_tries < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise InputError("max_tries, batch_size and max_new_tokens must be >= 1")


__all__ = ["BDHSConfig", "DPOSettings", "FineTune", "ImageCorruption", "LossType", "OnlineMode", "PivotUnit"]
