"""A real TorchServe (own TMPDIR, free loopback ports, stopped in teardown) serving the three archives:
served results equal the in-process handler's over HTTP multipart, HTTP JSON and gRPC; a batch with
a bad request answers it alone; option errors name the field; custom metrics reach Prometheus."""

from __future__ import annotations

import io
import json
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sane.cli import main as sane_main
from sane.serving.ops.grpc_client import GrpcClient
from sane.serving.ops.http_client import HttpClient
from sane.serving.ops.inprocess import load_handler, payload, run_batch
from sane.serving.ops.server import temporary_server
from sane.serving.worker.encoding import decode_npy

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
# Small caps and a long batch window, so that concurrent requests land in one batch.
ARCHIVE = {"batchSize": 4, "maxBatchDelay": 400,
           "handler": {"max_n_masks": 300, "default_n_masks": 100, "batch_size": 64}}


def _bytes(name: str) -> bytes:
    return (ROOT / "examples" / name).read_bytes()


def _variant(seed: int) -> bytes:
    arr = np.asarray(Image.open(io.BytesIO(_bytes("query.jpg"))).convert("RGB")).copy()
    arr[60:100, 20:60] = np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchserve")
    with temporary_server(root, ["similarity", "saliency", "sane"], ROOT / "config.properties", ARCHIVE) as info:
        yield info


@pytest.fixture(scope="module")
def http(server):
    return HttpClient(server.inference_url, timeout=120)


@pytest.fixture(scope="module")
def grpc_client(server, tmp_path_factory):
    with GrpcClient(server.grpc_address, stubs_dir=tmp_path_factory.mktemp("stubs"), timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def inprocess():
    return load_handler("saliency", config_overrides=ARCHIVE)


def _same(served: dict, local: dict) -> None:
    """Equal results: similarity to float32 rounding, maps to float16 rounding (both are float16 .npy)."""
    assert served["similarity"] == pytest.approx(local["similarity"], rel=1e-5, abs=1e-6)
    assert served["method"] == local["method"] and served["mode"] == local["mode"]
    assert served["options"] == local["options"]
    assert set(served["saliency"]) == set(local["saliency"])
    for side in served["saliency"]:
        a = decode_npy(served["saliency"][side]["npy"]).astype(np.float32)
        b = decode_npy(local["saliency"][side]["npy"]).astype(np.float32)
        assert a.shape == b.shape == (112, 112)
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=5e-4)


def test_http_multipart_json_and_grpc_equal_in_process(server, http, grpc_client, inprocess):
    q, r = _bytes("query.jpg"), _bytes("reference.jpg")
    options = {"mode": "both", "n_masks": 100, "seed": 5, "n_reference_masks": 30}
    [(status, local)] = run_batch(*inprocess, [payload("multipart", q, r, options)])
    assert status == 200
    status, multipart = http.request("saliency", q, r, options, body="multipart")
    assert status == 200, multipart
    _same(multipart, local)
    status, as_json = http.request("saliency", q, r, options, body="json", endpoint="explanations")
    assert status == 200, as_json
    _same(as_json, local)
    _same(grpc_client.request("saliency", q, r, options), local)


def test_a_batch_with_one_bad_request_answers_it_alone(server, http, inprocess):
    options = {"n_masks": 100, "seed": 9}
    pairs = [(_variant(1), _bytes("reference.jpg")), (_variant(2), b"GIF89a broken"),
             (_bytes("query.jpg"), _bytes("reference.jpg")), (_variant(3), _bytes("reference.jpg"))]
    with ThreadPoolExecutor(len(pairs)) as pool:
        served = list(pool.map(lambda p: http.request("saliency", p[0], p[1], options), pairs))
    assert [s for s, _ in served] == [200, 400, 200, 200], served[1]
    assert served[1][1]["field"] == "reference" and served[1][1]["error"]
    local = run_batch(*inprocess, [payload("multipart", q, r, options) for q, r in pairs])
    for (_, got), (_, want) in zip(served, local):
        if "error" not in want:
            _same(got, want)
    # The concurrent requests were batched (maxBatchDelay 400 ms): responses computed by one handle()
    # call carry the same timing_ms.compute, the time of the whole batch.
    computes = [body["timing_ms"]["compute"] for status, body in served if status == 200]
    assert len(set(computes)) < len(computes), computes


