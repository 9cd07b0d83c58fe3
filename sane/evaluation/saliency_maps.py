"""`sane eval-saliency`: generators compared on synthetic same-class pairs, against ground truth."""

from __future__ import annotations

import os
import time

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from sane.data import LabelledImageDataset, open_dataset
from sane.images import Preprocess
from sane.metrics import insertion_deletion, mass_inside, pointing_game
from sane.saliency import make_generator


def positive_pairs(dataset: LabelledImageDataset, n: int, seed: int = 0) -> list[tuple[int, int]]:
    """``n`` (query, reference) index pairs of distinct images of the same class."""
    rng = np.random.default_rng(seed)
    targets = np.asarray(dataset.targets)
    pairs = []
    for _ in range(n):
        q = int(rng.integers(len(targets)))
        same = np.flatnonzero((targets == targets[q]) & (np.arange(len(targets)) != q))
        pairs.append((q, int(rng.choice(same))))
    return pairs


def evaluate_saliency(
    model: nn.Module,
    preprocess: Preprocess,
    data_dir: str | os.PathLike,
    methods: tuple[str, ...] = ("rise", "sliding_window", "random"),
    n_pairs: int = 50,
    n_masks: int = 1000,
    n_samples: int | None = None,
    iterations: int | None = None,
    batch_size: int = 256,
    substrate: str = "constant",
    split: str = "test",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Insertion/deletion AUC (x100), pointing game and mass inside the object, per method.

    Maps are of the query for a fixed reference; each method sees the same pairs.
    """
    dataset = open_dataset(data_dir, split=split, preprocess=preprocess, with_masks=True)
    if dataset.mask_dir is None:
        raise ValueError(f"{data_dir} has no masks/ folder: eval-saliency needs object masks")
    pairs = positive_pairs(dataset, n_pairs, seed)
    items = {i: dataset[i] for pair in pairs for i in pair}
    tensor_pairs = [(items[q]["image"], items[r]["image"]) for q, r in pairs]
    table = {}
    for name in methods:
        generator = make_generator(
            model, name, n_masks=n_masks, n_samples=n_samples, iterations=iterations, batch_size=batch_size, seed=seed,
            preprocess=preprocess,
        )
        maps, seconds = [], []
        for q, r in tqdm(tensor_pairs, desc=f"explaining ({name})", disable=not progress):
            start = time.perf_counter()
            maps.append(generator.explain(q, r).query_map)
            seconds.append(time.perf_counter() - start)
        scores = insertion_deletion(model, tensor_pairs, maps, substrate=substrate, preprocess=preprocess)
        masks = [items[q]["mask"] for q, _ in pairs]
        table[name] = {
            "insertion": scores["insertion"],
            "deletion": scores["deletion"],
            "pointing_game": float(np.mean([pointing_game(m, k) for m, k in zip(maps, masks)])),
            "mass_inside": float(np.mean([mass_inside(m, k) for m, k in zip(maps, masks)])),
            "seconds_per_map": float(np.median(seconds)),
        }
    return table


def format_saliency_table(table: dict[str, dict[str, float]]) -> str:
    """The table as aligned text, one method a row."""
    cols = ["insertion", "deletion", "pointing_game", "mass_inside", "seconds_per_map"]
    heads = ["insertion^", "deletion_v", "pointing^", "mass_in^", "s/map"]
    lines = [f"{'method':<16}" + "".join(f"{h:>12}" for h in heads)]
    for name, row in table.items():
        lines.append(f"{name:<16}" + "".join(f"{row[c]:>12.3f}" for c in cols))
    return "\n".join(lines)

