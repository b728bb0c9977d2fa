"""DPO through TRL's ``DPOTrainer`` (no hand-written loss): offline, online, mixed and online-BDHS.

- :func:`train_dpo`: offline DPO on fixed preference pairs (LoRA through peft, or full fine-tuning).
- :func:`train_online`: TRL 1.16 has no online DPO trainer for vision-language models (its experimental
  ``OnlineDPOTrainer`` needs pointwise rewards and has neither mixing nor masked generation), so the online modes
  are a loop around ``DPOTrainer``: every ``refresh_every`` steps fresh pairs are made with the *current* policy
  (two samples ranked by a pairwise judge, or BDHS rejects), then TRL trains on them for those steps. One optimizer
  (and its Adam state) and one frozen reference (the initial SFT model) serve all rounds.

Mixed DPO (the paper's Eq. 4) draws, per example, the offline pair with probability ``mix_probability`` and an
online judged pair otherwise. The offline pair of an example is found by its ``meta["id"]`` (== ``example_id``, as
BDHS and the baselines write it); examples without one (e.g. dropped by BDHS) take the next offline pair in order.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from mmlens.align.bdhs import BDHSConfig, TextEmbedder, bdhs_pairs, generate_continuations
from mmlens.align.data import PreferencePair, SFTExample, check_examples, pairs_to_dataset, two_rejected_dataset
from mmlens.align.judges import PairwiseJudge
from mmlens.align.settings import DPOSettings, FineTune, LossType, OnlineMode  # noqa: F401 (LossType: re-exported)
from mmlens.errors import InputError
from mmlens.models.base import unwrap_peft
from mmlens.models.generative import VisionLanguageModel

LORA_TARGETS = r".*(language_model|text_model).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def _lora_config(settings: DPOSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGETS, bias="none"
    )


def _dpo_config(settings: DPOSettings, steps: int, out_dir: str, *, sequential: bool = False):
    from trl import DPOConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return DPOConfig(
            output_dir=out_dir,
            use_cpu=True,
            bf16=False,
            max_length=None,
            per_device_train_batch_size=settings.batch_size,
            max_steps=steps,
            learning_rate=settings.learning_rate,
            lr_scheduler_type="constant",
            beta=settings.beta,
            loss_type=_loss_types(settings),
            loss_weights=_loss_weights(settings),
            ld_alpha=settings.ld_alpha,
            seed=settings.seed,
            report_to=[],
            logging_steps=1,
            save_strategy="no",
            gradient_checkpointing=False,
            disable_tqdm=True,
            dataloader_num_workers=0,
            # the two-rejected rows are laid out so that each batch holds both rows of its pairs (Eq. 5)
            train_sampling_strategy="sequential" if sequential else "random",
        )


def _loss_types(settings: DPOSettings) -> list[str]:
    return [settings.loss_type.value] + (["sft"] if settings.sft_weight > 0 else [])


def _loss_weights(settings: DPOSettings) -> list[float] | None:
    return [1.0, settings.sft_weight] if settings.sft_weight > 0 else None


def _quiet_trainer_logs():
    # transformers' trainer logs a line per step at INFO; keep the console for our own progress.
    logging.getLogger("transformers.trainer").setLevel(logging.WARNING)


@contextlib.contextmanager
def _library_deprecations_quiet() -> Iterator[None]:
    """TRL reads transformers' deprecated ``is_gradient_checkpointing`` while training: a FutureWarning in every
    user's console that the user can do nothing about."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning
        )
        yield


def _silence(trainer) -> None:
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints every step's log dict; the history is returned instead


def _frozen_copy(model):
    ref = copy.deepcopy(unwrap_peft(model))
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def _steps_log(history: list[dict]) -> list[dict]:
    keys = (
        "loss",
        "rewards/margins",
        "rewards/accuracies",
        "rewards/chosen",
        "rewards/rejected",
        "logps/chosen",
        "logps/rejected",
    )
    return [{k: float(h[k]) for k in keys if k in h} | {"step": int(h.get("step", 0))} for h in history if "loss" in h]


