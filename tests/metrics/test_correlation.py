"""sane.metrics.pearson: the map agreement the benches and experiments report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sane.metrics import pearson


def test_pearson_equals_numpy_on_maps_of_any_shape_and_type():
    gen = np.random.default_rng(0)
    a = gen.normal(size=(7, 9)).astype(np.float32)
    b = (a + gen.normal(size=(7, 9))).astype(np.float32)
    expected = np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1]
    assert pearson(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected, abs=1e-12)
    assert pearson(a, b.reshape(-1)) == pytest.approx(expected, abs=1e-12)
    assert pearson(a, -2 * a + 3) == pytest.approx(-1.0)


def test_a_constant_map_correlates_zero_and_sizes_must_agree():
    assert pearson(torch.ones(4, 4), torch.rand(4, 4)) == 0.0
    with pytest.raises(ValueError, match="16 and 9 pixels"):
        pearson(torch.rand(4, 4), torch.rand(3, 3))
