"""Triplet losses (batch-all and batch-hard mining) and the P x K class-balanced batch sampler."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MINING = ("batch_all", "batch_hard")


def triplet_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2, mining: str = "batch_all"
) -> torch.Tensor:
    """Triplet loss on cosine distance over every (anchor, positive, negative) in the batch.

    ``batch_all`` averages relu(d(a,p) - d(a,n) + margin) over the triplets that are still active
    (stable from scratch); ``batch_hard`` uses each anchor's hardest positive and negative (sharper,
    but collapses easily when training from random weights).
    """
    if mining not in MINING:
        raise ValueError(f"mining must be one of {MINING}, got {mining!r}")
    e = F.normalize(embeddings, dim=1)
    dist = 1.0 - e @ e.T
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & ~eye
    if mining == "batch_hard":
        hardest_pos = dist.masked_fill(~positive, float("-inf")).amax(1)
        hardest_neg = dist.masked_fill(same, float("inf")).amin(1)
        valid = torch.isfinite(hardest_pos) & torch.isfinite(hardest_neg)
        if not valid.any():
            return embeddings.sum() * 0.0
        return F.relu(hardest_pos[valid] - hardest_neg[valid] + margin).mean()
    # (anchor, positive, negative) cube of margins, masked to valid triplets.
    cube = dist[:, :, None] - dist[:, None, :] + margin
    valid = positive[:, :, None] & ~same[:, None, :]
    losses = F.relu(cube[valid])
    active = losses > 1e-12
    if not active.any():
        return embeddings.sum() * 0.0
    return losses[active].mean()


def pk_batches(labels: np.ndarray, classes_per_batch: int, per_class: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of index batches, each with ``classes_per_batch`` classes x ``per_class`` images."""
    by_class = {c: rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}
    by_class = {c: idx for c, idx in by_class.items() if len(idx) >= 2}
    n_batches = max(1, len(labels) // (classes_per_batch * per_class))
    batches = []
    classes = np.array(sorted(by_class))
    for _ in range(n_batches):
        chosen = rng.choice(classes, size=min(classes_per_batch, len(classes)), replace=False)
        batch = [rng.choice(by_class[c], size=per_class, replace=len(by_class[c]) < per_class) for c in chosen]
        batches.append(np.concatenate(batch))
    return batches
