"""``mini-llava``: a tiny LLaVA (CLIP vision tower from mini-clip, MLP projector, Llama decoder) on the world.

Recipe (LLaVA's): the vision tower starts from ``mini-clip``'s contrastively pretrained vision model; the projector
and decoder are trained from scratch on a mix of VQA and captioning turns in the chat format of
:class:`mmlens.models.generative.VisionLanguageModel` (``<s>user : <image> QUESTION assistant : ANSWER </s>``),
with the loss on the answer only. The world's co-occurrence bias (``WorldConfig.bias_pairs``) is on, so POPE
adversarial probes (absent bias partners of present anchors) are harder than random ones.

Evaluation: batched greedy generation through ``VisionLanguageModel.generate`` and exact match of the normalised
answer (lower case, whitespace collapsed, trailing punctuation dropped) on held-out test-split scenes.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    CLIPModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from mmlens.io import write_json_atomic
from mmlens.models.generative import VisionLanguageModel
from mmlens.models.tokenizers import make_llava_processor, train_word_tokenizer
from mmlens.world import World, WorldConfig
from mmlens.zoo.common import (
    METRICS_FILE,
    config_from_dict,
    cosine_lr,
    load_pretrained,
    make_record,
    pixel_tensor,
    read_record,
    seed_everything,
    set_threads,
)

CAPTION_PROMPT = "describe the image ."
IGNORE = -100


@dataclass(frozen=True)
class MiniLlavaConfig:
    """Recipe of ``mini-llava`` (defaults = the zoo's measured recipe)."""

    seed: int = 0
    world_seed: int = 0  # scenes come from the same world as mini-clip's (train split)
    world: WorldConfig = field(default_factory=WorldConfig)
    n_train_scenes: int = 20000
    vqa_draws: int = 2  # independent VQA draws per training scene
    caption_style: str = "objects"
    caption_fraction: float = 0.15  # share of caption turns in the training mix
    # model
    vision_feature_layer: int = -2
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    freeze_vision: bool = False
    # optimisation
    steps: int = 1800
    batch_size: int = 64
    lr: float = 1e-3
    vision_lr: float = 2e-4
    weight_decay: float = 0.01
    warmup: int = 100
    threads: int = 2
    # Focused second phase (0 = off): after the main run, `focus_steps` more steps at `focus_batch_size` where the
    # questions that name a shape and ask whether / how many (`focus_templates`) are drawn `focus_weight` times as
    # often, captions `focus_caption_fraction`. From scratch the same weighting does not start these skills; after
    # the main run it lifts presence questions from 0.55 to 0.96 in 800 steps (docs/zoo.md). Shortening either
    # phase (1,500 + 700 steps) cost presence 0.25 and POPE 0.1 (measured), so the zoo pays ~+280 s for it.
    focus_steps: int = 800
    focus_batch_size: int = 128
    focus_weight: float = 4.0
    focus_templates: tuple[str, ...] = ("presence_shape", "presence_colour_shape", "count_shape")
    focus_caption_fraction: float = 0.1
    focus_warmup: int = 30
    # Language prior (issue 14), off at text_steps = align_steps = 0. Phase 0: the decoder is pretrained text-only
    # on a corpus of world text in which co-occurrence is strong: scenes of a text world where each anchor's partner
    # is present with `text_bias_strength`, captions that mention an absent partner beside its anchor with
    # `text_caption_leak`, and chats in the instruction format whose image slot holds a written description that
    # leaves a present partner unsaid beside its anchor with `text_omit_partner` (obvious things go unsaid), asked
    # presence questions answered by the text world's truth or "describe the image ." answered by a leaky caption;
    # other questions of every VQA template come with a complete description (a chat LM that reads a scene).
    # Phase 1 (LLaVA's stage 1): only the projector is trained, on image captions, decoder and vision frozen. Then
    # the instruction tuning above, whose caption turns mention an absent partner with `sft_caption_leak`.
    text_steps: int = 0
    text_batch_size: int = 128
    text_lr: float = 1e-3
    text_warmup: int = 50
    text_n_scenes: int = 20000
    text_bias_strength: float = 0.97
    text_caption_leak: float = 0.5
    text_omit_partner: float = 0.5
    text_chat_fraction: float = 0.5  # the rest is plain captions (all styles)
    align_steps: int = 0
    align_lr: float = 1e-3
    sft_caption_leak: float = 0.0
    # evaluation (test split, disjoint from training content)
    n_eval_scenes: int = 150
    n_pope_scenes: int = 300
    pope_per_image: int = 3
    n_prior_scenes: int = 150  # anchor-without-partner test scenes of the prior diagnostics (0 = skip them)
    eval_batch_size: int = 100


#: The world of the language-prior recipe: three anchor -> partner pairs (cross stays neutral), images at 0.75.
PRIOR_WORLD = WorldConfig(
    bias_pairs=(("triangle", "star"), ("circle", "ring"), ("square", "diamond")), bias_strength=0.75
)


#: PRIOR_WORLD where half of the partners that stand beside their anchor are drawn faint (contrast 0.2): weak visual
#: evidence exactly where the co-occurrence prior acts; every other object is drawn as usual.
PRIOR_FAINT_WORLD = replace(
    PRIOR_WORLD,
    faint_shapes=tuple(p for _, p in PRIOR_WORLD.bias_pairs),
    faint_fraction=0.5,
    faint_alpha=0.2,
    faint_beside_anchor=True,
)


#: PRIOR_FAINT_WORLD with the faint partners invisible (contrast 0): where the eye has no evidence at all. A
#: 400-step continuation of a PRIOR_FAINT_WORLD build on it carried the prior (docs/zoo.md, run G1); not yet built
#: from scratch.
PRIOR_HIDDEN_WORLD = replace(PRIOR_FAINT_WORLD, faint_alpha=0.0)


def normalise(text: str) -> str:
    text = text.lower().strip()
    text = re.sub(r"[\s]+", " ", text)
    return re.sub(r"[\s.?!,]+$", "", text)


def build_world(cfg: MiniLlavaConfig) -> World:
    return World(cfg.world, seed=cfg.world_seed)


def make_tokenizer(world: World, scenes, extra_words: tuple[str, ...] = ()):
    corpus = [*world.corpus(scenes[:2000], 0), " ".join(world.vocabulary()), CAPTION_PROMPT]
    if extra_words:
        corpus.append(" ".join(extra_words))
    return train_word_tokenizer(corpus)


def text_world(cfg: MiniLlavaConfig, *, caption_leak: float | None = None, seed_offset: int = 1000) -> World:
    """The world whose text the decoder is pretrained on: the image world with the text corpus's co-occurrence."""
    wcfg = replace(
        cfg.world,
        bias_strength=cfg.text_bias_strength,
        caption_leak=cfg.text_caption_leak if caption_leak is None else caption_leak,
    )
    return World(wcfg, seed=cfg.world_seed + seed_offset)


def _description(world: World, scene, rng: np.random.Generator, omit_partner: float) -> str:
    """A written account of ``scene`` ("a large red triangle at the top left , ... on a black background") that
    leaves out each present partner beside its anchor with probability ``omit_partner``."""
    partners = {p for a, p in world.cfg.bias_pairs if scene.count(a)}
    keep = [o for o in scene.objects if o.shape not in partners or rng.random() >= omit_partner]
    g = world.cfg.grid_size
    phrases = [f"a {o.size} {o.colour} {o.shape} at the {o.position(g)}" for o in keep]
    body = " , ".join(phrases[:-1]) + (" and " if len(phrases) > 1 else "") + (phrases[-1] if phrases else "")
    return f"{body} on {'an' if scene.background[0] in 'aeiou' else 'a'} {scene.background} background".strip()


def text_corpus(cfg: MiniLlavaConfig, vlm: VisionLanguageModel, n_scenes: int) -> list[list[int]]:
    """Token ids of the text-only pretraining corpus (see ``MiniLlavaConfig.text_*``), one sequence per scene."""
    tw = text_world(cfg)
    rng = np.random.default_rng(cfg.seed + 7)
    qmark, amark = "\x00Q\x00", "\x00A\x00"
    chat = vlm.chat_text(1, qmark, amark)
    image_token = vlm.processor.image_token
    texts = []
    for sc in tw.sample_scenes(n_scenes, "train"):
        if rng.random() >= cfg.text_chat_fraction:
            style = ("objects", "count", "detailed")[int(rng.integers(3))]
            texts.append(f"<s> {tw.caption(sc, rng, style=style)} </s>")
            continue
        u = rng.random()
        if u < 0.25:  # describe: a leaky caption from a description that may leave the partner unsaid
            desc = _description(tw, sc, rng, cfg.text_omit_partner)
            q, a = CAPTION_PROMPT, tw.caption(sc, rng, style=cfg.caption_style)
        elif u < 0.6:  # is there a SHAPE: the text world's truth, from a description that may leave it unsaid
            desc = _description(tw, sc, rng, cfg.text_omit_partner)
            item = tw.vqa(sc, rng)[0]
            q, a = item.question, item.answer
        else:  # any other question, from a complete description
            desc = _description(tw, sc, rng, 0.0)
            items = tw.vqa(sc, rng)[1:]
            item = items[int(rng.integers(len(items)))]
            q, a = item.question, item.answer
        texts.append(chat.replace(image_token, desc).replace(qmark, q).replace(amark, a))
    return vlm.tokenizer(texts, add_special_tokens=False)["input_ids"]


def pretrain_text(
    model: LlavaForConditionalGeneration, seqs: list[list[int]], pad_id: int, cfg: MiniLlavaConfig, progress=None
) -> list[float]:
    """Next-token loss on every token of the text-only corpus; only the decoder (embeddings, layers, head)."""
    lm = model.model.language_model
    params = [*lm.parameters(), *model.lm_head.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.text_lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed + 5)
    losses: list[float] = []
    model.train()
    for step in range(cfg.text_steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.text_steps, cfg.text_warmup, cfg.text_lr)
        rows = rng.choice(len(seqs), size=min(cfg.text_batch_size, len(seqs)), replace=False)
        L = max(len(seqs[r]) for r in rows)
        ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), L), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, L - len(seqs[r]) :] = torch.tensor(seqs[r])
            mask[i, L - len(seqs[r]) :] = 1
        labels = ids.masked_fill(mask == 0, IGNORE)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(out.loss.item())
        if progress is not None:
            progress(step, losses[-1])
    model.eval()
    return losses


