"""``mmlens bench align``: does alignment remove hallucination from a model that has it, tuned and measured fairly?

Subject: a vision-language model trained on the miniature world (default: the zoo's ``mini-llava``), whose
language prior should make it say "yes" to the absent partner of a present anchor. The SFT model's failure is
measured first (``failure``); every arm then starts from it.

Protocol (written into the JSON as ``protocol``):

- **Splits.** Fit: SFT examples (a description + yes/no presence turns per scene) from train-split scenes the zoo
  model did not train on. Validation: the world's ``val`` split (anchor-without-partner scenes and ordinary ones).
  Test: the ``test`` split, content-disjoint from both. Every setting choice is made on validation; the test
  split is read once per (arm, chosen setting, seed).
- **Equal tuning budget.** Every arm gets ``len(runs)`` training runs on the tuning seed, each evaluated on
  validation at every step count of ``steps`` (with a constant learning rate the state after k steps of a longer
  run is the state of a k-step run, so one run serves every step count): a two-level design over beta x learning
  rate (full factorial), or, for arms with an SFT term, the half fraction over beta x learning rate x sft_weight
  (each level of each axis in half the runs). Same number of runs and validation reads for every arm.
- **Selection rule** (one for all arms): the highest validation POPE-adversarial accuracy on anchor-without-partner
  scenes among the settings whose validation recall (anchor and ordinary scenes) stays within ``recall_slack`` of
  the SFT model's; if none does, the highest recall. Ties: fewer steps, then the lower learning rate, then the
  lower beta.
- **Repeats and intervals.** The chosen setting is trained with every test seed (data order, BDHS draws, SFT
  subset); every metric is ``{mean, ci}`` with a percentile bootstrap over seeds x items (see
  :mod:`mmlens.align.intervals`); differences between arms are paired over the shared test items.

Arms (the paper's methods first, additions named): ``sft``; ``dpo_substitution`` (POVID-like random object
substitution); ``dpo_noisy_image`` (POVID's noise + teacher-forced argmax); ``dpo_bdhs``; ``dpo_bdhs_two_rejected``
(Eq. 5, gamma 0.5: the BDHS reject and the substitution reject of each example, as the paper's "BDHS u POVID");
``dpo_bdhs_noise`` (BDHS_noise: the image diffused instead of masked); ``dpo_bdhs_unguided`` (masking without
sentence guidance); ``online_dpo`` (on-policy: fresh policy samples for every batch, world-oracle judge);
``online_dpo_refresh8`` (pairs refreshed every ``dpo.refresh_every`` = 8 steps, today's default); ``mixed_dpo`` (Eq. 4, p = 0.5 with BDHS pairs,
on-policy); ``online_bdhs`` (on-policy); additions against DPO's length bias on the BDHS pairs: ``dpo_bdhs_sft``
(TRL's SFT term, weight tuned) and ``dpo_bdhs_ld`` (LD-DPO, alpha 0.5).

Resumable: every unit of work (pairs of a seed, a tuning run, a test run) is written atomically to
``<out>.runs/`` as it finishes and reused by a rerun with the same configuration.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mmlens.align.baselines import noisy_image_pairs, substitution_pairs, world_substitutions
from mmlens.align.bdhs import BDHSConfig, bdhs_pairs, default_embedder, split_sentences
from mmlens.align.calibrate import calibrate_eps_s, world_calibration_pairs
from mmlens.align.data import PreferencePair, load_preference_pairs, with_second_rejected, write_pairs
from mmlens.align.eval import PROPORTIONS, FailureEvalConfig, evaluate_failure
from mmlens.align.intervals import intervals_overlap, paired_difference, summarise
from mmlens.align.judges import WorldOracleJudge
from mmlens.align.settings import ImageCorruption
from mmlens.align.train import DPOSettings, OnlineMode, train_dpo, train_online
from mmlens.align.world_data import world_sft_examples
from mmlens.errors import InputError
from mmlens.io import write_json_atomic
from mmlens.models.generative import VisionLanguageModel
from mmlens.zoo import world_of


class Arm(enum.StrEnum):
    """One way to align (or not) the SFT model; the value is its key in the benchmark JSON."""

    SFT = "sft"
    DPO_SUBSTITUTION = "dpo_substitution"
    DPO_NOISY_IMAGE = "dpo_noisy_image"
    DPO_BDHS = "dpo_bdhs"
    DPO_BDHS_TWO_REJECTED = "dpo_bdhs_two_rejected"
    DPO_BDHS_NOISE = "dpo_bdhs_noise"
    DPO_BDHS_UNGUIDED = "dpo_bdhs_unguided"
    ONLINE_DPO = "online_dpo"
    ONLINE_DPO_REFRESH8 = "online_dpo_refresh8"
    MIXED_DPO = "mixed_dpo"
    ONLINE_BDHS = "online_bdhs"
    DPO_BDHS_SFT = "dpo_bdhs_sft"
    DPO_BDHS_LD = "dpo_bdhs_ld"


#: every arm, offline ones first: the on-policy online arms cost the most, so an interrupted run has the rest
ARMS: tuple[Arm, ...] = tuple(sorted(Arm, key=lambda arm: arm.value.startswith(("online", "mixed"))))
#: arm -> the pair set it trains on offline
OFFLINE_PAIRS: dict[Arm, str] = {
    Arm.DPO_SUBSTITUTION: "substitution",
    Arm.DPO_NOISY_IMAGE: "noisy_image",
    Arm.DPO_BDHS: "bdhs",
    Arm.DPO_BDHS_TWO_REJECTED: "bdhs_two_rejected",
    Arm.DPO_BDHS_NOISE: "bdhs_noise",
    Arm.DPO_BDHS_UNGUIDED: "bdhs_unguided",
    Arm.DPO_BDHS_SFT: "bdhs",
    Arm.DPO_BDHS_LD: "bdhs",
}
#: arm -> (online mode, on-policy)
ONLINE: dict[Arm, tuple[OnlineMode, bool]] = {
    Arm.ONLINE_DPO: (OnlineMode.ONLINE, True),
    Arm.ONLINE_DPO_REFRESH8: (OnlineMode.ONLINE, False),
    Arm.MIXED_DPO: (OnlineMode.MIXED, True),
    Arm.ONLINE_BDHS: (OnlineMode.ONLINE_BDHS, True),
}
#: fixed (not tuned) setting changes of an arm
FIXED: dict[Arm, dict[str, Any]] = {Arm.DPO_BDHS_LD: {"ld_alpha": 0.5}}
#: arms whose tuning includes sft_weight
WITH_SFT_TERM: tuple[Arm, ...] = (Arm.DPO_BDHS_SFT,)
#: the headline metrics of the issue's layout (plus the rest of evaluate_failure's in ``more``)
HEADLINE: tuple[str, ...] = (
    "pope_adversarial_acc",
    "pope_random_acc",
    "partner_false_yes",
    "yes_ratio",
    "chair_i",
    "recall",
    "image_gap",
)
MORE: tuple[str, ...] = (
    "pope_popular_acc",
    "other_false_yes",
    "chair_s",
    "partner_mention_rate",
    "pope_random_acc_ordinary",
    "chair_i_ordinary",
    "chair_s_ordinary",
    "recall_ordinary",
    "unparsed",
)


@dataclass(frozen=True)
class TuningGrid:
    """Two levels per axis; ``steps`` are read at checkpoints of each run."""

    beta: tuple[float, float] = (0.1, 0.5)
    learning_rate: tuple[float, float] = (1e-4, 4e-4)
    sft_weight: tuple[float, float] = (0.5, 1.0)
    steps: tuple[int, ...] = (32, 64, 96)

    def runs(self, with_sft_term: bool) -> list[dict[str, float]]:
        """The training runs of one arm: beta x lr (4 runs), or the half fraction of beta x lr x sft_weight
        (sft_weight level = XOR of the other two levels: 4 runs, each level of each axis twice)."""
        out = []
        for i, beta in enumerate(self.beta):
            for j, lr in enumerate(self.learning_rate):
                run: dict[str, float] = {"beta": beta, "learning_rate": lr}
                if with_sft_term:
                    run["sft_weight"] = self.sft_weight[i ^ j]
                out.append(run)
        return out


@dataclass(frozen=True)
class AlignBenchConfig:
    model: str = "zoo:mini-llava"
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    tune_seed: int = 100  # not a test seed: the tuning runs are not reused at test
    arms: tuple[Arm, ...] = ARMS
    n_scenes: int = 160  # SFT scenes per seed: a description + 2 yes/no turns each
    # mini-llava has 4 image tokens (one per grid cell): keep one visible (the spec's "1-3 visible tokens")
    bdhs: BDHSConfig = field(default_factory=lambda: BDHSConfig(visible_tokens=1))
    calibrate_eps: bool = True  # recalibrate eps_s for the embedder (else bdhs.eps_s as given)
    n_calibration_scenes: int = 300
    dpo: DPOSettings = field(default_factory=lambda: DPOSettings(batch_size=16, refresh_every=8))
    grid: TuningGrid = field(default_factory=TuningGrid)
    recall_slack: float = 0.02
    validation: FailureEvalConfig = field(
        default_factory=lambda: FailureEvalConfig(n_anchor_scenes=100, n_ordinary_scenes=100, split="val")
    )
    test: FailureEvalConfig = field(
        default_factory=lambda: FailureEvalConfig(n_anchor_scenes=150, n_ordinary_scenes=150, split="test")
    )
    resamples: int = 2000
    cost_examples: int = 96
    threads: int = 2


def smoke_config(model: str, **changes) -> AlignBenchConfig:
    """A reduced size that runs every arm and every code path in minutes: a check, never a result."""
    base = AlignBenchConfig(
        model=model,
        seeds=(0, 1),
        n_scenes=8,
        n_calibration_scenes=40,
        dpo=DPOSettings(batch_size=4, refresh_every=2, max_new_tokens=16),
        bdhs=BDHSConfig(visible_tokens=1, max_new_tokens=24, max_tries=3),
        # one distinct run per arm (equal levels collapse the design: identical runs are one stored unit)
        grid=TuningGrid(beta=(0.1, 0.1), learning_rate=(4e-4, 4e-4), sft_weight=(1.0, 1.0), steps=(2, 4)),
        validation=FailureEvalConfig(n_anchor_scenes=6, n_ordinary_scenes=6, split="val", max_new_tokens=12),
        test=FailureEvalConfig(n_anchor_scenes=8, n_ordinary_scenes=8, split="test", max_new_tokens=12),
        resamples=300,
        cost_examples=12,
    )
    return replace(base, **changes)


def _plain(obj: Any) -> Any:
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _strict(obj: Any) -> Any:
    """NaN (a metric with no items, e.g. CHAIR_i when nothing is named) as null, so the file is strict JSON."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strict(v) for v in obj]
    return obj


