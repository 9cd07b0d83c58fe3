"""Attribute prediction metrics: average precision per attribute and their mean (mAP, SPEC §3).

Average precision as in scikit-learn (no interpolation): ``AP = sum_n (R_n - R_{n-1}) P_n`` over the
distinct score thresholds, so tied scores are one threshold, not an arbitrary order.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """A float64 / label array on the CPU from a tensor or array."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def average_precision(scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """AP of one attribute: ``scores`` (N,) higher = more likely present, ``labels`` (N,) 0/1.

    NaN when there is no positive (AP is undefined, not zero).
    """
    s = _as_numpy(scores).astype(np.float64).ravel()
    y = _as_numpy(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape} vs {y.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last position of each distinct score
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_attribute_ap(scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> np.ndarray:
    """(A,) AP of each column of (N, A) scores against (N, A) 0/1 labels; NaN where a column has no positive."""
    s, y = _as_numpy(scores), _as_numpy(labels)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"expected (N, A) scores and labels of one shape, got {s.shape} and {y.shape}")
    return np.array([average_precision(s[:, a], y[:, a]) for a in range(s.shape[1])])


def mean_average_precision(scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """mAP: mean AP over the attributes with at least one positive (NaN if none has one)."""
    ap = per_attribute_ap(scores, labels)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