#: ``on_checkpoint(step, policy)``: called after optimizer step ``step`` with the policy being trained (eval mode).
CheckpointHook = Callable[[int, VisionLanguageModel], None]


def _check_checkpoints(checkpoints: Sequence[int], steps: int, every: int = 1) -> set[int]:
    bad = [c for c in checkpoints if not 1 <= c <= steps or c % every]
    if bad:
        raise InputError(f"checkpoints {bad} must be steps in 1..{steps} and multiples of {every}")
    return set(checkpoints)


def _checkpoint_callback(checkpoints: set[int], on_checkpoint: CheckpointHook, processor):
    from transformers import TrainerCallback

    class EvaluateAt(TrainerCallback):
        # With a constant learning rate the state after step k of a longer run is the state of a k-step run
        # (same data order, same optimizer), so one run serves every `steps` setting up to its length.
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step in checkpoints and model is not None:
                model.eval()
                on_checkpoint(state.global_step, VisionLanguageModel(model, processor))
                model.train()

    return EvaluateAt()


def train_dpo(
    vlm: VisionLanguageModel,
    pairs: Sequence[PreferencePair],
    settings: DPOSettings = DPOSettings(),
    *,
    checkpoints: Sequence[int] = (),
    on_checkpoint: CheckpointHook | None = None,
) -> tuple[VisionLanguageModel, dict[str, Any]]:
    """Offline DPO on ``pairs`` through TRL; trains ``vlm.model`` in place (copy it first to keep the SFT model) and
    returns the trained adapter (LoRA merged into the weights) and the per-step log (loss, reward margin and
    accuracy, chosen/rejected log-probs).

    Pairs with a second rejected answer (``rejected_2``, all or none) train the paper's Eq. 5 with gamma 0.5: each
    pair becomes two adjacent rows (chosen vs each rejected) fed in order, so every batch of an even size averages
    0.5 L(chosen, rejected) + 0.5 L(chosen, rejected_2) over its pairs. ``on_checkpoint`` is called after each of
    the ``checkpoints`` steps."""
    from trl import DPOTrainer

    if not pairs:
        raise InputError("no preference pairs to train on")
    two = [p.rejected_2 is not None for p in pairs]
    if any(two) and not all(two):
        raise InputError("either every pair has a second rejected answer (rejected_2) or none has")
    if all(two) and settings.batch_size % 2:
        raise InputError(f"two rejected answers per pair need an even batch size, got {settings.batch_size}")
    marks = _check_checkpoints(checkpoints, settings.steps)
    _quiet_trainer_logs()
    if all(two):
        dataset = two_rejected_dataset(pairs, settings.steps * settings.batch_size, seed=settings.seed)
    else:
        dataset = pairs_to_dataset(pairs)
    model = vlm.model
    model.train()
    lora = settings.finetune is FineTune.LORA
    torch.manual_seed(settings.seed)  # the LoRA initialisation, whatever ran before
    with tempfile.TemporaryDirectory(prefix="mmlens-dpo-") as tmp, _library_deprecations_quiet():
        trainer = DPOTrainer(
            model=model,
            ref_model=None if lora else _frozen_copy(model),
            args=_dpo_config(settings, settings.steps, tmp, sequential=all(two)),
            train_dataset=dataset,
            processing_class=vlm.processor,
            peft_config=_lora_config(settings) if lora else None,
        )
        _silence(trainer)
        if marks and on_checkpoint is not None:
            trainer.add_callback(_checkpoint_callback(marks, on_checkpoint, vlm.processor))
        trainer.train()
        trained = trainer.model
    if lora:
        trained = trained.merge_and_unload()
    trained.eval()
    return VisionLanguageModel(trained, vlm.processor), {
        "steps": _steps_log(trainer.state.log_history),
        "n_pairs": len(pairs),
        "n_rows": len(dataset),
    }


