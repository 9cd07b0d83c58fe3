"""Attribute predictors (SPEC §3): a trunk, Attribute Activation Maps (AAMs) and attribute scores.

Every model maps a (B, 3, H, W) normalised batch to ``(z, H)``: scores z (B, A) — logits, sigmoid
gives the probability that the attribute is present — and activation maps H (B, A, h, w), higher =
more evidence for the attribute there. Builders follow torchvision: a function per model, the trunk
by name, ``weights`` explicit (None offline).

- ``sane`` / ``classifier``: trunk + 3x3 conv with one channel per attribute (the AAMs) + global
  average pooling. The same network; SANE is trained with saliency supervision of H, the classifier
  with λ = 0 (the kind only records how it was trained).
- ``fashionsearchnet``: the AAM of each attribute weights a region of interest of the trunk features
  that a small fully connected branch classifies, next to a global branch (Ak et al., 2018, without
  its retrieval head); no saliency supervision.
- ``random``: random scores and maps, a floor for the ranker and the metrics.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from sane.images import Preprocess
from sane.models.backbones import _conv_bn_relu, _resnet_trunk
from sane.models.checkpoint import bundled_weights

ATTRIBUTE_MODELS = ("sane", "classifier", "fashionsearchnet", "random")
ATTRIBUTE_TRUNKS = ("compact", "resnet50")
TRUNK_STRIDES = {"compact": 8, "resnet50": 32}
DEFAULT_ATTRIBUTE_MODEL = "attributes_sane.pt"


def compact_attribute_trunk() -> tuple[nn.Sequential, int, int]:
    """The compact similarity trunk without its last stride: 14x14 maps at 112 px (stride 8), 128 ch.

    Returns (trunk, channels, stride). Stride 8 rather than 16 because the synthetic objects are
    small (a "small" object is ~36 px wide): at 7x7 it would cover about two cells and a map's peak
    could hardly tell the object from its surroundings; at 14x14 it covers four to five.
    """
    layers = [(3, 32, 2), (32, 48, 2), (48, 96, 2), (96, 96, 1), (96, 128, 1), (128, 128, 1)]
    return nn.Sequential(*[_conv_bn_relu(cin, cout, stride) for cin, cout, stride in layers]), 128, 8


def resnet50_attribute_trunk(weights: str | None = None) -> tuple[nn.Sequential, int, int]:
    """The paper's trunk: torchvision ResNet-50 up to layer4 (2048 ch, stride 32: 7x7 at 224 px).

    ``weights`` goes to torchvision (e.g. ``"IMAGENET1K_V2"``) and downloads: leave it None offline.
    """
    return _resnet_trunk(tvm.resnet50(weights=weights), "layer4"), 2048, 32


def build_trunk(arch: str, weights: str | None = None) -> tuple[nn.Sequential, int, int]:
    """(trunk, channels, stride) of a named trunk (one of :data:`ATTRIBUTE_TRUNKS`)."""
    if arch == "compact":
        if weights is not None:
            raise ValueError("the compact trunk has no torchvision weights")
        return compact_attribute_trunk()
    if arch == "resnet50":
        return resnet50_attribute_trunk(weights)
    raise ValueError(f"unknown trunk {arch!r}; choose one of {', '.join(ATTRIBUTE_TRUNKS)}")


class AttributePredictor(nn.Module):
    """Trunk + 3x3 conv (one output channel per attribute: the AAMs H) + global average pooling -> z.

    The SANE predictor and the attribute-classifier baseline share this network (SPEC §3).
    """

    def __init__(self, trunk: nn.Module, channels: int, attributes: list[str], arch: str, kind: str = "sane"):
        super().__init__()
        self.trunk = trunk
        self.aam = nn.Conv2d(channels, len(attributes), 3, padding=1)
        self.attributes = list(attributes)
        self.arch = arch
        self.kind = kind

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores z (B, A), activation maps H (B, A, h, w)); z is the spatial mean of H."""
        maps = self.aam(self.trunk(x))
        return maps.mean((2, 3)), maps


