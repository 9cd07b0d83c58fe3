"""What "removing" a pixel replaces it with (SPEC §0, §2): the mean colour, a constant grey, a blurred
copy of the image, or a given tensor. Shared by the saliency generators and the metrics."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from sane.errors import InputError
from sane.images import Preprocess

SUBSTRATES = ("mean", "constant", "blur")


def _gaussian_kernel(sigma: float, radius: int, device: torch.device) -> torch.Tensor:
    """Normalised 1-D Gaussian taps of length ``2*radius+1``."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (C, H, W) image, replicate-padded so a flat image stays flat."""
    if sigma <= 0:
        return image.clone()
    c = image.shape[0]
    radius = max(1, math.ceil(3 * sigma))
    k = _gaussian_kernel(sigma, radius, image.device)
    x = image.float().unsqueeze(0)
    # Rows then columns: two 1-D convs instead of one (2r+1)^2 one; depthwise via groups=C.
    x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x.squeeze(0).to(image.dtype)


def make_substrate(
    image: torch.Tensor,
    spec: str | float | torch.Tensor | np.ndarray = "mean",
    preprocess: Preprocess | None = None,
    grey: float = 127 / 255,
    blur_sigma: float | None = None,
) -> torch.Tensor:
    """Substrate for a normalised (C, H, W) image, (C, H, W) or (C, 1, 1) on its device.

    ``"mean"``: the data-set mean colour (0 in normalised space); ``"constant"``: grey ``grey`` (0..1
    scale) normalised with ``preprocess``; ``"blur"``: a Gaussian-blurred copy (sigma = side/20 unless
    ``blur_sigma``); a number: that constant in normalised space; a tensor or array: used as given.
    """
    c, h, w = image.shape
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return torch.full((c, 1, 1), float(spec), dtype=image.dtype, device=image.device)
    if isinstance(spec, str):
        if spec == "mean":
            return torch.zeros((c, 1, 1), dtype=image.dtype, device=image.device)
        if spec == "constant":
            value = (preprocess or Preprocess()).constant(grey)
            if value.shape[0] != c:
                raise InputError(f"substrate: constant grey has {value.shape[0]} channels, image has {c}", "substrate")
            return value.to(device=image.device, dtype=image.dtype)
        if spec == "blur":
            return gaussian_blur(image, max(h, w) / 20 if blur_sigma is None else float(blur_sigma))
        raise InputError(f"substrate: expected one of {SUBSTRATES}, a number or a tensor, got {spec!r}", "substrate")
    sub = torch.from_numpy(np.ascontiguousarray(spec)) if isinstance(spec, np.ndarray) else spec
    if not isinstance(sub, torch.Tensor):
        raise InputError(f"substrate: unsupported type {type(spec).__name__}", "substrate")
    if sub.dim() != 3 or sub.shape[0] != c or tuple(sub.shape[1:]) not in ((1, 1), (h, w)):
        raise InputError(
            f"substrate: expected shape ({c}, {h}, {w}) or ({c}, 1, 1), got {tuple(sub.shape)}", "substrate"
        )
    return sub.to(device=image.device, dtype=image.dtype)
