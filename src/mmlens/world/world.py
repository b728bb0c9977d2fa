"""The seeded world: scene sampling, captions, VQA, POPE probes and parsing of generated text.

Determinism: scene ``i`` of split ``s`` is drawn from its own generator seeded by ``(seed, split, i)``, so
``sample_scenes(n)`` is a prefix of ``sample_scenes(m)`` for ``n < m`` and no global random state is touched.
Split disjointness: the discrete content of a scene (background and, per object, cell, shape, colour, size) is hashed
to a number in [0, 1); a split only accepts scenes whose hash falls in its share, so train/val/test never contain
the same content (not only different ids).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

from mmlens.errors import InputError
from mmlens.world.core import (
    NUMBER_WORDS,
    SHAPE_SYNONYMS,
    SIZES,
    SPLITS,
    PopeProbe,
    Scene,
    VQAItem,
    WorldConfig,
    WorldObject,
    article,
    number_word,
    plural,
)
from mmlens.world.render import render_scene

CAPTION_STYLES: tuple[str, ...] = ("objects", "count", "detailed", "colour")
POPE_KINDS: tuple[str, ...] = ("random", "popular", "adversarial")
_SPLIT_CODE = {s: i + 1 for i, s in enumerate(SPLITS)}


def _content_hash(signature: str) -> float:
    h = hashlib.blake2b(signature.encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def _join(phrases: Sequence[str]) -> str:
    """'a', 'a and b', 'a , b and c' (punctuation as separate tokens)."""
    if len(phrases) <= 1:
        return "".join(phrases)
    return " , ".join(phrases[:-1]) + " and " + phrases[-1]


def pope_question(cls: str) -> str:
    return f"is there {article(cls)} {cls} in the image ?"


class World:
    """A procedural multimodal world with exact ground truth. Stateless apart from its config and seed."""

    def __init__(self, cfg: WorldConfig | None = None, seed: int = 0) -> None:
        self.cfg = cfg if cfg is not None else WorldConfig()
        self.seed = int(seed)
        # word -> canonical shape, for parsing generated text (singulars, plurals and synonyms).
        lex: dict[str, str] = {}
        for shape in self.cfg.shapes:
            for w in (shape, *SHAPE_SYNONYMS.get(shape, ())):
                lex[w] = shape
                lex[plural(w)] = shape
        self._lexicon = lex

    def __repr__(self) -> str:
        return f"World(seed={self.seed}, cfg={self.cfg!r})"

    # ------------------------------------------------------------------ sampling
    def _split_range(self, split: str) -> tuple[float, float]:
        f = np.asarray(self.cfg.split_fractions, dtype=float)
        edges = np.concatenate([[0.0], np.cumsum(f / f.sum())])
        i = SPLITS.index(split)
        return float(edges[i]), float(edges[i + 1])

    def split_of(self, scene: Scene) -> str:
        """Which split's share of content space a scene belongs to."""
        h = _content_hash(scene.signature())
        for s in SPLITS:
            lo, hi = self._split_range(s)
            if lo <= h < hi:
                return s
        return SPLITS[-1]

    def _draw_objects(self, rng: np.random.Generator) -> list[WorldObject]:
        cfg = self.cfg
        n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        classes = [str(c) for c in rng.choice(cfg.shapes, size=n)]
        protected: set[str] = set()
        neutral = [s for s in cfg.shapes if all(s not in p for p in cfg.bias_pairs)]
        # Impose P(partner present | anchor present) = bias_strength exactly, without removing the anchor.
        for anchor, partner in cfg.bias_pairs:
            if anchor in classes:
                want = rng.random() < cfg.bias_strength
                if want and partner not in classes:
                    victims = [i for i, c in enumerate(classes) if c != anchor and c not in protected]
                    if victims:
                        classes[int(rng.choice(victims))] = partner
                    elif len(classes) < cfg.max_objects:
                        classes.append(partner)
                    else:  # every object is a (protected or anchor) class: replace a duplicate anchor
                        dup = [i for i, c in enumerate(classes) if c == anchor]
                        classes[dup[-1]] = partner
                elif not want and partner in classes:
                    classes = [str(rng.choice(neutral)) if c == partner else c for c in classes]
            protected |= {anchor, partner}
        cells = rng.permutation(cfg.grid_size**2)[: len(classes)]
        objs = []
        for c, cell in zip(classes, cells):
            objs.append(
                WorldObject(
                    shape=c,
                    colour=str(rng.choice(cfg.colours)),
                    size=str(rng.choice(SIZES)),
                    row=int(cell) // cfg.grid_size,
                    col=int(cell) % cfg.grid_size,
                    dx=round(float(rng.uniform(-1, 1)), 4),
                    dy=round(float(rng.uniform(-1, 1)), 4),
                )
            )
        objs.sort(key=lambda o: (o.row, o.col))  # reading order: a canonical order for captions and dicts
        return objs

    def sample_scene(self, index: int, split: str = "train") -> Scene:
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}; use one of {SPLITS}")
        rng = np.random.default_rng([self.seed, _SPLIT_CODE[split], int(index)])
        lo, hi = self._split_range(split)
        for _ in range(10_000):
            objs = self._draw_objects(rng)
            bg = str(rng.choice(self.cfg.backgrounds))
            scene = Scene(
                scene_id=f"{split}-{self.seed}-{index}",
                objects=tuple(objs),
                background=bg,
                grid_size=self.cfg.grid_size,
                split=split,
            )
            if lo <= _content_hash(scene.signature()) < hi:
                return scene
        raise RuntimeError("could not sample a scene for this split; split_fractions too small")  # pragma: no cover

    def sample_scenes(self, n: int, split: str = "train", start: int = 0) -> list[Scene]:
        """``n`` scenes, deterministic given (seed, split, start + i)."""
        if n < 0:
            raise InputError(f"n={n} must be >= 0")
        return [self.sample_scene(start + i, split) for i in range(n)]

    # ------------------------------------------------------------------ rendering
    def render(self, scene: Scene) -> Image.Image:
        return render_scene(scene, self.cfg)

    # ------------------------------------------------------------------ language
    @staticmethod
    def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
        if isinstance(rng, np.random.Generator):
            return rng
        return np.random.default_rng(rng)

    def _leaky_objects(self, scene: Scene, rng: np.random.Generator) -> list[WorldObject]:
        """Objects a caption describes: the true ones, plus with prob caption_leak an absent bias partner."""
        objs = list(scene.objects)
        if self.cfg.caption_leak <= 0:
            return objs
        for anchor, partner in self.cfg.bias_pairs:
            if scene.count(anchor) and not scene.count(partner) and rng.random() < self.cfg.caption_leak:
                used = {(o.row, o.col) for o in objs}
                free = [
                    (r, c) for r in range(self.cfg.grid_size) for c in range(self.cfg.grid_size) if (r, c) not in used
                ]
                r, c = free[int(rng.integers(len(free)))] if free else (objs[0].row, objs[0].col)
                objs.append(WorldObject(partner, str(rng.choice(self.cfg.colours)), str(rng.choice(SIZES)), r, c))
        return objs

    def caption(self, scene: Scene, rng: np.random.Generator | int | None = None, style: str = "objects") -> str:
        """A caption of the scene (lower case, punctuation as separate tokens).

        styles: ``objects`` "a red circle and two blue squares"; ``count`` "there are three objects : two squares
        and a circle"; ``detailed`` "a large red circle at the top left and a small blue square at the bottom right
        on a black background"; ``colour`` "a red object and two blue objects on a black background".
        """
        rng = self._rng(rng)
        objs = self._leaky_objects(scene, rng)
        g = self.cfg.grid_size
        if style == "objects":
            groups = Counter((o.colour, o.shape) for o in objs)
            keys = list(groups)
            order = rng.permutation(len(keys))
            phrases = [self._np(groups[keys[i]], f"{keys[i][0]}", keys[i][1]) for i in order]
            return _join(phrases)
        if style == "count":
            shapes = Counter(o.shape for o in objs)
            shape_keys = list(shapes)
            order = rng.permutation(len(shape_keys))
            phrases = [self._np(shapes[shape_keys[i]], "", shape_keys[i]) for i in order]
            n = len(objs)
            head = "there is one object" if n == 1 else f"there are {number_word(n)} objects"
            return f"{head} : {_join(phrases)}"
        if style == "detailed":
            ordered = sorted(objs, key=lambda o: (o.row, o.col))
            phrases = [f"a {o.size} {o.colour} {o.shape} at the {o.position(g)}" for o in ordered]
            return f"{_join(phrases)} on {article(scene.background)} {scene.background} background"
        if style == "colour":
            colours = Counter(o.colour for o in objs)
            colour_keys = list(colours)
            order = rng.permutation(len(colour_keys))
            phrases = [self._np(colours[colour_keys[i]], colour_keys[i], "object") for i in order]
            return f"{_join(phrases)} on {article(scene.background)} {scene.background} background"
        raise InputError(f"unknown caption style {style!r}; use one of {CAPTION_STYLES}")

    @staticmethod
    def _np(n: int, adj: str, noun: str) -> str:
        words = " ".join(w for w in (adj, noun if n == 1 else plural(noun)) if w)
        return f"{article(words)} {words}" if n == 1 else f"{number_word(n)} {words}"

    def captions(self, scene: Scene, rng: np.random.Generator | int | None = None) -> dict[str, str]:
        rng = self._rng(rng)
        return {s: self.caption(scene, rng, style=s) for s in CAPTION_STYLES}

    def vqa(self, scene: Scene, rng: np.random.Generator | int | None = None) -> list[VQAItem]:
        """One question per applicable template; yes/no answers are yes with probability 1/2."""
        rng = self._rng(rng)
        cfg = self.cfg
        present = sorted(scene.object_classes)
        absent = [s for s in cfg.shapes if s not in scene.object_classes]
        items: list[VQAItem] = []

        # presence of a shape
        if (rng.random() < 0.5 and present) or not absent:
            s, ans = str(rng.choice(present)), "yes"
        else:
            s, ans = str(rng.choice(absent)), "no"
        items.append(VQAItem(f"is there {article(s)} {s} in the image ?", ans, "yes/no", "presence_shape"))

        # presence of colour + shape; half of the negatives keep a present shape with a wrong colour (harder)
        if rng.random() < 0.5:
            o = scene.objects[int(rng.integers(len(scene.objects)))]
            c, s, ans = o.colour, o.shape, "yes"
        else:
            combos = [(c, s) for c in cfg.colours for s in cfg.shapes if not scene.has(s, c)]
            hard = [(c, s) for (c, s) in combos if s in scene.object_classes]
            pool = hard if (hard and rng.random() < 0.5) else combos
            c, s = pool[int(rng.integers(len(pool)))]
            ans = "no"
        items.append(VQAItem(f"is there {article(c)} {c} {s} ?", ans, "yes/no", "presence_colour_shape"))

        # counting a shape: a present shape half of the time, else any shape (often zero)
        s = str(rng.choice(present)) if rng.random() < 0.5 else str(rng.choice(cfg.shapes))
        items.append(VQAItem(f"how many {plural(s)} are there ?", number_word(scene.count(s)), "number", "count_shape"))
        items.append(
            VQAItem("how many objects are there ?", number_word(len(scene.objects)), "number", "count_objects")
        )

        # "other" questions, asked only when the referent is unique (unambiguous)
        unique_shapes = [s for s in present if scene.count(s) == 1]
        if unique_shapes:
            s = str(rng.choice(unique_shapes))
            colour = next(o.colour for o in scene.objects if o.shape == s)
            items.append(VQAItem(f"what colour is the {s} ?", colour, "other", "colour_of_shape"))
        unique_colours = sorted(c for c in scene.colours if scene.count_colour(c) == 1)
        if unique_colours:
            c = str(rng.choice(unique_colours))
            shape = next(o.shape for o in scene.objects if o.colour == c)
            items.append(VQAItem(f"what shape is the {c} object ?", shape, "other", "shape_of_colour"))
        uniq = [
            o for o in scene.objects if sum(p.shape == o.shape and p.colour == o.colour for p in scene.objects) == 1
        ]
        if uniq and cfg.grid_size > 1:
            o = uniq[int(rng.integers(len(uniq)))]
            items.append(
                VQAItem(f"where is the {o.colour} {o.shape} ?", o.position(cfg.grid_size), "other", "position")
            )
        items.append(VQAItem("what colour is the background ?", scene.background, "other", "background"))
        return items

    # ------------------------------------------------------------------ POPE and CHAIR helpers
    def absent_partners(self, scene: Scene) -> set[str]:
        """Bias partners missing from ``scene`` although their anchor is in it: where the language prior and the
        image disagree (the adversarial POPE negatives that probe the bias)."""
        present = scene.object_classes
        return {partner for anchor, partner in self.cfg.bias_pairs if anchor in present and partner not in present}

    def pope_probes(
        self,
        scenes: Sequence[Scene],
        kind: str = "random",
        per_image: int = 3,
        rng: np.random.Generator | int | None = None,
    ) -> list[PopeProbe]:
        """POPE probes (Li et al. 2023): per image, up to ``per_image`` present classes ("yes") and as many absent
        ones ("no"), so labels are balanced. Negatives: ``random`` uniform among absent classes; ``popular`` the
        most frequent classes over ``scenes``; ``adversarial`` the bias partners of present anchors first, then the
        classes that co-occur most with the present ones over ``scenes``. Ties are broken at random by ``rng``.
        """
        if kind not in POPE_KINDS:
            raise InputError(f"unknown POPE kind {kind!r}; use one of {POPE_KINDS}")
        if per_image < 1:
            raise InputError(f"per_image={per_image} must be >= 1")
        rng = self._rng(rng)
        shapes = list(self.cfg.shapes)
        freq = Counter(c for sc in scenes for c in sc.object_classes)
        cooc: Counter[tuple[str, str]] = Counter()
        for sc in scenes:
            for a in sc.object_classes:
                for b in sc.object_classes:
                    if a != b:
                        cooc[(a, b)] += 1
        out: list[PopeProbe] = []
        for sc in scenes:
            present = sorted(sc.object_classes)
            absent = [s for s in shapes if s not in sc.object_classes]
            k = min(per_image, len(present), len(absent))
            pos = [present[i] for i in rng.permutation(len(present))[:k]]
            noise = rng.random(len(absent))  # random tie-break
            if kind == "random":
                neg = [absent[i] for i in rng.permutation(len(absent))[:k]]
            elif kind == "popular":
                neg = [absent[i] for i in sorted(range(len(absent)), key=lambda i: (-freq[absent[i]], noise[i]))][:k]
            else:
                partners = self.absent_partners(sc)
                score = [sum(cooc[(p, a)] for p in present) for a in absent]
                neg = [
                    absent[i]
                    for i in sorted(range(len(absent)), key=lambda i: (absent[i] not in partners, -score[i], noise[i]))
                ][:k]
            pairs = [(c, "yes") for c in pos] + [(c, "no") for c in neg]
            for i in rng.permutation(len(pairs)):
                c, lab = pairs[i]
                out.append(PopeProbe(sc.scene_id, c, pope_question(c), lab, kind))
        return out

    def mentioned_objects(self, text: str) -> set[str]:
        """Canonical classes a text mentions (singular, plural or synonym), e.g. 'two discs and a box' ->
        {'circle', 'square'}. Used for CHAIR (mentioned - present) and recall (mentioned & present)."""
        return {self._lexicon[w] for w in re.findall(r"[a-z]+", text.lower()) if w in self._lexicon}

    # ------------------------------------------------------------------ vocabulary
    def vocabulary(self, include_synonyms: bool = False) -> list[str]:
        """Every word captions, questions and answers can contain (sorted); punctuation tokens ',', ':', '?' too.
        With ``include_synonyms`` also the words text shifts and :meth:`mentioned_objects` know."""
        cfg = self.cfg
        words = {
            ",",
            ":",
            "?",
            "a",
            "an",
            "and",
            "on",
            "background",
            "there",
            "is",
            "are",
            "object",
            "objects",
            "at",
            "the",
            "in",
            "image",
            "how",
            "many",
            "what",
            "colour",
            "shape",
            "where",
            "yes",
            "no",
        }
        # a leaked caption can mention one phantom partner per bias pair on top of max_objects
        n_max = cfg.max_objects + (len(cfg.bias_pairs) if cfg.caption_leak > 0 else 0)
        words |= set(NUMBER_WORDS[: n_max + 1]) | set(SIZES) | set(cfg.colours) | set(cfg.backgrounds)
        for s in cfg.shapes:
            words |= {s, plural(s)}
        for p in cfg.positions:
            words |= set(p.split())
        if include_synonyms:
            from mmlens.world.corruptions import text_corruption_vocabulary

            words |= set(self._lexicon) | text_corruption_vocabulary()
        return sorted(words)

    def corpus(self, scenes: Iterable[Scene], rng: np.random.Generator | int | None = None) -> list[str]:
        """All captions (every style) and VQA questions/answers of ``scenes``: text to train a tokenizer on."""
        rng = self._rng(rng)
        out: list[str] = []
        for sc in scenes:
            out.extend(self.captions(sc, rng).values())
            for q in self.vqa(sc, rng):
                out.extend((q.question, q.answer))
        return out
