"""Learned perturbation mask: deletes what a constructed model looks at, in both modes and with each
perturbation, is seeded, and never touches the model's parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import RegionModel, inside

from sane.errors import InputError
from sane.saliency import GENERATORS, LearnedMask, make_generator
from sane.saliency.learned_mask import total_variation

BOX = (8, 24, 36, 56)  # y0, y1, x0, x1 in a 64 x 64 image
ITERATIONS = 60  # reduced from the paper's 500: enough to converge at 64 x 64


def _box_mask() -> torch.Tensor:
    m = torch.zeros((64, 64), dtype=torch.bool)
    m[BOX[0] : BOX[1], BOX[2] : BOX[3]] = True
    return m


def _centroid_of_top(saliency: torch.Tensor, share: float = 0.05) -> tuple[int, int]:
    """Centre of mass of the top ``share`` of pixels: a peak that is robust to a saturated plateau."""
    k = max(1, int(share * saliency.numel()))
    idx = saliency.flatten().topk(k).indices
    ys, xs = idx // saliency.shape[1], idx % saliency.shape[1]
    return int(ys.float().mean().round()), int(xs.float().mean().round())


def _peaks_on_box(saliency: torch.Tensor) -> bool:
    y, x = _centroid_of_top(saliency)
    return inside(BOX, y * saliency.shape[1] + x, saliency.shape[1])


@pytest.fixture
def pair(image64):
    reference = image64 + 0.3 * torch.randn(image64.shape, generator=torch.Generator().manual_seed(2))
    return image64, reference


@pytest.mark.parametrize("perturbation", ["blur", "deletion", "noise"])
def test_mask_deletes_the_region_the_model_uses(pair, perturbation):
    query, reference = pair
    model = RegionModel(BOX).eval()
    result = LearnedMask(model, iterations=ITERATIONS, perturbation=perturbation).explain(query, reference)
    sal, box = result.query_map, _box_mask()
    assert sal.shape == (64, 64) and result.reference_map is None
    assert 0.0 <= float(sal.min()) and float(sal.max()) <= 1.0  # 1 - m with m clamped to [0, 1]
    assert _peaks_on_box(sal)
    assert float(sal[box].mean()) > 0.9 and float(sal[box].mean()) > 3 * float(sal[~box].mean())


def test_learned_mask_wins_the_deletion_game(pair):
    """Blurring what the mask marks drops the similarity as far as blurring the whole image would,
    while deleting well under half of it; blurring as much elsewhere changes nothing."""
    query, reference = pair
    model = RegionModel(BOX).eval()
    generator = LearnedMask(model, iterations=ITERATIONS, noise=0.0)
    sal = generator.explain(query, reference).query_map
    blurred = generator.background(query)
    embed = generator.embedder
    r = embed(reference[None])[0]

    def similarity(image):
        return float(embed(image[None])[0] @ r)

    original, floor = similarity(query), similarity(blurred)
    deleted = similarity(query * (1 - sal) + blurred * sal)
    flipped = sal.flip(0).flip(1)  # the same amount of deletion, in the opposite corner
    elsewhere = similarity(query * (1 - flipped) + blurred * flipped)
    span = original - floor
    assert span > 0.1
    assert deleted < floor + 0.1 * span and elsewhere > original - 0.1 * span
    assert float(sal.mean()) < 0.4


def test_both_mode_learns_a_joint_mask_over_query_and_reference(pair):
    query, reference = pair
    model = RegionModel(BOX).eval()
    result = LearnedMask(model, iterations=ITERATIONS, perturbation="deletion").explain(query, reference, mode="both")
    box = _box_mask()
    assert result.query_map.shape == (64, 64) and result.reference_map.shape == (64, 64)
    # The joint game may delete in either image; what it deletes is the region the model reads.
    for sal in (result.query_map, result.reference_map):
        assert float(sal[box].mean()) > 2 * float(sal[~box].mean())
    assert max(float(result.query_map[box].mean()), float(result.reference_map[box].mean())) > 0.5


def test_same_seed_is_bit_identical_and_the_seed_matters(pair):
    query, reference = pair
    model = RegionModel(BOX).eval()
    a = LearnedMask(model, iterations=20, seed=0).explain(query, reference).query_map
    b = LearnedMask(model, iterations=20, seed=0).explain(query, reference).query_map
    c = LearnedMask(model, iterations=20, seed=1).explain(query, reference).query_map
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_model_parameters_are_neither_updated_nor_given_gradients(pair):
    query, reference = pair
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.AdaptiveAvgPool2d(2),
                                torch.nn.Flatten()).eval()
    before = [p.detach().clone() for p in model.parameters()]
    LearnedMask(model, iterations=5).explain(query, reference, mode="both")
    for p, old in zip(model.parameters(), before):
        assert torch.equal(p, old) and p.grad is None and p.requires_grad


def test_works_when_the_caller_disabled_gradients(pair):
    query, reference = pair
    model = RegionModel(BOX).eval()
    expected = LearnedMask(model, iterations=10).explain(query, reference).query_map
    with torch.inference_mode():
        q, r = query.clone(), reference.clone()  # inference tensors
        got = LearnedMask(model, iterations=10).explain(q, r).query_map
    with torch.no_grad():
        also = LearnedMask(model, iterations=10).explain(query, reference).query_map
    assert torch.equal(got, expected) and torch.equal(also, expected)


def test_k_references_give_k_maps(pair):
    query, reference = pair
    model = RegionModel(BOX).eval()
    refs = torch.stack([reference, query, reference.flip(2)])
    result = LearnedMask(model, iterations=5, batch_size=2).explain(query, refs, mode="both")
    assert result.query_map.shape == (3, 64, 64) and result.reference_map.shape == (3, 64, 64)
    assert result.similarity.shape == (3,)


def test_total_variation_prefers_smooth_masks():
    smooth = F.interpolate(torch.rand((1, 1, 4, 4), generator=torch.Generator().manual_seed(0)), size=(14, 14),
                           mode="bilinear", align_corners=False)
    rough = torch.rand((1, 1, 14, 14), generator=torch.Generator().manual_seed(0))
    assert float(total_variation(torch.ones((1, 1, 14, 14)), 3)) == 0.0
    assert float(total_variation(smooth, 3)) < float(total_variation(rough, 3))


def test_bad_options_raise_input_errors():
    model = RegionModel(BOX).eval()
    for kwargs, field in (({"iterations": 0}, "iterations"), ({"perturbation": "erase"}, "perturbation"),
                          ({"lr": 0}, "lr"), ({"mask_size": 0}, "mask_size"), ({"tv": -1}, "tv")):
        with pytest.raises(InputError) as info:
            LearnedMask(model, **kwargs)
        assert info.value.field == field
    with pytest.raises(InputError, match="mode"):
        LearnedMask(model, iterations=1).explain(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8), mode="joint")


def test_registered_and_sized_by_make_generator():
    model = RegionModel(BOX).eval()
    assert GENERATORS["mask"] is LearnedMask
    generator = make_generator(model, "mask", iterations=42, seed=3, batch_size=8)
    assert generator.iterations == 42 and generator.seed == 3
    default = make_generator(model, "mask")
    assert (default.iterations, default.lr, default.mask_size) == (500, 0.1, 14)  # the paper's settings
