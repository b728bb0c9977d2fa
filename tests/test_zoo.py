"""Zoo: tiny-budget builds of every model into a temporary MMLENS_HOME (accuracy is measured by the full build)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoProcessor, CLIPModel, CLIPProcessor, LlavaForConditionalGeneration

from mmlens import zoo
from mmlens.errors import MMLensError, ModelLoadError
from mmlens.world import World, WorldConfig
from mmlens.zoo import digits_clip
from mmlens.zoo.colour import checkpoint_dirs

TINY = zoo.smoke_configs()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build the whole zoo at a tiny budget once; keep the in-memory models for the reload checks."""
    home = tmp_path_factory.mktemp("mmlens-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("MMLENS_HOME", str(home))
    trained: dict = {}
    assert [b for _, b, _ in zoo.list_zoo()] == [False] * len(zoo.ZOO_MODELS)
    records = zoo.build(configs=TINY, progress=False, on_trained=lambda n, m, p: trained.setdefault(n, (m, p)))
    yield home, records, trained
    mp.undo()


@pytest.fixture
def zoo_home(built, monkeypatch):
    """The tiny zoo's home (conftest gives every test an empty MMLENS_HOME of its own)."""
    monkeypatch.setenv("MMLENS_HOME", str(built[0]))
    return built


def test_paths_follow_mmlens_home(zoo_home):
    home, _, _ = zoo_home
    assert zoo.mmlens_home() == home
    assert zoo.zoo_dir() == home / "zoo"
    assert zoo.model_dir("mini-clip") == home / "zoo" / "mini-clip"


def test_every_model_directory_is_complete(zoo_home):
    home, records, _ = zoo_home
    assert list(records) == list(zoo.ZOO_MODELS)
    for name in zoo.ZOO_MODELS:
        d = zoo.model_dir(name)
        names = {p.name for p in d.iterdir()}
        assert {"config.json", "model.safetensors", "metrics.json", "tokenizer.json"} <= names, (name, names)
        assert any(n.startswith(("processor_config", "preprocessor_config")) for n in names), (name, names)
        rec = json.loads((d / "metrics.json").read_text())
        assert rec["model"] == name and rec["metrics"] and rec["seconds"] > 0 and rec["config"]
        assert zoo.is_built(name)
    # no temporary build directories left behind
    assert sorted(p.name for p in (home / "zoo").iterdir()) == sorted(zoo.ZOO_MODELS)
    wc = json.loads((zoo.model_dir("mini-llava") / "metrics.json").read_text())["world_config"]
    assert WorldConfig.from_dict(wc) == TINY["mini-llava"].world


def test_metric_keys(zoo_home):
    _, records, _ = zoo_home
    m = records["mini-llava"]["metrics"]
    assert set(m["vqa_acc"]) == {"yes_no", "number", "other"}
    assert {"pope_random_acc", "pope_popular_acc", "pope_adversarial_acc"} <= set(m)
    assert 0 <= records["digits-clip"]["metrics"]["zero_shot_acc"] <= 1
    assert records["mini-clip"]["metrics"]["retrieval_pool_size"] == 10
    from mmlens.bench.zoo import benchmark_summary

    summary = benchmark_summary(records, 1.0)
    assert set(summary["models"]["mini-llava"]["vqa_acc"]) == {"yes_no", "number", "other"}
    assert "retrieval_top1" in summary["models"]["mini-clip"]


@torch.no_grad()
def test_clip_models_reload_with_plain_transformers(zoo_home):
    _, _, trained = zoo_home
    for name in ("digits-clip", "mini-clip"):
        model, processor = trained[name]
        d = zoo.model_dir(name)
        re_model = CLIPModel.from_pretrained(d).eval()
        re_proc = CLIPProcessor.from_pretrained(d)
        size = model.config.vision_config.image_size
        images = [
            World(WorldConfig(), seed=0).render(s).resize((size, size))
            for s in World(WorldConfig(), seed=0).sample_scenes(2)
        ]
        texts = ["a red circle", "two blue squares and a green star"]
        a = processor(text=texts, images=images, return_tensors="pt", padding=True)
        b = re_proc(text=texts, images=images, return_tensors="pt", padding=True)
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert torch.allclose(a["pixel_values"], b["pixel_values"])
        out_a, out_b = model(**a), re_model(**b)
        assert torch.allclose(out_a.logits_per_image, out_b.logits_per_image, atol=1e-5)


@torch.no_grad()
def test_llava_models_reload_with_plain_transformers(zoo_home):
    _, _, trained = zoo_home
    world = World(TINY["mini-llava"].world, seed=0)
    scenes = world.sample_scenes(2, "test")
    images = [world.render(s) for s in scenes]
    for name in ("mini-llava", "mini-llava-colour"):
        model, processor = trained[name]
        d = zoo.model_dir(name)
        re_model = LlavaForConditionalGeneration.from_pretrained(d).eval()
        re_proc = AutoProcessor.from_pretrained(d)
        assert type(re_proc).__name__ == "LlavaProcessor"
        msgs = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "how many objects are there ?"}]}
        ]
        text = re_proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        a = processor(text=[text] * 2, images=images, return_tensors="pt", padding=True, add_special_tokens=False)
        b = re_proc(text=[text] * 2, images=images, return_tensors="pt", padding=True, add_special_tokens=False)
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert torch.allclose(model(**a).logits, re_model(**b).logits, atol=1e-5)
        g_a = model.generate(**a, max_new_tokens=3, do_sample=False)
        g_b = re_model.generate(**b, max_new_tokens=3, do_sample=False)
        assert torch.equal(g_a, g_b)


