"""Tests of the saliency metrics: insertion/deletion against a model whose evidence is known, and
the object-mask metrics (pointing game, mass inside)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sane.errors import InputError
from sane.images import Preprocess
from sane.metrics import (
    Curves,
    auc,
    gaussian_blur,
    insertion_deletion,
    insertion_deletion_curves,
    mass_inside,
    normalise_curve,
    pointing_game,
    step_masks,
)

SIZE = 32
REGION = (4, 12, 20, 28)  # y0, y1, x0, x1: the only pixels the model looks at


class RegionModel(torch.nn.Module):
    """Embedding = 2x2 average pool of one square region (per channel) plus a constant vector.

    The constant keeps the cosine defined when the region is flat; nothing outside the region
    matters, so the true saliency is known.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        y0, y1, x0, x1 = REGION
        pooled = F.adaptive_avg_pool2d(x[:, :, y0:y1, x0:x1], 2).flatten(1)  # (B, 12)
        return torch.cat([pooled, torch.ones(x.shape[0], 4)], dim=1)


def _cos(model: torch.nn.Module, a: torch.Tensor, b: torch.Tensor) -> float:
    ea, eb = F.normalize(model(torch.stack([a, b])), dim=1)
    return float(ea @ eb)


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A query with strong structure in the region and a reference that shares most of it."""
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(3, SIZE, SIZE, generator=g)
    y0, y1, x0, x1 = REGION
    pattern = torch.randint(0, 2, (3, 2, 2), generator=g).float() * 4 - 2  # +-2 per cell
    query[:, y0:y1, x0:x1] += pattern.repeat_interleave(4, 1).repeat_interleave(4, 2)
    reference = query + 0.3 * torch.randn(3, SIZE, SIZE, generator=g)
    return query, reference


def _maps(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 100)
    y0, y1, x0, x1 = REGION
    noise = torch.rand(SIZE, SIZE, generator=g)
    good = 0.1 * noise
    good[y0:y1, x0:x1] += 1.0
    bad = 0.5 + noise  # everything outside the region outranks it
    bad[y0:y1, x0:x1] = 0.0
    return {"good": good, "bad": bad, "random": torch.rand(SIZE, SIZE, generator=g)}


# ---------------------------------------------------------------- insertion / deletion


def test_good_map_beats_bad_and_random_maps() -> None:
    model = RegionModel().eval()
    pairs = [_pair(s) for s in range(3)]
    scores = {}
    for name in ("good", "bad", "random"):
        maps = [_maps(s)[name] for s in range(3)]
        scores[name] = insertion_deletion(model, pairs, maps)
    assert scores["good"]["insertion"] > scores["random"]["insertion"] > scores["bad"]["insertion"]
    assert scores["good"]["deletion"] < scores["random"]["deletion"] < scores["bad"]["deletion"]
    # The region is 64 of 1024 pixels: the right map restores/destroys the match within ~6% of t.
    assert scores["good"]["insertion"] > 90
    assert scores["good"]["deletion"] < 10
    out = scores["good"]
    assert out["insertion_curve"].shape == out["deletion_curve"].shape == out["t"].shape == (101,)
    assert 0 <= float(out["insertion_curve"].min()) and float(out["insertion_curve"].max()) <= 1


def _by_hand(model, query, reference, saliency, steps: int) -> tuple[float, float]:
    """SPEC §2 written out pixel by pixel: reveal (insert) or hide (delete) the top round(t·HW) pixels
    (at least one) on the grey substrate, score against the reference, min-max the curve, trapezoid x100."""
    grey = Preprocess().constant().expand(3, SIZE, SIZE)
    order = np.argsort(-saliency.flatten().numpy(), kind="stable")
    ins, dels = [], []
    for t in np.linspace(0, 1, steps):
        top = np.zeros(SIZE * SIZE, dtype=bool)
        top[order[: max(int(round(t * SIZE * SIZE)), 1)]] = True
        top = torch.from_numpy(top.reshape(SIZE, SIZE))
        ins.append(_cos(model, torch.where(top, query, grey), reference))
        dels.append(_cos(model, torch.where(top, grey, query), reference))

    def area(curve):
        c = np.asarray(curve)
        c = (c - c.min()) / (c.max() - c.min())
        return float(np.sum((c[1:] + c[:-1]) / 2) / (steps - 1) * 100)

    return area(ins), area(dels)


@pytest.mark.parametrize("name", ["good", "bad", "random"])
def test_aucs_equal_the_metric_computed_by_hand(name) -> None:
    model = RegionModel().eval()
    query, reference = _pair(1)
    saliency = _maps(1)[name]
    out = insertion_deletion(model, [(query, reference)], [saliency], steps=21)
    insertion, deletion = _by_hand(model, query, reference, saliency, steps=21)
    assert out["insertion"] == pytest.approx(insertion, abs=1e-3)
    assert out["deletion"] == pytest.approx(deletion, abs=1e-3)


def test_curve_end_points_are_exact_similarities() -> None:
    model = RegionModel().eval()
    query, reference = _pair()
    maps = _maps()
    s_qr = _cos(model, query, reference)
    grey = Preprocess().constant().expand(3, SIZE, SIZE)
    s_grey = _cos(model, grey, reference)

    curves = insertion_deletion_curves(model, query, reference, maps["bad"])
    assert isinstance(curves, Curves)
    assert curves.t[0] == 0 and curves.t[-1] == 1 and curves.t.shape == (101,)
    # t=1: everything inserted (the query itself) / everything deleted (the substrate).
    assert curves.insertion[-1].item() == pytest.approx(s_qr, abs=1e-5)
    assert curves.deletion[-1].item() == pytest.approx(s_grey, abs=1e-5)
    # t=0 keeps one pixel; for the "bad" map it lies outside the region, so nothing the model sees.
    assert curves.deletion[0].item() == pytest.approx(s_qr, abs=1e-5)
    assert curves.insertion[0].item() == pytest.approx(s_grey, abs=1e-5)
    # For the good map the single t=0 pixel is in the region: nearly, not exactly, s(q, r).
    good = insertion_deletion_curves(model, query, reference, maps["good"])
    assert good.deletion[0].item() == pytest.approx(s_qr, abs=0.05)
    assert good.deletion[0].item() != pytest.approx(s_qr, abs=1e-6)
    assert s_grey < s_qr - 0.3  # the test pair really does depend on the region


def test_chunking_and_single_reference_pass() -> None:
    model = RegionModel().eval()
    query, reference = _pair()
    saliency = _maps()["random"]
    full = insertion_deletion_curves(model, query, reference, saliency, steps=21, batch_size=202)
    assert model.calls == [1, 42]  # reference once, then all 2*steps step images
    model.calls.clear()
    chunked = insertion_deletion_curves(model, query, reference, saliency, steps=21, batch_size=10)
    assert model.calls == [1, 10, 10, 10, 10, 2]
    torch.testing.assert_close(full.insertion, chunked.insertion)
    torch.testing.assert_close(full.deletion, chunked.deletion)
    # Results are ordinary tensors (not inference tensors): in-place edits work.
    chunked.insertion.add_(1)


def test_step_masks_counts_order_and_ties() -> None:
    saliency = torch.arange(20.0).view(4, 5)
    t, keep = step_masks(saliency, steps=11)
    assert keep.shape == (11, 4, 5) and keep.dtype == torch.bool
    torch.testing.assert_close(t, torch.linspace(0, 1, 11))
    counts = keep.flatten(1).sum(1)
    expected = [max(round(x * 20), 1) for x in np.linspace(0, 1, 11)]
    assert counts.tolist() == expected
    # Nested and highest first: the t=0 pixel is the maximum (bottom-right corner).
    assert bool((keep[1:] >= keep[:-1]).all())
    assert keep[0].nonzero().tolist() == [[3, 4]]
    # Ties (a flat map) are broken in raster order, deterministically.
    _, flat = step_masks(torch.zeros(4, 5), steps=11)
    assert flat[2].flatten().tolist() == [True] * 4 + [False] * 16


def test_substrates() -> None:
    model = RegionModel().eval()
    query, reference = _pair()
    saliency = _maps()["good"]
    default = insertion_deletion_curves(model, query, reference, saliency, steps=11)
    given = insertion_deletion_curves(
        model, query, reference, saliency, substrate=Preprocess().constant(), steps=11
    )
    torch.testing.assert_close(default.deletion, given.deletion)
    # A full-size tensor substrate: deleting everything leaves exactly that image.
    other = torch.randn(3, SIZE, SIZE)
    c = insertion_deletion_curves(model, query, reference, saliency, substrate=other, steps=11)
    assert c.deletion[-1].item() == pytest.approx(_cos(model, other, reference), abs=1e-5)
    blur = insertion_deletion_curves(model, query, reference, saliency, substrate="blur", steps=11)
    expected = _cos(model, gaussian_blur(query, SIZE / 20), reference)
    assert blur.deletion[-1].item() == pytest.approx(expected, abs=1e-5)
    assert blur.insertion[-1].item() == pytest.approx(_cos(model, query, reference), abs=1e-5)
    with pytest.raises(InputError, match="substrate"):
        insertion_deletion_curves(model, query, reference, saliency, substrate="noise")
    with pytest.raises(InputError, match="substrate"):
        insertion_deletion_curves(model, query, reference, saliency, substrate=torch.zeros(3, 5, 5))


def test_gaussian_blur_keeps_flat_images_and_smooths() -> None:
    flat = torch.full((3, 16, 16), 0.7)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)
    noise = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(1))
    blurred = gaussian_blur(noise, 1.6)
    assert blurred.shape == noise.shape
    assert blurred.std() < 0.5 * noise.std()
    # Mass is preserved away from the border.
    assert blurred.mean().item() == pytest.approx(noise.mean().item(), abs=0.05)


def test_shape_mismatches_raise_input_error() -> None:
    model = RegionModel().eval()
    query, reference = _pair()
    saliency = _maps()["good"]
    with pytest.raises(InputError, match="reference") as err:
        insertion_deletion_curves(model, query, reference[:, :16], saliency)
    assert err.value.field == "reference"
    with pytest.raises(InputError, match="saliency"):
        insertion_deletion_curves(model, query, reference, saliency[:16])
    with pytest.raises(InputError, match="query"):
        insertion_deletion_curves(model, query[0], reference[0], saliency)
    with pytest.raises(InputError, match="NaN"):
        insertion_deletion_curves(model, query, reference, torch.full((SIZE, SIZE), float("nan")))
    with pytest.raises(InputError, match="maps"):
        insertion_deletion(model, [(query, reference)], [saliency, saliency])
    with pytest.raises(InputError, match="pair 1"):
        insertion_deletion(model, [(query, reference)] * 2, [saliency, saliency[:8]])


def test_auc_and_normalise() -> None:
    t = torch.linspace(0, 1, 101)
    assert auc(t, t) == pytest.approx(50.0)
    assert auc(torch.ones(11)) == pytest.approx(100.0)
    assert auc(np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.5, 1.0])) == pytest.approx(50.0)
    assert auc(t**2, t) == pytest.approx(100 / 3, abs=0.01)
    torch.testing.assert_close(normalise_curve(torch.full((7,), 0.4)), torch.zeros(7))
    torch.testing.assert_close(normalise_curve(torch.tensor([0.2, 0.6, 0.4])), torch.tensor([0.0, 1.0, 0.5]))
    with pytest.raises(InputError):
        auc(torch.ones(5), torch.linspace(0, 1, 4))


# ---------------------------------------------------------------- ground truth


def _square_mask() -> torch.Tensor:
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[2:5, 2:5] = True
    return mask


def test_pointing_game() -> None:
    mask = _square_mask()
    s = torch.zeros(10, 10)
    s[3, 3] = 1.0
    assert pointing_game(s, mask)
    s = torch.zeros(10, 10)
    s[3, 7] = 1.0  # 3 pixels right of the square's edge column 4
    assert not pointing_game(s, mask)
    assert not pointing_game(s, mask, tolerance=2)
    assert pointing_game(s, mask, tolerance=3)
    s = torch.zeros(10, 10)
    s[7, 7] = 1.0  # diagonal: Euclidean distance to (4, 4) is sqrt(18) ~ 4.24
    assert not pointing_game(s, mask, tolerance=4)
    assert pointing_game(s, mask, tolerance=5)
    assert pointing_game(s.numpy(), mask.numpy(), tolerance=5)  # arrays work too
    with pytest.raises(InputError, match="mask"):
        pointing_game(s, mask[:5])


def test_mass_inside() -> None:
    mask = _square_mask()
    assert mass_inside(mask.float(), mask) == pytest.approx(1.0)
    assert mass_inside(mask.float() * 3 + 5, mask) == pytest.approx(1.0)  # offset removed
    assert mass_inside(torch.full((10, 10), 2.0), mask) == pytest.approx(9 / 100)
    assert mass_inside((~mask).float(), mask) == pytest.approx(0.0)
    half = torch.zeros(10, 10)
    half[3, 3] = 1.0
    half[8, 8] = 1.0
    assert mass_inside(half, mask) == pytest.approx(0.5)
    with pytest.raises(InputError, match="saliency"):
        mass_inside(torch.zeros(3, 10, 10), mask)
    with pytest.raises(InputError, match="mask"):
        mass_inside(half, mask.T[:, :5])
