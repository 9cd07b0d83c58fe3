"""How alike two saliency maps are: the Pearson correlation over their pixels."""

from __future__ import annotations

import numpy as np
import torch


def pearson(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Pearson correlation of two maps (any shape, same number of pixels), in float64; 0 when either
    map is constant."""
    a, b = torch.as_tensor(a).flatten().double(), torch.as_tensor(b).flatten().double()
    if a.numel() != b.numel():
        raise ValueError(f"maps of {a.numel()} and {b.numel()} pixels")
    a, b = a - a.mean(), b - b.mean()
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else 0.0
