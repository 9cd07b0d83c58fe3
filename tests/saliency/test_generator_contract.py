"""The generator contract (DESIGN's library API), checked for every entry of the registry alike:
declared modes, size option and cost; seeded determinism; result shapes; K references against one;
streaming (no forward batch above ``batch_size``); unsupported modes refused before any forward."""

from __future__ import annotations

import pytest
import torch
from conftest import CountingModel, RegionModel

from sane.errors import InputError
from sane.saliency import GENERATORS, MODES, SaliencyGenerator, make_generator

BOX = (8, 24, 36, 56)
BATCH = 16
# Small settings per method so the whole registry runs in seconds; every one still streams.
SMALL = {
    "rise": {"n_masks": 48, "n_reference_masks": 20},
    "sliding_window": {"windows_per_side": 6, "reference_windows_per_side": 3},
    "lime": {"n_samples": 40, "segmentation": "slic"},
    "mask": {"iterations": 4, "noise": 0.0, "batch_size": 2},
    "random": {},
}
REGISTRY = sorted(GENERATORS)


def _images(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return torch.randn((3, 64, 64), generator=gen), torch.randn((k, 3, 64, 64), generator=gen)


def _make(method: str, model=None, **extra) -> SaliencyGenerator:
    model = model if model is not None else RegionModel(BOX).eval()
    return make_generator(model, method, **{"batch_size": BATCH, "seed": 3, **SMALL[method], **extra})


def test_the_registry_holds_every_method_under_its_declared_name():
    assert set(REGISTRY) == {"rise", "sliding_window", "lime", "mask", "random"}
    for name, cls in GENERATORS.items():
        assert issubclass(cls, SaliencyGenerator) and cls.method == name


@pytest.mark.parametrize("method", REGISTRY)
def test_declarations_are_consistent_with_the_constructor(method):
    cls = GENERATORS[method]
    assert cls.modes and set(cls.modes) <= set(MODES)
    assert {"batch_size", "seed"} <= cls.parameters()
    if cls.size_option is not None:
        assert cls.size_option in cls.parameters()
        size = cls.default(cls.size_option)
        # The cost grows with the size option: it is what a server's budget bounds.
        assert cls.cost("fixed", {cls.size_option: 2 * size}) > cls.cost("fixed", {cls.size_option: size})
    for mode in cls.modes:
        assert isinstance(cls.cost(mode), int) and cls.cost(mode) >= 1


@pytest.mark.parametrize("method", REGISTRY)
def test_seeded_maps_are_deterministic(method):
    q, refs = _images(1)
    first = _make(method).explain(q, refs[0])
    second = _make(method).explain(q, refs[0])
    assert torch.equal(first.query_map, second.query_map)
    assert first.similarity == second.similarity
    if method in ("rise", "random"):  # the seed is their draw (occlusion has none; LIME and the mask fit)
        assert not torch.equal(first.query_map, _make(method, seed=4).explain(q, refs[0]).query_map)


@pytest.mark.parametrize("method", REGISTRY)
def test_shapes_for_one_and_for_k_references(method):
    cls = GENERATORS[method]
    q, refs = _images(3)
    for mode in cls.modes:
        one = _make(method).explain(q, refs[0], mode=mode)
        assert one.query_map.shape == (64, 64) and isinstance(one.similarity, float)
        assert (one.reference_map is None) == (mode == "fixed")
        assert one.method == method and one.mode == mode and one.timings["total_ms"] > 0
        many = _make(method).explain(q, refs, mode=mode)
        assert many.query_map.shape == (3, 64, 64) and many.similarity.shape == (3,)
        if mode == "both":
            assert one.reference_map.shape == (64, 64) and many.reference_map.shape == (3, 64, 64)


@pytest.mark.parametrize("method", REGISTRY)
def test_k_references_give_what_each_reference_gives_alone(method):
    q, refs = _images(3)
    many = _make(method).explain(q, refs)
    for k in range(3):
        alone = _make(method).explain(q, refs[k])
        assert float(many.similarity[k]) == pytest.approx(alone.similarity, abs=1e-5)
        torch.testing.assert_close(many.query_map[k], alone.query_map, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("method", REGISTRY)
def test_generators_stream_in_batches_of_at_most_batch_size(method):
    counter = CountingModel(RegionModel(BOX)).eval()
    q, refs = _images(3)
    generator = _make(method, counter)
    generator.explain(q, refs)
    assert counter.batches and max(counter.batches) <= generator.embedder.batch_size
    if GENERATORS[method].size_option is not None:  # many perturbations: many forward batches
        assert len(counter.batches) > 2


@pytest.mark.parametrize("method", REGISTRY)
def test_an_unsupported_mode_is_refused_naming_mode_before_any_forward(method):
    counter = CountingModel(RegionModel(BOX)).eval()
    q, refs = _images(1)
    generator = _make(method, counter)
    for mode in ("sideways", *[m for m in MODES if m not in GENERATORS[method].modes]):
        with pytest.raises(InputError) as info:
            generator.explain(q, refs[0], mode=mode)
        assert info.value.field == "mode" and method in str(info.value)
        with pytest.raises(InputError) as info:
            generator.explain_pairs([q, q], [refs[0], refs[0]], mode=mode)
        assert info.value.field == "mode"
    assert counter.batches == []


@pytest.mark.parametrize("method", REGISTRY)
def test_explain_pairs_equals_explaining_each_pair(method):
    q, refs = _images(2)
    generator = _make(method)
    pairs = generator.explain_pairs([q, q, refs[1]], [refs[0], refs[1], refs[0]])
    for result, (a, b) in zip(pairs, [(q, refs[0]), (q, refs[1]), (refs[1], refs[0])]):
        alone = _make(method).explain(a, b)
        assert result.similarity == pytest.approx(alone.similarity, abs=1e-5)
        torch.testing.assert_close(result.query_map, alone.query_map, atol=2e-4, rtol=1e-3)
