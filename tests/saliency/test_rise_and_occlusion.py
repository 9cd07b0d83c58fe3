"""RISE and sliding window: they find what a constructed model looks at, cost what they should,
and are seeded."""

from __future__ import annotations

import pytest
import torch
from conftest import CountingModel, RegionModel, inside

from sane.errors import InputError
from sane.saliency import RISE, RandomSaliency, SlidingWindow
from sane.saliency.masks import occlusion_windows, rise_masks

BOX = (8, 24, 36, 56)  # y0, y1, x0, x1 in a 64 x 64 image


def _peak_inside(saliency: torch.Tensor, box=BOX) -> bool:
    return inside(box, saliency.argmax(), saliency.shape[-1])


def _contrast(saliency: torch.Tensor, box=BOX) -> float:
    m = torch.zeros_like(saliency, dtype=torch.bool)
    m[box[0] : box[1], box[2] : box[3]] = True
    return float(saliency[m].mean() - saliency[~m].mean())


@pytest.mark.parametrize("mode", ["fixed", "both"])
def test_rise_peaks_on_the_region_the_model_uses(image64, mode):
    model = RegionModel(BOX).eval()
    reference = image64 + 0.3 * torch.randn(image64.shape, generator=torch.Generator().manual_seed(2))
    # 30 reference masks (the paper's default) are too few for a sharp reference map: use more here.
    generator = RISE(model, n_masks=400, n_reference_masks=300, batch_size=64)
    result = generator.explain(image64, reference, mode=mode)
    assert result.query_map.shape == (64, 64)
    assert _peak_inside(result.query_map) and _contrast(result.query_map) > 0
    if mode == "both":
        assert result.reference_map.shape == (64, 64)
        assert _peak_inside(result.reference_map) and _contrast(result.reference_map) > 0
    else:
        assert result.reference_map is None
    # The map is an expected similarity: it lies within the range of masked similarities.
    assert -1.0 <= float(result.query_map.min()) <= float(result.query_map.max()) <= 1.0


@pytest.mark.parametrize("mode", ["fixed", "both"])
def test_sliding_window_peaks_on_the_region_the_model_uses(image64, mode):
    model = RegionModel(BOX).eval()
    result = SlidingWindow(model, batch_size=128).explain(image64, image64.clone(), mode=mode)
    assert _peak_inside(result.query_map) and _contrast(result.query_map) > 0
    if mode == "both":
        assert _peak_inside(result.reference_map) and _contrast(result.reference_map) > 0


def test_deleting_the_salient_region_drops_similarity_more_than_deleting_elsewhere(image64):
    model = RegionModel(BOX).eval()
    generator = RISE(model, n_masks=300, batch_size=100)
    saliency = generator.explain(image64, image64.clone()).query_map
    top = saliency >= saliency.flatten().kthvalue(int(0.9 * saliency.numel())).values
    bottom = saliency <= saliency.flatten().kthvalue(int(0.1 * saliency.numel())).values
    embed = generator.embedder
    ref = embed(image64[None])[0]
    drop_top = 1 - float(embed((image64 * ~top)[None])[0] @ ref)
    drop_bottom = 1 - float(embed((image64 * ~bottom)[None])[0] @ ref)
    assert drop_top > drop_bottom + 0.05


def test_cost_is_n_plus_reference_masks_not_their_product(image64):
    counter = CountingModel(RegionModel(BOX)).eval()
    RISE(counter, n_masks=100, n_reference_masks=7, batch_size=32).explain(image64, image64, mode="both")
    assert sum(counter.batches) == 100 + 7 + 2  # + the unmodified query and reference
    assert max(counter.batches) <= 32  # streamed: never more than batch_size images at once
    counter.batches.clear()
    SlidingWindow(counter, batch_size=50).explain(image64, image64, mode="both")
    assert sum(counter.batches) == 625 + 36 + 2 and max(counter.batches) <= 50


def test_k_references_cost_n_passes_and_match_single_reference_maps(image64):
    counter = CountingModel(RegionModel(BOX)).eval()
    gen = torch.Generator().manual_seed(3)
    refs = image64[None] + 0.5 * torch.randn((5, 3, 64, 64), generator=gen)
    generator = RISE(counter, n_masks=120, batch_size=40)
    batch = generator.explain(image64, refs)
    assert sum(counter.batches) == 120 + 1 + 5
    assert batch.query_map.shape == (5, 64, 64) and batch.similarity.shape == (5,)
    for k in range(5):
        single = generator.explain(image64, refs[k])
        torch.testing.assert_close(batch.query_map[k], single.query_map, rtol=1e-4, atol=1e-5)
        assert abs(float(batch.similarity[k]) - single.similarity) < 1e-5
    both = generator.explain(image64, refs[:2], mode="both")
    assert both.query_map.shape == (2, 64, 64) and both.reference_map.shape == (2, 64, 64)


