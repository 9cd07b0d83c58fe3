"""Attribute discovery for data without attribute labels (the seed's supplementary §4; SPEC §7).

Three ways to give every image a set of discovered attributes (cluster ids):

- ``patch`` (the seed's saliency-based discovery): for each query, its K nearest neighbours by the
  similarity model; one RISE stream in mode ``both`` gives the query's map for every neighbour and
  every neighbour's own map with the query as reference (N + K x R forward passes, not K x N). Keep
  the neighbours whose query-map peak falls in the most common cell of a ``grid`` x ``grid`` grid,
  the top ``keep`` of them by similarity; crop a ``patch`` x ``patch`` square around the peak of each
  kept neighbour's own map, upsample it to the model's input size and embed it. The patches of all
  queries are clustered (k-means); an image gets every cluster one of its patches falls in.
  With ``propagate`` (beyond the seed), every image's own patches on a grid (``patch`` side, stride
  ``patch // 2``) are embedded too, and an image also gets each cluster that one of them falls in:
  as near its centre as the nearer half of the cluster's salient patches (:data:`RADIUS_QUANTILE`). Without it only the
  images that were kept as someone's neighbour get attributes, which is most of them only when every
  image is a query; with it a sample of queries finds the vocabulary and the grid labels every image.
- ``full-frame``: k-means on the images' own embeddings; each image gets its cluster.
- ``random``: each image gets a random cluster (the seed's lower baseline).

The seed fixes the 7 x 7 grid and the 30 x 30 patch; it does not give K, N or the number of
attributes, so their defaults here (10, 5, 20) are this project's. Patch discovery caches each chunk
of queries, so an interrupted run resumes where it stopped (as the saliency cache does).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sane.data import LabelledImageDataset
from sane.models import Embedder
from sane.saliency import RISE

METHODS = ("patch", "full-frame", "random")


@dataclass(frozen=True)
class DiscoverySettings:
    """What a discovery run does; the defaults are the seed's where it gives them (grid, patch)."""

    method: str = "patch"
    n_attributes: int = 20  # clusters, i.e. discovered attributes
    neighbours: int = 10  # K: nearest neighbours explained per query
    keep: int = 5  # N: neighbours kept per query (peak in the most common cell, most similar first)
    grid: int = 7  # cells per side of the peak-location grid
    patch: int = 30  # side of the square cropped around a kept neighbour's peak, in model-input pixels
    n_masks: int = 500  # RISE masks over the query (shared by its K neighbours)
    n_reference_masks: int = 50  # RISE masks over each neighbour (its own map, the query as reference)
    queries: int | None = None  # how many images act as queries (None: all, in a seeded order)
    propagate: bool = False  # also label every image by its own grid patches (beyond the seed)
    batch_size: int = 250
    seed: int = 0

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("n_attributes", "neighbours", "keep", "grid", "patch", "n_masks", "n_reference_masks",
                     "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.n_attributes < 2:
            raise ValueError(f"n_attributes must be at least 2, got {self.n_attributes}")
        if self.keep > self.neighbours:
            raise ValueError(f"keep ({self.keep}) cannot exceed neighbours ({self.neighbours})")
        if self.queries is not None and (isinstance(self.queries, bool) or self.queries < 1):
            raise ValueError(f"queries must be >= 1 or None, got {self.queries!r}")


DEFAULTS = DiscoverySettings()  # what the commands' options default to

# A grid patch falls in a cluster when it is at most as far from the cluster's centre as this share of the
# cluster's salient patches are (propagation).
RADIUS_QUANTILE = 0.5


@dataclass
class Discovery:
    """A discovered vocabulary over one data set's images.

    ``units`` are what was clustered: patches (``patch``) or whole images; ``unit_image[u]`` is the
    image a unit comes from, ``unit_cluster[u]`` its cluster, ``unit_box[u]`` its (left, top, right,
    bottom) square in model-input pixels (the whole image for full-frame and random), ``unit_score[u]``
    how typical it is of its cluster (higher: closer to the centre). ``image_attributes`` (images x
    attributes, 0/1) is what training takes: each unit's cluster for its image, and with ``propagate``
    also the clusters the image's grid patches fall in (those patches are not units)."""

    settings: DiscoverySettings
    attributes: list[str]
    image_attributes: np.ndarray
    unit_image: np.ndarray
    unit_cluster: np.ndarray
    unit_box: np.ndarray
    unit_score: np.ndarray
    images: list[str] = field(default_factory=list)  # each image's path relative to the data root

    def typical_units(self, cluster: int, n: int = 12) -> np.ndarray:
        """The ``n`` most typical units of ``cluster`` (one per image, most typical first)."""
        members = np.flatnonzero(self.unit_cluster == cluster)
        members = members[np.argsort(-self.unit_score[members], kind="stable")]
        _, first = np.unique(self.unit_image[members], return_index=True)
        return members[np.sort(first)][:n]


def _cluster(features: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k-means labels, each point's typicality (minus its distance to its centre) and the centres."""
    from sklearn.cluster import KMeans

    if len(features) < k:
        raise ValueError(f"{len(features)} items to cluster into {k} attributes: use fewer attributes "
                         "(--n-attributes) or more queries")
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(features)
    dist = np.linalg.norm(features - km.cluster_centers_[km.labels_], axis=1)
    return km.labels_.astype(np.int64), -dist, km.cluster_centers_


def _whole(n: int, side: int) -> np.ndarray:
    return np.tile(np.array([0, 0, side, side], dtype=np.int64), (n, 1))


def discover(
    model: nn.Module,
    dataset: LabelledImageDataset,
    settings: DiscoverySettings = DiscoverySettings(),
    cache_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> Discovery:
    """Discover ``settings.n_attributes`` attributes over ``dataset``'s images with ``settings.method``.
    ``cache_dir`` (patch discovery): where per-chunk results are kept for a resumed run."""
    settings.validate()
    images = dataset.stack_images(progress=progress)
    side = images.shape[-1]
    n = len(images)
    names = [f"discovered_{c:02d}" for c in range(settings.n_attributes)]
    paths = [dataset.relative_path(i) for i in range(n)]
    if settings.method == "random":
        rng = np.random.default_rng(settings.seed)
        labels = rng.integers(settings.n_attributes, size=n)
        units = (np.arange(n), labels, _whole(n, side), np.zeros(n))
    elif settings.method == "full-frame":
        emb = Embedder(model, settings.batch_size, device=device)(images).cpu().numpy()
        labels, score, _ = _cluster(emb, settings.n_attributes, settings.seed)
        units = (np.arange(n), labels, _whole(n, side), score)
    else:
        generator = RISE(model, n_masks=settings.n_masks, n_reference_masks=settings.n_reference_masks,
                         batch_size=settings.batch_size, seed=settings.seed, device=device)
        owner, boxes, feats = salient_patches(generator, images, settings, cache_dir, progress)
        labels, score, centres = _cluster(feats, settings.n_attributes, settings.seed)
        units = (owner, labels, boxes, score)
    unit_image, unit_cluster, unit_box, unit_score = (np.asarray(u) for u in units)
    image_attributes = np.zeros((n, settings.n_attributes), dtype=np.uint8)
    image_attributes[unit_image, unit_cluster] = 1
    if settings.method == "patch" and settings.propagate:
        # the grid patches embedded as the salient ones were, in the space the clusters' centres live in
        owner, cluster = propagate(generator.embedder, images, settings, unit_cluster, unit_score, centres,
                                   cache_dir, progress)
        image_attributes[owner, cluster] = 1
    return Discovery(settings, names, image_attributes, unit_image, unit_cluster, unit_box,
                     unit_score.astype(np.float64), paths)


def grid_boxes(side: int, patch: int) -> list[tuple[int, int, int, int]]:
    """``patch`` x ``patch`` squares covering a ``side`` x ``side`` image at a stride of about ``patch // 2``
    (the last row and column flush with the edges)."""
    patch = min(patch, side)
    steps = -(-(side - patch) // max(1, patch // 2)) + 1
    starts = sorted({int(round(v)) for v in np.linspace(0, side - patch, steps)})
    return [(left, top, left + patch, top + patch) for top in starts for left in starts]


def grid_patches(
    embed: Embedder,
    images: torch.Tensor,
    patch: int,
    cache: Path | None = None,
    progress: bool = True,
    chunk: int = 32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every image's :func:`grid_boxes` patches, upsampled to the input size and embedded: (owner image,
    box, embedding) per patch; cached per chunk of images under ``cache`` (resumable)."""
    n, side = len(images), images.shape[-1]
    boxes = grid_boxes(side, patch)
    parts = []
    for start in tqdm(range(0, n, chunk), desc="embedding grid patches", unit="chunk", disable=not progress):
        owners = np.arange(start, min(start + chunk, n))

        def embed_chunk(owners: np.ndarray = owners) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            crops = torch.cat([
                F.interpolate(images[owners][:, :, top:bottom, left:right], size=(side, side), mode="bilinear",
                              align_corners=False)
                for left, top, right, bottom in boxes], dim=0)  # box-major: box b of every image, then b + 1
            return (np.tile(owners, len(boxes)), np.repeat(np.asarray(boxes, dtype=np.int64), len(owners), axis=0),
                    embed(crops).cpu().numpy())

        parts.append(_cached_chunk(cache / f"grid-{start // chunk:05d}.npz" if cache is not None else None,
                                   embed_chunk))
    owner, box, feature = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return owner, box, feature


def propagate(
    embed: Embedder,
    images: torch.Tensor,
    settings: DiscoverySettings,
    labels: np.ndarray,
    score: np.ndarray,
    centres: np.ndarray,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The grid patches that fall in a cluster of the salient patches (``labels``, typicality ``score``,
    ``centres``): nearer its centre than :data:`RADIUS_QUANTILE` of the cluster's own members. Returns
    (owner image, cluster) of each."""
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"grid-{_cache_key({'patch': settings.patch}, images, embed.model)}"
        cache.mkdir(parents=True, exist_ok=True)
    owner, _, feature = grid_patches(embed, images, settings.patch, cache, progress)
    radius = np.array([np.quantile(-score[labels == c], RADIUS_QUANTILE) if (labels == c).any() else -np.inf
                       for c in range(len(centres))])
    dist = torch.cdist(torch.from_numpy(feature).double(), torch.from_numpy(centres).double()).numpy()
    nearest = dist.argmin(1)
    near = dist[np.arange(len(dist)), nearest]
    inside = near <= radius[nearest]
    return owner[inside], nearest[inside]


def peak(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) of each (K, H, W) map's maximum."""
    flat = maps.flatten(1).argmax(1)
    return flat // maps.shape[-1], flat % maps.shape[-1]


def select_neighbours(query_maps: torch.Tensor, similarity: torch.Tensor, grid: int, keep: int) -> torch.Tensor:
    """Indices of the neighbours kept for one query (the seed's step 3): those whose query-map peak
    lies in the most common of ``grid`` x ``grid`` cells, the ``keep`` most similar of them."""
    h, w = query_maps.shape[-2:]
    rows, cols = peak(query_maps)
    cells = (rows * grid // h) * grid + cols * grid // w
    common = Counter(cells.tolist()).most_common(1)[0][0]
    members = torch.nonzero(cells == common).flatten()
    order = torch.argsort(similarity[members], descending=True, stable=True)
    return members[order][:keep]


def patch_box(row: int, col: int, patch: int, side: int) -> tuple[int, int, int, int]:
    """The ``patch`` x ``patch`` square centred on (row, col), shifted inside a ``side`` x ``side`` image."""
    patch = min(patch, side)
    left = min(max(col - patch // 2, 0), side - patch)
    top = min(max(row - patch // 2, 0), side - patch)
    return left, top, left + patch, top + patch


def _settings_key(settings: DiscoverySettings, images: torch.Tensor, model: nn.Module) -> str:
    """What a cached chunk depends on: the patch settings, the images and the model (not the number of
    attributes, which only the clustering uses)."""
    relevant = {k: v for k, v in asdict(settings).items() if k not in ("method", "n_attributes", "propagate")}
    return _cache_key(relevant, images, model)


def _cache_key(fields: dict, images: torch.Tensor, model: nn.Module) -> str:
    """A short hash of ``fields``, the images and the model's weights: the name of a cache folder."""
    from sane.train.saliency_cache import model_fingerprint

    key = {**fields, "images": len(images), "pixels": float(images.double().sum()), "model": model_fingerprint(model)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _cached_chunk(path: Path | None, compute: Callable[[], tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One chunk's (owner image, box, feature): read from ``path`` when an earlier run wrote it, else
    computed and written (atomically, so an interrupted run never leaves half a chunk)."""
    if path is not None and path.exists():
        with np.load(path) as saved:
            return saved["owner"], saved["box"], saved["feature"]
    part = compute()
    if path is not None:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, owner=part[0], box=part[1], feature=part[2])
        os.replace(tmp, path)
    return part


def salient_patches(
    generator: RISE,
    images: torch.Tensor,
    settings: DiscoverySettings,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    chunk: int = 16,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seed's steps 1-5 over ``settings.queries`` queries with ``generator`` (RISE at the settings'
    masks): (owner image, box, embedding) per patch."""
    n, side = len(images), images.shape[-1]
    if settings.neighbours >= n:
        raise ValueError(f"{settings.neighbours} neighbours asked for among {n} images")
    embed = generator.embedder  # the neighbours' and the patches' embeddings, as the maps see them
    emb = embed(images).cpu()
    sims = embed.embedding.matrix(emb, emb)
    sims.fill_diagonal_(float("-inf"))
    order = np.random.default_rng(settings.seed).permutation(n)[: settings.queries or n]
    cache = Path(cache_dir) / f"patches-{_settings_key(settings, images, embed.model)}" if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    parts = []
    starts = range(0, len(order), chunk)
    for start in tqdm(starts, desc="discovering patches", unit="chunk", disable=not progress):

        def explain_chunk(queries: np.ndarray = order[start : start + chunk]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            owner, boxes, crops = [], [], []
            for q in queries:
                near = torch.topk(sims[q], settings.neighbours).indices
                result = generator.explain(images[q], images[near], mode="both")
                kept = select_neighbours(result.query_map, result.similarity, settings.grid, settings.keep)
                rows, cols = peak(result.reference_map[kept])
                for k, row, col in zip(kept.tolist(), rows.tolist(), cols.tolist()):
                    image = int(near[k])
                    left, top, right, bottom = patch_box(row, col, settings.patch, side)
                    crop = images[image][:, top:bottom, left:right]
                    crops.append(F.interpolate(crop[None], size=(side, side), mode="bilinear", align_corners=False)[0])
                    owner.append(image)
                    boxes.append((left, top, right, bottom))
            feature = (embed(torch.stack(crops)).cpu().numpy() if crops
                       else np.zeros((0, emb.shape[1]), dtype=np.float32))
            return np.asarray(owner, dtype=np.int64), np.asarray(boxes, dtype=np.int64).reshape(-1, 4), feature

        parts.append(_cached_chunk(cache / f"chunk-{start // chunk:05d}.npz" if cache is not None else None,
                                   explain_chunk))
    owner, boxes, feats = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return owner, boxes, feats


# -- writing a discovered vocabulary where every other command reads attribute labels ---------------
VOCABULARY_FILE = "discovered-attributes.json"
SHEET_DIR = "contact-sheets"
_LINKED = ("JPEGImages", "masks")
_COPIED = ("classes.txt", "trainclasses.txt", "testclasses.txt", "scenes.jsonl")


def _write_awa2_labels(dataset: LabelledImageDataset, discovery: Discovery, out: Path, names: list[str]) -> None:
    """The discovered labels as AwA2 files: predicates.txt, instance-attributes.txt, the class matrix (a
    class has an attribute when at least half its images do); the images and class files linked or copied."""
    root = Path(dataset.root)
    for name in _LINKED:
        target, link = (root / name).resolve(), out / name
        if target.exists() and not link.exists():
            os.symlink(target, link, target_is_directory=True)
    for name in _COPIED:
        if (root / name).exists():
            (out / name).write_bytes((root / name).read_bytes())
    (out / "predicates.txt").write_text("".join(f"{i + 1}\t{name}\n" for i, name in enumerate(names)))
    rows = discovery.image_attributes
    (out / "instance-attributes.txt").write_text(
        "".join(f"{path} {' '.join(str(int(v)) for v in row)}\n" for path, row in zip(discovery.images, rows)))
    targets = np.asarray(dataset.targets)
    matrix = np.zeros((len(dataset.classes), rows.shape[1]), dtype=np.uint8)
    for c in range(len(dataset.classes)):
        members = rows[targets == c]
        if len(members):
            matrix[c] = (2 * members.sum(0) >= len(members)).astype(np.uint8)
    (out / "predicate-matrix-binary.txt").write_text("".join(" ".join(map(str, r)) + "\n" for r in matrix))


def _write_polyvore_labels(dataset: LabelledImageDataset, discovery: Discovery, out: Path, names: list[str]) -> None:
    """The discovered labels as Polyvore Outfits' attribute file ({item_id: [name, ...]}); the images and
    outfit splits linked, the item metadata copied."""
    from sane.data.polyvore import ATTRIBUTES_FILE, METADATA_FILE, VERSIONS

    root = Path(dataset.root)
    for name in ("images", *VERSIONS):
        target, link = (root / name).resolve(), out / name
        if target.exists() and not link.exists():
            os.symlink(target, link, target_is_directory=True)
    (out / METADATA_FILE).write_bytes((root / METADATA_FILE).read_bytes())
    table = {item: [names[a] for a in np.flatnonzero(row)]
             for item, row in zip(dataset.item_ids, discovery.image_attributes) if row.any()}
    (out / ATTRIBUTES_FILE).write_text(json.dumps(table, indent=0) + "\n")


def _write_csv_labels(dataset: LabelledImageDataset, discovery: Discovery, out: Path, names: list[str]) -> None:
    """Class folders or a labels.csv set: the discovered labels as the CSV layout's labels.csv (image,
    class, split, one 0/1 column per attribute: discovery labels images, which class folders' per-class
    attributes.csv cannot hold), every other top-level entry of the data linked (the images keep their paths)."""
    import csv

    from sane.data.folders import CLASS_ATTRIBUTES_FILE, LABELS_FILE

    root = Path(dataset.root).resolve()
    for entry in root.iterdir():
        if entry.name not in (LABELS_FILE, CLASS_ATTRIBUTES_FILE) and not (out / entry.name).exists():
            os.symlink(entry, out / entry.name, target_is_directory=entry.is_dir())
    with (out / LABELS_FILE).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "class", "split", *names])
        for i, (path, row) in enumerate(zip(discovery.images, discovery.image_attributes)):
            writer.writerow([path, dataset.classes[dataset.targets[i]], "test" if dataset.in_test[i] else "train",
                             *(int(v) for v in row)])


# How each layout that discovery takes holds attribute labels (class folders are written as a labels.csv).
_LABEL_WRITERS = {"awa2": _write_awa2_labels, "polyvore": _write_polyvore_labels, "csv": _write_csv_labels,
                  "folders": _write_csv_labels}


def check_out(layout: str, data: str | os.PathLike, out: str | os.PathLike) -> None:
    """A clear error, before any discovery work, for a vocabulary folder ``out`` that cannot be written:
    the data directory itself (its labels would be replaced), or inside it for the csv and class-folder
    layouts (where a folder is read as one more image or class folder)."""
    data, out = Path(data).resolve(), Path(out).resolve()
    if out == data:
        raise ValueError(f"--out must not be the data directory itself ({data}): its labels would be replaced")
    if layout in ("csv", "folders") and out.is_relative_to(data):
        raise ValueError(f"--out ({out}) must be outside the data directory {data}: in the {layout} layout a "
                         "folder there is read as one more image or class folder")


def write_vocabulary(dataset: LabelledImageDataset, discovery: Discovery, out: str | os.PathLike) -> Path:
    """Write ``out`` as a data set over the same images (linked, not copied) in the layout of ``dataset``,
    whose attributes are the discovered ones — AwA2: ``predicates.txt`` (the names),
    ``instance-attributes.txt`` (each image's 0/1 row), ``predicate-matrix-binary.txt``; Polyvore
    Outfits: ``polyvore_attributes.json``; labels.csv or class folders: ``labels.csv`` — plus ``discovered-attributes.json`` (settings, per attribute
    its name, size and contact sheet: edit the names there and run ``sane name-attributes OUT``) and one
    contact sheet PNG per attribute. ``train-attributes``, ``eval-attributes``, the ranker and the
    ``sane`` archive read ``out`` as they read any data set. ``dataset`` must be the ``all`` split (every
    image, so every split of ``out`` has its labels)."""
    root = Path(dataset.root)
    if dataset.split != "all":
        raise ValueError(f"write_vocabulary needs the 'all' split of a data set, got split {dataset.split!r}")
    check_out(dataset.format, root, out)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = discovery.attributes  # their ids, until a person names them (rename_attributes)
    _LABEL_WRITERS[dataset.format](dataset, discovery, out, labels)
    rows = discovery.image_attributes
    sheets = write_contact_sheets(dataset, discovery, out / SHEET_DIR, labels)
    vocabulary = {
        "settings": asdict(discovery.settings),
        "source": str(root.resolve()),
        "layout": dataset.format,
        "applied": list(labels),  # the names the data files hold now, in attribute order
        "attributes": [
            {"id": a, "name": a, "images": int(rows[:, c].sum()),
             "units": int((discovery.unit_cluster == c).sum()), "contact_sheet": f"{SHEET_DIR}/{sheets[c].name}"}
            for c, a in enumerate(discovery.attributes)
        ],
    }
    (out / VOCABULARY_FILE).write_text(json.dumps(vocabulary, indent=2) + "\n")
    return out


def write_contact_sheets(dataset: LabelledImageDataset, discovery: Discovery, out: str | os.PathLike,
                         labels: list[str], per_sheet: int = 12, thumb: int = 96) -> list[Path]:
    """One PNG per attribute: its most typical patches (or images), one per image, in a row-major grid
    under the attribute's name, so a person can see what it is and name it."""
    from PIL import Image, ImageDraw

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    side = dataset.preprocess.size
    cols = 6
    paths = []
    for c, label in enumerate(labels):
        units = discovery.typical_units(c, per_sheet)
        rows = max(1, -(-len(units) // cols))
        sheet = Image.new("RGB", (cols * (thumb + 4) + 4, rows * (thumb + 4) + 24), "white")
        ImageDraw.Draw(sheet).text((4, 4), f"{label}: {int((discovery.unit_cluster == c).sum())} "
                                   f"{'patches' if discovery.settings.method == 'patch' else 'images'}", fill="black")
        for k, u in enumerate(units):
            image = dataset.preprocess.visible(Image.open(dataset.samples[int(discovery.unit_image[u])][0])
                                               .convert("RGB")).resize((side, side))
            tile = image.crop(tuple(int(v) for v in discovery.unit_box[u])).resize((thumb, thumb))
            sheet.paste(tile, (4 + (k % cols) * (thumb + 4), 24 + (k // cols) * (thumb + 4)))
        path = out / f"{c:02d}-{_file_safe(label)}.png"
        sheet.save(path)
        paths.append(path)
    return paths


def _file_safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:60] or "attribute"


def rename_attributes(out: str | os.PathLike) -> list[str]:
    """Apply the names edited in ``out/discovered-attributes.json`` to the data files every command reads
    (``predicates.txt``, or Polyvore's attribute file); returns the names. Names must be distinct and non-empty, without whitespace
    (they are single tokens in the index file)."""
    out = Path(out)
    vocabulary = json.loads((out / VOCABULARY_FILE).read_text())
    names = [str(a.get("name", "")).strip() for a in vocabulary["attributes"]]
    bad = [n for n in names if not n or any(ch.isspace() for ch in n)]
    if bad:
        raise ValueError(f"{out / VOCABULARY_FILE}: attribute names must be non-empty single words, got {bad}")
    if len(set(names)) != len(names):
        dup = sorted(n for n, k in Counter(names).items() if k > 1)
        raise ValueError(f"{out / VOCABULARY_FILE}: attribute names must be distinct, repeated: {dup}")
    applied = applied_names(out)
    if (out / "predicates.txt").is_file():  # AwA2 layout
        (out / "predicates.txt").write_text("".join(f"{i + 1}\t{name}\n" for i, name in enumerate(names)))
    elif vocabulary.get("layout") in ("csv", "folders"):  # labels.csv: the names are its last columns
        import csv

        from sane.data.folders import LABELS_FILE

        with (out / LABELS_FILE).open(newline="") as f:
            rows = list(csv.reader(f))
        rows[0] = rows[0][: len(rows[0]) - len(names)] + names
        with (out / LABELS_FILE).open("w", newline="") as f:
            csv.writer(f).writerows(rows)
    else:  # Polyvore Outfits: the attribute file holds the names per item
        from sane.data.polyvore import ATTRIBUTES_FILE

        rename = dict(zip(applied, names))
        table = json.loads((out / ATTRIBUTES_FILE).read_text())
        table = {item: [rename[a] for a in held] for item, held in table.items()}
        (out / ATTRIBUTES_FILE).write_text(json.dumps(table, indent=0) + "\n")
    vocabulary["applied"] = names
    (out / VOCABULARY_FILE).write_text(json.dumps(vocabulary, indent=2) + "\n")
    return names


def applied_names(out: str | os.PathLike) -> list[str]:
    """The discovered attributes' names as the data files of ``out`` hold them now, in attribute order."""
    from sane.data.awa2 import read_index

    out = Path(out)
    vocabulary = json.loads((out / VOCABULARY_FILE).read_text())
    return list(vocabulary["applied"]) if "applied" in vocabulary else read_index(out / "predicates.txt")
