"""The int8 forward served (``handler.quantize``). ``pair`` (the CPU profile's): one int8 model per
request, calibrated on its own images as `sane explain --int8` does, maps at Pearson >= 0.999 to
fp32's. ``worker``: calibrated once per worker on the archive's pair, equal to that int8 model in
process, but on other pairs its maps fall below the 0.999 bar (why it is not the profile's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sane.data import write_example_pair
from sane.images import load_image
from sane.models import load_similarity
from sane.models.optimize import quantize_int8
from sane.saliency import RISE
from sane.saliency.engine import calibration_batch
from sane.serving.ops.archive import profile_config
from sane.serving.ops.inprocess import load_handler, payload, run_batch
from sane.serving.worker.config import ServingConfig
from sane.serving.worker.encoding import decode_npy

ROOT = Path(__file__).resolve().parents[3]
INT8 = {"handler": {"quantize": "worker", "channels_last": True, "batch_size": 64, "default_n_masks": 100}}
PAIR = {"handler": {"quantize": "pair", "channels_last": True, "batch_size": 64, "default_n_masks": 100}}


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> list[tuple[bytes, bytes]]:
    """Held-out pairs: example pairs of other seeds than the bundled (calibration) one."""
    root = tmp_path_factory.mktemp("pairs")
    return [tuple(Path(p).read_bytes() for p in write_example_pair(root / str(seed), seed=seed))
            for seed in (3, 5, 8)]


@pytest.fixture(scope="module")
def int8_handler():
    return load_handler("saliency", config_overrides=INT8)


def test_worker_calibrated_int8_is_close_to_fp32_on_held_out_pairs_but_not_at_0999(int8_handler, pairs):
    handler, context = int8_handler
    model, pre = load_similarity()
    options = {"n_masks": 400, "seed": 1}
    served = run_batch(handler, context, [payload("json", q, r, options) for q, r in pairs])
    correlations = []
    for (status, body), (q, r) in zip(served, pairs):
        assert status == 200, body
        fp32 = RISE(model, n_masks=400, seed=1, batch_size=64).explain(load_image(q, pre), load_image(r, pre))
        int8_map = decode_npy(body["saliency"]["query"]["npy"]).astype(np.float32)
        correlations.append(_pearson(int8_map, fp32.query_map.numpy()))
    assert min(correlations) > 0.9  # the same explanation, roughly
    assert min(correlations) < 0.999  # the measured reason the CPU profile calibrates per request instead


def test_the_cpu_profile_serves_int8_calibrated_per_request_at_pearson_0999(pairs):
    assert profile_config("cpu", workers=1, cores=2)["handler"]["quantize"] == "pair"
    assert profile_config("gpu")["handler"].get("quantize", "off") == "off"
    handler, context = load_handler("saliency", config_overrides=PAIR)
    model, pre = load_similarity()
    options = {"n_masks": 400, "seed": 1}
    served = run_batch(handler, context, [payload("json", q, r, options) for q, r in pairs])  # one batch
    for (status, body), (q, r) in zip(served, pairs):
        assert status == 200, body
        query, reference = load_image(q, pre), load_image(r, pre)
        fp32 = RISE(model, n_masks=400, seed=1, batch_size=64).explain(query, reference)
        served_map = decode_npy(body["saliency"]["query"]["npy"]).astype(np.float32)
        assert _pearson(served_map, fp32.query_map.numpy()) >= 0.999
        # each request's own int8 model, whatever else shares its batch: `sane explain --int8`'s map
        own = RISE(model, n_masks=400, seed=1, batch_size=64, quantize=True, channels_last=True).explain(
            query, reference)
        np.testing.assert_allclose(served_map, own.query_map.numpy(), atol=3e-3)


def test_k_references_calibrate_on_a_bounded_sample_and_stay_close_to_fp32(pairs, monkeypatch):
    """K distinct references must not make a request's int8 calibration K times dearer (K=10 cost 1.41 x
    K=1 before): masked copies of the first CALIBRATION_MAX_IMAGES images only (queries first), every
    other reference seen unmasked. These are non-matching pairs (one example's query against other
    examples' images), where even a single-reference int8 map is at 0.997-0.9997 to fp32's."""
    import sane.saliency.engine as engine

    seen = []
    original = engine.calibration_batch
    monkeypatch.setattr(engine, "calibration_batch", lambda images, *a, **k: seen.append(len(images)) or
                        original(images, *a, **k))
    handler, context = load_handler("saliency", config_overrides=PAIR)
    model, pre = load_similarity()
    query = pairs[0][0]
    references = [r for _, r in pairs] + [q for q, _ in pairs[1:]]  # 5 distinct images
    [(status, body)] = run_batch(handler, context, [payload("json", query, references, {"n_masks": 400, "seed": 1})])
    assert status == 200, body
    assert seen == [engine.CALIBRATION_MAX_IMAGES] and engine.CALIBRATION_MAX_IMAGES < 1 + len(references)
    fp32 = RISE(model, n_masks=400, seed=1, batch_size=64).explain(
        load_image(query, pre), torch.stack([load_image(r, pre) for r in references]))
    for k, answer in enumerate(body["references"]):
        served_map = decode_npy(answer["saliency"]["query"]["npy"]).astype(np.float32)
        assert _pearson(served_map, fp32.query_map[k].numpy()) >= 0.995


def test_the_served_int8_model_is_the_one_calibrated_on_the_archive_pair(int8_handler, pairs):
    handler, context = int8_handler
    model, pre = load_similarity()
    calibration = torch.stack([load_image(ROOT / "examples" / name, pre) for name in ("query.jpg", "reference.jpg")])
    int8 = quantize_int8(model, calibration_batch(calibration).contiguous(memory_format=torch.channels_last), 64)
    q, r = pairs[0]
    [(status, body)] = run_batch(handler, context, [payload("multipart", q, r, {"n_masks": 200, "seed": 4})])
    expected = RISE(int8, n_masks=200, seed=4, batch_size=64, channels_last=True).explain(load_image(q, pre),
                                                                                          load_image(r, pre))
    np.testing.assert_allclose(decode_npy(body["saliency"]["query"]["npy"]).astype(np.float32),
                               expected.query_map.numpy(), atol=2e-3)


def test_the_learned_mask_keeps_the_float_model_and_int8_refuses_amp(int8_handler, pairs):
    handler, context = int8_handler
    q, r = pairs[1]
    [(status, body)] = run_batch(handler, context, [payload("json", q, r, {"method": "mask", "n_masks": 3})])
    assert status == 200, body
    with pytest.raises(ValueError, match="quantize"):
        ServingConfig(quantize=True, amp=True).validate()
