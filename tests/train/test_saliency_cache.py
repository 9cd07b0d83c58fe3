"""`sane cache-saliency`: RISE maps of training images against same-class references, resumable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CountingModel
from torch import nn

from sane.data import AttributeDataset
from sane.images import Preprocess
from sane.train.saliency_cache import SaliencyCache, build_saliency_cache
from sane.train.validation_split import validation_split

SMALL = 48  # image side of the test data: 6x6 activation maps with the compact trunk

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


# -- the saliency cache ---------------------------------------------------------------------------


class Interrupting(nn.Module):
    """Raises KeyboardInterrupt once more than ``after`` images have been forwarded, like a Ctrl-C mid-run."""

    def __init__(self, inner: nn.Module, after: int):
        super().__init__()
        self.inner, self.after, self.seen = inner, after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        if self.seen > self.after:
            raise KeyboardInterrupt
        return self.inner(x)


CACHE = {"n_masks": 16, "batch_size": 16, "refs": 2, "size": 12, "chunk_size": 4, "limit": 12, "progress": False}
PER_IMAGE = 1 + 2 + 16  # images forwarded per cached image: query, its 2 references, 16 masked queries


def test_cache_resumes_after_an_interruption_without_recomputing(shapes48, untrained_similarity, tmp_path):
    pre = Preprocess(SMALL)
    # Stop inside image 7 (counted in images forwarded), i.e. in the second chunk of four.
    with pytest.raises(KeyboardInterrupt):
        build_saliency_cache(shapes48, tmp_path / "c", Interrupting(untrained_similarity, 6 * PER_IMAGE + 1), pre, **CACHE)
    assert len(SaliencyCache(tmp_path / "c")) == 4  # only the first chunk made it to disk
    counting = CountingModel(untrained_similarity)
    build_saliency_cache(shapes48, tmp_path / "c", counting, pre, **CACHE)
    assert sum(counting.batches) == (12 - 4) * PER_IMAGE
    again = CountingModel(untrained_similarity)
    build_saliency_cache(shapes48, tmp_path / "c", again, pre, **CACHE)
    assert again.batches == []
    # The resumed cache is the cache an uninterrupted run writes.
    build_saliency_cache(shapes48, tmp_path / "ref", untrained_similarity, pre, **CACHE)
    resumed, reference = SaliencyCache(tmp_path / "c"), SaliencyCache(tmp_path / "ref")
    order = np.argsort(resumed.image_index)
    ref_order = np.argsort(reference.image_index)
    assert np.array_equal(resumed.image_index[order], reference.image_index[ref_order])
    assert np.array_equal(resumed.reference_index[order], reference.reference_index[ref_order])
    assert np.array_equal(resumed.maps[order], reference.maps[ref_order])


def test_cache_holds_same_class_references_of_training_images_only(shapes48, untrained_similarity, tmp_path):
    pre = Preprocess(SMALL)
    build_saliency_cache(shapes48, tmp_path, untrained_similarity, pre, **{**CACHE, "limit": 34})
    cache = SaliencyCache(tmp_path)
    dataset = AttributeDataset(shapes48, "train", pre)
    targets = np.asarray(dataset.targets)
    val = validation_split(targets)
    assert cache.maps.dtype == np.float16 and cache.maps.shape == (34, 2, 12, 12)
    assert not val[cache.image_index].any()
    assert len(np.unique(targets[cache.image_index])) == 34  # the first 34 of the order: one per class
    for i, row in zip(cache.image_index, cache.reference_index):
        refs = row[row >= 0]
        assert len(refs) == 2 and i not in refs
        assert (targets[refs] == targets[i]).all() and not val[refs].any()
    maps, valid = cache.aligned(dataset)
    assert int(valid.any(1).sum()) == 34
    row = int(cache.image_index[0])
    assert torch.equal(maps[row], torch.from_numpy(cache.maps[0]))
    with pytest.raises(ValueError, match="other n_masks"):
        build_saliency_cache(shapes48, tmp_path, untrained_similarity, pre, **{**CACHE, "n_masks": 8})


