"""Loader for AwA2-format directories: the real Animals with Attributes 2 and the synthetic shapes alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sane.data.labelled import LabelledImageDataset
from sane.data.synthetic import Scene
from sane.images import Preprocess

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test", "all")


def _required(root: Path, name: str) -> Path:
    """Path of a file the directory must have; a clear error naming it when it is missing."""
    path = root / name
    if not path.exists():
        raise FileNotFoundError(f"AwA2-format directory {root} is incomplete: missing {name}")
    return path


def _lines(path: Path) -> list[str]:
    """Non-blank, stripped lines of a text file."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_index(path: Path) -> list[str]:
    """Names from an AwA2 ``<idx> <name>`` file (tabs or spaces), in index order."""
    entries: list[tuple[int, str]] = []
    for number, line in enumerate(_lines(path), start=1):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path}:{number}: expected '<index> <name>', got {line!r}")
        entries.append((int(parts[0]), parts[1]))
    entries.sort()
    names = [name for _, name in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate names")
    return names


def _read_matrix(path: Path, rows: int, cols: int) -> np.ndarray:
    """A whitespace-separated 0/1 matrix of the expected shape, as uint8."""
    try:
        matrix = np.array([[int(v) for v in line.split()] for line in _lines(path)], dtype=np.int64)
    except ValueError as exc:
        raise ValueError(f"{path}: not a whitespace-separated integer matrix: {exc}") from exc
    if matrix.shape != (rows, cols):
        raise ValueError(
            f"{path}: expected a {rows} x {cols} matrix (classes x predicates), got {matrix.shape}"
        )
    if not np.isin(matrix, (0, 1)).all():
        raise ValueError(f"{path}: entries must be 0 or 1")
    return matrix.astype(np.uint8)


# The files that hold attribute labels; a directory with none of them is a data set without labels
# (`sane discover-attributes` gives it some).
ATTRIBUTE_FILES = ("predicates.txt", "predicate-matrix-binary.txt", "instance-attributes.txt")


class AttributeDataset(LabelledImageDataset):
    """Images with class labels and binary attributes from an AwA2-format directory.

    Per-image attributes come from ``instance-attributes.txt`` when present (the synthetic set), else
    from the image's class row of ``predicate-matrix-binary.txt`` (real AwA2). Labels index
    :attr:`classes`, the full class list, so train and test labels never collide.
    """

    format = "awa2"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        preprocess: Preprocess | None = None,
        with_masks: bool = False,
    ) -> None:
        """Read the directory's index files and list the images of ``split`` (train, test or all)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"AwA2-format directory not found: {self.root}")
        self.split = split
        self.preprocess = preprocess or Preprocess()
        self.classes: list[str] = read_index(_required(self.root, "classes.txt"))
        labels = [name for name in ATTRIBUTE_FILES if (self.root / name).exists()]
        if labels:  # attribute labels: predicates.txt and the class matrix (an unlabelled set has neither)
            self.attributes: list[str] = read_index(_required(self.root, "predicates.txt"))
            self.class_attributes: np.ndarray = _read_matrix(
                _required(self.root, "predicate-matrix-binary.txt"), len(self.classes), len(self.attributes)
            )
        else:
            self.attributes, self.class_attributes = [], np.zeros((len(self.classes), 0), dtype=np.uint8)
        image_dir = _required(self.root, "JPEGImages")

        if split == "all":
            split_classes = list(self.classes)
        else:
            split_classes = _lines(_required(self.root, f"{split}classes.txt"))
            unknown = [c for c in split_classes if c not in self.classes]
            if unknown:
                raise ValueError(f"{split}classes.txt names classes missing from classes.txt: {unknown}")
            split_classes.sort(key=self.classes.index)
        self.split_classes: list[str] = split_classes

        self.samples: list[tuple[str, int]] = []
        for name in split_classes:
            folder = image_dir / name
            if not folder.is_dir():
                raise FileNotFoundError(f"missing image folder JPEGImages/{name} in {self.root}")
            label = self.classes.index(name)
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            self.samples.extend((str(p), label) for p in files)
        self.targets: list[int] = [label for _, label in self.samples]

        self.image_attributes: np.ndarray = self._image_attributes()
        self.scenes: list[Scene | None] | None = self._scenes()
        self.mask_dir: Path | None = (
            self.root / "masks" if with_masks and (self.root / "masks").is_dir() else None
        )

    def _image_attributes(self) -> np.ndarray:
        """(N, A) uint8 attributes: instance-level when the directory has them, class-level otherwise."""
        path = self.root / "instance-attributes.txt"
        if not path.exists():
            return self.class_attributes[np.array(self.targets, dtype=np.int64)].reshape(
                len(self.samples), len(self.attributes)
            )
        table: dict[str, np.ndarray] = {}
        for number, line in enumerate(_lines(path), start=1):
            rel, *values = line.split()
            if len(values) != len(self.attributes) or any(v not in ("0", "1") for v in values):
                raise ValueError(
                    f"{path}:{number}: expected a path and {len(self.attributes)} 0/1 values, got {line!r}"
                )
            table[rel] = np.array([int(v) for v in values], dtype=np.uint8)
        rows = []
        for i in range(len(self.samples)):
            rel = self.relative_path(i)
            if rel not in table:
                raise ValueError(f"{path} has no attributes for image {rel}")
            rows.append(table[rel])
        return np.stack(rows) if rows else np.zeros((0, len(self.attributes)), dtype=np.uint8)

    def _scenes(self) -> list[Scene | None] | None:
        """Scene of each sample from ``scenes.jsonl`` (synthetic data), or None when there is no such file."""
        path = self.root / "scenes.jsonl"
        if not path.exists():
            return None
        by_path: dict[str, Scene] = {}
        for number, line in enumerate(_lines(path), start=1):
            try:
                record = json.loads(line)
                by_path[record["path"]] = Scene.from_dict(record["scene"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: bad scene record: {exc}") from exc
        return [by_path.get(self.relative_path(i)) for i in range(len(self.samples))]

    def _mask(self, index: int) -> torch.Tensor:
        """Ground-truth object mask of sample ``index``, resized (nearest) to the model input size."""
        assert self.mask_dir is not None
        path, label = self.samples[index]
        mask_path = self.mask_dir / self.classes[label] / (Path(path).stem + ".png")
        if not mask_path.exists():
            raise FileNotFoundError(f"missing mask {mask_path.relative_to(self.root)} in {self.root}")
        with Image.open(mask_path) as mask:
            size = self.preprocess.size
            resized = mask.convert("L").resize((size, size), Image.NEAREST)
        return torch.from_numpy(np.asarray(resized) >= 128)