def test_colour_checkpoints_are_loadable(zoo_home):
    dirs = checkpoint_dirs(zoo.model_dir("mini-llava-colour"))
    assert [d.name for d in dirs] == ["step-0", "step-1", "step-2"]
    m = LlavaForConditionalGeneration.from_pretrained(dirs[1])
    assert m.config.model_type == "llava"
    AutoProcessor.from_pretrained(dirs[1])
    traj = dict((n, r) for n, _, r in zoo.list_zoo())["mini-llava-colour"]["metrics"]["trajectory"]
    assert set(traj) == {"0", "1", "2"} and "colour_mention_rate" in traj["0"]


def test_evaluate_from_disk_reproduces_build_metrics(zoo_home):
    _, records, _ = zoo_home
    again = zoo.evaluate("digits-clip")
    assert again["zero_shot_acc"] == records["digits-clip"]["metrics"]["zero_shot_acc"]
    again = zoo.evaluate("mini-llava")
    assert again["vqa_acc"] == records["mini-llava"]["metrics"]["vqa_acc"]


def test_list_zoo_and_build_skips_built(zoo_home):
    rows = zoo.list_zoo()
    assert [r[0] for r in rows] == list(zoo.ZOO_MODELS)
    assert all(r[1] and r[2]["metrics"] for r in rows)
    t = zoo.model_dir("digits-clip").stat().st_mtime_ns
    zoo.build(["digits-clip"], configs=TINY, progress=False)  # already built: no rebuild
    assert zoo.model_dir("digits-clip").stat().st_mtime_ns == t


def test_unknown_name_raises():
    with pytest.raises(ModelLoadError, match="valid names: digits-clip"):
        zoo.model_dir("nope")
    with pytest.raises(ModelLoadError):
        zoo.is_built("mini-gpt")
    with pytest.raises(MMLensError):
        zoo.build(["mini-clip", "nope"])
    with pytest.raises(ModelLoadError):
        zoo.evaluate("nope")


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLENS_HOME", str(tmp_path))

    def boom(*a, **k):
        raise KeyboardInterrupt  # after the weights were written, before metrics.json

    monkeypatch.setattr(digits_clip, "write_json_atomic", boom)
    with pytest.raises(KeyboardInterrupt):
        zoo.build(["digits-clip"], configs=TINY, progress=False)
    assert not zoo.is_built("digits-clip")
    assert list((tmp_path / "zoo").iterdir()) == []
    assert zoo.list_zoo()[0] == ("digits-clip", False, None)


def test_evaluate_unbuilt_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLENS_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match="not built"):
        zoo.evaluate("mini-clip")