def _online_pairs(
    policy: VisionLanguageModel,
    examples: list[SFTExample],
    judge: PairwiseJudge,
    settings: DPOSettings,
    rng: np.random.Generator,
    tally: dict[str, int],
) -> list[PreferencePair]:
    """Two samples per example from the current policy, ranked by the judge; ties are resampled up to
    ``max_judge_rounds`` times and then dropped."""
    pairs: list[PreferencePair] = []
    todo = list(examples)
    for _ in range(settings.max_judge_rounds):
        if not todo:
            break
        rows = [e for e in todo for _ in range(2)]
        texts, _ = generate_continuations(
            policy,
            [e.image for e in rows],
            [e.prompt for e in rows],
            [""] * len(rows),
            rng=rng,
            max_new_tokens=settings.max_new_tokens,
            do_sample=True,
            temperature=settings.sample_temperature,
            batch_size=64,
        )
        first, second = texts[0::2], texts[1::2]
        verdicts = judge.judge(todo, first, second)
        tally["judged"] += len(todo)
        again = []
        for ex, a, b, v in zip(todo, first, second, verdicts):
            if v == -1 or not a.strip() or not b.strip():
                tally["ties"] += 1
                again.append(ex)
                continue
            chosen, rejected = (a, b) if v == 0 else (b, a)
            pairs.append(
                PreferencePair(ex.image, ex.prompt, chosen, rejected, {"source": "online", "id": ex.example_id})
            )
        todo = again
    return pairs


