"""Ground-truth checks of the procedural world: determinism, splits, pixels, captions, VQA, POPE, bias."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from mmlens.errors import InputError
from mmlens.world import (
    CAPTION_STYLES,
    PALETTE,
    Scene,
    World,
    WorldConfig,
)
from mmlens.world.core import NUMBER_WORDS, plural
from mmlens.world.render import object_box


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldConfig(), seed=0)


@pytest.fixture(scope="module")
def scenes(world: World) -> list[Scene]:
    return world.sample_scenes(300, split="train")


def test_determinism_and_prefix(world: World) -> None:
    a = world.sample_scenes(50, "val")
    b = World(WorldConfig(), seed=0).sample_scenes(80, "val")
    assert a == b[:50]
    assert [world.render(s).tobytes() for s in a[:5]] == [world.render(s).tobytes() for s in b[:5]]
    c = World(WorldConfig(), seed=1).sample_scenes(50, "val")
    assert [s.signature() for s in a] != [s.signature() for s in c]
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    assert [world.caption(s, rng1) for s in a] == [world.caption(s, rng2) for s in a]


def test_splits_disjoint(world: World) -> None:
    sigs = {s: {sc.signature() for sc in world.sample_scenes(300, s)} for s in ("train", "val", "test")}
    assert not sigs["train"] & sigs["val"]
    assert not sigs["train"] & sigs["test"]
    assert not sigs["val"] & sigs["test"]
    ids = [sc.scene_id for s in ("train", "val", "test") for sc in world.sample_scenes(20, s)]
    assert len(set(ids)) == len(ids)
    for sc in world.sample_scenes(20, "test"):
        assert world.split_of(sc) == "test"
    with pytest.raises(InputError):
        world.sample_scenes(1, "dev")


def test_scene_structure(scenes: list[Scene], world: World) -> None:
    cfg = world.cfg
    for sc in scenes:
        assert cfg.min_objects <= len(sc.objects) <= cfg.max_objects
        cells = [(o.row, o.col) for o in sc.objects]
        assert len(set(cells)) == len(cells)  # one object per cell: never overlapping
        assert sc.object_classes == frozenset(o.shape for o in sc.objects)
        assert Scene.from_dict(sc.to_dict()) == sc
    counts = Counter(len(sc.objects) for sc in scenes)
    assert set(counts) == set(range(cfg.min_objects, cfg.max_objects + 1))


def test_render_ground_truth_pixels(scenes: list[Scene], world: World) -> None:
    cfg = world.cfg
    cell = cfg.image_size // cfg.grid_size
    for sc in scenes[:60]:
        img = world.render(sc)
        assert img.mode == "RGB" and img.size == (cfg.image_size, cfg.image_size)
        arr = np.asarray(img).astype(int)
        bg = np.array(PALETTE[sc.background])
        for r in range(cfg.grid_size):
            for c in range(cfg.grid_size):
                patch = arr[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell].reshape(-1, 3)
                obj = sc.object_at(r, c)
                if obj is None:
                    assert np.abs(patch - bg).max() <= 1, "an empty cell must be pure background"
                    continue
                col = np.array(PALETTE[obj.colour])
                near = (np.abs(patch - col).max(axis=1) <= 30).sum()
                assert near >= 6, f"{obj} not visible in its cell"
                # other palette colours must not be present in this cell
                for name in cfg.colours:
                    if name != obj.colour:
                        assert (np.abs(patch - np.array(PALETTE[name])).max(axis=1) <= 10).sum() == 0
                cx, cy, _ = object_box(obj, cfg)
                if obj.shape != "ring":  # filled shapes cover their centre
                    assert np.abs(arr[int(cy), int(cx)] - col).max() <= 40


def test_sizes_differ_in_area(world: World) -> None:
    from mmlens.world import WorldObject

    areas = {}
    for size in ("small", "large"):
        sc = Scene("x", (WorldObject("square", "red", size, 0, 0),), "black")
        arr = np.asarray(world.render(sc)).astype(int)
        areas[size] = (np.abs(arr - np.array(PALETTE["red"])).max(axis=2) <= 60).sum()
    assert areas["large"] > 2 * areas["small"]


def test_captions(scenes: list[Scene], world: World) -> None:
    rng = np.random.default_rng(0)
    for sc in scenes[:100]:
        caps = world.captions(sc, rng)
        assert set(caps) == set(CAPTION_STYLES)
        for text in caps.values():
            assert text == text.lower() and "  " not in text
        # the objects caption mentions exactly the present classes, each colour with it
        assert world.mentioned_objects(caps["objects"]) == sc.object_classes
        for o in sc.objects:
            assert o.colour in caps["objects"] and o.colour in caps["colour"]
            assert f"{o.size} {o.colour} {o.shape} at the {o.position(sc.grid_size)}" in caps["detailed"]
        n = len(sc.objects)
        assert NUMBER_WORDS[n] in caps["count"]
        for text in caps.values():
            assert set(text.split()) <= set(world.vocabulary())
    with pytest.raises(InputError):
        world.caption(scenes[0], rng, style="poem")


def test_caption_example_format(world: World) -> None:
    from mmlens.world import WorldObject

    sc = Scene(
        "x",
        (
            WorldObject("circle", "red", "small", 0, 0),
            WorldObject("square", "blue", "large", 0, 1),
            WorldObject("square", "blue", "small", 1, 1),
        ),
        "black",
    )
    cap = world.caption(sc, np.random.default_rng(0), "objects")
    assert cap in ("a red circle and two blue squares", "two blue squares and a red circle")
    assert world.caption(sc, 0, "count") in (
        "there are three objects : a circle and two squares",
        "there are three objects : two squares and a circle",
    )


def test_vqa_answers_correct(scenes: list[Scene], world: World) -> None:
    rng = np.random.default_rng(1)
    yes_no = Counter()
    vocab = set(world.vocabulary())
    for sc in scenes:
        for q in world.vqa(sc, rng):
            assert q.answer_type in ("yes/no", "number", "other")
            assert q.question.endswith(" ?") and q.question == q.question.lower()
            assert set(q.question.split()) | set(q.answer.split()) <= vocab
            words = q.question.split()
            if q.template == "presence_shape":
                assert (q.answer == "yes") == (words[3] in sc.object_classes)
                yes_no[q.answer] += 1
            elif q.template == "presence_colour_shape":
                assert (q.answer == "yes") == sc.has(words[4].rstrip(), words[3])
                yes_no[q.answer] += 1
            elif q.template == "count_shape":
                shape = next(s for s in world.cfg.shapes if plural(s) == words[2])
                assert q.answer == NUMBER_WORDS[sc.count(shape)]
            elif q.template == "count_objects":
                assert q.answer == NUMBER_WORDS[len(sc.objects)]
            elif q.template == "colour_of_shape":
                shape = words[4]
                assert sc.count(shape) == 1
                assert q.answer == next(o.colour for o in sc.objects if o.shape == shape)
            elif q.template == "shape_of_colour":
                assert sc.count_colour(words[4]) == 1
                assert q.answer == next(o.shape for o in sc.objects if o.colour == words[4])
            elif q.template == "position":
                colour, shape = words[3], words[4]
                o = next(o for o in sc.objects if o.colour == colour and o.shape == shape)
                assert q.answer == o.position(sc.grid_size)
            elif q.template == "background":
                assert q.answer == sc.background
    total = sum(yes_no.values())
    assert abs(yes_no["yes"] / total - 0.5) < 0.08


def test_pope_probes(scenes: list[Scene], world: World) -> None:
    by_id = {sc.scene_id: sc for sc in scenes}
    for kind in ("random", "popular", "adversarial"):
        probes = world.pope_probes(scenes, kind=kind, per_image=3, rng=np.random.default_rng(0))
        labels = Counter(p.label for p in probes)
        assert labels["yes"] == labels["no"] > 0  # balanced, per image
        for p in probes:
            sc = by_id[p.scene_id]
            assert (p.label == "yes") == (p.object_class in sc.object_classes)
            assert p.question == f"is there a {p.object_class} in the image ?"
    adv = world.pope_probes(scenes, kind="adversarial", per_image=1, rng=0)
    checked = 0
    for sc in scenes:
        assert world.absent_partners(sc) == ({"star"} if sc.count("triangle") and not sc.count("star") else set())
        if sc.count("triangle") and not sc.count("star"):
            negs = [p.object_class for p in adv if p.scene_id == sc.scene_id and p.label == "no"]
            assert negs == ["star"]
            checked += 1
    assert checked > 5
    # popular negatives are the most frequent absent classes
    freq = Counter(c for sc in scenes for c in sc.object_classes)
    pop = world.pope_probes(scenes, kind="popular", per_image=1, rng=0)
    for p in pop:
        if p.label == "no":
            absent = [s for s in world.cfg.shapes if s not in by_id[p.scene_id].object_classes]
            assert freq[p.object_class] == max(freq[s] for s in absent)
    with pytest.raises(InputError):
        world.pope_probes(scenes, kind="weird")


@pytest.mark.parametrize("strength", [0.0, 0.5, 0.9])
def test_bias_cooccurrence_matches_parameter(strength: float) -> None:
    w = World(WorldConfig(bias_strength=strength), seed=2)
    scs = w.sample_scenes(1500, "train")
    with_anchor = [sc for sc in scs if sc.count("triangle")]
    rate = np.mean([bool(sc.count("star")) for sc in with_anchor])
    assert len(with_anchor) > 300
    assert abs(rate - strength) < 0.05
    # the partner still appears without its anchor, so it is a class of its own
    assert any(sc.count("star") and not sc.count("triangle") for sc in scs)


def test_caption_leak() -> None:
    w = World(WorldConfig(bias_strength=0.0, caption_leak=0.5), seed=0)
    scs = [sc for sc in w.sample_scenes(600, "train") if sc.count("triangle")]
    rng = np.random.default_rng(0)
    leaked = np.mean(["star" in w.mentioned_objects(w.caption(sc, rng, "objects")) for sc in scs])
    assert abs(leaked - 0.5) < 0.1
    w0 = World(WorldConfig(bias_strength=0.0, caption_leak=0.0), seed=0)
    assert not any("star" in w0.mentioned_objects(w0.caption(sc, rng)) for sc in scs)


def test_mentioned_objects(world: World) -> None:
    assert world.mentioned_objects("Two discs and a box, no crosses.") == {"circle", "square", "cross"}
    assert world.mentioned_objects("a donut next to a rhombus and stars") == {"ring", "diamond", "star"}
    assert world.mentioned_objects("nothing here") == set()


def test_config_validation() -> None:
    with pytest.raises(InputError):
        WorldConfig(grid_size=4)
    with pytest.raises(InputError):
        WorldConfig(max_objects=5)
    with pytest.raises(InputError):
        WorldConfig(bias_pairs=(("triangle", "hexagon"),))
    with pytest.raises(InputError):
        WorldConfig(bias_strength=1.5)
    cfg = WorldConfig(image_size=48, grid_size=3, max_objects=6)
    assert WorldConfig.from_dict(cfg.to_dict()) == cfg
    w = World(cfg, seed=0)
    sc = w.sample_scenes(3, "train")
    assert w.render(sc[0]).size == (48, 48)
    assert "center" in cfg.positions


def test_vocabulary_covers_corpus() -> None:
    from mmlens.world import ALL_COLOURS

    cfg = WorldConfig(image_size=48, grid_size=3, colours=ALL_COLOURS, caption_leak=0.5, max_objects=4)
    w = World(cfg, seed=1)
    tokens = set(" ".join(w.corpus(w.sample_scenes(300, "train"), rng=0)).split())
    assert tokens <= set(w.vocabulary())
    assert set(World().vocabulary()) <= set(World().vocabulary(include_synonyms=True))


def test_faint_objects_are_drawn_at_reduced_contrast_where_configured() -> None:
    """Weak visual evidence (``faint_*``): the chosen share of partner objects beside their anchor is drawn at
    ``faint_alpha`` contrast, everything else at full colour, and the choice is a function of the scene."""
    from dataclasses import replace

    from mmlens.world.render import is_faint

    base = WorldConfig(bias_pairs=(("triangle", "star"),), bias_strength=0.75)
    cfg = replace(base, faint_shapes=("star",), faint_fraction=0.5, faint_alpha=0.2, faint_beside_anchor=True)
    w, w0 = World(cfg, seed=0), World(base, seed=0)
    scenes = w.sample_scenes(400, "train")
    stars_beside = [(o, s) for s in scenes for o in s.objects if o.shape == "star" and "triangle" in s.object_classes]
    stars_alone = [
        (o, s) for s in scenes for o in s.objects if o.shape == "star" and "triangle" not in s.object_classes
    ]
    assert stars_beside and stars_alone
    share = np.mean([is_faint(o, s, cfg) for o, s in stars_beside])
    assert 0.35 < share < 0.65
    assert not any(is_faint(o, s, cfg) for o, s in stars_alone)  # no anchor: always clear
    assert not any(is_faint(o, s, cfg) for s in scenes for o in s.objects if o.shape != "star")
    n_faint = 0
    for o, s in stars_beside[:40]:
        arr, arr0 = np.asarray(w.render(s)).astype(int), np.asarray(w0.render(s)).astype(int)
        cx, cy, _ = object_box(o, cfg)
        bg, col = np.array(PALETTE[s.background]), np.array(PALETTE[o.colour])
        want = np.round(0.2 * col + 0.8 * bg) if is_faint(o, s, cfg) else col
        assert np.abs(arr[int(cy), int(cx)] - want).max() <= 12
        n_faint += is_faint(o, s, cfg)
        others = [p for p in s.objects if p is not o and not is_faint(p, s, cfg)]
        for p in others:  # the rest of the scene renders exactly as without the option
            px, py, _ = object_box(p, cfg)
            assert (arr[int(py), int(px)] == arr0[int(py), int(px)]).all()
    assert n_faint > 0
    assert (np.asarray(w.render(scenes[0])) == np.asarray(w.render(scenes[0]))).all()
    assert WorldConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError):
        WorldConfig(faint_shapes=("hexagon",))
    with pytest.raises(InputError):
        WorldConfig(faint_fraction=1.5)


def test_hidden_partners_render_as_if_absent() -> None:
    """At contrast 0 (`PRIOR_HIDDEN_WORLD`) a hidden partner leaves no trace: the image is the scene's without it."""
    from mmlens.world.render import is_faint
    from mmlens.zoo.mini_llava import PRIOR_HIDDEN_WORLD

    w = World(PRIOR_HIDDEN_WORLD, seed=0)
    n = 0
    for s in w.sample_scenes(300, "train"):
        hidden = [o for o in s.objects if is_faint(o, s, w.cfg)]
        if not hidden:
            continue
        without = Scene(s.scene_id, tuple(o for o in s.objects if o not in hidden), s.background)
        assert (np.asarray(w.render(s)) == np.asarray(w.render(without))).all()
        n += 1
    assert n > 5