def test_mini_llava_focus_phase_weights_its_templates_and_builds(zoo_home, tmp_path):
    from dataclasses import replace

    import numpy as np

    from mmlens.models import load_model
    from mmlens.zoo import mini_llava
    from mmlens.zoo.common import config_from_dict

    cfg = replace(TINY["mini-llava"], focus_steps=2, focus_batch_size=8)
    vlm = load_model("zoo:mini-llava")
    world = mini_llava.build_world(cfg)
    scenes = world.sample_scenes(12, "train")
    weights = {t: cfg.focus_weight for t in cfg.focus_templates}
    focused = mini_llava.training_examples(world, scenes, vlm, 1, cfg, caption_fraction=0.1, template_weights=weights)
    templates = np.array([t or "caption" for t in focused.templates])
    assert np.isclose(focused.weights[templates == "caption"].sum(), 0.1)
    vqa = templates != "caption"
    is_focus = np.isin(templates, cfg.focus_templates)
    expected = 0.9 * cfg.focus_weight * is_focus.sum() / (cfg.focus_weight * is_focus.sum() + (vqa & ~is_focus).sum())
    assert np.isclose(focused.weights[is_focus].sum(), expected)
    plain = mini_llava.training_examples(world, scenes, vlm, 1, cfg)
    assert focused.weights[is_focus].sum() > plain.weights[is_focus].sum()

    record = mini_llava.build(tmp_path / "m", cfg, {"mini-clip": zoo.model_dir("mini-clip")})
    assert record["config"]["focus_steps"] == 2
    assert config_from_dict(mini_llava.MiniLlavaConfig, {**record["config"], "world": cfg.world}) == cfg


def _prior_tiny():
    from dataclasses import replace

    from mmlens.zoo import mini_llava

    return replace(
        TINY["mini-llava"],
        world=mini_llava.PRIOR_WORLD,
        text_steps=2,
        text_n_scenes=40,
        text_batch_size=8,
        text_warmup=1,
        align_steps=2,
        sft_caption_leak=0.3,
        n_prior_scenes=6,
    )


def test_text_corpus_carries_a_stronger_co_occurrence_than_the_images(zoo_home):
    """The language prior's source: in the text-only corpus the partner is named beside its anchor far more often
    than the images show it beside its anchor."""
    import numpy as np

    from mmlens.models import load_model
    from mmlens.zoo import mini_llava

    cfg = _prior_tiny()
    vlm = load_model("zoo:mini-llava")
    world = mini_llava.build_world(cfg)
    texts = [vlm.tokenizer.decode(ids) for ids in mini_llava.text_corpus(cfg, vlm, 400)]
    captions = [t for t in texts if "assistant" not in t]
    scenes = world.sample_scenes(400, "train")
    for anchor, partner in cfg.world.bias_pairs:
        in_text = [partner in t for t in captions if anchor in t]
        in_images = [s.count(partner) > 0 for s in scenes if s.count(anchor)]
        assert np.mean(in_text) > np.mean(in_images) + 0.1, (anchor, np.mean(in_text), np.mean(in_images))
    assert 0 < len(captions) < len(texts)


