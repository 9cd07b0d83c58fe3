"""Attribute predictors (SPEC §3): SANE, its baselines and the random model; scores, maps, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sane.data import ATTRIBUTES, COLOURS, random_scene, render
from sane.images import Preprocess
from sane.models import (
    build_attribute_model,
    default_attribute_weights,
    load_attributes,
    predict_attributes,
    save_attributes,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


# -- models --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,arch,size,hw",
    [("sane", "compact", 112, 14), ("classifier", "compact", 112, 14), ("fashionsearchnet", "compact", 112, 14),
     ("random", "compact", 112, 14), ("sane", "resnet50", 64, 2), ("fashionsearchnet", "resnet50", 64, 2)],
)
def test_attribute_models_give_scores_and_maps(kind, arch, size, hw):
    model = build_attribute_model(kind, ATTRIBUTES, arch).eval()
    with torch.inference_mode():
        z, h = model(torch.randn(2, 3, size, size))
    assert z.shape == (2, len(ATTRIBUTES)) and h.shape == (2, len(ATTRIBUTES), hw, hw)
    assert torch.isfinite(z).all() and torch.isfinite(h).all()
    if kind in ("sane", "classifier"):
        torch.testing.assert_close(z, h.mean((2, 3)))  # scores are the global average of the AAMs


def test_random_model_is_a_function_of_the_image_and_seed():
    model = build_attribute_model("random", ATTRIBUTES)
    x = torch.randn(3, 3, 32, 32)
    z1, h1 = model(x)
    z2, h2 = model(x.flip(0))
    assert torch.equal(z1, z2.flip(0)) and torch.equal(h1, h2.flip(0))  # per image, not per call order
    assert not torch.equal(z1[0], z1[1])
    other = build_attribute_model("random", ATTRIBUTES, seed=1)
    assert not torch.equal(other(x)[0], z1)


def test_unknown_models_and_trunks_are_refused():
    with pytest.raises(ValueError, match="unknown attribute model"):
        build_attribute_model("vgg", ATTRIBUTES)
    with pytest.raises(ValueError, match="unknown trunk"):
        build_attribute_model("sane", ATTRIBUTES, "resnet18")


@pytest.mark.parametrize("kind", ["sane", "fashionsearchnet", "random"])
def test_checkpoint_round_trip(kind, tmp_path):
    model = build_attribute_model(kind, ATTRIBUTES[:5]).eval()
    pre = Preprocess(size=64, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    save_attributes(tmp_path / "a.pt", model, pre, thresholds=[0.1, 0.2, 0.3, 0.4, 0.5], note="x", skipped=[1])
    raw = torch.load(tmp_path / "a.pt", weights_only=True)
    assert raw["meta"] == {"note": "x"} and raw["kind"] == kind
    loaded, loaded_pre = load_attributes(tmp_path / "a.pt")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        for a, b in zip(loaded(x), model(x)):
            torch.testing.assert_close(a, b)
    assert loaded_pre == pre and not loaded.training and loaded.attributes == ATTRIBUTES[:5]
    assert loaded.kind == kind and torch.allclose(loaded.thresholds, torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]))


@pytest.mark.parametrize("kind", ["sane", "classifier"])
def test_bundled_attribute_models_load_and_name_colours(kind):
    path = default_attribute_weights(kind)
    assert path.is_file() and path.stat().st_size < 5_000_000
    model, pre = load_attributes(path)
    assert model.kind == kind and model.attributes == ATTRIBUTES and model.thresholds.shape == (len(ATTRIBUTES),)
    rng = np.random.default_rng(11)
    scenes = [random_scene(rng, colour=c) for c in COLOURS for _ in range(2)]
    images = torch.stack([pre.to_tensor(render(s, pre.size).image) for s in scenes])
    scores, maps = predict_attributes(model, images)
    colour_cols = [ATTRIBUTES.index(c) for c in COLOURS]
    predicted = [COLOURS[i] for i in scores[:, colour_cols].argmax(1)]
    assert sum(p == s.colour for p, s in zip(predicted, scenes)) >= 12  # colour test mAP is 0.97+
    assert maps.shape[-2:] == (14, 14)


def test_foreign_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_attributes(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a sane attribute checkpoint"):
        load_attributes(tmp_path / "other.pt")