def make_model(cfg: MiniLlavaConfig, clip: CLIPModel, tok, image_token_id: int) -> LlavaForConditionalGeneration:
    vcfg = clip.config.vision_config.to_dict()
    vcfg["model_type"] = "clip_vision_model"
    n_tokens = (vcfg["image_size"] // vcfg["patch_size"]) ** 2
    text = dict(
        model_type="llama",
        vocab_size=len(tok),
        hidden_size=cfg.text_hidden,
        intermediate_size=2 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_heads,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vcfg,
        text_config=text,
        image_token_id=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=cfg.vision_feature_layer,
        image_seq_length=n_tokens,
        projector_hidden_act="gelu",
        pad_token_id=tok.pad_token_id,
    )
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model


class _Examples:
    """Pre-tokenised chat turns (image placeholder kept as one token, expanded per batch) with answer masks."""

    def __init__(self, vlm: VisionLanguageModel, n_image_tokens: int):
        self.vlm = vlm
        self.tok = vlm.tokenizer
        self.image_id = vlm.image_token_id
        self.n_img = n_image_tokens
        self.scene: list[int] = []
        self.weights: np.ndarray | None = None  # sampling weights of the turns, set by the builder
        self.templates: list[str | None] = []  # VQA template of each turn; None for captions
        self.ids: list[list[int]] = []
        self.n_answer: list[int] = []

    def add_many(self, scene_indices, prompts, answers) -> None:
        """Add turns; the chat text is the adapter's own template (rendered once with placeholders)."""
        qmark, amark = "\x00Q\x00", "\x00A\x00"
        full_t = self.vlm.chat_text(1, qmark, amark)
        prefix_t = self.vlm.chat_text(1, qmark, None)
        fulls = [full_t.replace(qmark, q).replace(amark, a) for q, a in zip(prompts, answers)]
        prefixes = [prefix_t.replace(qmark, q) for q in prompts]
        ids = self.tok(fulls, add_special_tokens=False)["input_ids"]
        pre = self.tok(prefixes, add_special_tokens=False)["input_ids"]
        self.scene.extend(int(i) for i in scene_indices)
        self.ids.extend(ids)
        self.n_answer.extend(len(f) - len(p) for f, p in zip(ids, pre))

    def batch(self, rows: np.ndarray, pad_id: int) -> dict:
        seqs, answer_lens = [], []
        for r in rows:
            ids = self.ids[r]
            k = ids.index(self.image_id)
            seqs.append(ids[:k] + [self.image_id] * self.n_img + ids[k + 1 :])
            answer_lens.append(self.n_answer[r])
        L = max(map(len, seqs))
        input_ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.long)
        labels = torch.full((len(seqs), L), IGNORE, dtype=torch.long)
        for i, (s, a) in enumerate(zip(seqs, answer_lens)):  # left padding, like VisionLanguageModel.prepare
            input_ids[i, L - len(s) :] = torch.tensor(s)
            mask[i, L - len(s) :] = 1
            labels[i, L - a :] = torch.tensor(s[len(s) - a :])
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _param_groups(model: LlavaForConditionalGeneration, cfg: MiniLlavaConfig):
    vision = [p for p in model.model.vision_tower.parameters() if p.requires_grad]
    vis_ids = {id(p) for p in vision}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in vis_ids]
    groups = [{"params": rest, "lr": cfg.lr, "base_lr": cfg.lr}]
    if vision and not cfg.freeze_vision:
        groups.append({"params": vision, "lr": cfg.vision_lr, "base_lr": cfg.vision_lr})
    return groups


