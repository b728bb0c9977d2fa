"""The typed plan of an audit: which stages exist, their per-stage settings, and the shift grid."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mmlens.enums import as_enum
from mmlens.errors import InputError, check_finite
from mmlens.shift.options import Fusion
from mmlens.shift.settings import Scenario as Scenario  # (visual, severity, text, severity): mmlens.shift's


class Stage(enum.Enum):
    """The analyses of an audit, in the order they run (and appear on the summary page)."""

    INFLUENCE = "influence"
    SHIFT = "shift"
    CONCEPTS = "concepts"
    STEERING = "steering"
    HALLUCINATION = "hallucination"


class StageStatus(enum.Enum):
    DONE = "done"  # computed in this run
    CACHED = "cached"  # reused from an earlier run with the same fingerprint
    SKIPPED = "skipped"  # does not apply to this model or data (the reason says why)
    FAILED = "failed"  # raised an error (recorded; the other stages still ran)


class ModelKind(enum.Enum):
    CONTRASTIVE = "contrastive"
    VISION_LANGUAGE = "vision-language"


@dataclass(frozen=True)
class InfluenceStage:
    """ECIF on the projection heads: every pair's self-influence and its value for the validation data, scored in
    resumable shards (mmlens.influence.score_pairs)."""

    val: str | None = None  # trusted validation pairs (export folder, JSONL or datasets folder); None: held out
    val_fraction: float = 0.25  # without ``val``: share of the records held out (from the same data) as validation
    inject_swap_rate: float = 0.0  # demo: swap this share of training captions (ground truth for an AUROC)
    flag_fraction: float = 0.05  # the top share is flagged: by harm to ``val`` if given, else by self-influence
    max_pairs: int | None = None  # None: every pair; else a seeded random sample of this many (named on the page)
    batch_size: int = 64
    l2: float = 300.0
    cards: int = 16


@dataclass(frozen=True)
class ShiftStage:
    """Responses under a shift grid, then EMI / EMID / the bound (mmlens.shift)."""

    grid: tuple[Scenario, ...] = (
        (None, 0, None, 0),
        ("fog", 3, None, 0),
        ("fog", 5, None, 0),
        (None, 0, "keyboard", 3),
        (None, 0, "keyboard", 5),
    )
    n_items: int = 200
    image_model: str | None = None  # CLIP-like image features for the queries (None: text-only queries)
    text_embedder: str = "minilm"
    fusion: Fusion = Fusion.CONCAT  # query = [image; text] embeddings (their sizes differ); AVERAGE needs equal sizes
    n_permutations: int = 30  # per bound term; the RJSD permutations dominate the stage's time
    n_bootstrap: int = 100
    max_epochs: int = 300
    max_new_tokens: int = 8
    batch_size: int = 64


@dataclass(frozen=True)
class ConceptsStage:
    """A concept dictionary over hidden states at the last prompt position (and the fine-tuning comparison)."""

    n_items: int = 600
    n_concepts: int = 12
    layer: str = "final_norm"
    batch_size: int = 64


@dataclass(frozen=True)
class SteeringStage:
    """A yes -> no coarse vector at a middle layer against its controls (and fine-tuning shift vectors)."""

    layer: int | None = None  # None: the middle decoder layer
    n_items: int = 600  # yes/no questions and others, half to build the vector, half to evaluate it
    alphas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    shift_alphas: tuple[float, ...] = (1.0, 2.0, 4.0)  # fine-tuning shift vector on descriptions
    n_describe: int = 200  # images for the shift vector (half build, half evaluate)
    describe_tokens: int = 24
    max_new_tokens: int = 4
    batch_size: int = 64


@dataclass(frozen=True)
class HallucinationStage:
    """POPE (per probe kind), CHAIR with object recall and the image-dependence gap (mmlens.align.eval)."""

    n_images: int = 150
    max_new_tokens: int = 24
    batch_size: int = 64


@dataclass(frozen=True)
class AuditConfig:
    """One audit: the model (and an optional fine-tuned version), the data, the output folder, and each stage."""

    model: str
    data: str  # a folder in the `mmlens world export` layout, or "world" / "world:N"
    out_dir: Path
    finetuned: str | None = None
    stages: tuple[Stage, ...] = tuple(Stage)  # the stages to consider (the others are reported as not requested)
    influence: InfluenceStage = field(default_factory=InfluenceStage)
    shift: ShiftStage = field(default_factory=ShiftStage)
    concepts: ConceptsStage = field(default_factory=ConceptsStage)
    steering: SteeringStage = field(default_factory=SteeringStage)
    hallucination: HallucinationStage = field(default_factory=HallucinationStage)
    world_scenes: int = 400  # scenes exported for data "world" (without ":N")
    seed: int = 0
    force: bool = False  # recompute every stage even if a cached result matches

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        try:
            object.__setattr__(self, "stages", tuple(Stage(s) for s in self.stages))
        except ValueError:
            raise InputError(f"stages {self.stages!r}: choose among {', '.join(s.value for s in Stage)}") from None
        if not self.stages:
            raise InputError("no stage requested: choose among " + ", ".join(s.value for s in Stage))
        object.__setattr__(self, "shift", replace(self.shift, fusion=as_enum(Fusion, self.shift.fusion, "fusion")))
        for stage in Stage:
            check_finite(self.stage_config(stage))
        if not 0.0 < self.influence.flag_fraction <= 1.0:
            raise InputError(f"influence flag_fraction must be in (0, 1], got {self.influence.flag_fraction}")
        if self.influence.val is not None and not Path(self.influence.val).expanduser().exists():
            raise InputError(
                f"influence validation data {self.influence.val} not found: give an exported folder, a "
                "JSONL of {image, caption} or a datasets folder"
            )
        sizes = {
            "influence max_pairs": 1 if self.influence.max_pairs is None else self.influence.max_pairs,
            "shift n_items": self.shift.n_items,
            "concepts n_items": self.concepts.n_items,
            "concepts n_concepts": self.concepts.n_concepts,
            "steering n_items": self.steering.n_items,
            "steering n_describe": self.steering.n_describe,
            "hallucination n_images": self.hallucination.n_images,
        }
        for name, value in sizes.items():
            if value < 1:
                raise InputError(f"{name} must be at least 1, got {value}")
        if not 0.0 < self.influence.val_fraction < 1.0:
            raise InputError(f"influence val_fraction must be in (0, 1), got {self.influence.val_fraction}")
        if not 0.0 <= self.influence.inject_swap_rate < 1.0:
            raise InputError(f"inject_swap_rate must be in [0, 1), got {self.influence.inject_swap_rate}")
        if not self.shift.grid or self.shift.grid[0] != (None, 0, None, 0):
            raise InputError("the shift grid starts with the clean split (None, 0, None, 0)")

    def stage_config(self, stage: Stage) -> Any:
        return getattr(self, stage.value)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["out_dir"] = str(self.out_dir)
        out["stages"] = [s.value for s in self.stages]
        return out


def _scenario_of(token: str) -> Scenario:
    from mmlens.world.corruptions import TextCorruption, VisualCorruption

    name, _, severity = token.strip().partition(":")
    try:
        level = int(severity)
    except ValueError:
        raise InputError(f"shift grid entry {token!r}: write NAME:SEVERITY, e.g. fog:5") from None
    if not 1 <= level <= 5:
        raise InputError(f"shift grid entry {token!r}: severity must be 1-5")
    visual = {s.value for s in VisualCorruption}
    text = {s.value for s in TextCorruption}
    if name in visual:
        return (name, level, None, 0)
    if name in text:
        return (None, 0, name, level)
    raise InputError(
        f"shift grid entry {token!r}: unknown shift {name!r} (visual: {', '.join(sorted(visual))}; "
        f"text: {', '.join(sorted(text))})"
    )


def parse_shift_grid(spec: str) -> tuple[Scenario, ...]:
    """``"fog:3,fog:5,keyboard:5"`` -> the clean scenario followed by one scenario per entry; an entry
    ``fog:3+keyboard:3`` is a joint shift."""
    scenarios: list[Scenario] = [(None, 0, None, 0)]
    for token in (t for t in spec.split(",") if t.strip()):
        parts = [_scenario_of(p) for p in token.split("+")]
        if len(parts) == 1:
            scenarios.append(parts[0])
        elif len(parts) == 2 and parts[0][0] and parts[1][2]:
            scenarios.append((parts[0][0], parts[0][1], parts[1][2], parts[1][3]))
        else:
            raise InputError(f"shift grid entry {token!r}: a joint shift is VISUAL:S+TEXT:S")
    if len(scenarios) < 2:
        raise InputError(f"the shift grid {spec!r} names no shift")
    if len(set(scenarios)) != len(scenarios):
        raise InputError(f"the shift grid {spec!r} repeats a shift")
    return tuple(scenarios)


def parse_stages(spec: str) -> tuple[Stage, ...]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise InputError(f"--stages {spec!r} names no stage: choose among {', '.join(s.value for s in Stage)}")
    try:
        return tuple(Stage(n) for n in names)
    except ValueError:
        raise InputError(f"--stages {spec!r}: choose among {', '.join(s.value for s in Stage)}") from None


__all__ = [
    "AuditConfig",
    "ConceptsStage",
    "HallucinationStage",
    "InfluenceStage",
    "ModelKind",
    "Scenario",
    "ShiftStage",
    "Stage",
    "StageStatus",
    "SteeringStage",
    "parse_shift_grid",
    "parse_stages",
]
