"""How good is a similarity model on Shapes with Attributes: recall@1 and the counterfactual table."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from sane.data import FACTORS, LabelledImageDataset, counterfactual, open_dataset, render
from sane.images import Preprocess
from sane.models import Embedder
from sane.models.spec import COSINE, EmbeddingSpec, embedding_spec


def embed_images(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Embeddings of a (N, 3, H, W) stack, ready to compare (L2-normalised for cosine)."""
    return Embedder(model, batch_size)(images).cpu()


def recall_at_k(
    embeddings: torch.Tensor, labels: torch.Tensor | np.ndarray, k: int = 1, embedding: EmbeddingSpec = COSINE
) -> float:
    """Share of images whose k nearest others (by the declared similarity) include one of the same label."""
    labels = torch.as_tensor(np.asarray(labels))
    sims = embedding.matrix(embeddings, embeddings)
    sims.fill_diagonal_(float("-inf"))
    nearest = sims.topk(k, dim=1).indices
    return float((labels[nearest] == labels[:, None]).any(1).float().mean())


def counterfactual_table(
    model: nn.Module,
    preprocess: Preprocess,
    dataset: LabelledImageDataset,
    n_pairs: int = 200,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Mean change of s(q, r) for same-class pairs when q is re-rendered with one factor changed.

    All images are rendered from their scenes (no JPEG noise), so the change is exactly the effect
    of that one factor. Returns ``{factor: {"mean_delta", "std_delta"}}``.
    """
    if dataset.scenes is None:
        raise ValueError(f"{dataset.root} has no scenes.jsonl: counterfactuals need the synthetic data set")
    rng = np.random.default_rng(seed)
    targets = np.asarray(dataset.targets)
    embedder = Embedder(model)
    deltas: dict[str, list[float]] = {f: [] for f in FACTORS}
    for _ in tqdm(range(n_pairs), desc="counterfactuals", disable=not progress):
        qi = int(rng.integers(len(targets)))
        same = np.flatnonzero((targets == targets[qi]) & (np.arange(len(targets)) != qi))
        ri = int(rng.choice(same))
        q_scene, r_scene = dataset.scenes[qi], dataset.scenes[ri]
        scenes = [q_scene, r_scene] + [counterfactual(q_scene, f, rng=rng) for f in FACTORS]
        images = torch.stack([preprocess.to_tensor(render(s, preprocess.size).image) for s in scenes])
        e = embedder(images)
        sims = embedder.embedding.against(e, e[1])
        for f, s_cf in zip(FACTORS, sims[2:]):
            deltas[f].append(float(s_cf) - float(sims[0]))
    return {f: {"mean_delta": float(np.mean(v)), "std_delta": float(np.std(v))} for f, v in deltas.items()}


def evaluate_similarity(
    model: nn.Module,
    preprocess: Preprocess,
    data_dir: str | os.PathLike,
    split: str = "test",
    n_pairs: int = 200,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """recall@1 on the held-out split, plus the counterfactual table when scenes are available."""
    dataset = open_dataset(data_dir, split=split, preprocess=preprocess)
    images = dataset.stack_images(progress=progress)
    report = {
        "split": split,
        "n_images": len(dataset),
        "recall@1": recall_at_k(embed_images(model, images), dataset.targets, 1, embedding_spec(model)),
    }
    if dataset.scenes is not None:
        report["counterfactual"] = counterfactual_table(model, preprocess, dataset, n_pairs, seed, progress)
    return report