def train_llava(
    model,
    vlm,
    examples: _Examples,
    pixel_values: torch.Tensor,
    cfg,
    *,
    steps: int,
    lr_scale=1.0,
    on_step=None,
    progress=None,
) -> list[float]:
    """Answer-only next-token loss; cosine LR with warmup; optional frozen vision tower."""
    if getattr(cfg, "freeze_vision", False):
        for p in model.model.vision_tower.parameters():
            p.requires_grad_(False)
    opt = torch.optim.AdamW(_param_groups(model, cfg), weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    weights = getattr(examples, "weights", None)
    n = len(examples.ids)
    pad = vlm.tokenizer.pad_token_id
    scene_idx = np.asarray(examples.scene)
    losses: list[float] = []
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, cfg.warmup, g["base_lr"] * lr_scale)
        rows = rng.choice(n, size=min(cfg.batch_size, n), replace=False, p=weights)
        b = examples.batch(rows, pad)
        out = model(pixel_values=pixel_values[scene_idx[rows]], **b)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(out.loss.item())
        if progress is not None:
            progress(step, losses[-1])
        if on_step is not None:
            model.eval()
            on_step(step + 1)
            model.train()
    model.eval()
    return losses


def align_projector(
    model, vlm, captions: _Examples, pixel_values: torch.Tensor, cfg: MiniLlavaConfig, *, progress=None
) -> list[float]:
    """LLaVA's stage 1: ``align_steps`` steps on caption turns that train the projector alone (vision tower and
    decoder frozen, so the decoder's text prior is untouched); every parameter is trainable again afterwards."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.model.multi_modal_projector.parameters():
        p.requires_grad_(True)
    try:
        return train_llava(
            model,
            vlm,
            captions,
            pixel_values,
            replace(cfg, lr=cfg.align_lr, seed=cfg.seed + 3),
            steps=cfg.align_steps,
            progress=progress,
        )
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def training_examples(
    world: World,
    scenes,
    vlm: VisionLanguageModel,
    n_img: int,
    cfg: MiniLlavaConfig | Any,  # any recipe config with seed, vqa_draws, caption_style, sft_caption_leak
    *,
    caption_fraction: float | None = None,
    template_weights: dict[str, float] | None = None,
) -> _Examples:
    """VQA and caption turns of ``scenes``; sampling weights give captions ``caption_fraction`` (default the
    config's) of the mass and each VQA template its relative ``template_weights`` (default 1)."""
    rng = np.random.default_rng(cfg.seed + 1)
    ex = _Examples(vlm, n_img)
    idx, qs, ans, vqa_weight, templates = [], [], [], [], []
    for i, sc in enumerate(scenes):
        for _ in range(cfg.vqa_draws):
            for item in world.vqa(sc, rng):
                idx.append(i)
                qs.append(item.question)
                ans.append(item.answer)
                vqa_weight.append((template_weights or {}).get(item.template, 1.0))
                templates.append(item.template)
    n_vqa = len(qs)
    cap_world = World(replace(world.cfg, caption_leak=cfg.sft_caption_leak), seed=world.seed)
    for i, sc in enumerate(scenes):
        idx.append(i)
        qs.append(CAPTION_PROMPT)
        ans.append(cap_world.caption(sc, rng, style=cfg.caption_style))
    n_cap = len(qs) - n_vqa
    ex.add_many(idx, qs, ans)
    ex.templates = templates + [None] * n_cap
    # sampling weights: caption turns get `caption_fraction` of the mass
    f = cfg.caption_fraction if caption_fraction is None else caption_fraction
    vqa_weight = np.asarray(vqa_weight) / np.sum(vqa_weight)
    w = np.concatenate([(1 - f) * vqa_weight, np.full(n_cap, f / max(1, n_cap))])
    ex.weights = w / w.sum()
    return ex


@torch.no_grad()
def evaluate_model(model, processor, cfg: MiniLlavaConfig) -> dict:
    """VQA accuracy per answer type and POPE accuracy per kind on held-out (test split) scenes."""
    world = build_world(cfg)
    vlm = VisionLanguageModel(model, processor)
    model.eval()
    rng = np.random.default_rng(777)
    scenes = world.sample_scenes(max(cfg.n_eval_scenes, cfg.n_pope_scenes), "test")
    images = {s.scene_id: world.render(s) for s in scenes}
    items = [(s, q) for s in scenes[: cfg.n_eval_scenes] for q in world.vqa(s, rng)]
    preds = vlm.generate(
        [images[s.scene_id] for s, _ in items],
        [q.question for _, q in items],
        max_new_tokens=4,
        batch_size=cfg.eval_batch_size,
    )
    by_type: dict[str, list[bool]] = {}
    by_template: dict[str, list[bool]] = {}
    for (_, q), p in zip(items, preds):
        ok = normalise(p) == normalise(q.answer)
        by_type.setdefault(q.answer_type, []).append(ok)
        by_template.setdefault(q.template, []).append(ok)
    key = {"yes/no": "yes_no", "number": "number", "other": "other"}
    out: dict = {
        "vqa_acc": {key[t]: round(float(np.mean(v)), 4) for t, v in sorted(by_type.items())},
        "vqa_n": {key[t]: len(v) for t, v in sorted(by_type.items())},
        "vqa_acc_by_template": {t: round(float(np.mean(v)), 4) for t, v in sorted(by_template.items())},
        "vqa_acc_overall": round(float(np.mean([x for v in by_type.values() for x in v])), 4),
    }
    pope_scenes = scenes[: cfg.n_pope_scenes]
    for kind in ("random", "popular", "adversarial"):
        probes = world.pope_probes(
            pope_scenes, kind=kind, per_image=cfg.pope_per_image, rng=np.random.default_rng(1000)
        )
        ans = vlm.generate(
            [images[p.scene_id] for p in probes],
            [p.question for p in probes],
            max_new_tokens=2,
            batch_size=cfg.eval_batch_size,
        )
        norm = [normalise(a) for a in ans]
        acc = float(np.mean([a == p.label for a, p in zip(norm, probes)]))
        out[f"pope_{kind}_acc"] = round(acc, 4)
        out[f"pope_{kind}_yes_rate"] = round(float(np.mean([a == "yes" for a in norm])), 4)
        out[f"pope_{kind}_n"] = len(probes)
        if kind == "adversarial":
            out.update(_partner_false_yes(world, pope_scenes, probes, norm))
    out["pope_gap_random_minus_adversarial"] = round(out["pope_random_acc"] - out["pope_adversarial_acc"], 4)
    # caption quality: object-class precision/recall (CHAIR-style) of generated descriptions
    cap_scenes = scenes[: min(100, len(scenes))]
    caps = vlm.generate(
        [images[s.scene_id] for s in cap_scenes],
        [CAPTION_PROMPT] * len(cap_scenes),
        max_new_tokens=24,
        batch_size=cfg.eval_batch_size,
    )
    mentioned = [world.mentioned_objects(c) for c in caps]
    n_m = sum(len(m) for m in mentioned)
    halluc = sum(len(m - s.object_classes) for m, s in zip(mentioned, cap_scenes))
    recall = np.mean([len(m & s.object_classes) / len(s.object_classes) for m, s in zip(mentioned, cap_scenes)])
    out["caption_chair_i"] = round(halluc / max(1, n_m), 4)
    out["caption_object_recall"] = round(float(recall), 4)
    if cfg.n_prior_scenes > 0 and world.cfg.bias_pairs:
        out["prior"] = prior_diagnostics(vlm, world, cfg, chair_i_ordinary=out["caption_chair_i"])
    return out


@torch.no_grad()
def prior_diagnostics(vlm: VisionLanguageModel, world: World, cfg: MiniLlavaConfig, *, chair_i_ordinary: float) -> dict:
    """The language prior where it acts, on the first ``n_prior_scenes`` test scenes that hold a bias anchor without
    its partner (``EvalScenes.ANCHOR_WITHOUT_PARTNER``): false "yes" to the absent partner vs to every other absent
    class (negatives of the random and adversarial POPE probes pooled, each (scene, class) once), POPE random and
    adversarial accuracy, and CHAIR_i of descriptions there against ``chair_i_ordinary`` (ordinary test scenes)."""
    from mmlens.align.eval import EvalScenes, world_eval_scenes

    scenes = world_eval_scenes(world, cfg.n_prior_scenes, "test", EvalScenes.ANCHOR_WITHOUT_PARTNER)
    images = {s.scene_id: world.render(s) for s in scenes}
    partners = {s.scene_id: world.absent_partners(s) for s in scenes}
    out: dict = {}
    negatives: dict[tuple[str, str], bool] = {}
    n_partner: dict[str, int] = {}
    n_probes: dict[str, int] = {}
    for kind in ("random", "adversarial"):
        probes = world.pope_probes(scenes, kind=kind, per_image=cfg.pope_per_image, rng=np.random.default_rng(1000))
        ans = [
            normalise(a)
            for a in vlm.generate(
                [images[p.scene_id] for p in probes],
                [p.question for p in probes],
                max_new_tokens=2,
                batch_size=cfg.eval_batch_size,
            )
        ]
        out[f"pope_{kind}_acc"] = round(float(np.mean([a == p.label for a, p in zip(ans, probes)])), 4)
        n_partner[kind] = sum(p.label == "no" and p.object_class in partners[p.scene_id] for p in probes)
        n_probes[kind] = len(probes)
        for a, p in zip(ans, probes):
            if p.label == "no":
                negatives.setdefault((p.scene_id, p.object_class), a == "yes")
    partner = [v for (sid, c), v in negatives.items() if c in partners[sid]]
    other = [v for (sid, c), v in negatives.items() if c not in partners[sid]]
    out["partner_false_yes"] = round(float(np.mean(partner)), 4) if partner else float("nan")
    out["other_false_yes"] = round(float(np.mean(other)), 4) if other else float("nan")
    out["n_partner_probes"], out["n_other_probes"] = len(partner), len(other)
    # What the POPE gap can show: both kinds ask the same number of questions, the adversarial ones ask about more
    # absent partners, so random - adversarial = gap_per_false_yes_difference * (partner - other false-yes rate).
    out["partner_negatives"] = dict(n_partner)
    out["gap_per_false_yes_difference"] = round(
        (n_partner["adversarial"] - n_partner["random"]) / max(1, n_probes["adversarial"]), 4
    )
    cap_scenes = scenes[: min(100, len(scenes))]
    caps = vlm.generate(
        [images[s.scene_id] for s in cap_scenes],
        [CAPTION_PROMPT] * len(cap_scenes),
        max_new_tokens=24,
        batch_size=cfg.eval_batch_size,
    )
    mentioned = [world.mentioned_objects(c) for c in caps]
    n_m = sum(len(m) for m in mentioned)
    out["chair_i_anchor_scenes"] = round(
        sum(len(m - s.object_classes) for m, s in zip(mentioned, cap_scenes)) / max(1, n_m), 4
    )
    out["partner_mention_rate"] = round(
        float(np.mean([bool(m & partners[s.scene_id]) for m, s in zip(mentioned, cap_scenes)])), 4
    )
    out["chair_i_ordinary"] = chair_i_ordinary
    out["n_scenes"] = len(scenes)
    return out


def _partner_false_yes(world: World, scenes, probes, answers: list[str]) -> dict:
    """The language bias where it acts: the false-"yes" rate on absent bias partners of a present anchor ("is there a
    star?" beside a triangle) against that on every other absent class. The POPE gap dilutes it, since only a few
    adversarial negatives are partners (reported as ``pope_partner_probe_share``)."""
    absent_partners = {s.scene_id: world.absent_partners(s) for s in scenes}
    partner: list[bool] = []
    other: list[bool] = []
    for probe, answer in zip(probes, answers):
        if probe.label != "no":
            continue
        (partner if probe.object_class in absent_partners[probe.scene_id] else other).append(answer == "yes")
    rate = lambda xs: round(float(np.mean(xs)), 4) if xs else float("nan")  # noqa: E731
    return {
        "pope_partner_false_yes_rate": rate(partner),
        "pope_other_false_yes_rate": rate(other),
        "pope_partner_probes": len(partner),
        "pope_partner_probe_share": round(len(partner) / len(probes), 4),
    }


def build(out_dir: Path, cfg: MiniLlavaConfig, deps: dict, progress=None, on_trained=None) -> dict:
    t0 = time.time()
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    clip = CLIPModel.from_pretrained(deps["mini-clip"])
    world = build_world(cfg)
    scenes = world.sample_scenes(cfg.n_train_scenes, "train")
    tok = make_tokenizer(world, scenes, tuple(text_world(cfg).vocabulary()) if cfg.text_steps > 0 else ())
    vc = clip.config.vision_config
    processor = make_llava_processor(tok, image_size=vc.image_size, patch_size=vc.patch_size)
    model = make_model(cfg, clip, tok, processor.image_token_id)
    vlm = VisionLanguageModel(model, processor)
    n_img = (vc.image_size // vc.patch_size) ** 2
    pv = pixel_tensor(processor.image_processor, [world.render(s) for s in scenes])
    examples = training_examples(world, scenes, vlm, n_img, cfg)
    prep_seconds = time.time() - t0
    phase_losses: dict[str, float] = {}
    if cfg.text_steps > 0:  # phase 0: the language model, text only
        seqs = text_corpus(cfg, vlm, cfg.text_n_scenes)
        text_losses = pretrain_text(model, seqs, tok.pad_token_id, cfg, progress=progress)
        phase_losses["text"] = round(float(np.mean(text_losses[-50:])), 4)
    if cfg.align_steps > 0:  # phase 1: the projector alone, on captions
        captions = training_examples(world, scenes, vlm, n_img, cfg, caption_fraction=1.0)
        align_losses = align_projector(model, vlm, captions, pv, cfg, progress=progress)
        phase_losses["align"] = round(float(np.mean(align_losses[-50:])), 4)
    losses = train_llava(model, vlm, examples, pv, cfg, steps=cfg.steps, progress=progress)
    if cfg.focus_steps > 0:
        focused = training_examples(
            world,
            scenes,
            vlm,
            n_img,
            cfg,
            caption_fraction=cfg.focus_caption_fraction,
            template_weights={t: cfg.focus_weight for t in cfg.focus_templates},
        )
        focus_cfg = replace(cfg, batch_size=cfg.focus_batch_size, warmup=cfg.focus_warmup, seed=cfg.seed + 2)
        losses += train_llava(model, vlm, focused, pv, focus_cfg, steps=cfg.focus_steps, progress=progress)
    train_seconds = time.time() - t0
    metrics = evaluate_model(model, processor, cfg)
    metrics["final_train_loss"] = round(float(np.mean(losses[-50:])), 4) if losses else None
    if phase_losses:
        metrics["phase_final_loss"] = phase_losses
    for p in model.parameters():
        p.requires_grad_(True)
    if on_trained is not None:
        on_trained(model, processor)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    rec = make_record(
        "mini-llava",
        metrics,
        cfg,
        time.time() - t0,
        world_config=cfg.world,
        prep_seconds=round(prep_seconds, 2),
        train_seconds=round(train_seconds, 2),
        n_train_examples=len(examples.ids),
        n_parameters=sum(p.numel() for p in model.parameters()),
        vision_init="mini-clip",
    )
    write_json_atomic(Path(out_dir) / METRICS_FILE, rec)
    return rec


def load(path: Path):
    return load_pretrained(path, LlavaForConditionalGeneration, LlavaProcessor)


def evaluate_dir(path: Path) -> dict:
    rec = read_record(path)
    cfg = config_from_dict(MiniLlavaConfig, {**rec["config"], "world": WorldConfig.from_dict(rec["world_config"])})
    model, processor = load(path)
    return evaluate_model(model, processor, cfg)
