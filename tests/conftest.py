"""Shared test fixtures: constructed models whose right answer is known."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sane.data import write_dataset
from sane.models import build_embedding


class RegionModel(nn.Module):
    """An embedding that sees only the box ``(y0, y1, x0, x1)``: pooled pixels of the box plus a
    constant part (so the cosine stays defined when the box is blanked). Its saliency must peak there."""

    def __init__(self, box: tuple[int, int, int, int], pool: int = 4):
        super().__init__()
        self.box = box
        self.pool = pool
        self.register_buffer("bias", torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0, y1, x0, x1 = self.box
        feats = F.avg_pool2d(x[:, :, y0:y1, x0:x1], self.pool).flatten(1)
        return torch.cat([feats, self.bias.expand(len(x), -1)], 1)


class CountingModel(nn.Module):
    """Wraps a model and records the size of every batch it is given."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        return self.inner(x)


def inside(box: tuple[int, int, int, int], flat_index: int, width: int) -> bool:
    y, x = divmod(int(flat_index), width)
    return box[0] <= y < box[1] and box[2] <= x < box[3]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is faster than two fighting for a shared CPU (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def image64() -> torch.Tensor:
    return torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def blocks64() -> torch.Tensor:
    """A 64 x 64 image of 8 x 8 flat colour blocks plus a little noise: something with superpixels."""
    gen = torch.Generator().manual_seed(1)
    coarse = torch.randn((1, 3, 8, 8), generator=gen)
    return F.interpolate(coarse, size=(64, 64), mode="nearest")[0] + 0.05 * torch.randn((3, 64, 64), generator=gen)


# -- the attribute-model tests (tests/train, tests/models): small data, a small model -------------------
@pytest.fixture(scope="session")
def shapes48(tmp_path_factory) -> str:
    """168 synthetic images (4 per class, 34 training classes) at 48 px."""
    root = tmp_path_factory.mktemp("shapes")
    write_dataset(root, 168, seed=5, image_size=48, progress=False)
    return str(root)


@pytest.fixture(scope="session")
def untrained_similarity() -> nn.Module:
    """A small untrained similarity model: the cache only needs *a* model, deterministic on the CPU."""
    torch.manual_seed(0)
    return build_embedding("compact", dim=8).eval()

