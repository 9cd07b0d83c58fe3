"""Similarity networks: a function per architecture (torchvision style), weights as an explicit argument.

Every builder returns an :class:`EmbeddingNet` mapping a (B, 3, H, W) normalised batch to (B, dim)
embeddings (not normalised; the library L2-normalises where it compares).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

ARCHITECTURES = ("compact", "resnet18", "resnet50")


class EmbeddingNet(nn.Module):
    """A convolutional trunk, global average pooling and a linear projection to ``dim``."""

    def __init__(self, trunk: nn.Module, trunk_channels: int, dim: int, arch: str):
        super().__init__()
        self.trunk = trunk
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(trunk_channels, dim)
        self.arch = arch
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.trunk(x)).flatten(1))


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def compact_embedding(dim: int = 64) -> EmbeddingNet:
    """The CPU default: six 3x3 conv layers, four of stride 2 (~50 MMAC at 112 px), fast on 2 cores."""
    layers = [(3, 32, 2), (32, 48, 2), (48, 96, 2), (96, 96, 1), (96, 128, 2), (128, 128, 1)]
    trunk = nn.Sequential(*[_conv_bn_relu(cin, cout, stride) for cin, cout, stride in layers])
    return EmbeddingNet(trunk, 128, dim, "compact")


def _resnet_trunk(net: nn.Module, last_layer: str) -> nn.Sequential:
    layers = [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3]
    if last_layer == "layer4":
        layers.append(net.layer4)
    return nn.Sequential(*layers)


def resnet18_embedding(dim: int = 64, weights: str | None = None, last_layer: str = "layer3") -> EmbeddingNet:
    """The paper's similarity trunk: torchvision ResNet-18 up to layer3 (256 ch), 64-d embedding.

    ``weights`` is passed to torchvision (e.g. ``"IMAGENET1K_V1"``); it downloads, so leave it None
    offline.
    """
    net = tvm.resnet18(weights=weights)
    channels = 256 if last_layer == "layer3" else 512
    return EmbeddingNet(_resnet_trunk(net, last_layer), channels, dim, "resnet18")


def resnet50_embedding(dim: int = 64, weights: str | None = None, last_layer: str = "layer3") -> EmbeddingNet:
    """ResNet-50 option (the paper's attribute trunk size): up to layer3 (1024 ch) by default."""
    net = tvm.resnet50(weights=weights)
    channels = 1024 if last_layer == "layer3" else 2048
    return EmbeddingNet(_resnet_trunk(net, last_layer), channels, dim, "resnet50")


def build_embedding(arch: str, dim: int = 64, weights: str | None = None) -> EmbeddingNet:
    """Build a similarity network by name (one of :data:`ARCHITECTURES`)."""
    if arch == "compact":
        if weights is not None:
            raise ValueError("the compact backbone has no torchvision weights")
        return compact_embedding(dim)
    if arch == "resnet18":
        return resnet18_embedding(dim, weights)
    if arch == "resnet50":
        return resnet50_embedding(dim, weights)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
