"""Attribute discovery (the seed's §4): the three methods, the written vocabulary that every command
reads, contact sheets, naming, resuming, and recovery of Shapes with Attributes' true factors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sane.cli import main as sane_main
from sane.data import AttributeDataset, open_dataset, write_dataset
from sane.evaluation.discovery import attribute_factors, factor_values, purity, recovery
from sane.models import build_embedding, load_similarity
from sane.saliency import RISE
from sane.train.discovery import (
    DiscoverySettings,
    discover,
    grid_boxes,
    patch_box,
    rename_attributes,
    select_neighbours,
    write_vocabulary,
)

SMALL = {"n_attributes": 8, "neighbours": 6, "keep": 3, "n_masks": 200, "n_reference_masks": 20, "queries": 40,
         "batch_size": 128}


@pytest.fixture(scope="module")
def shapes112(tmp_path_factory) -> str:
    """126 synthetic images (3 per class) at the default model's 112 px."""
    root = tmp_path_factory.mktemp("shapes112")
    write_dataset(root, 126, seed=11, image_size=112, progress=False)
    return str(root)


@pytest.fixture(scope="module")
def model_and_data(shapes112):
    model, preprocess = load_similarity()
    return model, open_dataset(shapes112, split="all", preprocess=preprocess)


@pytest.fixture(scope="module")
def patch_run(model_and_data, tmp_path_factory):
    model, dataset = model_and_data
    cache = tmp_path_factory.mktemp("discovery-cache")
    return discover(model, dataset, DiscoverySettings(method="patch", **SMALL), cache_dir=cache, progress=False), cache


def untrained_similarity_112():
    """Another model than the default: discovery must not reuse the default's cached patches."""
    torch.manual_seed(1)
    return build_embedding("compact", dim=8).eval()


def test_neighbours_kept_are_the_most_similar_with_a_peak_in_the_most_common_cell():
    maps = torch.zeros((5, 14, 14))
    for k, (row, col) in enumerate([(1, 1), (12, 12), (1, 0), (0, 1), (13, 0)]):
        maps[k, row, col] = 1.0  # peaks: cells (0,0) for k = 0, 2, 3 at grid 7 (2 px cells)
    similarity = torch.tensor([0.5, 0.9, 0.7, 0.6, 0.8])
    assert select_neighbours(maps, similarity, grid=7, keep=2).tolist() == [2, 3]


def test_patches_are_squares_kept_inside_the_image():
    assert patch_box(2, 3, 30, 112) == (0, 0, 30, 30)
    assert patch_box(110, 56, 30, 112) == (41, 82, 71, 112)
    assert patch_box(50, 50, 200, 112) == (0, 0, 112, 112)


def test_patch_discovery_recovers_the_factors_the_model_matches_on_better_than_random(model_and_data, patch_run):
    model, dataset = model_and_data
    found, _ = patch_run
    # at most N patches per query (fewer when fewer neighbours peak in the most common cell), at least one
    assert SMALL["queries"] <= len(found.unit_image) <= SMALL["queries"] * SMALL["keep"]
    chance = discover(model, dataset, DiscoverySettings(method="random", **SMALL), progress=False)
    ours, rand = recovery(found, dataset), recovery(chance, dataset)
    # the default model matches on shape and colour (its classes): the patches' clusters carry them
    assert ours["class"]["nmi"] > rand["class"]["nmi"] + 0.1
    assert ours["colour"]["nmi"] > rand["colour"]["nmi"] + 0.1
    # every image with a patch has the attribute of each of its patches, and no other
    for u in range(len(found.unit_image)):
        assert found.image_attributes[found.unit_image[u], found.unit_cluster[u]] == 1
    assert found.image_attributes.sum() == len({(int(i), int(c)) for i, c in zip(found.unit_image, found.unit_cluster)})


def test_patches_come_from_the_peak_of_the_neighbours_own_map(model_and_data, patch_run):
    """Recompute one query's step 1-4 by hand with the library's RISE and find its patches."""
    model, dataset = model_and_data
    found, _ = patch_run
    images = dataset.stack_images()
    generator = RISE(model, n_masks=SMALL["n_masks"], n_reference_masks=SMALL["n_reference_masks"], batch_size=128)
    emb = generator.embedder(images).cpu()
    sims = generator.embedder.embedding.matrix(emb, emb)
    sims.fill_diagonal_(float("-inf"))
    q = int(np.random.default_rng(0).permutation(len(images))[0])
    near = torch.topk(sims[q], SMALL["neighbours"]).indices
    result = generator.explain(images[q], images[near], mode="both")
    kept = select_neighbours(result.query_map, result.similarity, 7, SMALL["keep"])
    first = [(int(near[k]), tuple(found.unit_box[i])) for i, k in enumerate(kept)]
    for i, (image, box) in enumerate(first):
        assert found.unit_image[i] == image
        row, col = divmod(int(result.reference_map[kept[i]].argmax()), 112)
        assert box == patch_box(row, col, 30, 112)