def test_option_errors_are_400_with_the_field(server, http, grpc_client):
    q, r = _bytes("query.jpg"), _bytes("reference.jpg")
    status, body = http.request("saliency", q, r, {"n_masks": 301})
    assert status == 400 and body["field"] == "options.n_masks" and "301" in body["error"]
    status, body = http.request("saliency", q, r, {"method": "nope"}, body="json")
    assert status == 400 and body["field"] == "options.method"
    status, body = http.request("saliency", q, b"", {"mode": "both"})
    assert status == 400 and body["field"] == "reference"
    # gRPC carries the same response bytes (TorchServe 0.12 does not map per-request codes onto gRPC).
    assert grpc_client.request("saliency", q, r, {"mode": "neither"})["field"] == "options.mode"


def test_similarity_archive_serves_the_in_process_result(server, http, grpc_client):
    handler, context = load_handler("similarity", config_overrides=ARCHIVE)
    q, r = _variant(4), _bytes("reference.jpg")
    [(_, local)] = run_batch(handler, context, [payload("json", q, r)])
    status, served = http.request("similarity", q, r)
    assert status == 200
    assert served["similarity"] == pytest.approx(local["similarity"], abs=1e-6)
    np.testing.assert_allclose(decode_npy(served["embeddings"]["query"]["npy"]),
                               decode_npy(local["embeddings"]["query"]["npy"]), atol=1e-6)
    assert grpc_client.request("similarity", q, r)["similarity"] == pytest.approx(local["similarity"], abs=1e-6)


def test_sane_archive_serves_the_in_process_maps_and_explanations(server, http, grpc_client):
    handler, context = load_handler("sane", config_overrides=ARCHIVE)
    q, r = _variant(5), _bytes("reference.jpg")
    options = {"n_masks": 64, "seed": 2, "top_k": 4}
    [(status, local)] = run_batch(handler, context, [payload("json", q, r, options)])
    assert status == 200 and len(local["explanations"]) == 4
    status, served = http.request("sane", q, r, options)
    assert status == 200, served
    for body in (served, grpc_client.request("sane", q, r, options)):
        _same(body, local)
        assert [e["attribute"] for e in body["explanations"]] == [e["attribute"] for e in local["explanations"]]
        for got, want in zip(body["explanations"], local["explanations"]):
            assert got["present"] == want["present"]
            for key in ("score", "confidence", "match", "prior"):
                assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), (got["attribute"], key)
    status, body = http.request("sane", q, r, {"n_masks": 8, "top_k": 0}, body="json")
    assert status == 400 and body["field"] == "options.top_k"


def test_sane_request_command_writes_the_heat_maps(server, tmp_path):
    out = tmp_path / "demo"
    code = sane_main(["request", str(ROOT / "examples" / "query.jpg"), str(ROOT / "examples" / "reference.jpg"),
                      "--workdir", server.workdir, "--mode", "both", "--n-masks", "60", "--out", str(out)])
    assert code == 0
    for name in ("query_saliency.png", "reference_saliency.png", "query_heatmap.png", "query_saliency.npy",
                 "reference_saliency.npy", "result.json"):
        assert (out / name).is_file(), name
    assert Image.open(out / "query_saliency.png").size == (448, 448)  # the 112-px query, enlarged for display
    assert Image.open(out / "query_heatmap.png").size == (112, 112)  # the server's own PNG: the map's size
    assert (out / "card.png").is_file()
    result = json.loads((out / "result.json").read_text())
    assert result["mode"] == "both" and result["options"]["n_masks"] == 60


