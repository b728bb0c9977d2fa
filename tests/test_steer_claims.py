"""End-to-end claims of mmlens.steer (issue 21): vectors built from known activations point where they should, and
applied to a model they move the steered activations exactly onto the target."""

from __future__ import annotations

import contextlib

import pytest
import torch

from mmlens.models import capture_outputs, tiny_model
from mmlens.steer import (
    ShiftReducer,
    SteerConfig,
    SteerPositions,
    coarse_vector,
    concept_vectors,
    finetuning_shift_vectors,
    steer,
    vector_from_labels,
)


def _cloud(centre: torch.Tensor, n: int, seed: int, spread: float = 0.1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return centre + spread * torch.randn(n, centre.numel(), generator=gen)


def test_coarse_vector_points_from_the_source_to_the_target_centre():
    """Activations scattered around known centres: the vector is target - source (not the reverse), its reference
    is the source centre, and every other label's centre becomes a contrast."""
    gen = torch.Generator().manual_seed(1)
    yes, no, maybe = (torch.randn(16, generator=gen) * 3 for _ in range(3))
    acts = torch.cat([_cloud(yes, 300, 0), _cloud(no, 200, 1), _cloud(maybe, 100, 2)])
    labels = ["yes"] * 300 + ["no"] * 200 + ["maybe"] * 100
    vec = vector_from_labels(acts, labels, "yes", "no", layer=3)
    cos = torch.cosine_similarity(vec.vector, no - yes, dim=0)
    assert float(cos) > 0.995 and vec.norm == pytest.approx(float((no - yes).norm()), rel=0.02)
    assert torch.allclose(vec.reference, yes, atol=0.06)
    assert tuple(vec.contrasts.shape) == (1, 16) and torch.allclose(vec.contrasts[0], maybe, atol=0.1)
    assert (vec.source, vec.target, vec.layer) == ("yes", "no", 3)
    direct = coarse_vector(acts[:300], acts[300:500], layer=3)
    assert torch.allclose(direct.vector, vec.vector)


def test_concept_vectors_move_from_the_source_concept_to_the_target():
    gen = torch.Generator().manual_seed(2)
    concepts = torch.randn(3, 8, generator=gen)
    vectors = {(v.source, v.target): v for v in concept_vectors(concepts, layer=0, names=["a", "b", "c"])}
    for i, src in enumerate("abc"):
        for j, tgt in enumerate("abc"):
            if i != j:
                v = vectors[src, tgt]
                assert torch.allclose(concepts[i] + v.vector, concepts[j], atol=1e-6)  # source + v = target
                assert torch.equal(v.reference, concepts[i])
                rest = [k for k in range(3) if k not in (i, j)]
                assert torch.equal(v.contrasts, concepts[rest])


@pytest.mark.parametrize("reducer", list(ShiftReducer))
def test_shift_vectors_recover_planted_per_concept_shifts(reducer):
    """Fine-tuning moved the samples of concept k by d_k (plus noise): the per-concept vectors recover d_k, samples
    being assigned to their nearest dictionary concept, and the global one is the sample-weighted mean shift."""
    gen = torch.Generator().manual_seed(3)
    centres = torch.randn(3, 12, generator=gen) * 5
    shifts = torch.randn(3, 12, generator=gen)
    sizes = [40, 25, 60]
    a = torch.cat([_cloud(centres[k], n, 10 + k) for k, n in enumerate(sizes)])
    d = torch.cat([shifts[k].expand(n, -1) for k, n in enumerate(sizes)])
    b = a + d + 0.01 * torch.randn(a.shape, generator=gen)
    vectors = finetuning_shift_vectors(
        a, b, layer=1, dictionary=centres[[2, 0, 1]], reducer=reducer, names=["z", "x", "y"]
    )
    assert len(vectors) == 4
    weights = torch.tensor(sizes, dtype=torch.float32) / sum(sizes)
    if reducer is ShiftReducer.MEAN:
        assert torch.allclose(vectors[0].vector, (weights[:, None] * shifts).sum(0), atol=0.01)
    by_target = {v.target: v for v in vectors[1:]}
    for k, name in enumerate(["x", "y", "z"]):  # dictionary row order is (z, x, y) = concepts (2, 0, 1)
        v = by_target[f"finetuned:{name}"]
        assert torch.allclose(v.vector, shifts[k], atol=0.02), (reducer, name)
        assert v.info["n_samples"] == sizes[k]
        assert torch.allclose(v.reference, centres[k], atol=0.15)


def test_median_shift_ignores_an_outlier_the_mean_does_not():
    a = torch.zeros(21, 4)
    b = a + 1.0
    b[0] += 100.0
    median = finetuning_shift_vectors(a, b, layer=0, reducer=ShiftReducer.MEDIAN)[0].vector
    trimmed = finetuning_shift_vectors(a, b, layer=0, reducer=ShiftReducer.TRIMMED_MEAN)[0].vector
    mean = finetuning_shift_vectors(a, b, layer=0, reducer=ShiftReducer.MEAN)[0].vector
    assert torch.allclose(median, torch.ones(4)) and torch.allclose(trimmed, torch.ones(4))
    assert torch.allclose(mean, torch.full((4,), 1 + 100 / 21))


def test_steering_with_a_vector_from_the_models_own_activations_lands_on_the_target_mean():
    """Capture a tiny model's layer-1 outputs at the last prompt position for two prompt groups, build the coarse
    vector source -> target, steer the source prompts with alpha = 1: their mean activation there becomes the target
    group's mean exactly; alpha = -1 moves it the opposite way."""
    model = tiny_model("llama")
    layer = 1
    source = ["the cat sat on", "a cat is on", "my cat sleeps on"]
    target = ["the sky is very", "blue skies are", "the sky looks"]

    def last_prompt_outputs(prompts, config=None, vector=None):
        rows = []
        for prompt in prompts:  # one prompt per call: no padding, the last position is the last prompt token
            batch = model.prepare([prompt])
            # the capture is registered after the steering hook, so it sees the steered output
            with (
                torch.no_grad(),
                steer(model, vector, config) if vector is not None else contextlib.nullcontext(),
                capture_outputs({"h": model.decoder_layers[layer]}) as seen,
            ):
                model.forward(batch)
            rows.append(seen["h"][0][0, -1])
        return torch.stack(rows)

    src, tgt = last_prompt_outputs(source), last_prompt_outputs(target)
    vec = coarse_vector(src, tgt, layer=layer)
    assert not torch.allclose(src.mean(0), tgt.mean(0), atol=1e-3)
    steered = last_prompt_outputs(source, SteerConfig(1.0, SteerPositions.ALL), vec)
    assert torch.allclose(steered.mean(0), tgt.mean(0), atol=1e-4)
    away = last_prompt_outputs(source, SteerConfig(-1.0, SteerPositions.ALL), vec)
    assert torch.allclose(away.mean(0), 2 * src.mean(0) - tgt.mean(0), atol=1e-4)


def test_vector_records_describe_themselves_and_refuse_bad_input(tmp_path):
    """The record's derived fields (name, norm, description, controls keep the site) and its one-line errors, each
    naming what is wrong."""
    import json

    import numpy as np
    from safetensors.torch import save_file

    from mmlens.errors import InputError
    from mmlens.steer import SteeringVector, VectorKind, load_vectors, save_vectors

    vec = SteeringVector(
        np.array([3.0, 4.0]),
        2,
        "coarse",
        "yes",
        "no",
        "m",
        "last_prompt",
        reference=torch.zeros(2),
        info={"n": 1},
        contrasts=torch.ones(3, 2),
    )
    assert vec.kind is VectorKind.COARSE and vec.vector.dtype == torch.float32 and vec.hidden_size == 2
    assert vec.name == "coarse:yes->no@L2" and vec.norm == pytest.approx(5.0)
    assert vec.describe() == {
        "name": "coarse:yes->no@L2",
        "kind": "coarse",
        "layer": 2,
        "source": "yes",
        "target": "no",
        "model": "m",
        "position": "last_prompt",
        "norm": 5.0,
        "hidden_size": 2,
        "n_contrasts": 3,
        "info": {"n": 1},
    }
    control = vec.with_vector(torch.tensor([0.0, 1.0]), VectorKind.RANDOM, seed=4)
    assert (control.layer, control.source, control.target, control.model, control.position) == (
        2,
        "yes",
        "no",
        "m",
        "last_prompt",
    )
    assert control.info == {"n": 1, "seed": 4} and torch.equal(control.contrasts, vec.contrasts)
    assert torch.equal(control.reference, vec.reference)
    assert SteeringVector(torch.ones(2), 0, VectorKind.CUSTOM).describe()["n_contrasts"] == 0
    cases = [
        (
            lambda: SteeringVector(torch.ones(2, 2), 0, "custom"),
            r"^a steering vector must be 1-D \(hidden,\), got shape \(2, 2\)$",
        ),
        (
            lambda: SteeringVector(torch.ones(0), 0, "custom"),
            r"^a steering vector must be 1-D \(hidden,\), got shape \(0,\)$",
        ),
        (
            lambda: SteeringVector(torch.tensor([1.0, float("nan")]), 0, "custom"),
            r"^the steering vector contains NaN or infinite values$",
        ),
        (
            lambda: SteeringVector([1.0, 2.0], 0, "custom"),
            r"^the steering vector must be a torch tensor or numpy array, got list$",
        ),
        (
            lambda: SteeringVector(torch.ones(2), 0, "custom", reference=torch.ones(3)),
            r"^reference shape \(3,\) does not match the vector \(2,\)$",
        ),
        (
            lambda: SteeringVector(torch.ones(2), 0, "custom", contrasts=torch.ones(2)),
            r"^contrasts must be \(m, 2\), got shape \(2,\)$",
        ),
        (
            lambda: SteeringVector(torch.ones(2), 0, "custom", contrasts=torch.ones(1, 3)),
            r"^contrasts must be \(m, 2\), got shape \(1, 3\)$",
        ),
        (
            lambda: SteeringVector(torch.ones(2), 0, "custom", contrasts=torch.full((1, 2), float("inf"))),
            r"^the contrast concepts contains NaN or infinite values$",
        ),
        (
            lambda: SteeringVector(torch.ones(2), -1, "custom"),
            r"^layer must be >= 0 \(0 = output of the first decoder layer\), got -1$",
        ),
        (
            lambda: coarse_vector(torch.ones(2, 3), torch.ones(2, 4), layer=0),
            r"^source and target activations differ in hidden size: 3 vs 4$",
        ),
        (
            lambda: coarse_vector(torch.ones(3), torch.ones(2, 3), layer=0, source="yes"),
            r"^the source activations \(yes\) must be 2-D \(samples, hidden\), got shape \(3,\)$",
        ),
        (
            lambda: coarse_vector(torch.ones(2, 3), torch.ones(0, 3), layer=0, target="no"),
            r"^the target activations \(no\) is empty: no samples to average$",
        ),
        (
            lambda: vector_from_labels(torch.ones(3, 2), ["a", "b"], "a", "b", layer=0),
            r"^got 2 labels for 3 activation rows$",
        ),
        (
            lambda: vector_from_labels(torch.ones(2, 2), ["a", "b"], "c", "b", layer=0),
            r"^no activation is labelled 'c': cannot build a c->b vector$",
        ),
        (
            lambda: vector_from_labels(torch.ones(2, 2), ["a", "b"], "a", "z", layer=0),
            r"^no activation is labelled 'z': cannot build a a->z vector$",
        ),
        (lambda: concept_vectors(torch.ones(1, 2), layer=0), r"^a concept dictionary needs at least 2 concepts"),
        (lambda: concept_vectors(torch.eye(2), layer=0, names=["a"]), r"^got 1 names for 2 concepts$"),
        (
            lambda: concept_vectors(torch.eye(2), layer=0, pairs=[(0, 0)]),
            r"^bad concept pair \(0, 0\) for a dictionary of 2 concepts$",
        ),
        (
            lambda: concept_vectors(torch.eye(2), layer=0, pairs=[(0, 2)]),
            r"^bad concept pair \(0, 2\) for a dictionary of 2 concepts$",
        ),
        (
            lambda: concept_vectors(object(), layer=0),
            r"^cannot read concepts from a object: pass a \(k, hidden\) tensor$",
        ),
        (
            lambda: finetuning_shift_vectors(
                torch.ones(2, 3), torch.ones(2, 3), layer=0, dictionary=torch.eye(3), assignments=[0, 1]
            ),
            r"^pass either a dictionary or assignments, not both$",
        ),
        (
            lambda: finetuning_shift_vectors(torch.ones(2, 3), torch.ones(2, 3), layer=0, dictionary=torch.eye(2)),
            r"^the dictionary's hidden size 2 differs from the activations' 3$",
        ),
        (
            lambda: finetuning_shift_vectors(torch.ones(2, 3), torch.ones(2, 3), layer=0, assignments=[0]),
            r"^got 1 assignments for 2 samples$",
        ),
        (
            lambda: finetuning_shift_vectors(torch.ones(2, 3), torch.ones(3, 3), layer=0, original="base"),
            r"^original and fine-tuned activations must hold the same samples: \(2, 3\) vs \(3, 3\)$",
        ),
        (
            lambda: finetuning_shift_vectors(torch.ones(2), torch.ones(2, 3), layer=0, original="base"),
            r"^the base model's activations must be 2-D",
        ),
        (lambda: save_vectors(tmp_path / "none.safetensors", []), r"^no steering vectors to save$"),
        (
            lambda: concept_vectors(tmp_path / "absent.safetensors", layer=0),
            r"^concept dictionary not found: .*absent\.safetensors$",
        ),
    ]
    for make, message in cases:
        with pytest.raises(InputError, match=message):
            make()
    # dictionary files: a named matrix, the only tensor, or a clear refusal
    save_file({"components": torch.eye(3), "other": torch.ones(2)}, str(tmp_path / "named.safetensors"))
    save_file({"whatever": torch.eye(3)}, str(tmp_path / "single.safetensors"))
    save_file({"a": torch.eye(3), "b": torch.eye(3)}, str(tmp_path / "two.safetensors"))
    for name in ("named", "single"):
        assert torch.equal(
            concept_vectors(tmp_path / f"{name}.safetensors", layer=0, pairs=[(0, 1)])[0].vector,
            torch.tensor([-1.0, 1.0, 0.0]),
        )
    with pytest.raises(InputError, match=r"two\.safetensors holds tensors \['a', 'b'\]; none is a \(k, hidden\)"):
        concept_vectors(tmp_path / "two.safetensors", layer=0)

    class Fitted:  # sklearn style
        cluster_centers_ = np.eye(2, 3)

    assert torch.equal(concept_vectors(Fitted(), layer=1)[0].vector, torch.tensor([-1.0, 1.0, 0.0]))
    # a stored file with broken metadata
    path = save_vectors(tmp_path / "v.safetensors", vec)
    assert load_vectors(path)[0].describe() == vec.describe()
    tensors = {"0.vector": torch.ones(2)}
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"mmlens.steer.vectors": json.dumps({"x": 1})})
    with pytest.raises(
        InputError, match=r"bad\.safetensors has corrupt mmlens steering metadata \(KeyError: 'vectors'\)$"
    ):
        load_vectors(tmp_path / "bad.safetensors")
    nan = {"0.vector": torch.tensor([float("nan"), 1.0])}
    entry = {"index": 0, "layer": 0, "kind": "custom", "source": "s", "target": "t"}
    save_file(
        nan,
        str(tmp_path / "nan.safetensors"),
        metadata={"mmlens.steer.vectors": json.dumps({"version": 1, "vectors": [entry]})},
    )
    with pytest.raises(InputError, match=r"^the steering vector contains NaN"):
        load_vectors(tmp_path / "nan.safetensors")


