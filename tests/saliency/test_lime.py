"""LIME: finds the superpixels a constructed model looks at, is seeded, streams, serves K references
with N forward passes, and refuses the both-images mode it does not have."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CountingModel, RegionModel

from sane.errors import InputError
from sane.saliency import GENERATORS, LIME, make_generator
from sane.saliency.lime import kernel_weights, superpixels, to_rgb

BOX = (8, 24, 36, 56)  # y0, y1, x0, x1 in a 64 x 64 image


def _box_mask() -> torch.Tensor:
    m = torch.zeros((64, 64), dtype=torch.bool)
    m[BOX[0] : BOX[1], BOX[2] : BOX[3]] = True
    return m


@pytest.mark.parametrize("segmentation", ["quickshift", "slic"])
def test_lime_peaks_on_the_region_the_model_uses(blocks64, segmentation):
    model = RegionModel(BOX).eval()
    result = LIME(model, n_samples=300, batch_size=100, segmentation=segmentation).explain(blocks64, blocks64.clone())
    qmap, box = result.query_map, _box_mask()
    assert qmap.shape == (64, 64) and result.reference_map is None and result.mode == "fixed"
    # The map is piecewise constant over the superpixels: each pixel carries its region's coefficient.
    torch.testing.assert_close(qmap, result.coefficients[result.segments])
    # The strongest region lies mostly inside the box; regions entirely outside it cannot change the
    # similarity, so their coefficients are ~0.
    top = result.segments == result.coefficients.argmax()
    assert float(box[top].float().mean()) > 0.5
    assert float(qmap[box].mean()) > 5 * float(qmap[~box].mean().abs()) + 1e-3
    outside = [s for s in range(int(result.segments.max()) + 1) if not box[result.segments == s].any()]
    assert float(result.coefficients[outside].abs().max()) < 0.2 * float(result.coefficients.max())


def test_segments_come_from_scikit_image_quickshift(blocks64):
    from skimage.segmentation import quickshift

    seg = superpixels(blocks64)
    expected = quickshift(to_rgb(blocks64))
    # Same partition (ids are only relabelled to 0..S-1).
    assert seg.shape == (64, 64) and int(seg.max()) + 1 == len(np.unique(expected))
    pairs = set(zip(seg.flatten().tolist(), expected.flatten().tolist()))
    assert len(pairs) == len(np.unique(expected))


def test_same_seed_is_identical_other_seed_differs_but_agrees(blocks64):
    model = RegionModel(BOX).eval()
    a = LIME(model, n_samples=300, seed=0).explain(blocks64, blocks64).query_map
    b = LIME(model, n_samples=300, seed=0).explain(blocks64, blocks64).query_map
    c = LIME(model, n_samples=300, seed=1).explain(blocks64, blocks64).query_map
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.corrcoef(torch.stack([a.flatten(), c.flatten()]))[0, 1] > 0.8


def test_k_references_cost_n_passes_streamed_and_match_single_maps(blocks64):
    counter = CountingModel(RegionModel(BOX)).eval()
    gen = torch.Generator().manual_seed(3)
    refs = blocks64[None] + 0.5 * torch.randn((3, 3, 64, 64), generator=gen)
    generator = LIME(counter, n_samples=200, batch_size=64)
    batch = generator.explain(blocks64, refs)
    assert sum(counter.batches) == 200 + 1 + 3  # samples + the unmodified query and references
    assert max(counter.batches) <= 64
    assert batch.query_map.shape == (3, 64, 64) and batch.similarity.shape == (3,)
    for k in range(3):
        single = generator.explain(blocks64, refs[k])
        torch.testing.assert_close(batch.query_map[k], single.query_map, rtol=1e-3, atol=1e-5)


def test_top_k_keeps_the_k_strongest_positive_regions(blocks64):
    model = RegionModel(BOX).eval()
    full = LIME(model, n_samples=300).explain(blocks64, blocks64)
    top = LIME(model, n_samples=300, top_k=2).explain(blocks64, blocks64)
    expected = torch.argsort(-full.coefficients, stable=True)[:2].tolist()
    assert top.selected == expected and all(full.coefficients[s] > 0 for s in expected)
    shown = torch.isin(top.segments, torch.tensor(expected))
    assert torch.equal(top.query_map[shown], full.query_map[shown])
    assert bool((top.query_map[~shown] == 0).all())
    assert bool(_box_mask()[shown].any())


def test_kernel_weights_follow_lime():
    z = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    w = kernel_weights(z, 0.25)
    assert w[0] == pytest.approx(1.0)
    assert bool((w[:-1].diff() < 0).all())  # fewer superpixels on -> farther -> lighter
    d = 1 - 2 / (np.sqrt(2) * 2)  # cosine distance of [1, 1, 0, 0] to all-on
    assert float(w[1]) == pytest.approx(np.sqrt(np.exp(-(d**2) / 0.25**2)), rel=1e-5)


def test_given_segments_are_used(blocks64):
    model = RegionModel(BOX).eval()
    grid = (torch.arange(64)[:, None] // 16) * 4 + torch.arange(64)[None] // 16  # 4 x 4 squares of 16 px
    result = LIME(model, n_samples=200).explain(blocks64, blocks64, segments=grid * 10)  # ids need not be 0..S-1
    assert torch.equal(result.segments, grid) and result.coefficients.shape == (16,)
    touching = {int(s) for s in grid[_box_mask()].unique()}  # the 4 squares the box overlaps
    assert int(result.coefficients.argmax()) in touching
    others = [s for s in range(16) if s not in touching]
    assert float(result.coefficients[others].abs().max()) < 0.2 * float(result.coefficients.max())


def test_lime_refuses_both_mode_and_bad_options(blocks64):
    model = RegionModel(BOX).eval()
    with pytest.raises(InputError, match="mode") as info:
        LIME(model, n_samples=10).explain(blocks64, blocks64, mode="both")
    assert info.value.field == "mode"
    for kwargs, field in (({"n_samples": 1}, "n_samples"), ({"p_hide": 1.0}, "p_hide"),
                          ({"segmentation": "watershed"}, "segmentation"), ({"top_k": 0}, "top_k")):
        with pytest.raises(InputError) as info:
            LIME(model, **kwargs)
        assert info.value.field == field


def test_registered_and_sized_by_make_generator():
    model = RegionModel(BOX).eval()
    assert GENERATORS["lime"] is LIME
    assert make_generator(model, "lime", n_samples=123).n_samples == 123
    assert make_generator(model, "lime").n_samples == 1000  # the paper's default
    assert make_generator(model, "rise", n_masks=77, n_samples=5).n_masks == 77  # only the method's own size applies
