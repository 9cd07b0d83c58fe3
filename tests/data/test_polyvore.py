"""Polyvore Outfits loading, format detection (AwA2 vs Polyvore) and the errors for broken directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_real_data import (
    AWA2_CLASSES,
    AWA2_MATRIX,
    AWA2_PREDICATES,
    AWA2_TEST,
    POLYVORE_ATTRIBUTES,
    POLYVORE_CATEGORIES,
    POLYVORE_PER_CATEGORY,
    polyvore_item_attributes,
    polyvore_item_id,
    write_tiny_awa2,
    write_tiny_polyvore,
)

from sane.data import (
    AttributeDataset,
    PolyvoreDataset,
    detect_format,
    make_pairs,
    open_dataset,
    outfit_pairs,
    read_pairs,
    write_pairs,
)
from sane.images import Preprocess


@pytest.fixture(scope="module")
def polyvore(tmp_path_factory) -> Path:
    return write_tiny_polyvore(tmp_path_factory.mktemp("polyvore"))


@pytest.fixture
def broken(polyvore, tmp_path) -> Path:
    """A fresh copy of the tiny Polyvore directory for a test to damage."""
    return Path(shutil.copytree(polyvore, tmp_path / "copy"))


def item(category: int, n: int) -> str:
    return polyvore_item_id(category, n)


def test_polyvore_splits_classes_and_attributes(polyvore: Path):
    train = PolyvoreDataset(polyvore, "train", Preprocess(size=24))
    test = PolyvoreDataset(polyvore, "test")
    valid = PolyvoreDataset(polyvore, "valid")
    everything = PolyvoreDataset(polyvore, "all")
    categories = sorted(POLYVORE_CATEGORIES)
    assert train.format == "polyvore" and train.classes == test.classes == categories
    assert train.attributes == test.attributes == POLYVORE_ATTRIBUTES  # the file's vocabulary, sorted
    per = POLYVORE_PER_CATEGORY
    assert (len(train), len(valid), len(test), len(everything)) == (3 * (per - 1), 3, 3 * (per - 3), 3 * per)
    assert train.item_ids == sorted(train.item_ids) and train.split_classes == categories
    # nondisjoint: test outfits reuse training items; "all" lists each item once.
    assert set(test.item_ids) & set(train.item_ids) and len(set(everything.item_ids)) == len(everything)
    category_of = {item(c, n): name for c, name in enumerate(POLYVORE_CATEGORIES) for n in range(per)}
    for ds in (train, test, valid):
        assert [ds.classes[t] for t in ds.targets] == [category_of[i] for i in ds.item_ids]
        assert ds.relative_path(0) == f"images/{ds.item_ids[0]}.jpg" and ds.scenes is None and ds.mask_dir is None
    for n, item_id in enumerate(everything.item_ids):
        c, k = divmod(int(item_id) - 100200300, 1000)
        expected = set() if (c, k) == (2, per - 1) else set(polyvore_item_attributes(c, k))  # unlisted item: none
        assert {a for a, v in zip(everything.attributes, everything.image_attributes[n]) if v} == expected
    assert everything.image_attributes.dtype == np.uint8


def test_polyvore_items_load_like_awa2_samples(polyvore: Path):
    data = PolyvoreDataset(polyvore, "test", Preprocess(size=24), with_masks=True)
    sample = data[2]
    assert sample["image"].shape == (3, 24, 24) and sample["image"].dtype == torch.float32
    assert sample["label"] == data.targets[2] and sample["index"] == 2 and "mask" not in sample
    assert sample["attributes"].tolist() == data.image_attributes[2].astype(float).tolist()
    stack = data.stack_images([0, 2])
    assert torch.equal(stack[1], sample["image"])
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=4)))
    assert batch["image"].shape == (4, 3, 24, 24) and batch["attributes"].shape == (4, len(POLYVORE_ATTRIBUTES))


def test_outfit_and_category_pair_lists(polyvore: Path, tmp_path: Path):
    test = PolyvoreDataset(polyvore, "test")
    pairs = outfit_pairs(test)
    assert len(pairs) == 3 * len(test.outfits)  # three items per outfit: three unordered pairs
    outfit_sets = [set(items) for _, items in test.outfits]
    for query, reference, label in pairs:
        q, r = Path(query).stem, Path(reference).stem
        assert label == 1 and q != r and any({q, r} <= s for s in outfit_sets)
        assert (polyvore / query).is_file() and (polyvore / reference).is_file()
    write_pairs(tmp_path / "outfits.txt", pairs)
    assert read_pairs(tmp_path / "outfits.txt") == pairs
    # make_pairs works on any layout: positive = same category.
    by_path = {test.relative_path(i): test.targets[i] for i in range(len(test))}
    for query, reference, label in make_pairs(test, 20, seed=0):
        assert (by_path[query] == by_path[reference]) == bool(label)


def test_polyvore_version_and_split_options(polyvore: Path, broken: Path):
    with pytest.raises(ValueError, match="split must be one of"):
        PolyvoreDataset(polyvore, "validation")
    with pytest.raises(FileNotFoundError, match="missing disjoint/train.json"):
        PolyvoreDataset(polyvore, "train", version="disjoint")
    shutil.copytree(broken / "nondisjoint", broken / "disjoint")
    assert PolyvoreDataset(broken, "test", version="disjoint").item_ids == PolyvoreDataset(broken, "test").item_ids


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (lambda r: (r / "polyvore_item_metadata.json").unlink(), FileNotFoundError, "missing polyvore_item_metadata.json"),
        (lambda r: (r / "nondisjoint" / "train.json").unlink(), FileNotFoundError, "missing nondisjoint/train.json"),
        (lambda r: (r / "images" / f"{item(1, 2)}.jpg").unlink(), FileNotFoundError,
         rf"images/{item(1, 2)}\.jpg .*nondisjoint/train\.json \(set_id 5002\)"),
        (lambda r: (r / "nondisjoint" / "train.json").write_text("{not json"), ValueError, r"train\.json: not valid JSON"),
        (lambda r: (r / "nondisjoint" / "train.json").write_text('{"set_id": 1}'), ValueError, "expected a JSON list"),
        (lambda r: (r / "nondisjoint" / "train.json").write_text('[{"set_id": "9", "items": [{"index": 1}]}]'),
         ValueError, r"train\.json: outfit 0 \(set_id 9\), item 0: expected"),
        (lambda r: (r / "nondisjoint" / "train.json").write_text('[{"set_id": "9", "items": [{"item_id": "a b"}]}]'),
         ValueError, "item_id must be"),
        (lambda r: (r / "polyvore_item_metadata.json").write_text(json.dumps({item(0, 0): {"title": "x"}})),
         ValueError, f"item '{item(0, 0)}' needs a non-empty string 'semantic_category'"),
        (lambda r: (r / "polyvore_item_metadata.json").write_text(json.dumps({item(0, 0): {"semantic_category": "tops"}})),
         ValueError, rf"no entry for item {item(0, 1)} of nondisjoint/train\.json \(set_id 5001\) \(and 16 more"),
        (lambda r: (r / "polyvore_attributes.json").write_text(json.dumps({item(0, 0): "red"})),
         ValueError, f"item '{item(0, 0)}' must map to a list of attribute names"),
        (lambda r: (r / "polyvore_attributes.json").write_text(json.dumps({"999": ["red"]})),
         ValueError, "annotates none of the 18 items of split 'train'"),
    ],
)
def test_broken_polyvore_directories_name_the_file_and_entry(broken: Path, damage, error, message):
    damage(broken)
    with pytest.raises(error, match=message):
        PolyvoreDataset(broken, "train")


def test_only_the_split_files_asked_for_are_needed(broken: Path):
    (broken / "nondisjoint" / "valid.json").unlink()
    assert len(PolyvoreDataset(broken, "test")) > 0
    with pytest.raises(FileNotFoundError, match="nondisjoint/valid.json"):
        PolyvoreDataset(broken, "all")


def test_format_detection_and_open_dataset(polyvore: Path, tmp_path: Path):
    awa2 = write_tiny_awa2(tmp_path / "awa2", per_class=2, size=16)
    assert detect_format(awa2) == "awa2" and detect_format(polyvore) == "polyvore"
    test = open_dataset(awa2, "test", Preprocess(size=16))
    assert isinstance(test, AttributeDataset) and test.format == "awa2"
    assert [test.classes[t] for t in test.targets] == [c for c in AWA2_TEST for _ in range(2)]
    assert test.classes == AWA2_CLASSES and test.attributes == AWA2_PREDICATES
    zebra = AWA2_CLASSES.index("zebra")
    row = test.image_attributes[test.targets.index(zebra)]
    assert {a for a, v in zip(AWA2_PREDICATES, row) if v} == AWA2_MATRIX["zebra"]
    assert isinstance(open_dataset(polyvore, "valid"), PolyvoreDataset)

    with pytest.raises(FileNotFoundError, match="not found"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"not a data directory.*JPEGImages.*polyvore_item_metadata.*labels.csv"):
        open_dataset(tmp_path / "empty")
    # A directory meant as one layout reaches that loader, which names what is missing.
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "polyvore_attributes.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="missing polyvore_item_metadata.json"):
        open_dataset(tmp_path / "half")
    (tmp_path / "half" / "classes.txt").write_text("1 a\n")
    with pytest.raises(ValueError, match="mixes the AwA2 and Polyvore Outfits layouts"):
        detect_format(tmp_path / "half")


def test_polyvore_as_published_loads_without_attribute_labels(broken: Path):
    (broken / "polyvore_attributes.json").unlink()  # the published data set has no attribute file
    dataset = open_dataset(broken, split="train")
    assert dataset.format == "polyvore" and dataset.attributes == [] and dataset.image_attributes.shape[1] == 0
    assert len(dataset) > 0 and len(dataset.classes) == 3  # images and categories as with labels
    with pytest.raises(ValueError, match="sane discover-attributes"):
        dataset.require_attributes()
