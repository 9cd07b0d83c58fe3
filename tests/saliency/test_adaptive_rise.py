"""RISE with ``n_masks="auto"``: quasi-random (Sobol) masks in two independent halves, stopped when the
map is as precise as ``max_masks`` independent masks (or, with a ``reliability``, when the split-half
reliability of the map reaches it), at the latest at ``max_masks``."""

from __future__ import annotations

import pytest
import torch
from conftest import RegionModel, inside

from sane.errors import InputError
from sane.saliency import RISE
from sane.saliency.masks import rise_masks
from sane.saliency.rise import HALF_SEED_OFFSET

BOX = (8, 24, 36, 56)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def _pair(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn((3, 64, 64), generator=gen)
    return query, query + 0.3 * torch.randn((3, 64, 64), generator=gen)


def _scores(model, query, reference, masks) -> torch.Tensor:
    """Cosine similarity of the query under each mask to the reference (mean substrate: 0 in normalised
    space), written out."""
    with torch.inference_mode():
        e = torch.nn.functional.normalize(model(query[None] * masks[:, None]), dim=1)
        return e @ torch.nn.functional.normalize(model(reference[None]), dim=1)[0]


def _by_hand(model, query, reference, masks) -> torch.Tensor:
    """RISE's estimate over the given masks, written out."""
    scores = _scores(model, query, reference, masks)
    return (scores[:, None, None] * masks).sum(0) / masks.sum(0)


def test_auto_stops_before_its_ceiling_on_a_clear_map_and_finds_the_region():
    model = RegionModel(BOX).eval()
    q, r = _pair()
    result = RISE(model, n_masks="auto", batch_size=64, max_masks=2000).explain(q, r)
    assert 128 <= result.n_masks_used < 2000 and result.n_masks_used % 128 == 0
    assert inside(BOX, int(result.query_map.argmax()), 64)
    again = RISE(model, n_masks="auto", batch_size=64, max_masks=2000).explain(q, r)
    assert again.n_masks_used == result.n_masks_used and torch.equal(again.query_map, result.query_map)


def test_the_auto_map_is_rise_over_the_first_masks_of_both_halves():
    model = RegionModel(BOX).eval()
    q, r = _pair(3)
    result = RISE(model, n_masks="auto", batch_size=64, seed=5).explain(q, r)
    used = result.n_masks_used
    half_a = rise_masks(1000, 8, 0.5, (64, 64), 5, sampling="sobol")[: used // 2]
    half_b = rise_masks(1000, 8, 0.5, (64, 64), 5 + HALF_SEED_OFFSET, sampling="sobol")[: used // 2]
    expected = _by_hand(model, q, r, torch.cat([half_a, half_b]))
    torch.testing.assert_close(result.query_map, expected, atol=1e-5, rtol=1e-4)


def test_the_noise_of_independent_masks_is_estimated_from_a_sample_of_masks():
    """What auto's stop compares with: how far maps of N independent masks scatter around the converged
    map, predicted from 256 masks (Sobol ones: one of them is one RISE mask) and their scores."""
    model = RegionModel(BOX).eval()
    q, r = _pair(4)
    converged = RISE(model, n_masks=32_000, seed=99, batch_size=1000).explain(q, r).query_map
    scattered = [
        float((RISE(model, n_masks=256, seed=s, batch_size=256).explain(q, r).query_map - converged).var())
        for s in range(16)
    ]
    masks = rise_masks(256, 8, 0.5, (64, 64), 1234, sampling="sobol")
    estimate = RISE(model, n_masks=256).independent_noise(
        converged.flatten()[None], masks.flatten(1), _scores(model, q, r, masks)[:, None])
    empirical = sum(scattered) / len(scattered) * (1 - 256 / 32_000)  # less the converged map's own noise
    assert 0.8 < float(estimate[0]) / empirical < 1.25


def test_auto_is_as_close_to_the_converged_map_as_the_fixed_map_it_replaces_with_fewer_masks():
    model = RegionModel(BOX).eval()
    closeness = {"fixed": [], "auto": []}
    used = []
    for seed in range(4):
        q, r = _pair(20 + seed)
        converged = RISE(model, n_masks=16_000, seed=99, batch_size=1000).explain(q, r).query_map
        fixed = RISE(model, n_masks=1000, seed=seed, batch_size=250).explain(q, r)
        auto = RISE(model, n_masks="auto", max_masks=1000, seed=seed, batch_size=64).explain(q, r)
        used.append(auto.n_masks_used)
        for name, result in (("fixed", fixed), ("auto", auto)):
            closeness[name].append(_pearson(result.query_map, converged))
    assert sum(used) / len(used) < 1000 * 0.75
    assert sum(closeness["auto"]) >= sum(closeness["fixed"]) - 0.002 * len(used)


def test_an_unreachable_reliability_runs_to_the_ceiling():
    model = RegionModel(BOX).eval()
    q, r = _pair()
    result = RISE(model, n_masks="auto", reliability=0.999999, max_masks=512, batch_size=64).explain(q, r)
    assert result.n_masks_used == 512


def test_k_references_stop_each_on_their_own_as_single_calls_do():
    model = RegionModel(BOX).eval()
    q, r = _pair()
    gen = torch.Generator().manual_seed(9)
    refs = torch.stack([r, q + 0.5 * torch.randn(q.shape, generator=gen), torch.randn(q.shape, generator=gen)])
    many = RISE(model, n_masks="auto", batch_size=64).explain(q, refs)
    assert many.query_map.shape == (3, 64, 64) and len(many.n_masks_used) == 3
    assert len(set(many.n_masks_used)) > 1  # these three stop at different checks
    for k in range(3):
        single = RISE(model, n_masks="auto", batch_size=64).explain(q, refs[k])
        assert many.select(k).n_masks_used == single.n_masks_used
        torch.testing.assert_close(many.query_map[k], single.query_map, atol=1e-5, rtol=1e-4)
    # each map has converged: it is close to the same reference's map from a fresh draw of that many masks
    for k in range(3):
        fixed = RISE(model, n_masks=many.n_masks_used[k], sampling="sobol", seed=7, batch_size=64)
        assert _pearson(many.query_map[k], fixed.explain(q, refs[k]).query_map) > 0.9


def test_sobol_masks_converge_faster_than_coin_flips():
    """Quasi-random cells spread the masks evenly: at equal N the map is closer to a converged one."""
    model = RegionModel(BOX).eval()
    closer = []
    for seed in range(4):
        q, r = _pair(10 + seed)
        converged = RISE(model, n_masks=8000, seed=99, batch_size=500).explain(q, r).query_map
        maps = {s: RISE(model, n_masks=256, sampling=s, seed=seed, batch_size=256).explain(q, r).query_map
                for s in ("random", "sobol")}
        closer.append(_pearson(maps["sobol"], converged) > _pearson(maps["random"], converged))
    assert sum(closer) >= 3


def test_bad_auto_settings_are_input_errors_and_the_cost_is_the_ceiling():
    model = RegionModel(BOX).eval()
    for kwargs, field in (({"n_masks": "many"}, "n_masks"), ({"n_masks": "auto", "reliability": 1.0}, "reliability"),
                          ({"n_masks": "auto", "max_masks": 0}, "max_masks"), ({"sampling": "halton"}, "sampling")):
        with pytest.raises(InputError) as info:
            RISE(model, **kwargs)
        assert info.value.field == field
    assert RISE.cost("fixed", {"n_masks": "auto"}) == 2000
    assert RISE.cost("both", {"n_masks": "auto", "max_masks": 700}) == 730