def test_shuffled_control_is_the_mean_difference_after_permuting_the_labels():
    """The shuffled control by hand: the source and target rows' labels permuted by the seeded generator, then
    mean(target) - mean(source); it keeps the real vector's site, names, reference and contrasts."""
    import numpy as np

    from mmlens.errors import InputError
    from mmlens.steer import VectorKind, shuffled_vector

    gen = torch.Generator().manual_seed(4)
    acts = torch.randn(12, 5, generator=gen)
    labels = ["yes", "no", "maybe", "yes", "no", "no", "yes", "maybe", "yes", "no", "yes", "no"]
    vec = shuffled_vector(acts, labels, "yes", "no", layer=2, seed=7, model="m", position="p")
    keep = np.array([lab in ("yes", "no") for lab in labels])
    permuted = np.random.default_rng(7).permutation(np.array(labels, dtype=object)[keep])
    kept = acts[torch.from_numpy(keep)]
    expected = kept[torch.from_numpy(permuted == "no")].mean(0) - kept[torch.from_numpy(permuted == "yes")].mean(0)
    assert torch.allclose(vec.vector, expected, atol=1e-6)
    real = vector_from_labels(acts, labels, "yes", "no", layer=2, model="m", position="p")
    assert vec.kind is VectorKind.SHUFFLED and vec.info["seed"] == 7
    assert (vec.layer, vec.source, vec.target, vec.model, vec.position) == (2, "yes", "no", "m", "p")
    assert torch.equal(vec.reference, real.reference) and torch.equal(vec.contrasts, real.contrasts)
    default = shuffled_vector(acts, labels, "yes", "no", layer=2)
    assert torch.equal(default.vector, shuffled_vector(acts, labels, "yes", "no", layer=2, seed=0).vector)
    assert (default.model, default.position) == ("", "")
    with pytest.raises(InputError, match=r"^the activations must be 2-D \(samples, hidden\), got shape \(12,\)$"):
        shuffled_vector(torch.ones(12), labels, "yes", "no", layer=0)


