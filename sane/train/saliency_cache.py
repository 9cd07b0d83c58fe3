"""`sane cache-saliency`: the fixed-reference RISE maps that supervise SANE's activation maps (SPEC §3).

For each training image, up to ``refs`` other images of its class are drawn as references and one
RISE call explains the image against all of them at once (N masked forward passes, not N * refs).
The maps are area-downsampled (28x28 by default) and stored as float16 in a directory:

- ``manifest.json``: the settings, the similarity model's fingerprint and the split's image paths;
- ``chunk_<k>.npz``: ``image_index`` (n,), ``reference_index`` (n, refs; -1 = none),
  ``maps`` (n, refs, size, size) float16 and ``similarity`` (n, refs) float16.

Chunks are written atomically (temporary file, then rename) in a fixed, seeded order of the images,
so an interrupted run loses at most one chunk and a rerun computes only what is missing. ``limit``
caches the first images of that order (a class-balanced subset); a larger limit later extends it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sane.data import LabelledImageDataset, open_dataset
from sane.images import Preprocess
from sane.saliency import RISE
from sane.train.validation_split import DEFAULT_VAL_FRACTION, validation_split

MANIFEST = "manifest.json"
CACHE_FORMAT = 1


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the model's weights: a cache made with other weights is not reused by mistake."""
    digest = hashlib.blake2b(digest_size=12)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_order(targets: np.ndarray, candidates: np.ndarray, seed: int) -> np.ndarray:
    """Indices of the ``candidates`` (bool (N,)) in caching order: each class shuffled, then taken
    round-robin over the classes, so any prefix is a class-balanced subset."""
    rng = np.random.default_rng([seed, 23])
    per_class = [rng.permutation(np.flatnonzero(candidates & (targets == c))) for c in np.unique(targets[candidates])]
    longest = max((len(p) for p in per_class), default=0)
    return np.array([p[r] for r in range(longest) for p in per_class if r < len(p)], dtype=np.int64)


def sample_references(targets: np.ndarray, pool: np.ndarray, index: int, k: int, seed: int) -> np.ndarray:
    """Up to ``k`` other images of ``index``'s class from ``pool`` (bool (N,)), drawn with a seed of
    their own per image (so the draw does not depend on chunking or on which images ran before)."""
    same = np.flatnonzero(pool & (targets == targets[index]))
    same = same[same != index]
    rng = np.random.default_rng([seed, 29, int(index)])
    return np.sort(rng.choice(same, size=min(k, len(same)), replace=False)).astype(np.int64)


def _atomic_write(path: Path, write) -> None:
    """Write through ``write(file)`` to a temporary file beside ``path`` and rename it into place."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _chunk_path(out: Path, k: int) -> Path:
    """File of chunk ``k``."""
    return out / f"chunk_{k:05d}.npz"


def _chunk_done(path: Path, expected: np.ndarray) -> bool:
    """True if the chunk file exists, reads, and holds exactly the ``expected`` images."""
    if not path.is_file():
        return False
    try:
        with np.load(path) as data:
            return np.array_equal(data["image_index"], expected)
    except (OSError, ValueError, KeyError):  # a torn or foreign file: recompute it
        return False


def _check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Refuse to mix chunks of a cache made with other settings, model or images; else write the manifest."""
    path = out / MANIFEST
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [k for k in manifest if old.get(k) != manifest[k]]
        if diff:
            raise ValueError(
                f"{out} holds a saliency cache made with other {', '.join(diff)}: delete it or choose another --out"
            )
        return
    _atomic_write(path, lambda f: f.write((json.dumps(manifest, indent=1) + "\n").encode()))


