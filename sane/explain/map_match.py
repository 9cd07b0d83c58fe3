"""The map match of SANE (SPEC §3-4): how well an attribute's activation map matches a saliency map.

It is both the training supervision of the attribute model and the ranker's ``match(a)``:

``L_hm = mean_j min(1, min_{a in P} || softmax(H_a) - softmax(tau * norm(S_j)) ||_2)`` over the
cached saliency maps S_j of an image (one per reference), with P the image's positive attributes:
each saliency map must be explained by at least one attribute that is present. The same distance,
``1 - d / sqrt(2)``, is the ranker's ``match(a)`` (SPEC §4), so the target builder lives here once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULT_TAU = 10.0
# RISE masks of the query saliency map that the ranker matches (tune-ranker, eval-attributes, pipeline)
DEFAULT_QUERY_MASKS = 300


def spatial_softmax(maps: torch.Tensor) -> torch.Tensor:
    """Softmax over the cells of (..., h, w) maps, flattened to (..., h*w): a distribution per map."""
    return maps.flatten(-2).float().softmax(-1)


def saliency_target(saliency: torch.Tensor, size: tuple[int, int], tau: float = DEFAULT_TAU) -> torch.Tensor:
    """Target distributions (..., h*w): maps area-downsampled to ``size``, standardised over their
    cells, times ``tau``, spatial softmax. A constant map gives the uniform distribution.

    Standardising makes the target independent of the saliency method's units and offset (RISE maps
    are in similarity units); ``tau`` sets how peaked it is (larger = closer to the argmax cell).
    """
    lead = saliency.shape[:-2]
    s = saliency.reshape(-1, 1, *saliency.shape[-2:]).float()
    s = F.adaptive_avg_pool2d(s, size).flatten(1)
    std, mean = torch.std_mean(s, dim=1, keepdim=True, unbiased=False)
    z = (s - mean) / std.clamp_min(1e-6)
    return (tau * z).softmax(-1).reshape(*lead, size[0] * size[1])


def map_distances(maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L2 distances (B, K, A) between every attribute map's softmax (B, A, h, w) and every target (B, K, h*w).

    Both are distributions, so each distance lies in [0, sqrt(2)].
    """
    p = spatial_softmax(maps)  # (B, A, hw)
    diff = targets[:, :, None, :] - p[:, None, :, :]  # (B, K, A, hw)
    return diff.square().sum(-1).clamp_min(1e-12).sqrt()


def heatmap_loss(
    maps: torch.Tensor, targets: torch.Tensor, target_valid: torch.Tensor, positives: torch.Tensor
) -> torch.Tensor:
    """L_hm for a batch: maps (B, A, h, w), targets (B, K, h*w) from :func:`saliency_target`,
    target_valid (B, K) bool (padding for images with fewer than K references), positives (B, A) 0/1.

    Only positive attributes can match a map, so gradient flows into positive attributes' maps only
    (and only into the best-matching one per saliency map, and not at all past the cap of 1). Pairs
    (image, map) of images without positives or without cached maps are left out of the mean; with
    none left the loss is a differentiable zero.
    """
    dist = map_distances(maps, targets)  # (B, K, A)
    pos = positives.bool()[:, None, :].expand_as(dist)
    best = dist.masked_fill(~pos, float("inf")).amin(-1)  # (B, K)
    keep = target_valid.bool() & positives.bool().any(-1, keepdim=True)
    if not keep.any():
        return maps.sum() * 0.0
    return best[keep].clamp(max=1.0).mean()


def map_match(maps: torch.Tensor, saliency: torch.Tensor, tau: float = DEFAULT_TAU) -> torch.Tensor:
    """SPEC §4's ``match`` (B, A) of every activation map (B, A, h, w) with its image's saliency map
    (B, H', W'): one minus the training distance (:func:`map_distances` to :func:`saliency_target`)
    over its maximum sqrt(2), in [0, 1]."""
    target = saliency_target(saliency.float(), tuple(maps.shape[-2:]), tau)
    dist = map_distances(maps, target[:, None])[:, 0]
    return (1.0 - dist / math.sqrt(2.0)).clamp(0.0, 1.0)
