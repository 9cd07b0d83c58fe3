"""Pair lists (SPEC §8): one ``query reference label`` line per pair, label 1 = similar, 0 = not."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from sane.data.labelled import LabelledImageDataset


class Pair(NamedTuple):
    """A query/reference image pair and whether they are similar (1) or not (0)."""

    query: str
    reference: str
    label: int


def read_pairs(path: str | Path) -> list[Pair]:
    """Parse a pair list; blank lines and ``#`` comments are skipped, bad lines raise ValueError."""
    pairs: list[Pair] = []
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3 or parts[2] not in ("0", "1"):
            raise ValueError(
                f"{path}:{number}: expected 'query reference label' with label 0 or 1, got {raw!r}"
            )
        pairs.append(Pair(parts[0], parts[1], int(parts[2])))
    return pairs


def write_pairs(path: str | Path, pairs: list[Pair]) -> None:
    """Write pairs one per line; paths with whitespace cannot be represented and raise ValueError."""
    lines = []
    for pair in pairs:
        query, reference, label = pair
        for p in (query, reference):
            if not p or any(c.isspace() for c in p):
                raise ValueError(f"pair paths must be non-empty and contain no whitespace: {p!r}")
        if label not in (0, 1):
            raise ValueError(f"pair label must be 0 or 1, got {label!r}")
        lines.append(f"{query} {reference} {int(label)}\n")
    Path(path).write_text("".join(lines))


def make_pairs(
    dataset: LabelledImageDataset, n: int, seed: int = 0, positive_fraction: float = 0.5
) -> list[Pair]:
    """Draw ``n`` random pairs from a data set (positive = same class), paths relative to its root."""
    if n < 0 or not 0.0 <= positive_fraction <= 1.0:
        raise ValueError("n must be >= 0 and positive_fraction in [0, 1]")
    rng = np.random.default_rng(seed)
    targets = np.asarray(dataset.targets, dtype=np.int64)
    by_class = {int(c): np.flatnonzero(targets == c) for c in np.unique(targets)}
    n_positive = round(n * positive_fraction)
    n_negative = n - n_positive
    positive_classes = [c for c, idx in by_class.items() if len(idx) >= 2]
    if n_positive and not positive_classes:
        raise ValueError("positive pairs need a class with at least two images")
    if n_negative and len(by_class) < 2:
        raise ValueError("negative pairs need images of at least two classes")

    def rel(i: int) -> str:
        return dataset.relative_path(int(i))

    pairs: list[Pair] = []
    for _ in range(n_positive):
        # Weight classes by size so every image is about equally likely to be a query.
        sizes = np.array([len(by_class[c]) for c in positive_classes], dtype=np.float64)
        c = positive_classes[int(rng.choice(len(positive_classes), p=sizes / sizes.sum()))]
        q, r = rng.choice(by_class[c], size=2, replace=False)
        pairs.append(Pair(rel(q), rel(r), 1))
    for _ in range(n_negative):
        q = int(rng.integers(len(targets)))
        others = np.flatnonzero(targets != targets[q])
        pairs.append(Pair(rel(q), rel(others[int(rng.integers(len(others)))]), 0))
    order = rng.permutation(len(pairs))
    return [pairs[i] for i in order]