def build_saliency_cache(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    model: nn.Module,
    preprocess: Preprocess,
    n_masks: int = 2000,
    grid: int = 8,
    p: float = 0.5,
    refs: int = 5,
    size: int = 28,
    limit: int | None = None,
    chunk_size: int = 32,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    batch_size: int = 250,
    device: str | torch.device = "cpu",
    progress: bool = True,
    pick_references: Callable[[np.ndarray, np.ndarray, int, int, int], np.ndarray] = sample_references,
) -> Path:
    """Cache RISE maps of the training images (minus the validation hold-out) into directory ``out``.

    ``pick_references(targets, pool, index, refs, seed)`` picks each image's references (indices; default
    :func:`sample_references`, other images of its class); another picker is recorded in the manifest
    by name, so a cache is never extended with references drawn otherwise.
    Returns ``out``. Rerunning with the same settings skips every chunk already written.
    """
    if refs < 1 or size < 1 or chunk_size < 1:
        raise ValueError(f"refs, size and chunk_size must be >= 1, got {refs}, {size}, {chunk_size}")
    dataset = open_dataset(data_dir, split="train", preprocess=preprocess)
    targets = np.asarray(dataset.targets)
    pool = ~validation_split(targets, val_fraction, seed)
    order = cache_order(targets, pool, seed)
    if limit is not None:
        order = order[: max(0, int(limit))]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(device).eval()
    manifest = {
        "format": CACHE_FORMAT,
        "method": "rise",
        "mode": "fixed",
        "n_masks": int(n_masks),
        "grid": int(grid),
        "p": float(p),
        "refs": int(refs),
        "size": int(size),
        "chunk_size": int(chunk_size),
        "val_fraction": float(val_fraction),
        "seed": int(seed),
        "split": "train",
        "input_size": preprocess.size,
        "model_fingerprint": model_fingerprint(model),
        "paths": [dataset.relative_path(i) for i in range(len(dataset))],
    }
    if pick_references is not sample_references:
        manifest["references"] = f"{pick_references.__module__}.{pick_references.__qualname__}"
    _check_manifest(out, manifest)
    chunks = [order[start : start + chunk_size] for start in range(0, len(order), chunk_size)]
    todo = [k for k, chunk in enumerate(chunks) if not _chunk_done(_chunk_path(out, k), chunk)]
    done_images = len(order) - sum(len(chunks[k]) for k in todo)
    rise = RISE(model, n_masks=n_masks, grid=grid, p=p, batch_size=batch_size, seed=seed, device=device,
                fuse=True, channels_last=True)  # BN folded, NHWC: the same maps, faster
    with tqdm(total=len(order), initial=done_images, desc="caching saliency", unit="img", disable=not progress) as bar:
        for k in todo:
            chunk = chunks[k]
            ref_index = np.full((len(chunk), refs), -1, dtype=np.int64)
            maps = np.zeros((len(chunk), refs, size, size), dtype=np.float16)
            sims = np.zeros((len(chunk), refs), dtype=np.float16)
            for row, index in enumerate(chunk):
                chosen = pick_references(targets, pool, int(index), refs, seed)
                if len(chosen):
                    query = dataset[int(index)]["image"]
                    references = dataset.stack_images(chosen)
                    result = rise.explain(query, references)  # one stream of N masks for all references
                    small = F.adaptive_avg_pool2d(result.query_map[:, None], size)[:, 0]
                    ref_index[row, : len(chosen)] = chosen
                    maps[row, : len(chosen)] = small.numpy().astype(np.float16)
                    sims[row, : len(chosen)] = result.similarity.numpy().astype(np.float16)
                bar.update(1)
            _atomic_write(
                _chunk_path(out, k),
                lambda f, c=chunk, r=ref_index, m=maps, s=sims: np.savez(
                    f, image_index=c, reference_index=r, maps=m, similarity=s
                ),
            )
    return out


class SaliencyCache:
    """A cache directory read back: manifest plus the concatenated chunks (maps stay float16)."""

    def __init__(self, path: str | os.PathLike):
        """Read ``manifest.json`` and every complete chunk of the directory ``path``."""
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"no saliency cache at {self.path} (missing {MANIFEST}); run sane cache-saliency")
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        parts: dict[str, list[np.ndarray]] = {"image_index": [], "reference_index": [], "maps": [], "similarity": []}
        for chunk in sorted(self.path.glob("chunk_*.npz")):
            with np.load(chunk) as data:
                for key in parts:
                    parts[key].append(data[key])
        refs, size = self.manifest["refs"], self.manifest["size"]
        empty = {"image_index": (0,), "reference_index": (0, refs), "maps": (0, refs, size, size), "similarity": (0, refs)}
        cat = {k: np.concatenate(v) if v else np.zeros(empty[k]) for k, v in parts.items()}
        self.image_index: np.ndarray = cat["image_index"].astype(np.int64)
        self.reference_index: np.ndarray = cat["reference_index"].astype(np.int64)
        self.maps: np.ndarray = cat["maps"].astype(np.float16)
        self.similarity: np.ndarray = cat["similarity"].astype(np.float16)

    def __len__(self) -> int:
        """Number of cached images."""
        return len(self.image_index)

    def aligned(self, dataset: LabelledImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
        """(maps (N, refs, size, size) float16, valid (N, refs) bool) indexed like ``dataset``'s images;
        images the cache does not cover get no valid map. Refuses a cache made from other images."""
        paths = self.manifest["paths"]
        by_path = {p: i for i, p in enumerate(paths)}
        refs, size = self.manifest["refs"], self.manifest["size"]
        maps = torch.zeros((len(dataset), refs, size, size), dtype=torch.float16)
        valid = torch.zeros((len(dataset), refs), dtype=torch.bool)
        position = {int(i): row for row, i in enumerate(self.image_index)}
        for n in range(len(dataset)):
            source = by_path.get(dataset.relative_path(n))
            if source is None or source not in position:
                continue
            row = position[source]
            maps[n] = torch.from_numpy(self.maps[row])
            valid[n] = torch.from_numpy(self.reference_index[row] >= 0)
        if len(self) and not valid.any():
            raise ValueError(f"the saliency cache {self.path} covers none of the images of {dataset.root}")
        return maps, valid