def test_an_interrupted_patch_run_resumes_from_its_cache(model_and_data, patch_run, monkeypatch):
    model, dataset = model_and_data
    found, cache = patch_run

    def no_forwards(*args, **kwargs):
        raise AssertionError("a cached chunk was recomputed")

    monkeypatch.setattr(RISE, "explain", no_forwards)
    again = discover(model, dataset, DiscoverySettings(method="patch", **SMALL), cache_dir=cache, progress=False)
    np.testing.assert_array_equal(again.unit_cluster, found.unit_cluster)
    np.testing.assert_array_equal(again.image_attributes, found.image_attributes)
    # another model (or other settings) never reads these chunks: it would explain with the other model
    with pytest.raises(AssertionError, match="recomputed"):
        discover(untrained_similarity_112(), dataset, DiscoverySettings(method="patch", **SMALL), cache_dir=cache,
                 progress=False)


def test_grid_patches_cover_the_image_at_half_a_patch_stride():
    boxes = grid_boxes(112, 30)
    covered = np.zeros((112, 112), dtype=bool)
    for left, top, right, bottom in boxes:
        assert right - left == bottom - top == 30 and 0 <= left and 0 <= top and right <= 112 and bottom <= 112
        covered[top:bottom, left:right] = True
    assert covered.all() and len(boxes) == 7 * 7
    starts = sorted({box[0] for box in boxes})
    assert max(np.diff(starts)) <= 15
    assert grid_boxes(20, 30) == [(0, 0, 20, 20)]


def test_propagation_labels_every_image_and_the_attributes_keep_their_meaning(model_and_data, patch_run):
    """40 queries label about half the images; propagation (the same clusters) labels them all, and an
    attribute that stood for a factor's value (its images agreeing on it) still stands for it."""
    model, dataset = model_and_data
    found, cache = patch_run
    spread = discover(model, dataset, DiscoverySettings(method="patch", propagate=True, **SMALL), cache_dir=cache,
                      progress=False)
    np.testing.assert_array_equal(spread.unit_cluster, found.unit_cluster)  # the salient patches, from the cache
    assert (spread.image_attributes >= found.image_attributes).all()
    covered = [int((d.image_attributes.sum(1) > 0).sum()) for d in (found, spread)]
    assert covered[0] < 0.7 * len(dataset) and covered[1] >= 0.95 * len(dataset)
    assert spread.image_attributes.sum(1).mean() < SMALL["n_attributes"] / 2  # not every cluster on every image
    values = factor_values(dataset)
    before, after = attribute_factors(found, values), attribute_factors(spread, values)
    meant = [a for a, s in enumerate(before) if s["factor"] is not None]
    assert len(meant) >= 3
    kept = [a for a in meant if (after[a]["factor"], after[a]["value"]) == (before[a]["factor"], before[a]["value"])]
    assert len(kept) >= len(meant) - 1
    assert np.mean([after[a]["agreement"] for a in kept]) >= np.mean([before[a]["agreement"] for a in kept]) - 0.1
    assert list(cache.glob("grid-*/grid-*.npz"))  # the grid patches' embeddings are kept for a rerun


def test_full_frame_gives_each_image_its_cluster_and_beats_random_on_the_class(model_and_data):
    model, dataset = model_and_data
    found = discover(model, dataset, DiscoverySettings(method="full-frame", n_attributes=8), progress=False)
    assert (found.image_attributes.sum(1) == 1).all() and len(found.unit_image) == len(dataset)
    chance = discover(model, dataset, DiscoverySettings(method="random", n_attributes=8), progress=False)
    assert recovery(found, dataset)["class"]["nmi"] > recovery(chance, dataset)["class"]["nmi"]


def test_purity_by_hand():
    clusters = np.array([0, 0, 0, 1, 1, 2])
    truth = np.array(["a", "a", "b", "b", "b", "c"])
    assert purity(clusters, truth) == pytest.approx(5 / 6)


def test_the_written_vocabulary_is_a_data_set_every_command_reads(model_and_data, patch_run, tmp_path):
    model, dataset = model_and_data
    found, _ = patch_run
    out = write_vocabulary(dataset, found, tmp_path / "vocab")
    relabelled = AttributeDataset(out, split="all")
    assert relabelled.attributes == found.attributes
    np.testing.assert_array_equal(relabelled.image_attributes, found.image_attributes)
    assert [relabelled.relative_path(i) for i in range(len(relabelled))] == found.images
    for split in ("train", "test"):  # the data set's own splits, unchanged
        assert len(AttributeDataset(out, split=split)) == len(AttributeDataset(dataset.root, split=split))
    vocabulary = json.loads((out / "discovered-attributes.json").read_text())
    assert [a["id"] for a in vocabulary["attributes"]] == found.attributes
    for attribute in vocabulary["attributes"]:
        sheet = np.asarray(Image.open(out / attribute["contact_sheet"]).convert("L"), dtype=np.float32)
        assert sheet.std() > 10  # patches on it, not a blank page
    # a person names two attributes in the JSON; every command then sees the names
    vocabulary["attributes"][0]["name"] = "red_things"
    vocabulary["attributes"][1]["name"] = "stripes"
    (out / "discovered-attributes.json").write_text(json.dumps(vocabulary))
    assert sane_main(["name-attributes", str(out)]) == 0
    assert AttributeDataset(out, split="all").attributes[:2] == ["red_things", "stripes"]
    vocabulary["attributes"][2]["name"] = "stripes"
    (out / "discovered-attributes.json").write_text(json.dumps(vocabulary))
    with pytest.raises(ValueError, match="distinct"):
        rename_attributes(out)


