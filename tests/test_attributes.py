"""Attribute models (SPEC §3): shapes, the saliency loss, AP/mAP, the saliency cache, training, checkpoints."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import CountingModel
from torch import nn

from sane.cli import main
from sane.data import ATTRIBUTES, COLOURS, AttributeDataset, random_scene, render, write_dataset
from sane.explain.map_match import heatmap_loss, saliency_target, spatial_softmax
from sane.images import Preprocess
from sane.metrics.average_precision import average_precision, mean_average_precision, per_attribute_ap
from sane.models import (
    build_attribute_model,
    build_embedding,
    default_attribute_weights,
    load_attributes,
    predict_attributes,
    save_attributes,
    save_similarity,
)
from sane.train.attribute_model import train_attributes
from sane.train.saliency_cache import SaliencyCache, build_saliency_cache
from sane.train.validation_split import validation_split

SMALL = 48  # image side of the test data: 6x6 activation maps with the compact trunk


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> str:
    """168 synthetic images (4 per class, 34 training classes) at 48 px."""
    root = tmp_path_factory.mktemp("shapes")
    write_dataset(root, 168, seed=5, image_size=SMALL, progress=False)
    return str(root)


@pytest.fixture(scope="module")
def similarity() -> nn.Module:
    """A small untrained similarity model: the cache only needs *a* model, deterministic on the CPU."""
    torch.manual_seed(0)
    return build_embedding("compact", dim=8).eval()


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


# -- the saliency loss ---------------------------------------------------------------------------


def _targets(b: int, k: int, hw: int = 6, seed: int = 0) -> torch.Tensor:
    return saliency_target(torch.rand(b, k, 12, 12, generator=torch.Generator().manual_seed(seed)), (hw, hw))


def test_loss_is_zero_when_a_positive_attribute_map_equals_the_target():
    targets = _targets(1, 1)
    maps = torch.randn(1, 4, 6, 6)
    maps[0, 2] = targets[0, 0].log().view(6, 6)  # softmax(log t) = t
    positives = torch.tensor([[1, 0, 1, 0]])
    loss = heatmap_loss(maps, targets, torch.ones(1, 1, dtype=torch.bool), positives)
    assert float(loss) < 1e-4
    # The same perfect map on an attribute the image does not have explains nothing.
    negative = heatmap_loss(maps, targets, torch.ones(1, 1, dtype=torch.bool), torch.tensor([[1, 0, 0, 1]]))
    assert float(negative) > 0.1


def test_loss_is_capped_at_one_and_ignores_padding_and_images_without_positives():
    gen = torch.Generator().manual_seed(3)
    maps = 50 * torch.randn(4, 5, 6, 6, generator=gen)  # extreme maps: distances near sqrt(2) get capped
    targets = _targets(4, 3, seed=1)
    valid = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]], dtype=torch.bool)
    positives = torch.tensor([[1, 0, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]])
    loss = heatmap_loss(maps, targets, valid, positives)
    assert 0.0 <= float(loss) <= 1.0
    garbage = targets.clone()
    garbage[0, 2] = torch.rand(36)  # a padded slot and an image without positives change nothing
    garbage[3] = torch.rand(3, 36)
    assert torch.equal(heatmap_loss(maps, garbage, valid, positives), loss)
    assert float(heatmap_loss(maps, targets, torch.zeros_like(valid), positives)) == 0.0


def test_loss_is_the_min_over_positives_averaged_over_maps():
    maps = torch.randn(1, 3, 6, 6)
    targets = _targets(1, 2)
    p = spatial_softmax(maps)[0]
    d = torch.cdist(targets[0], p)  # (2 targets, 3 attributes)
    expected = d[:, [0, 2]].amin(1).clamp(max=1).mean()
    loss = heatmap_loss(maps, targets, torch.ones(1, 2, dtype=torch.bool), torch.tensor([[1, 0, 1]]))
    torch.testing.assert_close(loss, expected)


def test_gradient_flows_only_into_maps_of_positive_attributes():
    maps = torch.randn(2, 6, 6, 6, requires_grad=True)
    positives = torch.tensor([[1, 1, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0]])
    heatmap_loss(maps, _targets(2, 3), torch.ones(2, 3, dtype=torch.bool), positives).backward()
    touched = maps.grad.abs().sum((2, 3)) > 0
    assert touched.any()
    assert not (touched & ~positives.bool()).any()
    assert touched[1, 3]


def test_saliency_targets_ignore_units_and_sharpen_with_tau():
    s = torch.rand(2, 28, 28, generator=torch.Generator().manual_seed(0))
    t = saliency_target(s, (14, 14), tau=10.0)
    torch.testing.assert_close(t.sum(-1), torch.ones(2))
    torch.testing.assert_close(saliency_target(1000 * s + 3, (14, 14), tau=10.0), t)  # affine-invariant
    assert (saliency_target(s, (14, 14), 30.0).amax(-1) > t.amax(-1)).all()
    flat = saliency_target(torch.full((1, 28, 28), 0.7), (14, 14))
    torch.testing.assert_close(flat, torch.full((1, 196), 1 / 196))


# -- AP / mAP ------------------------------------------------------------------------------------


def test_average_precision_by_hand():
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0.1, 0.9, 0.4], [1, 1, 1]) == pytest.approx(1.0)
    assert average_precision([0.9, 0.1], [0, 1]) == pytest.approx(0.5)
    # Tied scores are one threshold: precision 1/2 at recall 1/2, then 2/3 at recall 1.
    assert average_precision([0.5, 0.5, 0.1], [1, 0, 1]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert math.isnan(average_precision([0.3, 0.2], [0, 0]))


def test_mean_average_precision_skips_attributes_without_positives():
    scores = np.array([[0.9, 0.2, 0.5], [0.8, 0.7, 0.4], [0.7, 0.1, 0.3], [0.6, 0.3, 0.2]])
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    ap = per_attribute_ap(scores, labels)
    np.testing.assert_allclose(ap[:2], [(1 + 2 / 3) / 2, 1.0])
    assert math.isnan(ap[2])
    assert mean_average_precision(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)


def test_average_precision_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 6, 30) / 5.0  # many ties
        labels = rng.integers(0, 2, 30)
        labels[0] = 1
        assert average_precision(scores, labels) == pytest.approx(metrics.average_precision_score(labels, scores))


# -- the saliency cache ---------------------------------------------------------------------------


class Interrupting(nn.Module):
    """Raises KeyboardInterrupt once more than ``after`` images have been forwarded, like a Ctrl-C mid-run."""

    def __init__(self, inner: nn.Module, after: int):
        super().__init__()
        self.inner, self.after, self.seen = inner, after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        if self.seen > self.after:
            raise KeyboardInterrupt
        return self.inner(x)


CACHE = {"n_masks": 16, "batch_size": 16, "refs": 2, "size": 12, "chunk_size": 4, "limit": 12, "progress": False}
PER_IMAGE = 1 + 2 + 16  # images forwarded per cached image: query, its 2 references, 16 masked queries


def test_cache_resumes_after_an_interruption_without_recomputing(shapes, similarity, tmp_path):
    pre = Preprocess(SMALL)
    # Stop inside image 7 (counted in images forwarded), i.e. in the second chunk of four.
    with pytest.raises(KeyboardInterrupt):
        build_saliency_cache(shapes, tmp_path / "c", Interrupting(similarity, 6 * PER_IMAGE + 1), pre, **CACHE)
    assert len(SaliencyCache(tmp_path / "c")) == 4  # only the first chunk made it to disk
    counting = CountingModel(similarity)
    build_saliency_cache(shapes, tmp_path / "c", counting, pre, **CACHE)
    assert sum(counting.batches) == (12 - 4) * PER_IMAGE
    again = CountingModel(similarity)
    build_saliency_cache(shapes, tmp_path / "c", again, pre, **CACHE)
    assert again.batches == []
    # The resumed cache is the cache an uninterrupted run writes.
    build_saliency_cache(shapes, tmp_path / "ref", similarity, pre, **CACHE)
    resumed, reference = SaliencyCache(tmp_path / "c"), SaliencyCache(tmp_path / "ref")
    order = np.argsort(resumed.image_index)
    ref_order = np.argsort(reference.image_index)
    assert np.array_equal(resumed.image_index[order], reference.image_index[ref_order])
    assert np.array_equal(resumed.reference_index[order], reference.reference_index[ref_order])
    assert np.array_equal(resumed.maps[order], reference.maps[ref_order])


def test_cache_holds_same_class_references_of_training_images_only(shapes, similarity, tmp_path):
    pre = Preprocess(SMALL)
    build_saliency_cache(shapes, tmp_path, similarity, pre, **{**CACHE, "limit": 34})
    cache = SaliencyCache(tmp_path)
    dataset = AttributeDataset(shapes, "train", pre)
    targets = np.asarray(dataset.targets)
    val = validation_split(targets)
    assert cache.maps.dtype == np.float16 and cache.maps.shape == (34, 2, 12, 12)
    assert not val[cache.image_index].any()
    assert len(np.unique(targets[cache.image_index])) == 34  # the first 34 of the order: one per class
    for i, row in zip(cache.image_index, cache.reference_index):
        refs = row[row >= 0]
        assert len(refs) == 2 and i not in refs
        assert (targets[refs] == targets[i]).all() and not val[refs].any()
    maps, valid = cache.aligned(dataset)
    assert int(valid.any(1).sum()) == 34
    row = int(cache.image_index[0])
    assert torch.equal(maps[row], torch.from_numpy(cache.maps[0]))
    with pytest.raises(ValueError, match="other n_masks"):
        build_saliency_cache(shapes, tmp_path, similarity, pre, **{**CACHE, "n_masks": 8})


# -- training -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_improves_validation_map_and_keeps_the_best_checkpoint(shapes, similarity, tmp_path):
    pre = Preprocess(SMALL)
    # Maps for one image per class: the saliency term is active in most batches.
    build_saliency_cache(shapes, tmp_path / "cache", similarity, pre, **{**CACHE, "n_masks": 8, "batch_size": 8,
                                                                          "limit": 34, "chunk_size": 64})
    report = train_attributes(shapes, tmp_path / "sane.pt", "sane", cache=tmp_path / "cache", image_size=SMALL,
                              epochs=3, batch_size=16, lr=2e-3, lam=0.5, progress=False)
    assert report["best_map"] > report["initial_map"] + 0.1, report
    assert len(report["history"]) == 3 and report["best_map"] == max(report["history"])
    assert not (tmp_path / "sane.pt.state").exists()
    model, loaded_pre = load_attributes(tmp_path / "sane.pt")
    dataset = AttributeDataset(shapes, "train", loaded_pre)
    val = np.flatnonzero(validation_split(dataset.targets))
    images = torch.stack([dataset[int(i)]["image"] for i in val])
    scores, _ = predict_attributes(model, images)
    assert mean_average_precision(scores, dataset.image_attributes[val]) == pytest.approx(report["best_map"], abs=1e-5)
    assert model.thresholds.shape == (len(ATTRIBUTES),)


def test_training_resumes_from_the_last_finished_epoch(shapes, tmp_path, monkeypatch):
    import sane.train.attribute_model as module

    real_validate, calls = module._validate, []

    def validate_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # untrained model, epoch 1, then Ctrl-C during epoch 2's validation
            raise KeyboardInterrupt
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(module, "_validate", validate_then_interrupt)
    options = {"image_size": SMALL, "epochs": 2, "batch_size": 32, "limit": 32, "progress": False}
    with pytest.raises(KeyboardInterrupt):
        train_attributes(shapes, tmp_path / "c.pt", "classifier", **options)
    assert (tmp_path / "c.pt.state").is_file() and (tmp_path / "c.pt").is_file()
    first_epoch_map = torch.load(tmp_path / "c.pt.state", weights_only=True)["history"][0]
    calls.clear()
    report = train_attributes(shapes, tmp_path / "c.pt", "classifier", **options)
    assert len(calls) == 1  # only epoch 2 ran: no re-validation of the untrained model, no epoch 1
    assert report["history"][0] == first_epoch_map and len(report["history"]) == 2


def test_sane_needs_a_cache_and_random_is_not_trained(shapes, tmp_path):
    with pytest.raises(ValueError, match="saliency cache"):
        train_attributes(shapes, tmp_path / "m.pt", "sane", cache=None, progress=False)
    with pytest.raises(ValueError, match="kind must be one of"):
        train_attributes(shapes, tmp_path / "m.pt", "random", progress=False)


@pytest.mark.slow
def test_cli_caches_trains_and_evaluates(shapes, similarity, tmp_path, capsys):
    save_similarity(tmp_path / "sim.pt", similarity, Preprocess(SMALL))
    assert main(["cache-saliency", "--data", shapes, "--out", str(tmp_path / "cache"), "--model", str(tmp_path / "sim.pt"),
                 "--n-masks", "8", "--batch-size", "8", "--refs", "2", "--size", "12", "--limit", "16", "--quiet"]) == 0
    assert len(SaliencyCache(tmp_path / "cache")) == 16
    for kind in ("sane", "fashionsearchnet"):
        assert main(["train-attributes", "--model", kind, "--data", shapes, "--cache", str(tmp_path / "cache"),
                     "--out", str(tmp_path / f"{kind}.pt"), "--image-size", str(SMALL), "--epochs", "1",
                     "--limit", "32", "--batch-size", "32", "--quiet"]) == 0
    assert main(["eval-attributes", "--model", str(tmp_path / "sane.pt"), "--data", shapes, "--limit", "12", "--quiet",
                 "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "eval.json")]) == 0
    out = capsys.readouterr().out
    assert "validation mAP" in out and "pointing" in out and "L_hm" in out
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["n_images"] == 12 and 0 <= report["groups"]["colour"]["pointing_game"] <= 1
    assert report["saliency_agreement"]["n_images"] == 16 and 0 <= report["saliency_agreement"]["L_hm"] <= 1
    assert load_attributes(tmp_path / "fashionsearchnet.pt")[0].kind == "fashionsearchnet"


def test_best_f1_thresholds_cut_where_f1_peaks():
    from sane.train.attribute_model import best_f1_thresholds, positive_median_thresholds

    scores = torch.tensor([[0.9, 1.0], [0.8, 1.0], [0.3, 1.0], [0.2, 1.0], [0.1, 1.0]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    # Keeping the top 4 gives F1 2*3/(4+3) = 0.857, the best cut: between 0.2 and 0.1. No positives: 0.
    assert best_f1_thresholds(scores, labels) == pytest.approx([0.15, 0.0])
    # The paper's median of positives (0.8) would drop the positive scored 0.2.
    assert positive_median_thresholds(scores, labels)[0] == pytest.approx(0.8)
