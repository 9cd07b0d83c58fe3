"""AwA2-format loading of the synthetic set and of a real-AwA2-style directory, and pair lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sane.data import (
    ATTRIBUTES,
    CLASSES,
    COLOURS,
    SHAPES,
    AttributeDataset,
    Pair,
    Scene,
    make_pairs,
    read_pairs,
    render,
    scene_attributes,
    write_dataset,
    write_example_pair,
    write_pairs,
)
from sane.images import Preprocess, open_image

N = 84
IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    """A small synthetic data set written once for the module."""
    return write_dataset(tmp_path_factory.mktemp("shapes"), N, seed=3, image_size=IMAGE_SIZE, progress=False)


def index_names(path: Path) -> list[str]:
    """Names of an ``<idx>\\t<name>`` file, checking the indices count from 1."""
    lines = path.read_text().splitlines()
    assert [int(line.split("\t")[0]) for line in lines] == list(range(1, len(lines) + 1))
    return [line.split("\t")[1] for line in lines]


def test_write_dataset_produces_awa2_files(shapes_dir: Path):
    assert index_names(shapes_dir / "classes.txt") == CLASSES
    assert index_names(shapes_dir / "predicates.txt") == ATTRIBUTES
    matrix = np.loadtxt(shapes_dir / "predicate-matrix-binary.txt", dtype=int)
    assert matrix.shape == (42, len(ATTRIBUTES))
    # Class-level rows: shape and colour always hold for the class, other shapes and colours never.
    for k, name in enumerate(CLASSES):
        colour, shape = name.split("_")
        on = {a for a, v in zip(ATTRIBUTES, matrix[k]) if v}
        assert {shape, colour} <= on and not (on & (set(SHAPES) | set(COLOURS))) - {shape, colour}
    images = sorted((shapes_dir / "JPEGImages").rglob("*.jpg"))
    assert len(images) == N
    assert all(len(list((shapes_dir / "JPEGImages" / c).iterdir())) == N // 42 for c in CLASSES)
    first = shapes_dir / "JPEGImages" / "red_circle" / "red_circle_00001.jpg"
    assert first in images and Image.open(first).size == (IMAGE_SIZE, IMAGE_SIZE)
    mask = Image.open(shapes_dir / "masks" / "red_circle" / "red_circle_00001.png")
    assert mask.mode == "L" and set(np.unique(np.asarray(mask))) == {0, 255}
    train = (shapes_dir / "trainclasses.txt").read_text().split()
    test = (shapes_dir / "testclasses.txt").read_text().split()
    assert len(test) == round(0.2 * 42) and set(train) | set(test) == set(CLASSES)
    assert not set(train) & set(test)
    assert {c.split("_")[1] for c in train} == set(SHAPES)
    assert {c.split("_")[0] for c in train} == set(COLOURS)
    assert len((shapes_dir / "instance-attributes.txt").read_text().splitlines()) == N


def test_scenes_file_re_renders_the_images(shapes_dir: Path):
    records = [json.loads(line) for line in (shapes_dir / "scenes.jsonl").read_text().splitlines()]
    assert len(records) == N
    instance = {
        line.split()[0]: [int(v) for v in line.split()[1:]]
        for line in (shapes_dir / "instance-attributes.txt").read_text().splitlines()
    }
    for record in records[:: N // 6]:
        scene = Scene.from_dict(record["scene"])
        assert record["class"] == scene.class_name and record["path"].startswith(
            f"JPEGImages/{scene.class_name}/"
        )
        assert instance[record["path"]] == scene_attributes(scene).tolist()
        stored = np.asarray(Image.open(shapes_dir / record["path"]), dtype=float)
        fresh = np.asarray(render(scene, IMAGE_SIZE).image, dtype=float)
        assert np.abs(stored - fresh).mean() < 4  # equal up to JPEG loss
        mask_path = shapes_dir / (record["path"].replace("JPEGImages", "masks")[: -len(".jpg")] + ".png")
        mask = np.asarray(Image.open(mask_path))
        assert np.array_equal(mask > 0, render(scene, IMAGE_SIZE).mask)


def test_write_dataset_is_deterministic(tmp_path: Path, shapes_dir: Path):
    again = write_dataset(tmp_path / "again", N, seed=3, image_size=IMAGE_SIZE, progress=False)
    for name in ("scenes.jsonl", "testclasses.txt", "predicate-matrix-binary.txt", "instance-attributes.txt"):
        assert (again / name).read_bytes() == (shapes_dir / name).read_bytes()
    rel = "JPEGImages/blue_star/blue_star_00002.jpg"
    assert (again / rel).read_bytes() == (shapes_dir / rel).read_bytes()
    with pytest.raises(ValueError):
        write_dataset(tmp_path / "few", 10, progress=False)


def test_loader_reads_the_synthetic_set(shapes_dir: Path):
    train = AttributeDataset(shapes_dir, "train", Preprocess(size=48), with_masks=True)
    test = AttributeDataset(shapes_dir, "test", Preprocess(size=48))
    everything = AttributeDataset(shapes_dir, "all", Preprocess(size=48))
    assert len(train) > 0 and len(test) > 0 and len(train) + len(test) == len(everything) == N
    assert not {p for p, _ in train.samples} & {p for p, _ in test.samples}
    assert train.classes == CLASSES and train.attributes == ATTRIBUTES
    assert {train.classes[t].split("_")[1] for t in train.targets} == set(SHAPES)
    assert {train.classes[t].split("_")[0] for t in train.targets} == set(COLOURS)
    assert not set(train.targets) & set(test.targets)
    assert train.image_attributes.shape == (len(train), len(ATTRIBUTES))
    assert train.image_attributes.dtype == np.uint8
    assert train.scenes is not None and all(s is not None for s in train.scenes)

    item = train[5]
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
    assert item["label"] == train.targets[5] and item["index"] == 5
    assert item["attributes"].dtype == torch.float32 and item["attributes"].shape == (len(ATTRIBUTES),)
    scene = train.scenes[5]
    assert scene.class_name == CLASSES[item["label"]]
    assert item["attributes"].numpy().astype(np.uint8).tolist() == scene_attributes(scene).tolist()
    assert item["mask"].dtype == torch.bool and item["mask"].shape == (48, 48)
    # The mask covers the object: the mask centroid is where the scene puts the object.
    ys, xs = torch.nonzero(item["mask"], as_tuple=True)
    assert xs.float().mean().item() / 48 == pytest.approx(scene.x, abs=0.08)
    assert ys.float().mean().item() / 48 == pytest.approx(scene.y, abs=0.08)
    assert "mask" not in test[0]

    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=4)))
    assert batch["image"].shape == (4, 3, 48, 48) and batch["mask"].shape == (4, 48, 48)


def make_real_awa2(root: Path) -> Path:
    """A tiny real-AwA2-style directory: space/tab mixed index files, a '+' class, no extras."""
    root.mkdir(parents=True, exist_ok=True)
    classes = ["antelope", "grizzly+bear", "killer+whale"]
    (root / "classes.txt").write_text("1\tantelope\n2\tgrizzly+bear\n3 killer+whale\n")
    (root / "predicates.txt").write_text("1\tblack\n2\twhite\n3\tfurry\n4\tswims\n")
    (root / "predicate-matrix-binary.txt").write_text("0 1 1 0\n1 0 1 0\n1 1 0 1\n")
    (root / "trainclasses.txt").write_text("antelope\nkiller+whale\n")
    (root / "testclasses.txt").write_text("grizzly+bear\n")
    for k, name in enumerate(classes):
        (root / "JPEGImages" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40 + 10 * k, 30), (50 * k, 100, 20 * i)).save(
                root / "JPEGImages" / name / f"{name}_{10001 + i}.jpg"
            )
    return root


def test_loader_reads_a_real_awa2_style_directory(tmp_path: Path):
    root = make_real_awa2(tmp_path)
    train = AttributeDataset(root, "train", Preprocess(size=32), with_masks=True)
    assert train.classes == ["antelope", "grizzly+bear", "killer+whale"]
    assert train.attributes == ["black", "white", "furry", "swims"]
    assert train.targets == [0, 0, 2, 2]
    assert train.scenes is None
    assert train.image_attributes.tolist() == [[0, 1, 1, 0]] * 2 + [[1, 1, 0, 1]] * 2
    item = train[3]
    assert item["image"].shape == (3, 32, 32) and "mask" not in item
    assert item["attributes"].tolist() == [1.0, 1.0, 0.0, 1.0]
    test = AttributeDataset(root, "test")
    assert test.targets == [1, 1] and test.samples[0][0].endswith("grizzly+bear_10001.jpg")
    assert test.image_attributes.tolist() == [[1, 0, 1, 0]] * 2


def test_loader_names_missing_files(tmp_path: Path):
    root = make_real_awa2(tmp_path)
    (root / "predicate-matrix-binary.txt").unlink()
    with pytest.raises(FileNotFoundError, match="predicate-matrix-binary.txt"):
        AttributeDataset(root)
    root = make_real_awa2(tmp_path / "b")
    (root / "testclasses.txt").unlink()
    AttributeDataset(root, "train")
    with pytest.raises(FileNotFoundError, match="testclasses.txt"):
        AttributeDataset(root, "test")
    (root / "predicate-matrix-binary.txt").write_text("0 1 1 0\n1 0 1 0\n")
    with pytest.raises(ValueError, match="3 x 4"):
        AttributeDataset(root, "train")
    with pytest.raises(ValueError, match="split"):
        AttributeDataset(root, "valid")


def test_pair_list_round_trip_and_errors(tmp_path: Path):
    pairs = [Pair("a/x.jpg", "b/y.jpg", 1), Pair("c+d/z.jpg", "a/x.jpg", 0)]
    path = tmp_path / "pairs.txt"
    write_pairs(path, pairs)
    assert read_pairs(path) == pairs
    path.write_text("# header comment\n\na.jpg b.jpg 1\n   \nc.jpg d.jpg 0\n")
    assert read_pairs(path) == [Pair("a.jpg", "b.jpg", 1), Pair("c.jpg", "d.jpg", 0)]
    path.write_text("a.jpg b.jpg 1\n# fine\nc.jpg d.jpg maybe\n")
    with pytest.raises(ValueError, match=":3:"):
        read_pairs(path)
    path.write_text("a.jpg b.jpg\n")
    with pytest.raises(ValueError, match=":1:"):
        read_pairs(path)
    with pytest.raises(ValueError):
        write_pairs(path, [Pair("with space.jpg", "b.jpg", 1)])


def test_make_pairs_labels_match_classes(shapes_dir: Path):
    data = AttributeDataset(shapes_dir, "all", Preprocess(size=32))
    pairs = make_pairs(data, 40, seed=1, positive_fraction=0.25)
    assert pairs == make_pairs(data, 40, seed=1, positive_fraction=0.25)
    assert len(pairs) == 40 and sum(p.label for p in pairs) == 10
    for query, reference, label in pairs:
        assert (shapes_dir / query).is_file() and (shapes_dir / reference).is_file() and query != reference
        assert (Path(query).parent.name == Path(reference).parent.name) == bool(label)


def test_example_pair_shares_shape_and_colour(tmp_path: Path):
    query, reference = write_example_pair(tmp_path, seed=2, image_size=IMAGE_SIZE)
    assert query.name == "query.jpg" and reference.name == "reference.jpg"
    q, r = open_image(query), open_image(reference)
    assert q.size == r.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert np.abs(np.asarray(q, dtype=float) - np.asarray(r, dtype=float)).mean() > 5