class FashionSearchNet(nn.Module):
    """FashionSearchNet-style baseline: each attribute's AAM pools its own region of the trunk features.

    The AAM H_a, as a spatial softmax, weights the trunk features into one region-of-interest vector
    per attribute (a soft, differentiable crop); a shared fully connected branch maps each region to
    that attribute's score, and a global branch scores the whole-image features. z = GAP(H) (the
    CAM-style score that teaches the AAMs where each attribute is, weakly) + ROI score + global score.
    """

    def __init__(self, trunk: nn.Module, channels: int, attributes: list[str], arch: str, hidden: int = 128):
        super().__init__()
        n = len(attributes)
        self.trunk = trunk
        self.aam = nn.Conv2d(channels, n, 3, padding=1)
        self.roi_branch = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                                        nn.ReLU(inplace=True))
        self.roi_out = nn.Parameter(torch.zeros(n, hidden))  # one output unit per attribute
        self.roi_bias = nn.Parameter(torch.zeros(n))
        self.global_branch = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, n))
        nn.init.normal_(self.roi_out, std=hidden**-0.5)
        self.attributes = list(attributes)
        self.arch = arch
        self.kind = "fashionsearchnet"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores z (B, A), activation maps H (B, A, h, w))."""
        feats = self.trunk(x)
        maps = self.aam(feats)
        weights = maps.flatten(2).softmax(-1)  # (B, A, hw)
        regions = weights @ feats.flatten(2).transpose(1, 2)  # (B, A, C): one pooled region per attribute
        roi = (self.roi_branch(regions) * self.roi_out).sum(-1) + self.roi_bias
        scores = maps.mean((2, 3)) + roi + self.global_branch(feats.mean((2, 3)))
        return scores, maps


class RandomAttributes(nn.Module):
    """Random scores (standard normal) and maps, a function of the image and the seed only.

    The same image gets the same prediction on every call (the draw is seeded from its bytes), so
    rankings built on it are reproducible; maps have the size the ``arch`` trunk would give.
    """

    def __init__(self, attributes: list[str], arch: str = "compact", seed: int = 0):
        super().__init__()
        if arch not in TRUNK_STRIDES:
            raise ValueError(f"unknown trunk {arch!r}; choose one of {', '.join(ATTRIBUTE_TRUNKS)}")
        self.attributes = list(attributes)
        self.stride = TRUNK_STRIDES[arch]
        self.seed = seed
        self.arch = arch
        self.kind = "random"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores z (B, A), maps H (B, A, ceil(H/stride), ceil(W/stride))), seeded per image."""
        n = len(self.attributes)
        h, w = -(-x.shape[-2] // self.stride), -(-x.shape[-1] // self.stride)
        scores, maps = [], []
        for image in x.detach().float().cpu():
            digest = hashlib.blake2b(image.numpy().tobytes(), digest_size=8).digest()
            gen = torch.Generator().manual_seed((int.from_bytes(digest, "little") + self.seed) % 2**63)
            scores.append(torch.randn(n, generator=gen))
            maps.append(torch.randn(n, h, w, generator=gen))
        return torch.stack(scores).to(x.device), torch.stack(maps).to(x.device)


def build_attribute_model(
    kind: str, attributes: list[str], arch: str = "compact", weights: str | None = None, seed: int = 0
) -> nn.Module:
    """An attribute model by name (one of :data:`ATTRIBUTE_MODELS`) over the named attributes."""
    if kind not in ATTRIBUTE_MODELS:
        raise ValueError(f"unknown attribute model {kind!r}; choose one of {', '.join(ATTRIBUTE_MODELS)}")
    if not attributes:
        raise ValueError("an attribute model needs at least one attribute")
    if kind == "random":
        return RandomAttributes(attributes, arch, seed)
    trunk, channels, _ = build_trunk(arch, weights)
    if kind == "fashionsearchnet":
        return FashionSearchNet(trunk, channels, attributes, arch)
    return AttributePredictor(trunk, channels, attributes, arch, kind)


def default_attribute_weights(kind: str = "sane", benchmark: str = "shapes") -> Path:
    """Path of a bundled attribute checkpoint (``attributes_<kind>.pt``), by default trained on Shapes
    with Attributes; ``benchmark="shapes_bg"``: on its shape x background variant."""
    return bundled_weights(benchmark) / f"attributes_{kind}.pt"


def save_attributes(
    path: str | os.PathLike,
    model: nn.Module,
    preprocess: Preprocess,
    thresholds: list[float] | None = None,
    ranker: dict | None = None,
    **meta,
) -> None:
    """Write a checkpoint loadable with ``torch.load(weights_only=True)``: weights plus plain metadata.

    ``thresholds`` are per-attribute score cut-offs (logits) above which an attribute counts as
    present (the ranker's candidates, SPEC §4); ``ranker`` the ranker's defaults for this model,
    ``{"prior": {name: p} or None, "w": float, "gamma": float}`` (``sane tune-ranker`` writes them);
    ``meta`` keeps only str/int/float/bool values.
    """
    torch.save(
        {
            "kind": model.kind,
            "arch": model.arch,
            "attributes": list(model.attributes),
            "input_size": preprocess.size,
            "mean": list(preprocess.mean),
            "std": list(preprocess.std),
            "thresholds": [float(t) for t in thresholds] if thresholds is not None else None,
            "ranker": _plain_ranker_settings(ranker),
            # discovered attributes (``sane discover-attributes``): name -> {"id", "contact_sheet"}
            "vocabulary": getattr(model, "vocabulary", None),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "meta": {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))},
        },
        path,
    )