def config_record(config: AlignBenchConfig) -> dict:
    return _plain(asdict(config))


def _model_record(spec: str) -> dict:
    """Which SFT checkpoint was measured: its folder, when its metrics were written, its own prior diagnostics."""
    from mmlens.models.loading import resolve_spec

    folder = Path(resolve_spec(spec))
    path = folder / "metrics.json"
    if not path.is_file():
        return {"path": str(folder)}
    rec = json.loads(path.read_text())
    metrics = rec.get("metrics", {})
    return {
        "path": str(folder),
        "metrics_written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(path.stat().st_mtime)),
        "prior": metrics.get("prior"),
        **{k: metrics[k] for k in ("pope_adversarial_acc", "pope_random_acc", "vqa_acc") if k in metrics},
    }


def _commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[3]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------------ the run store
class RunStore:
    """``<out>.runs/``: one JSON per finished unit of work (written atomically), and the pair sets; tied to the
    configuration it was made with."""

    def __init__(self, folder: Path, config: dict, *, fresh: bool = False):
        self.folder = folder
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
        marker = folder / "config.json"
        if marker.is_file() and not fresh:
            old = json.loads(marker.read_text())
            if old.get("digest") != digest:
                raise InputError(
                    f"{folder} holds runs of another configuration; rerun with --fresh (discards them) or another --out"
                )
        elif fresh and folder.exists():
            import shutil

            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(marker, {"digest": digest, "config": config})

    def _path(self, key: str) -> Path:
        return self.folder / (key.replace("/", "__") + ".json")

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, key: str, record: dict) -> dict:
        write_json_atomic(self._path(key), record)
        return record

    def pairs(self, key: str, make: Callable[[], tuple[list[PreferencePair], dict]]) -> tuple[list, dict]:
        folder = self.folder / f"pairs__{key}"
        meta = self.get(f"pairs/{key}")
        if meta is not None and (folder / "pairs.jsonl").is_file():
            return load_preference_pairs(folder), meta
        pairs, stats = make()
        if not pairs:
            raise InputError(f"the pair set {key} is empty: no arm can train on it")
        write_pairs(pairs, folder, overwrite=True, with_dataset=False)
        return pairs, self.put(f"pairs/{key}", stats)


