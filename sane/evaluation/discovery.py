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
