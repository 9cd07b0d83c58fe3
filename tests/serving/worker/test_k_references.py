"""K references in one request (`references`): one entry per reference in the response, each equal to
what K single requests answer (to float16 rounding), for every transport and archive."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sane.serving.ops.inprocess import load_handler, payload, run_batch
from sane.serving.worker.encoding import decode_npy

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
CAPS = {"handler": {"max_n_masks": 300, "default_n_masks": 100, "batch_size": 64, "max_references": 4}}
TRANSPORTS = ("multipart", "json", "grpc")


def _bytes(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


def _variant(seed: int) -> bytes:
    arr = np.asarray(Image.open(EXAMPLES / "reference.jpg").convert("RGB")).copy()
    arr[60:100, 10:50] = np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def handlers():
    return {name: load_handler(name, config_overrides=CAPS) for name in ("saliency", "sane", "similarity")}


def _map(part: dict) -> np.ndarray:
    return decode_npy(part["npy"]).astype(np.float32)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("options", [{"n_masks": 120, "seed": 3}, {"mode": "both", "n_masks": 80},
                                     {"method": "random", "seed": 2}, {"n_masks": "auto"}])
def test_k_references_equal_k_single_requests(handlers, transport, options):
    handler, context = handlers["saliency"]
    q = _bytes("query.jpg")
    refs = [_bytes("reference.jpg"), _variant(1), _variant(2)]
    [(status, body)] = run_batch(handler, context, [payload(transport, q, refs, options)])
    assert status == 200, body
    assert len(body["references"]) == 3 and "similarity" not in body
    singles = run_batch(handler, context, [payload(transport, q, r, options) for r in refs])
    for entry, (single_status, single) in zip(body["references"], singles):
        assert single_status == 200
        assert entry["similarity"] == pytest.approx(single["similarity"], abs=1e-5)
        for name in single["saliency"]:
            np.testing.assert_allclose(_map(entry["saliency"][name]), _map(single["saliency"][name]), atol=2e-3)
        # auto: each reference's map stopped where its single request's did
        assert entry.get("n_masks_used") == single["options"].get("n_masks_used")
    used = [single["options"].get("n_masks_used") for _, single in singles]
    assert body["options"].get("n_masks_used") == (max(used) if options.get("n_masks") == "auto" else None)
    assert body["method"] == singles[0][1]["method"]
    assert {k: v for k, v in body["options"].items() if k != "n_masks_used"} == {
        k: v for k, v in singles[0][1]["options"].items() if k != "n_masks_used"}


def test_the_sane_archive_ranks_the_attributes_for_each_reference(handlers):
    handler, context = handlers["sane"]
    q, refs = _bytes("query.jpg"), [_bytes("reference.jpg"), _variant(3)]
    options = {"n_masks": 100, "top_k": 3}
    [(status, body)] = run_batch(handler, context, [payload("json", q, refs, options)])
    assert status == 200, body
    singles = run_batch(handler, context, [payload("json", q, r, options) for r in refs])
    for entry, (_, single) in zip(body["references"], singles):
        assert [e["attribute"] for e in entry["explanations"]] == [e["attribute"] for e in single["explanations"]]
        assert [e["score"] for e in entry["explanations"]] == pytest.approx(
            [e["score"] for e in single["explanations"]], abs=1e-3)


def test_the_similarity_archive_scores_each_reference(handlers):
    handler, context = handlers["similarity"]
    q, refs = _bytes("query.jpg"), [_bytes("reference.jpg"), _variant(4), _bytes("query.jpg")]
    [(status, body)] = run_batch(handler, context, [payload("multipart", q, refs)])
    assert status == 200, body
    singles = run_batch(handler, context, [payload("multipart", q, r) for r in refs])
    assert [e["similarity"] for e in body["references"]] == pytest.approx([s["similarity"] for _, s in singles],
                                                                         abs=1e-6)
    assert body["references"][2]["similarity"] == pytest.approx(1.0, abs=1e-5)  # the query itself


def test_bad_reference_lists_are_400_naming_the_field(handlers):
    handler, context = handlers["saliency"]
    q, r = _bytes("query.jpg"), _bytes("reference.jpg")
    gap = {"query": bytearray(q), "references.0": bytearray(r), "references.2": bytearray(r)}
    both = {"query": bytearray(q), "reference": bytearray(r), "references.0": bytearray(r)}
    cases = [
        (payload("json", q, [r] * 5), "references"),  # above the archive's max_references (4)
        (payload("multipart", q, [r, b"not an image"]), "references.1"),
        (gap, "references.1"),
        (both, "references"),
        ({"query": bytearray(q), "references": bytearray(r)}, "references"),  # a repeated field, collapsed
        ({"body": {"query": "", "references": []}}, "references"),
    ]
    results = run_batch(handler, context, [c for c, _ in cases])
    for (status, body), (_, field) in zip(results, cases):
        assert status == 400 and body["field"] == field, body