def test_prior_phases_train_what_they_name(zoo_home):
    """Text pretraining moves the decoder only; projector alignment moves the projector only."""
    import torch
    from transformers import CLIPModel

    from mmlens.models.generative import VisionLanguageModel
    from mmlens.models.tokenizers import make_llava_processor
    from mmlens.zoo import mini_llava
    from mmlens.zoo.common import pixel_tensor

    cfg = _prior_tiny()
    world = mini_llava.build_world(cfg)
    scenes = world.sample_scenes(16, "train")
    tok = mini_llava.make_tokenizer(world, scenes, tuple(mini_llava.text_world(cfg).vocabulary()))
    clip = CLIPModel.from_pretrained(zoo.model_dir("mini-clip"))
    vc = clip.config.vision_config
    processor = make_llava_processor(tok, image_size=vc.image_size, patch_size=vc.patch_size)
    model = mini_llava.make_model(cfg, clip, tok, processor.image_token_id)
    vlm = VisionLanguageModel(model, processor)

    def snapshot():
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def moved(before):
        return {
            k.split(".")[1] if k.startswith("model.") else k.split(".")[0]
            for k, v in model.state_dict().items()
            if not torch.equal(v, before[k])
        }

    before = snapshot()
    mini_llava.pretrain_text(model, mini_llava.text_corpus(cfg, vlm, 20), tok.pad_token_id, cfg)
    assert moved(before) == {"language_model", "lm_head"}
    before = snapshot()
    n_img = (vc.image_size // vc.patch_size) ** 2
    captions = mini_llava.training_examples(world, scenes, vlm, n_img, cfg, caption_fraction=1.0)
    pv = pixel_tensor(processor.image_processor, [world.render(s) for s in scenes])
    mini_llava.align_projector(model, vlm, captions, pv, cfg)
    assert moved(before) == {"multi_modal_projector"}
    assert all(p.requires_grad for p in model.parameters())


def test_prior_diagnostics_separate_partner_from_other_false_yes():
    """A model that sees every object and also says "yes" to the partner of every present anchor hallucinates every
    absent partner and nothing else: the diagnostics must say so, and POPE adversarial must fall below random."""
    from dataclasses import replace

    from mmlens.align.eval import EvalScenes, world_eval_scenes
    from mmlens.zoo import mini_llava

    cfg = replace(_prior_tiny(), n_prior_scenes=20)
    world = mini_llava.build_world(cfg)
    scenes = world_eval_scenes(world, cfg.n_prior_scenes, "test", EvalScenes.ANCHOR_WITHOUT_PARTNER)
    by_image = {world.render(s).tobytes(): s for s in scenes}

    class PartnerSayer:
        def generate(self, images, prompts, max_new_tokens=4, batch_size=1):
            out = []
            for image, q in zip(images, prompts):
                scene = by_image[image.tobytes()]
                believed = scene.object_classes | world.absent_partners(scene)
                out.append("yes" if any(f" {c} " in q for c in believed) else "no")
            return out

    d = mini_llava.prior_diagnostics(PartnerSayer(), world, cfg, chair_i_ordinary=0.0)
    assert d["n_scenes"] == cfg.n_prior_scenes and d["n_partner_probes"] > 0
    assert d["partner_false_yes"] == 1.0 and d["other_false_yes"] == 0.0
    assert d["pope_adversarial_acc"] < d["pope_random_acc"]
    # a model that hallucinates every absent partner and nothing else opens exactly the gap the probes allow
    gap = d["pope_random_acc"] - d["pope_adversarial_acc"]
    assert abs(gap - d["gap_per_false_yes_difference"]) < 2e-4
    assert d["partner_negatives"]["adversarial"] > d["partner_negatives"]["random"]


def test_prior_recipe_builds_with_its_diagnostics(zoo_home, tmp_path):
    from mmlens.zoo import mini_llava

    cfg = _prior_tiny()
    record = mini_llava.build(tmp_path / "m", cfg, {"mini-clip": zoo.model_dir("mini-clip")})
    prior = record["metrics"]["prior"]
    assert {
        "partner_false_yes",
        "other_false_yes",
        "pope_random_acc",
        "pope_adversarial_acc",
        "chair_i_anchor_scenes",
        "chair_i_ordinary",
    } <= set(prior)
    assert set(record["metrics"]["phase_final_loss"]) == {"text", "align"}
    assert WorldConfig.from_dict(record["world_config"]) == mini_llava.PRIOR_WORLD


def test_injected_noise_is_what_its_flags_say():
    """Random swaps give a flagged scene another scene's captions; confusable swaps rename one of its shapes to the
    look-alike (and nothing else); unflagged scenes keep their own captions; the share flagged is the rate."""
    from dataclasses import replace

    import numpy as np

    from mmlens.zoo.mini_clip import CONFUSABLE_SHAPES, inject_noise

    cfg = TINY["mini-clip"]
    world = World(cfg.world, seed=cfg.world_seed)
    scenes = world.sample_scenes(200, "train")
    caps = [
        [world.caption(s, np.random.default_rng(i), style=st) for st in cfg.caption_styles for _ in range(2)]
        for i, s in enumerate(scenes)
    ]
    for kind in ("random", "confusable"):
        noisy, flags, source = inject_noise(
            world, scenes, caps, replace(cfg, noise_kind=kind, noise_rate=0.2), np.random.default_rng(0)
        )
        assert flags.sum() == 40
        for i in range(len(scenes)):
            if not flags[i]:
                assert noisy[i] == caps[i]
                continue
            said = set().union(*(world.mentioned_objects(c) for c in noisy[i]))
            if kind == "random":
                assert noisy[i] == caps[source[i]] and scenes[source[i]].signature() != scenes[i].signature()
            else:
                old, new = source[i].split("->")
                assert CONFUSABLE_SHAPES[old] == new and old in scenes[i].object_classes
                assert said == (scenes[i].object_classes - {old}) | {new}
    clean, flags, _ = inject_noise(world, scenes, caps, cfg, np.random.default_rng(0))
    assert clean == caps and not flags.any()


def test_noisy_clip_models_save_their_flags_and_diagnostics(zoo_home):
    for name in ("mini-clip-noisy-random", "mini-clip-noisy-confusable"):
        d = zoo.model_dir(name)
        flags = json.loads((d / "noise_flags.json").read_text())
        rec = json.loads((d / "metrics.json").read_text())
        cfg = TINY[name]
        assert flags["kind"] == cfg.noise_kind and len(flags["flagged"]) == round(cfg.noise_rate * cfg.n_train_scenes)
        noise = rec["metrics"]["noise"]
        assert {"kind", "rate", "clipscore_auroc", "clean_acc", "noisy_acc"} <= set(noise)
        assert (
            noise["clean_acc"]
            == json.loads((zoo.model_dir("mini-clip") / "metrics.json").read_text())["metrics"]["retrieval_top1"]
        )
        assert noise["noisy_acc"] == rec["metrics"]["retrieval_top1"]


def test_swap_change_list_separates_what_must_move_from_what_must_stay():
    """The answerer agrees with the world on every template; an oracle of the old naming against an oracle of the new
    one changes every must-move answer and no must-stay answer; a planted extra change is counted."""
    import numpy as np

    from mmlens.zoo.concept_swap import answer, change_list, change_metrics

    world = World(WorldConfig(), seed=0)
    scenes = world.sample_scenes(60, "test")
    rng = np.random.default_rng(0)
    for s in scenes:
        for item in world.vqa(s, rng):
            assert answer(world, s, item) == item.answer, item
    rows = change_list(world, scenes, ("red", "blue"))
    kinds = {r["kind"] for r in rows}
    assert kinds == {"must_move", "must_stay", "excluded"}
    assert all(r["before"] != r["after"] for r in rows if r["kind"] == "must_move")
    assert all("red" not in r["question"] and "blue" not in r["question"] for r in rows if r["kind"] == "must_stay")
    before = [r["before"] or "" for r in rows]
    after = [r["after"] for r in rows]
    m = change_metrics(rows, before, after)
    assert m["targeted_changed"] == 1.0 and m["untargeted_changed"] == 0.0 and m["targeted_correct"] == 1.0
    stay = [i for i, r in enumerate(rows) if r["kind"] == "must_stay"]
    planted = list(after)
    planted[stay[0]] = "purple"
    assert change_metrics(rows, before, planted)["untargeted_changed"] == round(1 / len(stay), 4)


def test_swap_fine_tune_saves_its_change_list(zoo_home):
    d = zoo.model_dir("mini-llava-swap")
    rows = json.loads((d / "change_list.json").read_text())["rows"]
    change = json.loads((d / "metrics.json").read_text())["metrics"]["change"]
    assert {"targeted_changed", "untargeted_changed"} <= set(change)
    assert change["n_targeted"] == sum(r["kind"] == "must_move" for r in rows)


def test_build_reports_every_training_step(tmp_path, monkeypatch):
    """The per-model progress bar moves with the training steps, not only between models."""
    from mmlens.zoo import digits_clip as recipe

    monkeypatch.setenv("MMLENS_HOME", str(tmp_path))
    real = recipe.build
    seen: list[int] = []

    def spy(out_dir, cfg, progress=None, **kw):
        def counting(step, loss):
            seen.append(step)
            progress(step, loss)

        return real(out_dir, cfg, progress=counting, **kw)

    monkeypatch.setattr(recipe, "build", spy)
    zoo.build(["digits-clip"], configs=TINY, progress=True)
    assert seen == list(range(TINY["digits-clip"].steps))