def test_a_request_with_k_references_is_served_over_http_and_grpc_and_written_per_reference(server, http,
                                                                                          grpc_client, tmp_path):
    q, r = (ROOT / "examples" / "query.jpg").read_bytes(), (ROOT / "examples" / "reference.jpg").read_bytes()
    options = {"n_masks": 60, "seed": 2}
    single = http.request("saliency", q, r, options)[1]
    for body in (http.request("saliency", q, [r, q], options, body="json")[1],
                 grpc_client.request("saliency", q, [r, q], options)):
        assert [e["similarity"] for e in body["references"]] == pytest.approx([single["similarity"], 1.0], abs=1e-5)
        np.testing.assert_allclose(decode_npy(body["references"][0]["saliency"]["query"]["npy"]).astype(np.float32),
                                   decode_npy(single["saliency"]["query"]["npy"]).astype(np.float32), atol=2e-3)
    out = tmp_path / "k"
    assert sane_main(["request", str(ROOT / "examples" / "query.jpg"), str(ROOT / "examples" / "reference.jpg"),
                      str(ROOT / "examples" / "query.jpg"), "--workdir", server.workdir, "--n-masks", "60",
                      "--out", str(out)]) == 0
    for k in range(2):
        result = json.loads((out / f"reference_{k}" / "result.json").read_text())
        assert result["reference"].endswith(("reference.jpg", "query.jpg")[k])
        assert (out / f"reference_{k}" / "query_saliency.npy").is_file()
    # auto: each reference's map stops on its own, and its folder says where (as its single request does)
    auto = tmp_path / "auto"
    assert sane_main(["request", str(ROOT / "examples" / "query.jpg"), str(ROOT / "examples" / "reference.jpg"),
                      str(ROOT / "examples" / "query.jpg"), "--workdir", server.workdir, "--n-masks", "auto",
                      "--out", str(auto)]) == 0
    for k, reference in enumerate((r, q)):
        written = json.loads((auto / f"reference_{k}" / "result.json").read_text())["options"]["n_masks_used"]
        alone = http.request("saliency", q, reference, {"n_masks": "auto"})[1]["options"]["n_masks_used"]
        assert written == alone


def test_custom_metrics_reach_the_prometheus_endpoint(server):
    with urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    for name in ("SaneRequestLatency", "SaneMasksPerSecond", "SaneBatchSize"):
        match = re.search(rf'^{name}\{{ModelName="saliency".*\}} ([0-9.eE+-]+)$', text, re.MULTILINE)
        assert match, f"{name} missing from /metrics"
        assert float(match.group(1)) > 0
    # Latency as a histogram: cumulative buckets ending in +Inf, whose count is the number of requests
    # this archive has answered so far (every test above sent some), so p50/p99 can be read from it.
    buckets = [(float(le), float(v)) for le, v in re.findall(
        r'^SaneRequestSeconds_bucket\{(?=[^}]*ModelName="saliency")[^}]*le="([^"]+)",?[^}]*\} ([0-9.eE+-]+)$', text,
        re.MULTILINE)]
    assert len(buckets) >= 10 and buckets[-1][0] == float("inf"), text[-2000:]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and counts[-1] >= 3
    count = re.search(r'^SaneRequestSeconds_count\{[^}]*ModelName="saliency"[^}]*\} ([0-9.eE+-]+)$', text, re.MULTILINE)
    assert count and float(count.group(1)) == counts[-1]


def test_a_study_built_from_the_server_has_the_librarys_similarities_maps_and_attributes(server, shapes48, tmp_path):
    """`sane study build --server`: the similarity archive scores candidate triplets, the sane archive explains
    A for B and C in one request; both equal the library's (which `sane study build` uses without a server)."""
    from sane.cli.study import ServedSource
    from sane.data import open_dataset
    from sane.study import LibrarySource, read_key

    paths = [p for p, _ in open_dataset(shapes48, split="test").samples][:6]
    served = ServedSource(server.inference_url, None, options={"n_masks": 100, "seed": 3, "top_k": 3})
    local = LibrarySource(n_masks=100, seed=3, top_k=3, batch_size=64)
    assert served.similarities(paths[0], paths[1:]) == pytest.approx(local.similarities(paths[0], paths[1:]),
                                                                     abs=1e-5)
    for got, want in zip(served.explain(paths[0], paths[1:3]), local.explain(paths[0], paths[1:3])):
        assert got.similarity == pytest.approx(want.similarity, abs=1e-5)
        np.testing.assert_allclose(got.query_map, want.query_map, atol=2e-3)  # served maps are float16
        assert [e["attribute"] for e in got.attributes] == [e["attribute"] for e in want.attributes]
    out = tmp_path / "study"
    assert sane_main(["study", "build", "--server", server.inference_url, "--data", shapes48, "--out", str(out),
                      "--triplets", "2", "--n-masks", "100", "--participants", "4", "--quiet"]) == 0
    key = read_key(out)
    assert key["source"]["source"] == "server" and len(key["triplets"]) == 2
    assert (out / "site" / "images" / "t002_a_for_c.jpg").is_file()
