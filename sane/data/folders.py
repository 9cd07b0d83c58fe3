"""The plain layouts users have: a folder of images per class, or an image folder plus a CSV.

- ``folders``: ``<root>/<class>/<image>.jpg``; attributes optionally from ``<root>/attributes.csv``
  (header ``class,<attribute>,...``, one 0/1 row per class, as AwA2's predicate matrix).
- ``csv``: ``<root>/labels.csv`` with header ``image,class[,<attribute>,...]`` (image paths relative
  to the root, attribute columns 0/1) and optionally a ``split`` column (train / test).

Without a ``split`` column the test classes are a fixed fifth of the classes (every class whose
position in a seeded shuffle of the sorted names falls in the last 20 %), so similarity is judged on
classes not trained on, as with AwA2.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from sane.data.awa2 import IMAGE_SUFFIXES, SPLITS
from sane.data.labelled import LabelledImageDataset
from sane.images import Preprocess

LABELS_FILE = "labels.csv"
CLASS_ATTRIBUTES_FILE = "attributes.csv"
TEST_SHARE = 0.2


def test_classes(classes: list[str], seed: int = 0) -> set[str]:
    """The held-out classes when the data says none: a seeded fifth (at least one) of them."""
    order = np.random.default_rng(seed).permutation(len(classes))
    n_test = max(1, round(TEST_SHARE * len(classes))) if len(classes) > 1 else 0
    return {classes[i] for i in order[len(classes) - n_test:]}


def is_class_folders(root: Path) -> bool:
    """Whether ``root`` has at least two sub-folders holding images (the folder-per-class layout)."""
    folders = [p for p in root.iterdir() if p.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir())]
    return len(folders) >= 2


def _read_csv(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{path}: the header must start with {','.join(required)}; missing {missing}")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    return header, rows


def _bits(path: Path, line: int, row: dict[str, str], columns: list[str]) -> np.ndarray:
    values = [row.get(c, "") for c in columns]
    if any(v not in ("0", "1") for v in values):
        raise ValueError(f"{path}:{line}: attribute columns must be 0 or 1, got {values}")
    return np.array([int(v) for v in values], dtype=np.uint8)


class FolderDataset(LabelledImageDataset):
    """Images with class labels (and attributes where given) in the ``folders`` or ``csv`` layout."""

    def __init__(self, root: str | Path, split: str = "train", preprocess: Preprocess | None = None,
                 with_masks: bool = False) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.preprocess = preprocess or Preprocess()
        labels = self.root / LABELS_FILE
        if labels.is_file():
            self.format = "csv"
            records = self._from_csv(labels)
        else:
            self.format = "folders"
            records = self._from_folders()
        self.classes = sorted({c for _, c, _, _ in records})
        if not self.classes:
            raise ValueError(f"{self.root}: no images found")
        held_out = test_classes(self.classes)
        keep, self.in_test = [], []  # in_test[i]: whether sample i belongs to the test split
        for path, cls, attrs, given in records:
            in_test = given == "test" if given else cls in held_out
            if split == "all" or (split == "test") == in_test:
                keep.append((path, cls, attrs))
                self.in_test.append(in_test)
        self.split_classes = sorted({c for _, c, _ in keep})
        self.samples = [(str(p), self.classes.index(c)) for p, c, _ in keep]
        self.targets = [label for _, label in self.samples]
        width = len(self.attributes)
        self.image_attributes = (np.stack([a for _, _, a in keep]) if keep else np.zeros((0, width), dtype=np.uint8))
        self.scenes = None
        self.mask_dir = None

    def _from_csv(self, path: Path) -> list[tuple[Path, str, np.ndarray, str]]:
        header, rows = _read_csv(path, ("image", "class"))
        self.attributes = [h for h in header if h not in ("image", "class", "split")]
        records = []
        for line, row in enumerate(rows, start=2):
            image = self.root / row["image"]
            if not image.is_file():
                raise FileNotFoundError(f"{path}:{line}: no image {row['image']} under {self.root}")
            if not row["class"]:
                raise ValueError(f"{path}:{line}: empty class")
            given = row.get("split", "")
            if given not in ("", "train", "test"):
                raise ValueError(f"{path}:{line}: split must be train or test, got {given!r}")
            records.append((image, row["class"], _bits(path, line, row, self.attributes), given))
        return records

    def _from_folders(self) -> list[tuple[Path, str, np.ndarray, str]]:
        table_path = self.root / CLASS_ATTRIBUTES_FILE
        table: dict[str, np.ndarray] = {}
        self.attributes = []
        if table_path.is_file():
            header, rows = _read_csv(table_path, ("class",))
            self.attributes = [h for h in header if h != "class"]
            table = {row["class"]: _bits(table_path, line, row, self.attributes) for line, row in enumerate(rows, 2)}
        records = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                continue
            if table and folder.name not in table:
                raise ValueError(f"{table_path} has no row for class {folder.name}")
            attrs = table.get(folder.name, np.zeros(len(self.attributes), dtype=np.uint8))
            records.extend((f, folder.name, attrs, "") for f in files)
        return records
