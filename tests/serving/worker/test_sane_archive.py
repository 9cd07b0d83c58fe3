"""The `sane` archive in-process with a real TorchServe Context: the saliency response plus the
query's top-k attributes, equal to the library's ranking of the same query map for every transport,
per-request errors (a bad ``top_k`` is a 400 naming ``options.top_k``), and an archive that carries
the attribute model."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from sane.explain.pair import rank_attributes
from sane.images import load_image, open_image
from sane.models import load_similarity
from sane.saliency import RISE
from sane.serving.ops.archive import ARCHIVES, DEFAULT_ARCHIVES, build_archive
from sane.serving.ops.inprocess import load_handler, payload, run_batch
from sane.serving.worker.encoding import decode_npy
from sane.serving.worker.sane_archive import RankerSettings

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
TRANSPORTS = ("multipart", "json", "grpc")
CAPS = {"handler": {"max_n_masks": 300, "default_n_masks": 64, "batch_size": 64, "max_top_k": 8}}
EXPLANATION_KEYS = {"attribute", "score", "confidence", "match", "prior", "present"}


def _bytes(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


def _variant(seed: int) -> bytes:
    """The query with a noisy patch: another valid query, so a batch holds distinct query maps."""
    arr = np.asarray(open_image(_bytes("query.jpg"))).copy()
    rng = np.random.default_rng(seed)
    arr[60:100, 60:100] = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def sane_handler():
    return load_handler("sane", config_overrides=CAPS)


@pytest.fixture(scope="module")
def library():
    return load_similarity()


def _expected(library, query: bytes, reference: bytes, top_k: int, n_masks: int = 64, seed: int = 0, mode="fixed", **kw):
    """The library's result, built as a user would (the public RISE class, not the handler's factory): the
    RISE maps, then `rank_attributes` (the `sane explain` path) on the query map."""
    model, preprocess = library
    generator = RISE(model, n_masks=n_masks, seed=seed, batch_size=64, **kw)
    result = generator.explain(load_image(query, preprocess), load_image(reference, preprocess), mode=mode)
    return result, rank_attributes(open_image(query), result.query_map, top_k)


def _assert_same_ranking(body: dict, expected_result, expected_ranking) -> None:
    assert body["similarity"] == pytest.approx(expected_result.similarity, rel=1e-5, abs=1e-6)
    query_map = decode_npy(body["saliency"]["query"]["npy"]).astype(np.float32)
    np.testing.assert_allclose(query_map, expected_result.query_map.numpy(), rtol=1e-3, atol=5e-4)
    served = body["explanations"]
    assert all(set(e) == EXPLANATION_KEYS for e in served)
    assert [e["attribute"] for e in served] == [e.attribute for e in expected_ranking]
    for got, want in zip(served, expected_ranking):
        # score, confidence and match are computed on the map, which the worker's fused forward makes
        # equal to the library's within the map tolerance above (the last digits depend on the CPU's
        # kernels); the prior does not depend on the map.
        for key in ("score", "confidence", "match"):
            assert got[key] == pytest.approx(getattr(want, key), rel=1e-3, abs=1e-5), (got["attribute"], key)
        assert got["prior"] == pytest.approx(want.prior, rel=1e-6, abs=1e-9), got["attribute"]
        assert got["present"] == want.present


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_transport_gives_the_library_ranking(sane_handler, library, transport):
    handler, context = sane_handler
    q, r = _bytes("query.jpg"), _bytes("reference.jpg")
    options = {"n_masks": 80, "seed": 5, "top_k": 3}
    [(status, body)] = run_batch(handler, context, [payload(transport, q, r, options)])
    assert status == 200, body
    assert context.get_response_content_type(0) == "application/json"
    result, ranking = _expected(library, q, r, top_k=3, n_masks=80, seed=5)
    assert len(ranking) == 3
    _assert_same_ranking(body, result, ranking)
    scores = [e["score"] for e in body["explanations"]]
    assert scores == sorted(scores, reverse=True)
    assert body["options"]["top_k"] == 3 and body["method"] == "rise"
    assert {"decode", "compute", "encode", "handler", "explain", "rank"} <= set(body["timing_ms"])


def test_default_top_k_and_both_mode(sane_handler, library):
    """Without ``top_k`` the configured default (5) applies; in mode=both the query map is still ranked."""
    handler, context = sane_handler
    q, r = _bytes("query.jpg"), _bytes("reference.jpg")
    [(status, body)] = run_batch(handler, context, [payload("json", q, r, {"mode": "both", "n_reference_masks": 8})])
    assert status == 200, body
    assert body["options"]["top_k"] == 5 and "reference" in body["saliency"]
    result, ranking = _expected(library, q, r, top_k=5, mode="both", n_reference_masks=8)
    _assert_same_ranking(body, result, ranking)


def test_a_batch_ranks_each_request_on_its_own_map(sane_handler, library):
    """One saliency stream for the batch; each request ranked on its own query's map; bad requests alone."""
    handler, context = sane_handler
    q, q2, r = _bytes("query.jpg"), _variant(3), _bytes("reference.jpg")
    batch = [
        payload("multipart", q, r, {"seed": 1, "top_k": 2}),
        payload("multipart", q, r, {"seed": 1, "top_k": 9}),  # above this handler's cap of 8
        payload("grpc", q2, r, {"seed": 1, "top_k": 6}),
        payload("json", q, b"not an image", {"seed": 1}),
    ]
    results = run_batch(handler, context, batch)
    assert [s for s, _ in results] == [200, 400, 200, 400]
    assert results[1][1]["field"] == "options.top_k" and "max_top_k" in results[1][1]["error"]
    assert results[3][1]["field"] == "reference"
    for (_, body), query, k in ((results[0], q, 2), (results[2], q2, 6)):
        result, ranking = _expected(library, query, r, top_k=k, seed=1)
        _assert_same_ranking(body, result, ranking)


