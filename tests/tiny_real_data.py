"""Tiny directories in the published AwA2 and Polyvore Outfits layouts (SPEC §8), for loader and pipeline tests.

Images are small JPEGs whose content follows their labels (a colour per colour attribute, stripes,
spots, a shape per class or category), so a model has something to learn in one epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"black": (20, 20, 20), "white": (235, 235, 235), "brown": (130, 80, 30), "red": (200, 30, 30)}


def draw_item(size: tuple[int, int], colour: str, box: tuple[float, float, float, float], striped: bool,
              spotted: bool, seed: int) -> Image.Image:
    """A grey-noise background with a coloured box (fractions of the image), striped and/or spotted."""
    rng = np.random.default_rng(seed)
    w, h = size
    background = (128 + rng.integers(-20, 20, size=(h, w, 3))).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
    jitter = rng.uniform(-2, 2, size=2)
    x0, x1, y0, y1 = x0 + jitter[0], x1 + jitter[0], y0 + jitter[1], y1 + jitter[1]
    draw.rectangle([x0, y0, x1, y1], fill=COLOURS[colour])
    if striped:
        for x in np.arange(x0, x1, 4):
            draw.line([x, y0, x, y1], fill=(250, 200, 0), width=1)
    if spotted:
        for _ in range(4):
            cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
            draw.ellipse([cx - 1.5, cy - 1.5, cx + 1.5, cy + 1.5], fill=(0, 90, 220))
    return image


AWA2_CLASSES = ["antelope", "grizzly+bear", "killer+whale", "dalmatian", "zebra"]
AWA2_TRAIN = ["antelope", "grizzly+bear", "killer+whale"]
AWA2_TEST = ["dalmatian", "zebra"]
AWA2_PREDICATES = ["black", "white", "brown", "stripes", "spots", "water"]
AWA2_MATRIX = {  # class -> predicates it has
    "antelope": {"brown", "white"},
    "grizzly+bear": {"brown"},
    "killer+whale": {"black", "white", "water"},
    "dalmatian": {"white", "spots"},
    "zebra": {"black", "white", "stripes"},
}
AWA2_PER_CLASS = 6


def write_tiny_awa2(root: Path, per_class: int = AWA2_PER_CLASS, size: int = 40) -> Path:
    """AwA2 layout: JPEGImages/<class>/<class>_<id>.jpg, index files (tabs and spaces), the class x
    predicate matrix, train/test class lists; 5 classes (3 train, 2 test), ``per_class`` images each."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{i}\t{c}\n" for i, c in enumerate(AWA2_CLASSES, 1)))
    (root / "predicates.txt").write_text("".join(f"{i} {p}\n" for i, p in enumerate(AWA2_PREDICATES, 1)))
    rows = [" ".join("1" if p in AWA2_MATRIX[c] else "0" for p in AWA2_PREDICATES) for c in AWA2_CLASSES]
    (root / "predicate-matrix-binary.txt").write_text("\n".join(rows) + "\n")
    (root / "trainclasses.txt").write_text("\n".join(AWA2_TRAIN) + "\n")
    (root / "testclasses.txt").write_text("\n".join(AWA2_TEST) + "\n")
    boxes = [(0.2, 0.3, 0.8, 0.7), (0.3, 0.2, 0.7, 0.8), (0.1, 0.5, 0.9, 0.9), (0.25, 0.25, 0.75, 0.75),
             (0.2, 0.1, 0.8, 0.6)]
    for k, name in enumerate(AWA2_CLASSES):
        folder = root / "JPEGImages" / name
        folder.mkdir(parents=True)
        has = AWA2_MATRIX[name]
        colour = "black" if "black" in has else "brown" if "brown" in has else "white"
        for i in range(per_class):
            image = draw_item((size, size - 8 * (i % 2)), colour, boxes[k], "stripes" in has, "spots" in has,
                              seed=100 * k + i)
            image.save(folder / f"{name}_{10001 + i}.jpg", quality=90)
    return root


POLYVORE_CATEGORIES = {"tops": (0.2, 0.05, 0.8, 0.5), "bottoms": (0.3, 0.45, 0.7, 0.95), "shoes": (0.25, 0.75, 0.75, 0.95)}
POLYVORE_ATTRIBUTES = ["black", "leather", "red", "striped", "white"]
POLYVORE_PER_CATEGORY = 7