# -------------------------------------------------------------------------------------------- the runner
def _setting_key(setting: dict) -> str:
    return ",".join(f"{k}={setting[k]:g}" for k in sorted(setting))


def _select(trials: list[dict], sft_val: dict, slack: float) -> dict:
    """The selection rule of the module docstring over ``trials`` ({"setting", "metrics"})."""

    def ok(t: dict) -> bool:
        m = t["metrics"]
        return m["recall"] >= sft_val["recall"] - slack and m["recall_ordinary"] >= sft_val["recall_ordinary"] - slack

    def tie(t: dict) -> tuple:
        s = t["setting"]
        return (s["steps"], s["learning_rate"], s["beta"], s.get("sft_weight", 0.0))

    admissible = [t for t in trials if ok(t)]
    if admissible:
        best = max(t["metrics"]["pope_adversarial_acc"] for t in admissible)
        return min((t for t in admissible if t["metrics"]["pope_adversarial_acc"] == best), key=tie) | {
            "rule": "max val POPE-adv within the recall slack"
        }
    best = max(min(t["metrics"]["recall"], t["metrics"]["recall_ordinary"]) for t in trials)
    return min((t for t in trials if min(t["metrics"]["recall"], t["metrics"]["recall_ordinary"]) == best), key=tie) | {
        "rule": "no setting kept recall: max val recall"
    }


