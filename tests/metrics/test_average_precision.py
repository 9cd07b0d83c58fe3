"""Average precision and mAP of attribute predictions (SPEC §3), by hand and against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sane.metrics.average_precision import average_precision, mean_average_precision, per_attribute_ap

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


# -- AP / mAP ------------------------------------------------------------------------------------


def test_average_precision_by_hand():
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0.1, 0.9, 0.4], [1, 1, 1]) == pytest.approx(1.0)
    assert average_precision([0.9, 0.1], [0, 1]) == pytest.approx(0.5)
    # Tied scores are one threshold: precision 1/2 at recall 1/2, then 2/3 at recall 1.
    assert average_precision([0.5, 0.5, 0.1], [1, 0, 1]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert math.isnan(average_precision([0.3, 0.2], [0, 0]))


def test_mean_average_precision_skips_attributes_without_positives():
    scores = np.array([[0.9, 0.2, 0.5], [0.8, 0.7, 0.4], [0.7, 0.1, 0.3], [0.6, 0.3, 0.2]])
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    ap = per_attribute_ap(scores, labels)
    np.testing.assert_allclose(ap[:2], [(1 + 2 / 3) / 2, 1.0])
    assert math.isnan(ap[2])
    assert mean_average_precision(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)


def test_average_precision_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 6, 30) / 5.0  # many ties
        labels = rng.integers(0, 2, 30)
        labels[0] = 1
        assert average_precision(scores, labels) == pytest.approx(metrics.average_precision_score(labels, scores))


