"""Loader for Polyvore Outfits directories (SPEC §8), with per-item attribute annotations.

Layout (the published data set plus one attribute file)::

    images/<item_id>.jpg                 one image per item (.jpeg and .png are accepted too)
    polyvore_item_metadata.json          {item_id: {"semantic_category": "tops", ...}, ...}
    nondisjoint/train.json               [{"set_id": "...", "items": [{"item_id": "...", "index": 1}, ...]}, ...]
    nondisjoint/valid.json               (same shape)
    nondisjoint/test.json                (same shape)
    polyvore_attributes.json             {item_id: ["attribute", ...], ...}

- A split's images are the distinct items of its outfits (sorted by item id). The "nondisjoint"
  version lets an item appear in outfits of several splits; ``version="disjoint"`` reads ``disjoint/``.
- The class of an item is its ``semantic_category`` (tops, bottoms, shoes, ...): similarity on
  Polyvore is "same category" for training, caching and evaluation alike, and the retrieval metric
  (SPEC §5) keeps to the query's category. Outfit co-membership is the other notion of a match;
  :func:`outfit_pairs` writes it as a pair list (:func:`sane.data.write_pairs`).
- Attributes: ``polyvore_attributes.json`` maps an item id to the list of attribute names it has.
  The vocabulary is every name in the file, sorted, so all splits share the columns. An item the file
  does not list has none of the attributes; a split none of whose items is listed is an error. Without
  the file (Polyvore Outfits as published) the data set has no attribute labels (``attributes`` is
  empty): `sane discover-attributes` finds some and writes them as this file.
- Splits: ``train``, ``test``, ``valid`` and ``all`` (the items of the three files). The pipeline
  validates on a per-class share of ``train`` (:mod:`sane.train.validation_split`), as on AwA2, and
  evaluates on ``test``; ``valid`` is there for evaluating on the published validation outfits.
- There are no object masks and no scenes: ``mask_dir`` and ``scenes`` are None.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from sane.data.labelled import LabelledImageDataset
from sane.data.pairs import Pair
from sane.images import Preprocess

METADATA_FILE = "polyvore_item_metadata.json"
ATTRIBUTES_FILE = "polyvore_attributes.json"
VERSIONS = ("nondisjoint", "disjoint")
SPLIT_FILES = ("train", "valid", "test")
SPLITS = ("train", "valid", "test", "all")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _item_id(value: Any, where: str) -> str:
    """An item id as a string (the published files use strings; integers are accepted)."""
    if isinstance(value, str) and value and not any(c.isspace() for c in value):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{where}: item_id must be a non-empty string without whitespace, got {value!r}")


def _read_json(root: Path, name: str) -> Any:
    """A JSON file of the directory, with errors that name it."""
    path = root / name
    if not path.is_file():
        raise FileNotFoundError(f"Polyvore Outfits directory {root} is incomplete: missing {name}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc


def read_outfits(root: Path, name: str) -> list[tuple[str, list[str]]]:
    """(set_id, [item_id, ...]) of every outfit in a split file, items in their ``index`` order."""
    data = _read_json(root, name)
    if not isinstance(data, list):
        raise ValueError(f"{root / name}: expected a JSON list of outfits {{'set_id', 'items'}}, got {type(data).__name__}")
    outfits = []
    for n, outfit in enumerate(data):
        where = f"{root / name}: outfit {n}"
        if not isinstance(outfit, dict) or "items" not in outfit or not isinstance(outfit["items"], list):
            raise ValueError(f"{where}: expected {{'set_id': ..., 'items': [{{'item_id', 'index'}}, ...]}}, got {outfit!r:.120}")
        set_id = str(outfit.get("set_id", n))
        items = []
        for m, item in enumerate(outfit["items"]):
            if not isinstance(item, dict) or "item_id" not in item:
                raise ValueError(f"{where} (set_id {set_id}), item {m}: expected {{'item_id', 'index'}}, got {item!r:.120}")
            index = item.get("index", m)
            if isinstance(index, bool) or not isinstance(index, int):
                raise ValueError(f"{where} (set_id {set_id}), item {m}: index must be an integer, got {index!r}")
            items.append((index, _item_id(item["item_id"], f"{where} (set_id {set_id}), item {m}")))
        outfits.append((set_id, [item_id for _, item_id in sorted(items)]))
    return outfits


def read_categories(root: Path) -> dict[str, str]:
    """item_id -> semantic_category from ``polyvore_item_metadata.json``."""
    data = _read_json(root, METADATA_FILE)
    if not isinstance(data, dict):
        raise ValueError(f"{root / METADATA_FILE}: expected a JSON object {{item_id: {{'semantic_category': ...}}}}")
    categories = {}
    for item_id, record in data.items():
        category = record.get("semantic_category") if isinstance(record, dict) else None
        if not isinstance(category, str) or not category.strip():
            raise ValueError(f"{root / METADATA_FILE}: item {item_id!r} needs a non-empty string 'semantic_category', "
                             f"got {record!r:.120}")
        categories[str(item_id)] = category.strip()
    return categories


def read_item_attributes(root: Path) -> dict[str, list[str]]:
    """item_id -> attribute names from ``polyvore_attributes.json`` ({item_id: [name, ...]})."""
    data = _read_json(root, ATTRIBUTES_FILE)
    if not isinstance(data, dict):
        raise ValueError(f"{root / ATTRIBUTES_FILE}: expected a JSON object {{item_id: [attribute name, ...]}}")
    table = {}
    for item_id, names in data.items():
        if not isinstance(names, list) or not all(isinstance(a, str) and a.strip() for a in names):
            raise ValueError(f"{root / ATTRIBUTES_FILE}: item {item_id!r} must map to a list of attribute names "
                             f"(non-empty strings), got {names!r:.120}")
        table[str(item_id)] = sorted({a.strip() for a in names})
    return table


class PolyvoreDataset(LabelledImageDataset):
    """Polyvore Outfits items with their semantic category as class and per-item attributes.

    The same interface as :class:`~sane.data.awa2.AttributeDataset` (see
    :class:`~sane.data.labelled.LabelledImageDataset`); ``outfits`` lists the split's
    (set_id, [item_id, ...]) and ``item_ids`` the item of each sample.
    """

    format = "polyvore"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        preprocess: Preprocess | None = None,
        with_masks: bool = False,
        version: str = "nondisjoint",
    ) -> None:
        """Read the metadata, the split's outfit file(s) and the attribute annotations.

        ``with_masks`` is accepted for interface parity; Polyvore has no masks (``mask_dir`` stays None).
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"Polyvore Outfits directory not found: {self.root}")
        self.split = split
        self.version = version
        self.preprocess = preprocess or Preprocess()
        categories = read_categories(self.root)
        self.classes: list[str] = sorted(set(categories.values()))
        labelled = (self.root / ATTRIBUTES_FILE).is_file()  # the published data set has no attribute file
        item_attributes = read_item_attributes(self.root) if labelled else {}
        self.attributes: list[str] = sorted({a for names in item_attributes.values() for a in names})
        if labelled and not self.attributes:
            raise ValueError(f"{self.root / ATTRIBUTES_FILE} names no attributes")

        files = SPLIT_FILES if split == "all" else (split,)
        self.outfits: list[tuple[str, list[str]]] = []
        source: dict[str, str] = {}  # item_id -> the file that first named it, for error messages
        for name in files:
            for set_id, items in read_outfits(self.root, f"{version}/{name}.json"):
                self.outfits.append((set_id, items))
                for item_id in items:
                    source.setdefault(item_id, f"{version}/{name}.json (set_id {set_id})")
        self.item_ids: list[str] = sorted(source)
        missing = [i for i in self.item_ids if i not in categories]
        if missing:
            raise ValueError(f"{self.root / METADATA_FILE} has no entry for item {missing[0]} of {source[missing[0]]}"
                             + (f" (and {len(missing) - 1} more items)" if len(missing) > 1 else ""))
        image_dir = self.root / "images"
        if not image_dir.is_dir():
            raise FileNotFoundError(f"Polyvore Outfits directory {self.root} is incomplete: missing images/")
        files_by_id = {p.stem: p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        absent = [i for i in self.item_ids if i not in files_by_id]
        if absent:
            raise FileNotFoundError(f"missing image images/{absent[0]}.jpg in {self.root} (item of {source[absent[0]]})"
                                    + (f"; {len(absent) - 1} more images are missing" if len(absent) > 1 else ""))

        label = {c: k for k, c in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = [(str(files_by_id[i]), label[categories[i]]) for i in self.item_ids]
        self.targets: list[int] = [t for _, t in self.samples]
        present = set(self.targets)
        self.split_classes: list[str] = [c for c in self.classes if label[c] in present]
        if labelled and self.item_ids and not any(i in item_attributes for i in self.item_ids):
            raise ValueError(f"{self.root / ATTRIBUTES_FILE} annotates none of the {len(self.item_ids)} items of "
                             f"split {split!r}: item ids must match those of {version}/*.json")
        column = {a: j for j, a in enumerate(self.attributes)}
        self.image_attributes: np.ndarray = np.zeros((len(self.item_ids), len(self.attributes)), dtype=np.uint8)
        for n, item_id in enumerate(self.item_ids):
            for a in item_attributes.get(item_id, ()):
                self.image_attributes[n, column[a]] = 1
        self.scenes = None
        self.mask_dir = None


def outfit_pairs(dataset: PolyvoreDataset) -> list[Pair]:
    """Every pair of distinct items that share an outfit of the split, as positive pairs (label 1) of
    paths relative to the root, each unordered pair once, in outfit order."""
    path = {item_id: dataset.relative_path(n) for n, item_id in enumerate(dataset.item_ids)}
    seen: set[tuple[str, str]] = set()
    pairs = []
    for _, items in dataset.outfits:
        for a, b in combinations(items, 2):
            key = (min(a, b), max(a, b))
            if a != b and key not in seen:
                seen.add(key)
                pairs.append(Pair(path[a], path[b], 1))
    return pairs