def _at_edge(setting: dict, grid: TuningGrid, with_sft: bool) -> list[str]:
    axes = {"beta": grid.beta, "learning_rate": grid.learning_rate, "steps": grid.steps}
    if with_sft:
        axes["sft_weight"] = grid.sft_weight
    return [k for k, values in axes.items() if setting[k] in (min(values), max(values)) and len(set(values)) > 1]


def align_benchmark(
    config: AlignBenchConfig,
    out: Path,
    *,
    fresh: bool = False,
    progress: Callable[[str], None] | None = None,
    command: str | None = None,
) -> dict:
    """Run the protocol of the module docstring; returns the benchmark record (also written to ``out``, first
    with ``"complete": false`` after every finished unit)."""
    from mmlens.models import load_model

    say = progress or (lambda msg: None)
    if not config.seeds:
        raise InputError("no test seeds")
    if Arm.SFT not in config.arms:
        raise InputError("the arms must include sft (the starting model every arm is compared with)")
    torch.set_num_threads(config.threads)
    t_start = time.perf_counter()
    cfg_rec = config_record(config)
    store = RunStore(Path(str(out) + ".runs"), cfg_rec, fresh=fresh)
    sft = load_model(config.model, expect=VisionLanguageModel)
    world = world_of(config.model)
    if not world.cfg.bias_pairs:
        raise InputError(f"{config.model}'s world has no bias pairs: there is no language prior to remove")
    embedder = default_embedder()
    judge = WorldOracleJudge(world)
    grid = config.grid
    max_steps = max(grid.steps)

    # --- eps_s for this embedder
    if config.calibrate_eps:
        calibration = store.get("calibration")
        if calibration is None:
            same, changed = world_calibration_pairs(world, config.n_calibration_scenes, split="val")
            calibration = store.put("calibration", calibrate_eps_s(embedder, same, changed).to_dict())
        bdhs_base = replace(config.bdhs, eps_s=float(calibration["eps_s"]))
    else:
        calibration, bdhs_base = None, config.bdhs
    say(f"eps_s = {bdhs_base.eps_s:.4f}" + (" (calibrated)" if calibration else ""))
    say("cost: batched vs sentence-by-sentence BDHS")
    measure_bdhs_cost(config, store, sft, world, embedder, bdhs_base.eps_s)

    # --- the SFT model on validation and test
    def evaluate(key: str, vlm: VisionLanguageModel, eval_cfg: FailureEvalConfig, keep_items: bool) -> dict:
        rec = store.get(key)
        if rec is None:
            t0 = time.perf_counter()
            res = evaluate_failure(vlm, world, eval_cfg)
            rec = {"metrics": res["metrics"], "eval_s": round(time.perf_counter() - t0, 2)}
            if keep_items:
                rec |= {"items": res["items"], "examples": res["examples"]}
            store.put(key, rec)
        return rec

    sft_val = evaluate("val/sft", sft, config.validation, False)["metrics"]
    sft_test = evaluate("test/sft", sft, config.test, True)

    # --- pair sets per seed (BDHS variants timed and counted)
    def examples_of(seed: int):
        return world_sft_examples(world, config.n_scenes, seed=seed, start=20000 + 1000 * (seed % 1000))

    loaded: dict[tuple[str, int], list[PreferencePair]] = {}

    def pair_set(kind: str, seed: int) -> list[PreferencePair]:
        if (kind, seed) not in loaded:
            loaded[kind, seed] = make_pair_set(kind, seed)
        return loaded[kind, seed]

    def make_pair_set(kind: str, seed: int) -> list[PreferencePair]:
        examples = examples_of(seed)
        bdhs_seed = replace(bdhs_base, seed=seed)

        def bdhs_of(cfg: BDHSConfig):
            def make():
                pairs, stats = bdhs_pairs(sft, examples, cfg, embedder=embedder, progress=False)
                return pairs, stats.to_dict()

            return make

        makers: dict[str, Callable[[], tuple[list, dict]]] = {
            "bdhs": bdhs_of(bdhs_seed),
            "bdhs_noise": bdhs_of(replace(bdhs_seed, corruption=ImageCorruption.NOISE)),
            "bdhs_unguided": bdhs_of(replace(bdhs_seed, guided=False)),
            "substitution": lambda: (
                (p := substitution_pairs(examples, world_substitutions(world), seed=seed)),
                {"n_pairs": len(p), "n_examples": len(examples)},
            ),
            "noisy_image": lambda: (
                (p := noisy_image_pairs(sft, examples, seed=seed)),
                {"n_pairs": len(p), "n_examples": len(examples)},
            ),
            "bdhs_two_rejected": lambda: (
                (p := with_second_rejected(pair_set("bdhs", seed), pair_set("substitution", seed))),
                {"n_pairs": len(p), "n_examples": len(examples)},
            ),
        }
        return store.pairs(f"{kind}__{seed}", makers[kind])[0]

    # --- one training run, evaluated at checkpoints
    def train_arm(arm: Arm, seed: int, setting: dict, steps: int, checkpoints: tuple[int, ...], on_ck) -> dict:
        settings = replace(config.dpo, seed=seed, steps=steps, **{k: v for k, v in setting.items() if k != "steps"})
        settings = replace(settings, **FIXED.get(arm, {}))
        policy = VisionLanguageModel(copy.deepcopy(sft.model), sft.processor)
        t0 = time.perf_counter()
        if arm in OFFLINE_PAIRS:
            _, log = train_dpo(
                policy, pair_set(OFFLINE_PAIRS[arm], seed), settings, checkpoints=checkpoints, on_checkpoint=on_ck
            )
        else:
            mode, on_policy = ONLINE[arm]
            _, log = train_online(
                policy,
                examples_of(seed),
                mode,
                replace(settings, on_policy=on_policy),
                judge=judge,
                offline_pairs=pair_set("bdhs", seed) if mode is OnlineMode.MIXED else None,
                bdhs=replace(bdhs_base, seed=seed),
                embedder=embedder,
                checkpoints=checkpoints,
                on_checkpoint=on_ck,
            )
        steps_log = log.pop("steps", [])
        tail = steps_log[-max(1, len(steps_log) // 4) :]
        summary = {
            f"final_{k.replace('/', '_')}": round(float(np.mean([s[k] for s in tail if k in s])), 4)
            for k in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected")
            if any(k in s for s in tail)
        }
        return {"train_s": round(time.perf_counter() - t0, 2), "log": log, **summary}

    arms = [a for a in config.arms if a is not Arm.SFT]
    n_units = sum(len(grid.runs(a in WITH_SFT_TERM)) for a in arms) + len(arms) * len(config.seeds)
    bar = tqdm(total=n_units, desc="align bench", unit="run")
    tuned: dict[Arm, dict] = {}
    tuning_rows: dict[str, list] = {}
    test_runs: dict[Arm, list[dict]] = {}

    def record(complete: bool) -> dict:
        return _strict(full_record(complete))

    def full_record(complete: bool) -> dict:
        return assemble(
            config, cfg_rec, calibration, sft_val, sft_test, tuned, tuning_rows, test_runs, store, complete
        ) | {
            "command": command,
            "commit": _commit(),
            "machine": {
                "cores": os.cpu_count(),
                "torch_threads": config.threads,
                "load_average": [round(x, 2) for x in os.getloadavg()],
                "platform": platform.platform(),
            },
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "elapsed_s": round(time.perf_counter() - t_start, 1),
            "sft_model_record": _model_record(config.model),
        }

    for arm in arms:
        # --- tuning on validation (tune seed), the same budget for every arm
        trials = []
        for run in grid.runs(arm in WITH_SFT_TERM):
            key = f"tune/{arm.value}/{_setting_key(run)}"
            rec = store.get(key)
            if rec is None:
                bar.set_postfix_str(f"tune {arm.value} {_setting_key(run)}")
                at: dict[int, dict] = {}

                def on_ck(step: int, policy: VisionLanguageModel, at=at) -> None:
                    at[step] = evaluate_failure(policy, world, config.validation)["metrics"]

                info = train_arm(arm, config.tune_seed, run, max_steps, grid.steps, on_ck)
                rec = store.put(key, {"run": run, "checkpoints": {str(k): v for k, v in at.items()}, **info})
            bar.update(1)
            for step, metrics in rec["checkpoints"].items():
                trials.append({"setting": {**run, "steps": int(step)}, "metrics": metrics})
        chosen = _select(trials, sft_val, config.recall_slack)
        tuned[arm] = {
            **chosen["setting"],
            "rule": chosen["rule"],
            "val_pope_adversarial_acc": round(chosen["metrics"]["pope_adversarial_acc"], 4),
            "val_recall": round(chosen["metrics"]["recall"], 4),
            "at_grid_edge": _at_edge(chosen["setting"], grid, arm in WITH_SFT_TERM),
            **FIXED.get(arm, {}),
        }
        tuning_rows[arm.value] = [
            {**t["setting"], **{k: round(t["metrics"][k], 4) for k in ("pope_adversarial_acc", "recall")}}
            for t in trials
        ]
        say(f"{arm.value}: chose {chosen['setting']} ({chosen['rule']})")
        # --- test: the chosen setting, every seed, read once
        test_runs[arm] = []
        setting = {k: v for k, v in chosen["setting"].items() if k != "steps"}
        for seed in config.seeds:
            key = f"test/{arm.value}/{seed}/{_setting_key(chosen['setting'])}"
            rec = store.get(key)
            if rec is None:
                bar.set_postfix_str(f"test {arm.value} seed {seed}")
                # the test split is read here, once, at the chosen step count
                policy_holder: dict = {}

                def keep(step: int, policy: VisionLanguageModel, holder=policy_holder) -> None:
                    holder["res"] = evaluate_failure(policy, world, config.test)

                t0 = time.perf_counter()
                info = train_arm(arm, seed, setting, chosen["setting"]["steps"], (chosen["setting"]["steps"],), keep)
                res = policy_holder["res"]
                rec = store.put(
                    key,
                    {
                        "seed": seed,
                        "steps": chosen["setting"]["steps"],
                        "metrics": res["metrics"],
                        "items": res["items"],
                        "examples": res["examples"],
                        "run_s": round(time.perf_counter() - t0, 2),
                        **info,
                    },
                )
            test_runs[arm].append(rec)
            bar.update(1)
            write_json_atomic(out, record(False))
    bar.close()
    result = record(True)
    write_json_atomic(out, result)
    return result


# ---------------------------------------------------------------------------------------------- the record
def _items(runs: list[dict]) -> list[dict]:
    return [{k: tuple(v) for k, v in r["items"].items()} for r in runs]


def assemble(
    config: AlignBenchConfig,
    cfg_rec: dict,
    calibration: dict | None,
    sft_val: dict,
    sft_test: dict,
    tuned: dict,
    tuning_rows: dict,
    test_runs: dict,
    store: RunStore,
    complete: bool,
) -> dict:
    metrics = (*HEADLINE, *MORE)
    kw = {"resamples": config.resamples}
    sft_items = _items([sft_test])
    arms: dict[str, dict] = {}
    summaries = {"sft": summarise(sft_items, metrics, proportions=PROPORTIONS, **kw)}
    for arm, runs in test_runs.items():
        if runs:
            summaries[arm.value] = summarise(_items(runs), metrics, proportions=PROPORTIONS, **kw)
    for name, summ in summaries.items():
        arm_rec = {k: summ[k] for k in HEADLINE} | {"more": {k: summ[k] for k in MORE}}
        if name != "sft":
            arm_obj = Arm(name)
            runs = test_runs[arm_obj]
            arm_rec["tuned"] = tuned[arm_obj]
            arm_rec["seeds"] = [r["seed"] for r in runs]
            arm_rec["train_s"] = round(float(np.mean([r["train_s"] for r in runs])), 2)
            arm_rec["training"] = [
                {k: v for k, v in r.items() if k not in ("items", "metrics", "examples")} for r in runs
            ]
            arm_rec["examples"] = runs[0].get("examples", [])[:3]
        arms[name] = arm_rec
    # paired differences on the test items
    diffs: dict[str, dict] = {}
    for arm, runs in test_runs.items():
        if runs:
            diffs[f"{arm.value} - sft"] = paired_difference(_items(runs), sft_items, metrics, **kw)
    pairs_of = [
        ("dpo_bdhs", "dpo_substitution"),
        ("dpo_bdhs", "dpo_noisy_image"),
        ("dpo_bdhs", "dpo_bdhs_unguided"),
        ("dpo_bdhs", "dpo_bdhs_noise"),
        ("dpo_bdhs_two_rejected", "dpo_bdhs"),
        ("mixed_dpo", "dpo_bdhs"),
        ("mixed_dpo", "online_dpo"),
        ("online_dpo", "online_dpo_refresh8"),
        ("dpo_bdhs_sft", "dpo_bdhs"),
        ("online_bdhs", "dpo_bdhs"),
    ]
    by_value = {a.value: r for a, r in test_runs.items() if r}
    for a, b in pairs_of:
        if a in by_value and b in by_value:
            diffs[f"{a} - {b}"] = paired_difference(_items(by_value[a]), _items(by_value[b]), metrics, **kw)
    sft_m = sft_test["metrics"]
    failure = {
        "partner_false_yes": summaries["sft"]["partner_false_yes"],
        "other_false_yes": summaries["sft"]["other_false_yes"],
        "pope_random_minus_adversarial": round(sft_m["pope_random_acc"] - sft_m["pope_adversarial_acc"], 4),
        "chair_i_anchor_scenes": round(sft_m["chair_i"], 4),
        "chair_i_ordinary": round(sft_m["chair_i_ordinary"], 4),
        "partner_mention_rate": round(sft_m["partner_mention_rate"], 4),
    }
    failure["present"] = bool(
        summaries["sft"]["partner_false_yes"]["wilson"][0] > summaries["sft"]["other_false_yes"]["wilson"][1]
        and sft_m["partner_false_yes"] >= 0.15
    )
    bdhs_stats = {"calibration": calibration}
    for kind in ("bdhs", "bdhs_noise", "bdhs_unguided"):
        per_seed = [s for seed in config.seeds if (s := store.get(f"pairs/{kind}__{seed}")) is not None]
        if per_seed:
            accepted = np.sum([s["accepted_by_try"] for s in per_seed], axis=0)
            tried = np.sum([s["tried_by_try"] for s in per_seed], axis=0)
            n = sum(s["n_examples"] for s in per_seed)
            bdhs_stats[kind] = {
                "accepted_by_try": accepted.tolist(),
                "tried_by_try": tried.tolist(),
                "acceptance_by_try": [round(float(a / t), 4) if t else None for a, t in zip(accepted, tried)],
                "cumulative_accepted": [round(float(x / n), 4) for x in np.cumsum(accepted)],
                "mean_similarity": round(float(np.mean([s["mean_similarity"] for s in per_seed])), 4),
                "mean_length_ratio": round(float(np.mean([s["mean_length_ratio"] for s in per_seed])), 4),
                "n_pairs": int(sum(s["n_pairs"] for s in per_seed)),
                "n_dropped": int(sum(s["n_dropped"] for s in per_seed)),
                "seconds_per_pair": round(float(np.mean([s["seconds_per_pair"] for s in per_seed])), 5),
            }
    cost = _cost(store, test_runs, config)
    return {
        "complete": complete,
        "model": config.model,
        "protocol": {
            "splits": {
                "fit": "train-split scenes from index 20000 + 1000 x seed (past the zoo model's training scenes)",
                "validation": f"{config.validation.split} split",
                "test": f"{config.test.split} split, read once per (arm, chosen setting, seed)",
            },
            "tuning": {
                "budget": f"{len(config.grid.runs(False))} training runs per arm on seed {config.tune_seed}, each "
                f"read on validation at steps {list(config.grid.steps)} (constant lr)",
                "grid": _plain(asdict(config.grid)),
                "rule": "max validation POPE-adversarial accuracy (anchor-without-partner scenes) among settings "
                f"whose validation recall (anchor and ordinary scenes) >= SFT - {config.recall_slack}; else max "
                "recall; ties: fewer steps, lower lr, lower beta",
            },
            "seeds": list(config.seeds),
            "intervals": f"95 % percentile bootstrap over seeds x items, {config.resamples} resamples; differences "
            "paired over the shared test items; proportions also carry a Wilson interval of pooled counts",
            "answer_matching": "mmlens.align.eval.parse_yes_no, i.e. the shared mmlens.answers.DEFAULT_EXTRACTOR (issue 17)",
        },
        "config": cfg_rec,
        "failure": failure,
        "sft": arms.get("sft"),
        "arms": arms,
        "differences": diffs,
        "targets": _targets(arms, diffs, cost),
        "bdhs_stats": bdhs_stats,
        "cost": cost,
        "tuning": tuning_rows,
        "sft_validation": {k: round(v, 4) for k, v in sft_val.items()},
    }


def _cost(store: RunStore, test_runs: dict, config: AlignBenchConfig) -> dict:
    cost = dict(store.get("cost") or {})

    def per_step(arm: Arm) -> float | None:
        """Seconds per optimizer step of an online arm's test runs: sampling + judging + TRL training."""
        runs = test_runs.get(arm) or []
        if not runs:
            return None
        per = [(r["log"]["sampling_s"] + r["log"]["training_s"]) / max(1, r["steps"]) for r in runs]
        return round(float(np.mean(per)), 3)

    cost["online_per_step_s"] = per_step(Arm.ONLINE_DPO)
    cost["online_refresh_s"] = per_step(Arm.ONLINE_DPO_REFRESH8)
    cost["train_s_per_arm"] = {
        a.value: round(float(np.mean([r["train_s"] for r in runs])), 2) for a, runs in test_runs.items() if runs
    }
    return cost


def measure_bdhs_cost(config: AlignBenchConfig, store: RunStore, sft, world, embedder, eps_s: float) -> dict:
    """Batched vs sentence-by-sentence BDHS generation on the same examples (one guided try)."""
    rec = store.get("cost")
    if rec is not None:
        return rec
    examples = world_sft_examples(world, max(1, config.cost_examples // 3), seed=99, start=40000)
    one_try = replace(config.bdhs, max_tries=1, eps_s=eps_s)
    batched_pairs, batched = bdhs_pairs(sft, examples, one_try, embedder=embedder, progress=False)
    seq_pairs, sequential = bdhs_pairs(sft, examples, replace(one_try, batch_size=1), embedder=embedder, progress=False)
    return store.put(
        "cost",
        {
            "n_examples": len(examples),
            "n_sentences": sum(len(split_sentences(e.answer)) for e in examples),
            "bdhs_batched_s": round(batched.generation_seconds, 3),
            "bdhs_sequential_s": round(sequential.generation_seconds, 3),
            "speedup": round(sequential.generation_seconds / max(batched.generation_seconds, 1e-9), 2),
            "same_pairs": [p.rejected for p in batched_pairs] == [p.rejected for p in seq_pairs],
        },
    )


def _targets(arms: dict, diffs: dict, cost: dict) -> dict:
    out: dict = {}
    d = diffs.get("dpo_bdhs - sft")
    if d is not None and "sft" in arms and "dpo_bdhs" in arms:
        sft_fy = arms["sft"]["partner_false_yes"]["mean"]
        out["bdhs_pope_adv_gain_ge_5pts_ci_excludes_0"] = {
            "measured": d["pope_adversarial_acc"],
            "met": d["pope_adversarial_acc"]["diff"] >= 0.05 and d["pope_adversarial_acc"]["ci"][0] > 0,
        }
        out["bdhs_halves_partner_false_yes"] = {
            "measured": {"sft": sft_fy, "dpo_bdhs": arms["dpo_bdhs"]["partner_false_yes"]["mean"]},
            "met": arms["dpo_bdhs"]["partner_false_yes"]["mean"] <= sft_fy / 2 and sft_fy > 0,
        }
        out["bdhs_recall_within_2pts"] = {
            "measured": {"anchor": d["recall"], "ordinary": d["recall_ordinary"]},
            "met": d["recall"]["diff"] >= -0.02 and d["recall_ordinary"]["diff"] >= -0.02,
        }
        yes = arms["dpo_bdhs"]["yes_ratio"]["mean"]
        out["bdhs_yes_ratio_in_0.4_0.6"] = {"measured": yes, "met": 0.4 <= yes <= 0.6}
    for other in ("dpo_substitution", "dpo_noisy_image"):
        if "dpo_bdhs" in arms and other in arms:
            a, b = arms["dpo_bdhs"]["pope_adversarial_acc"], arms[other]["pope_adversarial_acc"]
            out[f"bdhs_beats_{other}_pope_adv"] = {
                "measured": {
                    "dpo_bdhs": a,
                    other: b,
                    "paired": diffs.get(f"dpo_bdhs - {other}", {}).get("pope_adversarial_acc"),
                },
                "intervals_overlap": intervals_overlap(a, b),
                "met": a["mean"] > b["mean"] and not intervals_overlap(a, b),
            }
    g = diffs.get("dpo_bdhs - dpo_bdhs_unguided")
    if g is not None:
        out["guided_beats_unguided_pope_adv"] = {
            "measured": g["pope_adversarial_acc"],
            "met": g["pope_adversarial_acc"]["ci"][0] > 0,
        }
    if all(k in arms for k in ("mixed_dpo", "dpo_bdhs", "online_dpo")):
        res = {}
        for key in ("pope_adversarial_acc", "recall"):
            best = max(arms["dpo_bdhs"][key]["mean"], arms["online_dpo"][key]["mean"])
            res[key] = round(arms["mixed_dpo"][key]["mean"] - best, 4)
        out["mixed_matches_best_of_offline_online"] = {"measured": res, "met": all(v >= 0 for v in res.values())}
    if "speedup" in cost:
        out["batched_bdhs_ge_3x"] = {"measured": cost["speedup"], "met": cost["speedup"] >= 3.0}
    return out


__all__ = [
    "ARMS",
    "Arm",
    "AlignBenchConfig",
    "HEADLINE",
    "RunStore",
    "TuningGrid",
    "align_benchmark",
    "assemble",
    "measure_bdhs_cost",
    "smoke_config",
]