def _plain_ranker_settings(ranker: dict | None) -> dict | None:
    """Ranker defaults as plain floats (weights-only loadable), or None."""
    if ranker is None:
        return None
    prior = ranker.get("prior")
    return {
        "prior": {str(k): float(v) for k, v in prior.items()} if prior is not None else None,
        "w": float(ranker["w"]),
        "gamma": float(ranker["gamma"]),
    }


def read_attribute_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict (weights-only load), with a clear error for files that are not ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no attribute model file at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or not {"kind", "arch", "attributes", "state_dict"} <= set(ckpt):
        raise ValueError(f"{path} is not a sane attribute checkpoint")
    return ckpt


def load_attributes(
    path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Preprocess]:
    """Load an attribute model in eval mode with its preprocessing (None: the bundled SANE model).

    The model carries ``attributes`` (names), ``kind``, ``arch``, ``thresholds`` (a (A,) tensor,
    or None when the checkpoint has none), ``ranker_defaults`` (the tuned prior, w and γ that
    :class:`~sane.explain.ranker.AttributeRanker` uses when not told otherwise; None when untuned) and
    ``vocabulary`` (for discovered attributes, name -> {"id", "contact_sheet"}; else None).
    """
    ckpt = read_attribute_checkpoint(path if path is not None else default_attribute_weights())
    model = build_attribute_model(ckpt["kind"], ckpt["attributes"], ckpt["arch"])
    model.load_state_dict(ckpt["state_dict"])
    thresholds = ckpt.get("thresholds")
    model.thresholds = torch.tensor(thresholds) if thresholds is not None else None
    model.ranker_defaults = ckpt.get("ranker")
    model.vocabulary = ckpt.get("vocabulary")
    preprocess = Preprocess(ckpt["input_size"], tuple(ckpt["mean"]), tuple(ckpt["std"]))
    return model.to(device).eval(), preprocess


def predict_attributes(model: nn.Module, images: torch.Tensor, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (N, A), maps (N, A, h, w)) of a model over many images, in float32 on the CPU, no grad."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    scores, maps = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            z, h = model(images[start : start + batch_size].to(device))
            scores.append(z.float().cpu())
            maps.append(h.float().cpu())
    return torch.cat(scores), torch.cat(maps)


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (..., h, w) activation maps to image size, for display and pointing."""
    lead = maps.shape[:-2]
    out = F.interpolate(maps.reshape(-1, 1, *maps.shape[-2:]).float(), size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)
