"""`sane eval-attributes`: attribute mAP and where the activation maps point, against object masks.

On the synthetic data the object's pixels are the true evidence of its shape, colour and pattern
(and the background's pixels of the background attributes), so the pointing game of an attribute's
activation map — is its peak on the object? — says whether the map shows the attribute itself.
Real data (AwA2, Polyvore Outfits) has no masks: the report then holds mAP and per-attribute AP only.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from sane.data import open_dataset
from sane.data.synthetic import BACKGROUNDS, COLOURS, H_POSITIONS, PATTERNS, SHAPES, SIZES, V_POSITIONS
from sane.explain.map_match import DEFAULT_TAU, heatmap_loss, map_distances, saliency_target
from sane.images import Preprocess
from sane.metrics import mass_inside, pointing_game
from sane.metrics.average_precision import mean_average_precision, per_attribute_ap
from sane.models.attribute_predictors import predict_attributes, upsample_maps
from sane.train.saliency_cache import SaliencyCache

ATTRIBUTE_GROUPS: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "pattern": PATTERNS,
    "size": SIZES,
    "position": H_POSITIONS + V_POSITIONS,
    "background": tuple(f"bg_{b}" for b in BACKGROUNDS),
}


def evaluate_attributes(
    model: nn.Module,
    preprocess: Preprocess,
    data_dir: str | os.PathLike,
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 128,
    progress: bool = True,
) -> dict:
    """mAP (all attributes and per attribute) and, where the data set has object masks (the synthetic
    data), per attribute group: mAP, the pointing game and mass inside the object of each present
    attribute's activation map (upsampled to the image), plus the chance level of pointing (mean object
    area). ``limit`` evaluates a seeded random subset of the split."""
    dataset = open_dataset(data_dir, split=split, preprocess=preprocess, with_masks=True).require_attributes()
    names = list(model.attributes)
    if names != list(dataset.attributes):
        raise ValueError(f"the model's {len(names)} attributes are not those of {data_dir} ({len(dataset.attributes)}): "
                         "evaluate a model trained on this data set")
    indices = np.arange(len(dataset))
    if limit is not None and limit < len(dataset):
        indices = np.sort(np.random.default_rng(seed).choice(len(dataset), size=limit, replace=False))
    items = [dataset[int(i)] for i in tqdm(indices, desc="loading images", disable=not progress)]
    images = torch.stack([it["image"] for it in items])
    labels = dataset.image_attributes[indices]
    scores, maps = predict_attributes(model, images, batch_size)
    ap = per_attribute_ap(scores, labels)
    report: dict = {"split": split, "n_images": len(indices), "mAP": mean_average_precision(scores, labels),
                    "per_attribute": {a: float(ap[j]) for j, a in enumerate(names) if np.isfinite(ap[j])},
                    "masks": dataset.mask_dir is not None}
    if dataset.mask_dir is None:
        return report
    masks = torch.stack([it["mask"] for it in items])
    report.update({"chance_pointing": float(masks.float().mean()), "groups": {}})
    for group, members in ATTRIBUTE_GROUPS.items():
        cols = [names.index(a) for a in members if a in names]
        if not cols:
            continue
        hits, mass = [], []
        for n in range(len(indices)):
            for a in cols:
                if labels[n, a]:
                    full = upsample_maps(maps[n, a], tuple(masks.shape[-2:]))
                    hits.append(pointing_game(full, masks[n]))
                    mass.append(mass_inside(full, masks[n]))
        report["groups"][group] = {
            "mAP": float(np.nanmean(ap[cols])) if np.isfinite(ap[cols]).any() else float("nan"),
            "pointing_game": float(np.mean(hits)) if hits else float("nan"),
            "mass_inside": float(np.mean(mass)) if mass else float("nan"),
            "n_maps": len(hits),
        }
    return report


def saliency_agreement(
    model: nn.Module, preprocess: Preprocess, data_dir: str | os.PathLike, cache_dir: str | os.PathLike,
    tau: float = DEFAULT_TAU, batch_size: int = 128,
) -> dict:
    """How well the model's activation maps explain the cached similarity saliency maps: L_hm (SPEC §3,
    lower = better), the share of saliency maps some present attribute matches (distance < 1) and the
    attributes that match most often. Run on the cached training images: what SANE is trained for."""
    cache = SaliencyCache(cache_dir)
    dataset = open_dataset(data_dir, split=cache.manifest["split"], preprocess=preprocess)
    maps16, valid = cache.aligned(dataset)
    rows = np.flatnonzero(valid.any(1).numpy())
    images = dataset.stack_images(rows)
    _, maps = predict_attributes(model, images, batch_size)
    targets = saliency_target(maps16[rows].float(), tuple(maps.shape[-2:]), tau)
    positives = torch.from_numpy(dataset.image_attributes[rows])
    valid = valid[rows]
    dist = map_distances(maps, targets).masked_fill(~positives.bool()[:, None, :], float("inf"))
    best, which = dist.min(-1)
    counts = np.bincount(which[valid].numpy(), minlength=len(model.attributes))
    return {
        "n_images": len(rows),
        "n_maps": int(valid.sum()),
        "L_hm": float(heatmap_loss(maps, targets, valid, positives)),
        "matched": float((best[valid] < 1).float().mean()),
        "top_matches": {model.attributes[a]: int(counts[a]) for a in np.argsort(-counts)[:5] if counts[a]},
    }


def format_attribute_report(report: dict) -> str:
    """The report as aligned text: overall mAP, then one row per attribute group (with masks) or the
    best and worst attributes by AP (without)."""
    if "groups" not in report:
        ranked = sorted(report.get("per_attribute", {}).items(), key=lambda kv: -kv[1])
        lines = [f"{report['n_images']} {report['split']} images: mAP {report['mAP']:.4f} "
                 f"over {len(ranked)} attributes with a positive image; no object masks, so no pointing game"]
        if ranked:
            lines.append("best AP: " + ", ".join(f"{a} {v:.3f}" for a, v in ranked[:5]))
            lines.append("worst AP: " + ", ".join(f"{a} {v:.3f}" for a, v in ranked[::-1][:5]))
    else:
        lines = [f"{report['n_images']} {report['split']} images: mAP {report['mAP']:.4f}; "
                 f"chance of pointing at the object {report['chance_pointing']:.3f}",
                 f"{'group':<12}{'mAP':>8}{'pointing':>10}{'mass_in':>9}{'maps':>7}"]
        for group, row in report["groups"].items():
            lines.append(f"{group:<12}{row['mAP']:>8.4f}{row['pointing_game']:>10.3f}{row['mass_inside']:>9.3f}"
                         f"{row['n_maps']:>7}")
    if "saliency_agreement" in report:
        agree = report["saliency_agreement"]
        top = ", ".join(f"{name} {count}" for name, count in agree["top_matches"].items())
        lines.append(f"cached saliency maps ({agree['n_maps']} over {agree['n_images']} training images): "
                     f"L_hm {agree['L_hm']:.3f}, matched {agree['matched']:.3f}; best-matching attributes: {top}")
    return "\n".join(lines)