@pytest.mark.parametrize("top_k", [0, -1, 9, "5", 2.5, True, None])
def test_a_bad_top_k_is_a_400_naming_it(sane_handler, top_k):
    handler, context = sane_handler
    [(status, body)] = run_batch(handler, context, [payload("json", _bytes("query.jpg"), _bytes("reference.jpg"),
                                                            {"n_masks": 8, "top_k": top_k})])
    assert status == 400 and body["field"] == "options.top_k", body


def test_the_saliency_archive_does_not_take_top_k():
    handler, context = load_handler("saliency", config_overrides=CAPS)
    [(status, body)] = run_batch(handler, context, [payload("json", _bytes("query.jpg"), _bytes("reference.jpg"),
                                                            {"n_masks": 8, "top_k": 3})])
    assert status == 400 and body["field"] == "options.top_k"


@pytest.mark.parametrize(
    "extra",
    [{"default_top_k": 9, "max_top_k": 8}, {"max_top_k": 0}, {"default_top_k": "5"}, {"w": "high"}],
)
def test_bad_ranker_settings_fail_at_worker_start(extra):
    with pytest.raises(ValueError, match="model-config handler"):
        RankerSettings.from_extra(extra)


def test_sane_archive_carries_handler_config_and_attribute_model(tmp_path):
    assert "sane" in DEFAULT_ARCHIVES
    path = build_archive("sane", tmp_path, config_overrides={"handler": {"max_top_k": 7}})
    with zipfile.ZipFile(path) as mar:
        names = set(mar.namelist())
        config = yaml.safe_load(mar.read("model-config.yaml"))
    assert {"sane_handler.py", "attributes_sane.pt", "similarity_compact.pt", "sane/serving/worker/sane_archive.py"} <= names
    assert not any(n.startswith("sane/models/weights/") for n in names)  # weights travel explicitly only
    assert config["handler"]["max_top_k"] == 7 and config["handler"]["attribute_model"] == "attributes_sane.pt"
    assert Path(ARCHIVES["sane"].extra_files[0]).name == config["handler"]["attribute_model"]