def test_random_control_is_seeded_and_norm_matched():
    """The random control: a seeded Gaussian direction rescaled to the real vector's norm, reproducible from its
    seed (default 0), recording seed and the vector it matches; descriptions round the norm to 6 decimals."""
    from mmlens.steer import SteeringVector, VectorKind, random_like

    vec = SteeringVector(torch.tensor([0.1234567891, 2.0, -1.0]), 1, VectorKind.COARSE)
    rnd = random_like(vec, seed=3)
    direction = torch.randn(3, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(rnd.vector, direction / direction.norm() * vec.norm, atol=1e-6)
    assert rnd.info == {"seed": 3, "matched": vec.name} and rnd.kind is VectorKind.RANDOM
    assert torch.equal(random_like(vec).vector, random_like(vec, seed=0).vector)
    assert random_like(vec).info["seed"] == 0
    assert vec.describe()["norm"] == round(vec.norm, 6) != round(vec.norm, 7)


def test_vector_files_nested_folders_version_and_minimal_entries(tmp_path):
    """save_vectors creates missing folders and records the format version; a file whose entries carry only the
    required fields loads with empty model, position and info; labelled vectors default to empty model/position."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from mmlens.errors import InputError
    from mmlens.steer import SteeringVector, VectorKind, load_vectors, save_vectors

    vec = SteeringVector(torch.ones(3), 1, VectorKind.CUSTOM)
    path = save_vectors(tmp_path / "a" / "b" / "v.safetensors", vec)
    with safe_open(str(path), framework="pt") as handle:
        stored = json.loads(handle.metadata()["mmlens.steer.vectors"])
    assert stored["version"] == 1 and stored["vectors"][0]["name"] == vec.name
    entry = {"index": 0, "layer": 2, "kind": "custom", "source": "s", "target": "t"}
    save_file(
        {"0.vector": torch.ones(3)},
        str(tmp_path / "min.safetensors"),
        metadata={"mmlens.steer.vectors": json.dumps({"version": 1, "vectors": [entry]})},
    )
    loaded = load_vectors(tmp_path / "min.safetensors")[0]
    assert (loaded.model, loaded.position, dict(loaded.info), loaded.reference, loaded.contrasts) == (
        "",
        "",
        {},
        None,
        None,
    )
    labelled = vector_from_labels(torch.eye(2), ["a", "b"], "a", "b", layer=0)
    assert (labelled.model, labelled.position, labelled.contrasts) == ("", "", None)
    with pytest.raises(InputError, match=r"^the activations must be 2-D \(samples, hidden\), got shape \(2,\)$"):
        vector_from_labels(torch.ones(2), ["a", "b"], "a", "b", layer=0)