def test_bad_settings_are_refused_with_the_option_named():
    for bad, word in (({"method": "kmeans"}, "method"), ({"keep": 20, "neighbours": 10}, "keep"),
                      ({"n_attributes": 1}, "n_attributes"), ({"patch": 0}, "patch")):
        with pytest.raises(ValueError, match=word):
            DiscoverySettings(**bad).validate()


def test_the_command_writes_the_vocabulary_and_reports_recovery_on_synthetic_data(shapes112, tmp_path, capsys):
    out = tmp_path / "vocab"
    assert sane_main(["discover-attributes", "--data", shapes112, "--out", str(out), "--method", "full-frame",
                      "--n-attributes", "6", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "full-frame discovery: 6 attributes over 126 images; 126 of 126 images have one" in printed
    assert "recovery of the true factors" in printed and "colour*" not in printed  # no class factors marked here
    assert len(AttributeDataset(out, split="all").attributes) == 6
    assert sane_main(["discover-attributes", "--data", shapes112, "--out", str(out), "--keep", "20"]) == 2
    assert "keep (20) cannot exceed neighbours (10)" in capsys.readouterr().err
    patch = tmp_path / "patch"
    assert sane_main(["discover-attributes", "--data", shapes112, "--out", str(patch), "--n-attributes", "4",
                      "--queries", "8", "--n-masks", "100", "--reference-masks", "10", "--propagate", "--quiet"]) == 0
    assert "patch discovery: 4 attributes over" in (printed := capsys.readouterr().out)
    assert json.loads((patch / "discovered-attributes.json").read_text())["settings"]["propagate"] is True
    covered = int(printed.split("; ")[1].split(" of ")[0])
    assert covered > 8 * 5  # more images than the queries could have kept


def test_a_discovered_vocabulary_over_synthetic_images_gets_no_counterfactual_prior(model_and_data, patch_run,
                                                                                   tmp_path):
    """The counterfactual credits the synthetic factors; discovered attributes name none (auto: deletion)."""
    from sane.evaluation.prior import estimate_prior

    model, dataset = model_and_data
    found, _ = patch_run
    out = write_vocabulary(dataset, found, tmp_path / "vocab")
    with pytest.raises(ValueError, match="use the deletion measure"):
        estimate_prior(out, by="counterfactual")


def test_the_explaining_factor_check_credits_a_vocabulary_that_names_the_factor(model_and_data):
    """Item 4's counterfactual check: a vocabulary of the true colours names what explains exactly the pairs
    that colour explains; random clusters name nothing; the pairs' explaining factors are the model's."""
    from sane.evaluation.attribute_explanations import same_class_index_pairs
    from sane.evaluation.discovery import (
        attribute_factors,
        explaining_factor_found,
        explaining_factors,
        factor_values,
    )
    from sane.models.embedder import Embedder
    from sane.train.discovery import Discovery

    model, dataset = model_and_data
    values = factor_values(dataset)
    colours = sorted(set(values["colour"].tolist()))
    held = (values["colour"][:, None] == np.array(colours)[None]).astype(np.uint8)
    n = len(dataset)
    oracle = Discovery(DiscoverySettings(method="full-frame"), colours, held, np.arange(n), held.argmax(1),
                       np.zeros((n, 4), int), np.zeros(n))
    assert [(s["factor"], s["value"]) for s in attribute_factors(oracle, values)] == [("colour", c) for c in colours]
    pairs = same_class_index_pairs(dataset.targets, 40, np.random.default_rng(0))
    best = explaining_factors(Embedder(model), dataset.preprocess, dataset, pairs)
    assert sum(b in ("shape", "colour") for b in best) >= 0.8 * len(best)  # the default model matches on its classes
    report = explaining_factor_found(oracle, dataset, pairs, best)
    assert report["shared"] == 1.0 and report["found_when_shared"] == report["found"]  # same-class: same colour
    assert report["found"] == pytest.approx(np.mean([b == "colour" for b in best]))
    assert report["by_factor"]["colour"]["found"] == 1.0
    chance = discover(model, dataset, DiscoverySettings(method="random", n_attributes=8), progress=False)
    assert explaining_factor_found(chance, dataset, pairs, best)["found"] < 0.1