def test_repeated_references_are_embedded_once_and_equal_sums_are_not_merged(image64):
    counter = CountingModel(RegionModel(BOX)).eval()
    swapped = image64.clone()
    swapped[:, [0, 1]] = swapped[:, [1, 0]]  # same pixels in another order: the same sum, another image
    assert float(swapped.sum()) == float(image64.sum()) and not torch.equal(swapped, image64)
    refs = [image64.clone(), swapped, image64.clone(), swapped.clone()]  # equal by value, not by identity
    batch = RISE(counter, n_masks=40, batch_size=40).explain_pairs([image64] * 4, refs)
    # N masks of the one distinct query, the query itself and 2 distinct references (1 if merged by sum)
    assert sum(counter.batches) == 40 + 1 + 2
    assert torch.equal(batch[0].query_map, batch[2].query_map) and torch.equal(batch[1].query_map, batch[3].query_map)


def test_same_seed_is_bit_identical_and_seeds_agree_at_n_2000(image64):
    model = RegionModel(BOX).eval()
    a = RISE(model, n_masks=2000, batch_size=500, seed=0).explain(image64, image64).query_map
    b = RISE(model, n_masks=2000, batch_size=500, seed=0).explain(image64, image64).query_map
    c = RISE(model, n_masks=2000, batch_size=500, seed=1).explain(image64, image64).query_map
    assert torch.equal(a, b)
    corr = torch.corrcoef(torch.stack([a.flatten(), c.flatten()]))[0, 1]
    assert not torch.equal(a, c) and corr >= 0.9


def test_rise_masks_are_seeded_smooth_and_keep_p():
    m = rise_masks(500, 8, 0.5, (64, 64), seed=0)
    assert m.shape == (500, 64, 64) and float(m.min()) >= 0 and float(m.max()) <= 1
    assert abs(float(m.mean()) - 0.5) < 0.03
    assert torch.equal(m, rise_masks(500, 8, 0.5, (64, 64), seed=0))
    assert not torch.equal(m, rise_masks(500, 8, 0.5, (64, 64), seed=1))
    # Bilinear upsampling: neighbouring pixels differ little; random crops: no two masks share offsets.
    assert float((m[:, :, 1:] - m[:, :, :-1]).abs().max()) < 0.2
    assert abs(float(rise_masks(400, 8, 0.25, (64, 64), seed=0).mean()) - 0.25) < 0.03


def test_sliding_windows_match_the_paper_geometry_at_112px():
    windows = occlusion_windows((112, 112), 25, 2 / 7, 1 / 28)
    assert windows.shape == (625, 112, 112)
    first, last = windows[0], windows[-1]
    assert first.sum() == 24 * 24  # a 32 px window hanging 8 px over the top-left corner
    assert last.sum() == 24 * 24 and last[-1, -1] == 1
    assert windows[1].sum() == 24 * 28  # 4 px stride: the next one hangs over only the top
    assert windows.sum(0).min() > 0  # every pixel is covered
    assert occlusion_windows((112, 112), 6, 2 / 7, 1 / 7).sum((1, 2)).eq(32 * 32).all()


def test_mixed_precision_gives_nearly_the_same_map(image64):
    model = RegionModel(BOX).eval()
    fp32 = RISE(model, n_masks=300).explain(image64, image64).query_map
    amp = RISE(model, n_masks=300, amp=True).explain(image64, image64).query_map
    corr = torch.corrcoef(torch.stack([fp32.flatten(), amp.flatten()]))[0, 1]
    assert corr > 0.95


def test_substrates_change_what_removal_means(image64):
    model = RegionModel(BOX).eval()
    for substrate in ("mean", "blur", 0.5):
        result = RISE(model, n_masks=300, substrate=substrate).explain(image64, image64)
        assert _peak_inside(result.query_map)


def test_random_baseline_is_seeded_and_ignores_the_model(image64):
    model = RegionModel(BOX).eval()
    a = RandomSaliency(model, seed=4).explain(image64, image64)
    b = RandomSaliency(model, seed=4).explain(image64, image64 * 2)
    assert torch.equal(a.query_map, b.query_map) and a.similarity == pytest.approx(1.0, abs=1e-5)


def test_bad_input_raises_clear_errors(image64):
    model = RegionModel(BOX).eval()
    with pytest.raises(InputError, match="n_masks"):
        RISE(model, n_masks=0)
    with pytest.raises(InputError, match="p must be"):
        RISE(model, p=1.5)
    with pytest.raises(InputError, match="batch_size"):
        RISE(model, batch_size=0)
    generator = RISE(model, n_masks=10)
    with pytest.raises(InputError, match="resize both"):
        generator.explain(image64, torch.zeros(3, 32, 32))
    with pytest.raises(InputError, match=r"query must be \(3, H, W\)"):
        generator.explain(torch.zeros(1, 64, 64), image64)
    with pytest.raises(InputError, match="reference must be"):
        generator.explain(image64, torch.zeros(2, 4, 64, 64))
    with pytest.raises(InputError, match="mode"):
        generator.explain(image64, image64, mode="joint")
    with pytest.raises(InputError, match="float tensor"):
        generator.explain(image64.to(torch.uint8), image64)