def polyvore_item_id(category: int, n: int) -> str:
    """Ids like the published ones: digit strings."""
    return str(100200300 + 1000 * category + n)


def polyvore_item_attributes(category: int, n: int) -> list[str]:
    """A varied, deterministic attribute set: a colour, sometimes striped, leather shoes now and then."""
    names = [("black", "white", "red")[(n + category) % 3]]
    if n % 2 == 0:
        names.append("striped")
    if category == 2 and n % 3 != 1:
        names.append("leather")
    return names


def write_tiny_polyvore(root: Path, per_category: int = POLYVORE_PER_CATEGORY, size: int = 32) -> Path:
    """Polyvore Outfits layout with 3 categories x ``per_category`` items. Outfit j of train holds item j
    of every category (j < per_category - 1), valid the last item of each, test items 3.. (shared with
    train, as in the nondisjoint version). The last shoe is absent from the attribute file (no attributes)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "nondisjoint").mkdir(exist_ok=True)
    metadata, attributes = {}, {}
    for c, (category, box) in enumerate(POLYVORE_CATEGORIES.items()):
        for n in range(per_category):
            item = polyvore_item_id(c, n)
            names = polyvore_item_attributes(c, n)
            metadata[item] = {"semantic_category": category, "category_id": str(10 + c), "title": f"item {n}"}
            if not (c == 2 and n == per_category - 1):
                attributes[item] = names
            colour = next(a for a in names if a in COLOURS)
            draw_item((size, size), colour, box, "striped" in names, False, seed=1000 * c + n).save(
                root / "images" / f"{item}.jpg", quality=90)

    def outfit(set_id: str, n: int) -> dict:
        return {"set_id": set_id, "items": [{"item_id": polyvore_item_id(c, n), "index": c + 1} for c in range(3)]}

    splits = {
        "train": [outfit(f"5{n:03d}", n) for n in range(per_category - 1)],
        "valid": [outfit("6000", per_category - 1)],
        "test": [outfit(f"7{n:03d}", n) for n in range(3, per_category)],
    }
    for name, outfits in splits.items():
        (root / "nondisjoint" / f"{name}.json").write_text(json.dumps(outfits))
    (root / "polyvore_item_metadata.json").write_text(json.dumps(metadata))
    (root / "polyvore_attributes.json").write_text(json.dumps(attributes))
    return root


def _awa2_images(per_class: int, size: int):
    """(class, image, attributes) of the tiny AwA2 classes, drawn as :func:`write_tiny_awa2` draws them."""
    boxes = [(0.2, 0.3, 0.8, 0.7), (0.3, 0.2, 0.7, 0.8), (0.1, 0.5, 0.9, 0.9), (0.25, 0.25, 0.75, 0.75),
             (0.2, 0.1, 0.8, 0.6)]
    for k, name in enumerate(AWA2_CLASSES):
        has = AWA2_MATRIX[name]
        colour = "black" if "black" in has else "brown" if "brown" in has else "white"
        for i in range(per_class):
            yield name, i, draw_item((size, size), colour, boxes[k], "stripes" in has, "spots" in has, 100 * k + i), has


def write_tiny_csv(root: Path, per_class: int = AWA2_PER_CLASS, size: int = 40) -> Path:
    """The CSV layout: images/<name>.jpg and labels.csv (image,class,<attributes>,split); the AwA2 split."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["image,class," + ",".join(AWA2_PREDICATES) + ",split"]
    for name, i, image, has in _awa2_images(per_class, size):
        rel = f"images/{name}_{i}.jpg"
        image.save(root / rel, quality=90)
        bits = ",".join("1" if p in has else "0" for p in AWA2_PREDICATES)
        lines.append(f"{rel},{name},{bits},{'test' if name in AWA2_TEST else 'train'}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def write_tiny_folders(root: Path, per_class: int = AWA2_PER_CLASS, size: int = 40) -> Path:
    """The folder-per-class layout: <class>/<image>.jpg plus attributes.csv (class,<attributes>)."""
    rows = ["class," + ",".join(AWA2_PREDICATES)]
    for name, i, image, has in _awa2_images(per_class, size):
        (root / name).mkdir(parents=True, exist_ok=True)
        image.save(root / name / f"{i}.jpg", quality=90)
        if i == 0:
            rows.append(name + "," + ",".join("1" if p in has else "0" for p in AWA2_PREDICATES))
    (root / "attributes.csv").write_text("\n".join(rows) + "\n")
    return root
