"""The bundled default model and RISE on it: the properties the README and the issue promise,
checked at reduced size on freshly rendered synthetic scenes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sane.data import AttributeDataset, random_scene, render, write_dataset
from sane.evaluation import counterfactual_table
from sane.metrics import pointing_game
from sane.models import load_similarity
from sane.saliency import RISE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_model():
    return load_similarity()


@pytest.fixture(scope="module")
def same_class_pairs(default_model):
    """Six (query, reference, query mask) triples: same shape and colour, other factors random."""
    _, pre = default_model
    rng = np.random.default_rng(7)
    out = []
    for _ in range(6):
        q = random_scene(rng)
        r = random_scene(rng, shape=q.shape, colour=q.colour)
        rq, rr = render(q, pre.size), render(r, pre.size)
        out.append((pre.to_tensor(rq.image), pre.to_tensor(rr.image), torch.from_numpy(rq.mask)))
    return out


def test_model_matches_on_shape_and_colour_and_ignores_the_rest(default_model, tmp_path):
    model, pre = default_model
    write_dataset(tmp_path, 84, seed=3, image_size=pre.size, progress=False)
    table = counterfactual_table(model, pre, AttributeDataset(tmp_path, "all", pre), n_pairs=24, progress=False)
    for factor in ("shape", "colour"):
        assert table[factor]["mean_delta"] < -0.2, table
    for factor in ("pattern", "size", "position", "background"):
        assert abs(table[factor]["mean_delta"]) < 0.05, table


def test_rise_points_at_the_object_and_deleting_it_hurts(default_model, same_class_pairs):
    model, _ = default_model
    rise = RISE(model, n_masks=500, batch_size=250)
    hits = 0
    for q, r, mask in same_class_pairs:
        result = rise.explain(q, r)
        hits += pointing_game(result.query_map, mask)
        top = result.query_map >= result.query_map.flatten().kthvalue(int(0.85 * mask.numel())).values
        shuffled = top.flatten()[torch.randperm(top.numel(), generator=torch.Generator().manual_seed(0))]
        ref = rise.embedder(r[None])[0]
        s_top = float(rise.embedder((q * ~top)[None])[0] @ ref)
        s_rand = float(rise.embedder((q * ~shuffled.view_as(top))[None])[0] @ ref)
        assert s_top < s_rand - 0.05, (s_top, s_rand)
    assert hits >= 5


def test_rise_maps_are_seed_stable_at_n_2000(default_model, same_class_pairs):
    model, _ = default_model
    q, r, _ = same_class_pairs[0]
    a = RISE(model, n_masks=2000, batch_size=500, seed=0).explain(q, r).query_map
    b = RISE(model, n_masks=2000, batch_size=500, seed=0).explain(q, r).query_map
    c = RISE(model, n_masks=2000, batch_size=500, seed=1).explain(q, r).query_map
    assert torch.equal(a, b)
    assert torch.corrcoef(torch.stack([a.flatten(), c.flatten()]))[0, 1] >= 0.9
