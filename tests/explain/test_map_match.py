"""The map match (SPEC §3-4): the saliency loss that trains SANE and the target the ranker matches."""

from __future__ import annotations

import pytest
import torch

from sane.explain.map_match import heatmap_loss, saliency_target, spatial_softmax

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


# -- the saliency loss ---------------------------------------------------------------------------


def _targets(b: int, k: int, hw: int = 6, seed: int = 0) -> torch.Tensor:
    return saliency_target(torch.rand(b, k, 12, 12, generator=torch.Generator().manual_seed(seed)), (hw, hw))


def test_loss_is_zero_when_a_positive_attribute_map_equals_the_target():
    targets = _targets(1, 1)
    maps = torch.randn(1, 4, 6, 6)
    maps[0, 2] = targets[0, 0].log().view(6, 6)  # softmax(log t) = t
    positives = torch.tensor([[1, 0, 1, 0]])
    loss = heatmap_loss(maps, targets, torch.ones(1, 1, dtype=torch.bool), positives)
    assert float(loss) < 1e-4
    # The same perfect map on an attribute the image does not have explains nothing.
    negative = heatmap_loss(maps, targets, torch.ones(1, 1, dtype=torch.bool), torch.tensor([[1, 0, 0, 1]]))
    assert float(negative) > 0.1


def test_loss_is_capped_at_one_and_ignores_padding_and_images_without_positives():
    gen = torch.Generator().manual_seed(3)
    maps = 50 * torch.randn(4, 5, 6, 6, generator=gen)  # extreme maps: distances near sqrt(2) get capped
    targets = _targets(4, 3, seed=1)
    valid = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]], dtype=torch.bool)
    positives = torch.tensor([[1, 0, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]])
    loss = heatmap_loss(maps, targets, valid, positives)
    assert 0.0 <= float(loss) <= 1.0
    garbage = targets.clone()
    garbage[0, 2] = torch.rand(36)  # a padded slot and an image without positives change nothing
    garbage[3] = torch.rand(3, 36)
    assert torch.equal(heatmap_loss(maps, garbage, valid, positives), loss)
    assert float(heatmap_loss(maps, targets, torch.zeros_like(valid), positives)) == 0.0


def test_loss_is_the_min_over_positives_averaged_over_maps():
    maps = torch.randn(1, 3, 6, 6)
    targets = _targets(1, 2)
    p = spatial_softmax(maps)[0]
    d = torch.cdist(targets[0], p)  # (2 targets, 3 attributes)
    expected = d[:, [0, 2]].amin(1).clamp(max=1).mean()
    loss = heatmap_loss(maps, targets, torch.ones(1, 2, dtype=torch.bool), torch.tensor([[1, 0, 1]]))
    torch.testing.assert_close(loss, expected)


def test_gradient_flows_only_into_maps_of_positive_attributes():
    maps = torch.randn(2, 6, 6, 6, requires_grad=True)
    positives = torch.tensor([[1, 1, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0]])
    heatmap_loss(maps, _targets(2, 3), torch.ones(2, 3, dtype=torch.bool), positives).backward()
    touched = maps.grad.abs().sum((2, 3)) > 0
    assert touched.any()
    assert not (touched & ~positives.bool()).any()
    assert touched[1, 3]


def test_saliency_targets_ignore_units_and_sharpen_with_tau():
    s = torch.rand(2, 28, 28, generator=torch.Generator().manual_seed(0))
    t = saliency_target(s, (14, 14), tau=10.0)
    torch.testing.assert_close(t.sum(-1), torch.ones(2))
    torch.testing.assert_close(saliency_target(1000 * s + 3, (14, 14), tau=10.0), t)  # affine-invariant
    assert (saliency_target(s, (14, 14), 30.0).amax(-1) > t.amax(-1)).all()
    flat = saliency_target(torch.full((1, 28, 28), 0.7), (14, 14))
    torch.testing.assert_close(flat, torch.full((1, 196), 1 / 196))


