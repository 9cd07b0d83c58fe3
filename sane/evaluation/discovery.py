"""How well discovered attributes recover the true factors of Shapes with Attributes (beyond the seed,
which had no ground truth): normalised mutual information and purity of the clusters against each
factor and against the class (the factors the similarity model was trained to match on)."""

from __future__ import annotations

import numpy as np

from sane.data import FACTORS, LabelledImageDataset
from sane.train.discovery import Discovery


def factor_values(dataset: LabelledImageDataset) -> dict[str, np.ndarray]:
    """Per image, the value of every factor (position as the third of the image its centre is in, per
    axis) and its class; needs the data set's scenes (``scenes.jsonl``, the synthetic sets)."""
    if not dataset.scenes or any(s is None for s in dataset.scenes):
        raise ValueError(f"{dataset.root} has no scenes.jsonl for every image: no ground truth to compare with")
    values: dict[str, list] = {name: [] for name in FACTORS}
    for scene in dataset.scenes:
        for name in FACTORS:
            if name == "position":
                values[name].append(f"{min(int(scene.x * 3), 2)}{min(int(scene.y * 3), 2)}")
            else:
                values[name].append(getattr(scene, name))
    out = {name: np.asarray(v) for name, v in values.items()}
    out["class"] = np.asarray(dataset.targets)
    return out


def purity(clusters: np.ndarray, truth: np.ndarray) -> float:
    """Share of units whose cluster's most common true value is their own."""
    total = 0
    for c in np.unique(clusters):
        _, counts = np.unique(truth[clusters == c], return_counts=True)
        total += counts.max()
    return float(total / len(clusters))


def recovery(discovery: Discovery, dataset: LabelledImageDataset) -> dict[str, dict[str, float]]:
    """{factor or "class": {"nmi", "purity"}} of the discovered clusters: each clustered unit (patch or
    image) against the true value of its image."""
    from sklearn.metrics import normalized_mutual_info_score

    truth = factor_values(dataset)
    report = {}
    for name, values in truth.items():
        unit_truth = values[discovery.unit_image]
        report[name] = {"nmi": float(normalized_mutual_info_score(unit_truth, discovery.unit_cluster)),
                        "purity": purity(discovery.unit_cluster, unit_truth)}
    return report


def format_recovery(reports: dict[str, dict[str, dict[str, float]]], uses: tuple[str, ...] = ()) -> str:
    """One row per method: NMI (purity) per factor; ``uses``, the factors the model matches on, marked *."""
    names = list(next(iter(reports.values())))
    header = f"{'method':<12}" + "".join(f"{(n + ('*' if n in uses else '')):>16}" for n in names)
    lines = [header]
    for method, report in reports.items():
        lines.append(f"{method:<12}" + "".join(f"{report[n]['nmi']:>9.3f} ({report[n]['purity']:.2f})" for n in names))
    return "\n".join(lines)


# An attribute stands for a factor when its images agree on the factor's value at least halfway from chance
# to unanimity (normalised purity, :func:`attribute_factors`).
MIN_AGREEMENT = 0.5


def attribute_factors(discovery: Discovery, values: dict[str, np.ndarray]) -> list[dict]:
    """What each discovered attribute stands for: among the factors (not the class), the one its images
    agree on most beyond chance — normalised purity ``(p - p0) / (1 - p0)``, with ``p`` the share of the
    attribute's images holding its most common value and ``p0`` that value's share of all images — with
    that value and the agreement. Below :data:`MIN_AGREEMENT` (and without images) an attribute stands
    for nothing (factor None)."""
    found = []
    for a in range(len(discovery.attributes)):
        members = discovery.image_attributes[:, a].astype(bool)
        best = {"factor": None, "value": None, "agreement": 0.0}
        for name in FACTORS:
            if not members.any():
                break
            kinds, counts = np.unique(values[name][members], return_counts=True)
            value = kinds[counts.argmax()]
            p, p0 = counts.max() / members.sum(), float(np.mean(values[name] == value))
            agreement = (p - p0) / (1 - p0) if p0 < 1 else 0.0
            if agreement >= MIN_AGREEMENT and agreement > best["agreement"]:
                best = {"factor": name, "value": value.item(), "agreement": float(agreement)}
        found.append(best)
    return found


def explaining_factors(embedder, preprocess, dataset: LabelledImageDataset, pairs: list[tuple[int, int]],
                       draws: int = 3, seed: int = 0) -> list[str]:
    """The counterfactually best factor of each (query, reference) pair (SPEC §6: the factor whose change
    in the query lowers the similarity most), as `sane eval-explanations` computes it."""
    from sane.metrics.counterfactual import best_factor, counterfactual_deltas

    rng = np.random.default_rng(seed)
    return [best_factor(counterfactual_deltas(embedder, preprocess, dataset.scenes[q], dataset[r]["image"], draws, rng))
            for q, r in pairs]


def explaining_factor_found(discovery: Discovery, dataset: LabelledImageDataset, pairs: list[tuple[int, int]],
                            best: list[str]) -> dict:
    """Does the vocabulary name what explains each match? A pair counts as *found* when the query and
    the reference share a discovered attribute that stands for (:func:`attribute_factors`) the pair's
    counterfactually best factor ``best`` at the query's value of it. Also reported: how often they share
    any attribute (a vocabulary that labels few images shares few), the found rate among the pairs that
    share one, and the found rate per explaining factor."""
    values = factor_values(dataset)
    stands = attribute_factors(discovery, values)
    held = discovery.image_attributes.astype(bool)
    found, shared, by_factor = [], [], {}
    for (q, r), factor in zip(pairs, best):
        common = np.flatnonzero(held[q] & held[r])
        hit = any(stands[a]["factor"] == factor and stands[a]["value"] == values[factor][q].item() for a in common)
        found.append(hit)
        shared.append(len(common) > 0)
        by_factor.setdefault(factor, []).append(hit)
    hits_when_shared = [hit for hit, any_shared in zip(found, shared) if any_shared]
    return {"pairs": len(pairs), "found": float(np.mean(found)), "shared": float(np.mean(shared)),
            "found_when_shared": float(np.mean(hits_when_shared)) if hits_when_shared else float("nan"),
            "by_factor": {f: {"pairs": len(h), "found": float(np.mean(h))} for f, h in by_factor.items()},
            "stands_for": {f: sum(s["factor"] == f for s in stands) for f in FACTORS}}


def format_found(reports: dict[str, dict]) -> str:
    """One row per method: found rate, shared-attribute rate, found rate among sharing pairs, found rate
    per explaining factor, and how many of its attributes stand for each factor."""
    factors = sorted({f for r in reports.values() for f in r["by_factor"]},
                     key=lambda f: -next(iter(reports.values()))["by_factor"].get(f, {"pairs": 0})["pairs"])
    first = next(iter(reports.values()))
    header = (f"{'method':<16}{'found':>7}{'shared':>8}{'found|shared':>14}" +
              "".join(f"{f + ' (' + str(first['by_factor'][f]['pairs']) + ')':>18}" for f in factors) +
              "   attributes standing for each factor")
    lines = [header]
    for method, r in reports.items():
        stands = ", ".join(f"{f} {n}" for f, n in r["stands_for"].items() if n)
        lines.append(f"{method:<16}{r['found']:>7.3f}{r['shared']:>8.3f}{r['found_when_shared']:>14.3f}" +
                     "".join(f"{r['by_factor'].get(f, {'found': float('nan')})['found']:>18.3f}" for f in factors) +
                     f"   {stands}")
    return "\n".join(lines)