def train_online(
    vlm: VisionLanguageModel,
    examples: Sequence[SFTExample],
    mode: OnlineMode,
    settings: DPOSettings = DPOSettings(),
    *,
    judge: PairwiseJudge | None = None,
    offline_pairs: Sequence[PreferencePair] | None = None,
    bdhs: BDHSConfig | None = None,
    embedder: TextEmbedder | None = None,
    progress=None,
    checkpoints: Sequence[int] = (),
    on_checkpoint: CheckpointHook | None = None,
) -> tuple[VisionLanguageModel, dict[str, Any]]:
    """Online DPO (``ONLINE``), mixed DPO (``MIXED``, needs ``offline_pairs``) or online BDHS (``ONLINE_BDHS``) for
    ``settings.steps`` optimizer steps. Pairs come from the current policy every ``refresh_every`` steps, or, with
    ``settings.on_policy``, for every batch (each step trains on a batch made by the policy of the step before,
    topped up with fresh samples when ties leave it short, so no pair is used twice). Trains ``vlm.model`` in place;
    returns the trained adapter and a log (steps, pairs made and presented, judge ties, sampling and training
    seconds). ``on_checkpoint`` is called after each of the ``checkpoints`` steps (multiples of the refresh
    interval)."""
    from transformers.optimization import get_constant_schedule
    from trl import DPOTrainer

    examples = check_examples(examples)
    if mode in (OnlineMode.ONLINE, OnlineMode.MIXED) and judge is None:
        raise InputError(f"{mode.value} DPO needs a pairwise judge")
    if mode is OnlineMode.MIXED and not offline_pairs:
        raise InputError("mixed DPO needs offline pairs")
    every = 1 if settings.on_policy else settings.refresh_every
    marks = _check_checkpoints(checkpoints, settings.steps, every)
    _quiet_trainer_logs()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    base = vlm.model
    ref = _frozen_copy(base)
    if settings.finetune is FineTune.LORA:
        from peft import get_peft_model

        model = get_peft_model(base, _lora_config(settings))
    else:
        model = base
    policy = VisionLanguageModel(model, vlm.processor)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    order = rng.permutation(len(examples))
    cursor, done = 0, 0
    offline_cursor = [0]
    tally = {
        "judged": 0,
        "ties": 0,
        "online_pairs": 0,
        "offline_pairs": 0,
        "bdhs_pairs": 0,
        "refreshes": 0,
        "pair_presentations": 0,
    }
    seconds = {"sampling_s": 0.0, "training_s": 0.0}
    steps_log: list[dict] = []
    n_rounds = math.ceil(settings.steps / every)
    bdhs_cfg = bdhs if bdhs is not None else BDHSConfig()
    offline_of: dict[str, list[PreferencePair]] = {}
    for pair in offline_pairs or ():
        if pair.meta.get("id"):
            offline_of.setdefault(str(pair.meta["id"]), []).append(pair)

    def make_pairs(chunk: list[SFTExample], round_index: int, top_up: int) -> list[PreferencePair]:
        pairs: list[PreferencePair] = []
        if mode is OnlineMode.ONLINE_BDHS:
            fresh = replace(bdhs_cfg, seed=bdhs_cfg.seed + 1000 * round_index + 100_000 * top_up + settings.seed)
            pairs, _ = bdhs_pairs(policy, chunk, fresh, embedder=embedder, progress=False)
            tally["bdhs_pairs"] += len(pairs)
            return pairs
        online_slots = chunk
        if mode is OnlineMode.MIXED:
            assert offline_pairs is not None  # checked on entry
            use_offline = rng.random(len(chunk)) < settings.mix_probability
            online_slots = [e for e, off in zip(chunk, use_offline) if not off]
            for e in (e for e, off in zip(chunk, use_offline) if off):
                own = offline_of.get(e.example_id) if e.example_id else None
                if own:  # Eq. 4: the offline pair of this very example
                    pairs.append(own[int(rng.integers(len(own)))])
                else:  # pairs without a matching meta["id"] (or dropped by BDHS): the next one in order
                    pairs.append(offline_pairs[offline_cursor[0] % len(offline_pairs)])
                    offline_cursor[0] += 1
            tally["offline_pairs"] += int(use_offline.sum())
        if online_slots:
            assert judge is not None  # checked on entry
            online = _online_pairs(policy, online_slots, judge, settings, rng, tally)
            tally["online_pairs"] += len(online)
            pairs.extend(online)
        return pairs

    with tempfile.TemporaryDirectory(prefix="mmlens-online-dpo-") as tmp:
        for round_index in range(n_rounds):
            n_steps = min(every, settings.steps - done)
            need = n_steps * settings.batch_size
            model.eval()
            t0 = time.perf_counter()
            pairs: list[PreferencePair] = []
            # on-policy: top up a short batch with fresh samples (bounded, then train on what there is)
            for top_up in range(1 + (settings.max_judge_rounds if settings.on_policy else 0)):
                want = need - len(pairs)
                if want <= 0:
                    break
                chunk = [examples[order[(cursor + i) % len(examples)]] for i in range(want)]
                cursor += want
                pairs.extend(make_pairs(chunk, round_index, top_up))
            pairs = pairs[:need]
            tally["refreshes"] += 1
            seconds["sampling_s"] += time.perf_counter() - t0
            done += n_steps
            if pairs:  # else every sample tied: nothing to learn from this round
                tally["pair_presentations"] += n_steps * min(settings.batch_size, len(pairs))
                order_pairs = rng.permutation(len(pairs))
                dataset = pairs_to_dataset([pairs[i] for i in order_pairs])
                model.train()
                t0 = time.perf_counter()
                with _library_deprecations_quiet():
                    trainer = DPOTrainer(
                        model=model,
                        ref_model=ref,
                        args=_dpo_config(settings, n_steps, tmp),
                        train_dataset=dataset,
                        processing_class=vlm.processor,
                        optimizers=(optimizer, get_constant_schedule(optimizer)),
                    )
                    _silence(trainer)
                    trainer.train()
                seconds["training_s"] += time.perf_counter() - t0
                steps_log.extend(
                    dict(s, step=s["step"] + done - n_steps) for s in _steps_log(trainer.state.log_history)
                )
            if done in marks and on_checkpoint is not None:
                model.eval()
                on_checkpoint(done, policy)
            if progress is not None:
                progress(done, settings.steps)
    trained = model.merge_and_unload() if settings.finetune is FineTune.LORA else model
    trained.eval()
    unique = tally["online_pairs"] + tally["offline_pairs"] + tally["bdhs_pairs"]
    log = {"steps": steps_log, **tally, **{k: round(v, 3) for k, v in seconds.items()}}
    log["presentations_per_pair"] = round(tally["pair_presentations"] / max(1, unique), 3)
    return VisionLanguageModel(trained, vlm.processor), log


__all__ = ["LORA_TARGETS", "train_dpo", "train_online"]
