"""The serving handlers in-process with a real TorchServe Context: results equal the library's for
every transport, each request of a batch is judged on its own, options are validated, and a batch is
explained as one stream of masked images."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CountingModel, RegionModel
from PIL import Image

from sane.images import load_image
from sane.models import Embedder, load_similarity
from sane.saliency import LIME, RISE, LearnedMask, RandomSaliency, SaliencyResult, make_generator
from sane.saliency.masks import rise_masks
from sane.saliency.rise import REFERENCE_SEED_OFFSET
from sane.serving.ops.archive import build_archive
from sane.serving.ops.inprocess import load_handler, payload, run_batch
from sane.serving.ops.server import read_properties
from sane.serving.worker.encoding import decode_npy
from sane.serving.worker.request import RequestError, parse_pair_request

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
TRANSPORTS = ("multipart", "json", "grpc")
CAPS = {"handler": {"max_n_masks": 300, "default_n_masks": 100, "batch_size": 64}}


def _bytes(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _variant(seed: int) -> bytes:
    """Another valid image: the query with a noisy patch, so batches hold distinct queries."""
    arr = np.asarray(Image.open(io.BytesIO(_bytes("query.jpg"))).convert("RGB")).copy()
    rng = np.random.default_rng(seed)
    arr[10:40, 10:40] = rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)
    return _png(Image.fromarray(arr))


@pytest.fixture(scope="module")
def saliency():
    return load_handler("saliency", config_overrides=CAPS)


@pytest.fixture(scope="module")
def similarity():
    return load_handler("similarity")


@pytest.fixture(scope="module")
def library():
    return load_similarity()


def _served_speed_options() -> dict:
    """The forward options the shipped saliency archive runs with (BN fusion, NHWC), so the in-process
    reference computes exactly what the server does (the learned mask amplifies float rounding)."""
    import yaml

    from sane.serving.worker.config import ServingConfig

    config = ServingConfig.from_model_yaml(yaml.safe_load((ROOT / "handlers" / "saliency.yaml").read_text()))
    return {"fuse": config.fuse, "channels_last": config.channels_last}


def _rise_by_hand(model, q: torch.Tensor, r: torch.Tensor, n_masks: int, seed: int, mode: str,
                  n_reference_masks: int = 30) -> SaliencyResult:
    """RISE for similarity written out (SPEC §1.2), not the engine: with the mean substrate (0 in
    normalised space) a masked image is ``x·M``; ``s_i = cos(e(q·M_i), e(r))`` (in mode both averaged over
    the masked references), ``map = Σ s_i M_i / Σ M_i``; the reference map scores each masked reference
    against the unmodified query. Only the seeded masks are the library's."""
    def embed(x):
        return F.normalize(model(x).float(), dim=1)

    h, w = q.shape[-2:]
    masks = rise_masks(n_masks, 8, 0.5, (h, w), seed)
    with torch.inference_mode():
        eq = embed(q[None] * masks[:, None])
        reference_map = None
        if mode == "fixed":
            scores = (eq @ embed(r[None]).T)[:, 0]
        else:
            rmasks = rise_masks(n_reference_masks, 8, 0.5, (h, w), seed + REFERENCE_SEED_OFFSET)
            er = embed(r[None] * rmasks[:, None])
            scores = (eq @ er.T).mean(1)
            sr = (er @ embed(q[None]).T)[:, 0]
            reference_map = (sr[:, None, None] * rmasks).sum(0) / rmasks.sum(0)
        query_map = (scores[:, None, None] * masks).sum(0) / masks.sum(0)
        similarity = float(embed(q[None]) @ embed(r[None]).T)
    return SaliencyResult(query_map, reference_map, similarity, "rise", mode)


def _expected(library, query: bytes, reference: bytes, method="rise", mode="fixed", n_masks=100, seed=0, **kw):
    """What the server must answer, computed without the handler: RISE by hand, the other methods with
    their public class (the served forward options, so float rounding matches)."""
    model, preprocess = library
    q, r = load_image(query, preprocess), load_image(reference, preprocess)
    if method == "rise":
        return _rise_by_hand(model, q, r, n_masks, seed, mode, **kw)
    cls = {"random": RandomSaliency, "lime": LIME, "mask": LearnedMask}[method]
    extra = {"mean": preprocess.mean, "std": preprocess.std} if method == "lime" else {}
    generator = cls(model, seed=seed, batch_size=64, **_served_speed_options(), **extra, **kw)
    return generator.explain(q, r, mode=mode)


def _assert_maps_match(body: dict, expected) -> None:
    assert body["similarity"] == pytest.approx(expected.similarity, rel=1e-5, abs=1e-6)
    query = decode_npy(body["saliency"]["query"]["npy"])
    assert query.dtype == np.float16 and list(query.shape) == body["saliency"]["query"]["shape"]
    np.testing.assert_allclose(query.astype(np.float32), expected.query_map.numpy(), rtol=1e-3, atol=5e-4)
    if expected.reference_map is None:
        assert "reference" not in body["saliency"]
    else:
        reference = decode_npy(body["saliency"]["reference"]["npy"])
        np.testing.assert_allclose(reference.astype(np.float32), expected.reference_map.numpy(), rtol=1e-3, atol=5e-4)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_transport_gives_the_library_result(saliency, library, transport):
    handler, context = saliency
    q, r = _bytes("query.jpg"), _bytes("reference.jpg")
    options = {"method": "rise", "mode": "both", "n_masks": 120, "seed": 7, "n_reference_masks": 40}
    [(status, body)] = run_batch(handler, context, [payload(transport, q, r, options)])
    assert status == 200, body
    assert context.get_response_content_type(0) == "application/json"
    expected = _expected(library, q, r, mode="both", n_masks=120, seed=7, n_reference_masks=40)
    _assert_maps_match(body, expected)
    assert body["method"] == "rise" and body["mode"] == "both"
    assert body["options"]["seed"] == 7 and body["options"]["n_masks"] == 120
    png = Image.open(io.BytesIO(base64.b64decode(body["saliency"]["query"]["png"])))
    assert png.format == "PNG" and png.size == (112, 112)
    assert {"decode", "compute", "encode", "handler", "explain"} <= set(body["timing_ms"])
    assert "explanations" not in body  # reserved for the `sane` archive


def test_responses_hold_no_float_lists(saliency):
    handler, context = saliency
    [(status, body)] = run_batch(handler, context, [payload("json", _bytes("query.jpg"), _bytes("reference.jpg"),
                                                            {"n_masks": 50, "mode": "both"})])
    assert status == 200

    def floats(node) -> int:
        if isinstance(node, list):
            return sum(isinstance(v, float) for v in node) + sum(floats(v) for v in node)
        if isinstance(node, dict):
            return sum(floats(v) for v in node.values())
        return 0

    assert floats(body) == 0
    assert len(json.dumps(body)) < 200_000  # two 112x112 maps as PNG + float16, base64


def test_method_and_seed_are_honoured(saliency, library):
    handler, context = saliency
    q, r = _bytes("query.jpg"), _bytes("reference.jpg")
    results = run_batch(handler, context, [
        payload("multipart", q, r, {"method": "random", "seed": 4, "grid": 5}),
        payload("multipart", q, r, {"n_masks": 80, "seed": 1}),
        payload("multipart", q, r, {"n_masks": 80, "seed": 2}),
    ])
    assert [s for s, _ in results] == [200, 200, 200]
    _assert_maps_match(results[0][1], _expected(library, q, r, method="random", seed=4, grid=5))
    assert results[0][1]["method"] == "random"
    _assert_maps_match(results[1][1], _expected(library, q, r, n_masks=80, seed=1))
    _assert_maps_match(results[2][1], _expected(library, q, r, n_masks=80, seed=2))
    m1, m2 = (decode_npy(b["saliency"]["query"]["npy"]) for _, b in results[1:])
    assert not np.array_equal(m1, m2)  # different seeds, different masks


@pytest.mark.parametrize(("method", "mode", "size"), [("lime", "fixed", "n_samples"), ("mask", "both", "iterations")])
def test_every_registered_generator_is_served(saliency, library, method, mode, size):
    """Generators added to the registry are served without handler changes; ``n_masks`` is their size option."""
    handler, context = saliency
    q, r = _bytes("query.jpg"), _bytes("reference.jpg")
    [(status, body)] = run_batch(handler, context, [payload("json", q, r, {"method": method, "mode": mode,
                                                                           "n_masks": 8, "seed": 2})])
    assert status == 200, body
    assert body["method"] == method
    _assert_maps_match(body, _expected(library, q, r, method=method, mode=mode, seed=2, **{size: 8}))


def _bomb() -> bytes:
    """A tiny PNG that claims 9000 x 9000 pixels (81 MP, above the library's 64 MP limit)."""
    return _png(Image.new("L", (9000, 9000)))


def test_a_batch_with_bad_requests_answers_each_on_its_own(saliency, library):
    handler, context = saliency
    q, r = _bytes("query.jpg"), _bytes("reference.jpg")
    q2 = _variant(1)
    options = {"n_masks": 100, "seed": 3}
    batch = [
        payload("multipart", q, r, options),
        payload("multipart", q, b"\x89PNG\r\n\x1a\n not really a png", options),  # corrupt
        {"query": bytearray(q), "options": json.dumps(options)},  # missing field
        payload("grpc", q2, r, options),
        payload("json", _bomb(), r, options),  # decompression bomb
        payload("multipart", q, r, {"n_masks": 100_000}),  # over the cap
    ]
    results = run_batch(handler, context, batch)
    statuses = [s for s, _ in results]
    assert statuses == [200, 400, 400, 200, 413, 400]  # 413: image over the pixel limit
    assert results[1][1]["field"] == "reference"
    assert results[2][1] == {"error": "missing field 'reference'", "field": "reference"}
    assert results[4][1]["field"] == "query" and "pixels" in results[4][1]["error"]
    assert results[5][1]["field"] == "options.n_masks"
    _assert_maps_match(results[0][1], _expected(library, q, r, n_masks=100, seed=3))
    _assert_maps_match(results[3][1], _expected(library, q2, r, n_masks=100, seed=3))
    for i, status in zip((1, 2, 4, 5), (400, 400, 413, 400)):
        assert context.get_response_status(i)[0] == status


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"method": "gradcam"}, "options.method"),
        ({"n_masks": 301}, "options.n_masks"),  # the cap configured for this handler is 300
        ({"n_masks": 0}, "options.n_masks"),
        ({"n_masks": "many"}, "options.n_masks"),
        ({"mode": "query"}, "options.mode"),
        ({"seed": -1}, "options.seed"),
        ({"colour": "red"}, "options.colour"),
        ({"method": "sliding_window", "grid": 4}, "options.grid"),  # does not apply to occlusion
        ({"p": 1.5}, "options.p"),
        ({"outputs": ["pdf"]}, "options.outputs"),
        ({"n_reference_masks": 10_000}, "options.n_reference_masks"),
        ({"method": "sliding_window", "n_masks": 100}, "options.n_masks"),  # a fixed number of windows
        ({"method": "lime", "mode": "both"}, "options.mode"),  # LIME declares mode fixed only
    ],
)
def test_bad_options_are_400_naming_the_field(saliency, options, field):
    handler, context = saliency
    [(status, body)] = run_batch(handler, context, [payload("json", _bytes("query.jpg"), _bytes("reference.jpg"), options)])
    assert status == 400
    assert body["field"] == field, body
    assert body["error"]


def test_outputs_select_the_encodings(saliency):
    handler, context = saliency
    [(status, body)] = run_batch(handler, context, [payload("multipart", _bytes("query.jpg"), _bytes("reference.jpg"),
                                                                 {"n_masks": 40, "outputs": ["npy"]})])
    assert status == 200
    assert set(body["saliency"]["query"]) == {"shape", "npy"}


def test_similarity_handler_returns_the_model_similarity_and_embeddings(similarity, library):
    handler, context = similarity
    model, preprocess = library
    q, r, q2 = _bytes("query.jpg"), _bytes("reference.jpg"), _variant(2)
    results = run_batch(handler, context, [payload("multipart", q, r), payload("json", q2, r),
                                           payload("grpc", q, b"")])
    assert [s for s, _ in results] == [200, 200, 400]
    assert results[2][1]["field"] == "reference"
    embed = Embedder(model)
    for (_, body), query in zip(results[:2], (q, q2)):
        e = embed(torch.stack([load_image(query, preprocess), load_image(r, preprocess)]))
        assert body["similarity"] == pytest.approx(float(e[0] @ e[1]), abs=1e-5)
        got = decode_npy(body["embeddings"]["query"]["npy"])
        assert got.dtype == np.float32 and got.shape == (64,)
        np.testing.assert_allclose(got, e[0].numpy(), atol=1e-5)


def test_request_parsing_names_the_field():
    with pytest.raises(RequestError) as err:
        parse_pair_request({"body": {"query": "not base64!", "reference": ""}})
    assert err.value.field == "query"
    with pytest.raises(RequestError) as err:
        parse_pair_request({"query": b"x", "reference": b"y", "options": "{not json"})
    assert err.value.field == "options"
    with pytest.raises(RequestError) as err:
        parse_pair_request({"query": b"x", "refrence": b"y"})
    assert err.value.field == "refrence"
    with pytest.raises(RequestError) as err:
        parse_pair_request({"body": b"\xff\xd8 raw jpeg"})
    assert err.value.field == "body"
    ok = parse_pair_request({"query": "text", "reference": bytearray(b"\x00"), "options": b'{"seed": 1}'})
    assert ok.query == b"text" and ok.reference == b"\x00" and ok.options == {"seed": 1}


# -- the batched stream ------------------------------------------------------------------------
BOX = (8, 24, 36, 56)


@pytest.mark.parametrize("method", ["rise", "sliding_window"])
@pytest.mark.parametrize("mode", ["fixed", "both"])
def test_batched_stream_equals_request_by_request(method, mode):
    gen = torch.Generator().manual_seed(5)
    queries = [torch.randn(3, 64, 64, generator=gen) for _ in range(3)]
    queries.append(queries[1].clone())  # two requests share a query: the K-reference path
    references = [torch.randn(3, 64, 64, generator=gen) for _ in range(4)]
    model = RegionModel(BOX).eval()
    small = {"windows_per_side": 10, "reference_windows_per_side": 4} if method == "sliding_window" else {}
    generator = make_generator(model, method, n_masks=150, seed=11, batch_size=48, **small)
    assert generator.shares_stream
    batched = generator.explain_pairs(queries, references, mode)
    for q, r, got in zip(queries, references, batched):
        want = generator.explain(q, r, mode=mode)
        torch.testing.assert_close(got.query_map, want.query_map, rtol=1e-5, atol=1e-6)
        assert got.similarity == pytest.approx(want.similarity, abs=1e-6)
        if mode == "both":
            torch.testing.assert_close(got.reference_map, want.reference_map, rtol=1e-5, atol=1e-6)
        else:
            assert got.reference_map is None


def test_batched_stream_is_one_stream_over_the_distinct_queries():
    gen = torch.Generator().manual_seed(6)
    queries = [torch.randn(3, 64, 64, generator=gen) for _ in range(3)]
    queries.append(queries[0].clone())
    references = [torch.randn(3, 64, 64, generator=gen) for _ in range(4)]
    counter = CountingModel(RegionModel(BOX)).eval()
    n, bs = 200, 60
    make_generator(counter, "rise", n_masks=n, seed=0, batch_size=bs).explain_pairs(queries, references, "fixed")
    # One batch of the 3 + 4 unmodified images, then N masks x 3 distinct queries, 20 masks per batch:
    # N*U forward passes in full batches of bs, instead of 4 requests x N passes in 4 separate streams.
    assert counter.batches[0] == 7
    streamed = counter.batches[1:]
    assert sum(streamed) == 3 * n
    assert len(streamed) == n // (bs // 3) and max(streamed) == bs


# -- archives and stubs ------------------------------------------------------------------------
def test_archive_holds_handler_config_weights_and_package(tmp_path):
    path = build_archive("saliency", tmp_path, config_overrides={"batchSize": 8, "handler": {"max_n_masks": 123}})
    with zipfile.ZipFile(path) as mar:
        names = set(mar.namelist())
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        config = mar.read("model-config.yaml").decode()
    assert manifest["model"]["handler"] == "saliency_handler.py"
    assert manifest["model"]["serializedFile"] == "similarity_compact.pt"
    assert {"saliency_handler.py", "similarity_compact.pt", "sane/serving/worker/handler.py",
            "sane/saliency/engine.py"} <= names
    assert not any("__pycache__" in n or "weights/" in n for n in names)  # code only; weights explicit
    assert "batchSize: 8" in config and "max_n_masks: 123" in config and "maxBatchDelay" in config


def test_grpc_stubs_are_generated_from_the_torchserve_jar(tmp_path):
    from sane.serving.ops.grpc_client import build_stubs, load_stubs

    out = build_stubs(tmp_path / "stubs")
    assert (out / "proto" / "inference.proto").is_file()
    pb2, pb2_grpc = load_stubs(out)
    request = pb2.PredictionsRequest(model_name="saliency", input={"query": b"q", "reference": b"r"})
    assert request.input["query"] == b"q"
    assert hasattr(pb2_grpc, "InferenceAPIsServiceStub")


@pytest.mark.slow
def test_grpc_stubs_build_once_when_many_threads_and_processes_create_clients_at_once(tmp_path):
    # Fresh interpreters (nothing imported yet), 2 processes x 8 threads, one empty stubs directory.
    script = (
        "import sys, threading\n"
        "from sane.serving.ops.grpc_client import GrpcClient\n"
        "errors = []\n"
        "def one():\n"
        "    try:\n"
        "        with GrpcClient('127.0.0.1:1', stubs_dir=sys.argv[1]) as c:\n"
        "            assert c.pb2.PredictionsRequest(model_name='m').model_name == 'm'\n"
        "    except BaseException as exc:\n"
        "        errors.append(repr(exc))\n"
        "threads = [threading.Thread(target=one) for _ in range(8)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "print(errors); sys.exit(1 if errors else 0)\n"
    )
    stubs = tmp_path / "stubs"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(stubs)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sorted(f.name for f in stubs.glob("*.py")) == ["inference_pb2.py", "inference_pb2_grpc.py",
                                                          "management_pb2.py", "management_pb2_grpc.py"]


def test_instance_config_has_no_expiring_tokens_listens_on_loopback_and_keeps_the_model_api_off():
    # Keys live at the gateway (`sane deploy`): TorchServe's expire after an hour and differ per instance.
    props = read_properties(ROOT / "config.properties")
    assert props["disable_token_authorization"] == "true"
    assert props["enable_model_api"] == "false"
    assert props["metrics_mode"] == "prometheus"
    for name in ("inference_address", "management_address", "metrics_address", "grpc_inference_address",
                 "grpc_management_address"):
        assert "127.0.0.1" in props[name], name
    assert "min_worker" in (ROOT / "config.properties").read_text()  # the comment says what stays possible


def test_config_rendering_replaces_keys_and_keeps_the_rest(tmp_path):
    from sane.cli.serving import _overrides
    from sane.serving.ops.server import render_properties

    out = render_properties(ROOT / "config.properties", tmp_path / "c.properties",
                            {"inference_address": "http://127.0.0.1:1234", "initial_worker_port": 9999})
    base, rendered = read_properties(ROOT / "config.properties"), read_properties(out)
    assert rendered["inference_address"] == "http://127.0.0.1:1234" and rendered["initial_worker_port"] == "9999"
    moved = ("inference_address", "initial_worker_port")
    assert {k: v for k, v in rendered.items() if k not in moved} == {k: v for k, v in base.items() if k not in moved}
    assert "# TorchServe configuration of one instance" in out.read_text()
    assert _overrides(["batchSize=8", "handler.max_n_masks=500", "handler.methods=[rise, lime]"]) == {
        "batchSize": 8, "handler": {"max_n_masks": 500, "methods": ["rise", "lime"]}}


def test_configured_methods_restrict_the_generators(tmp_path):
    handler, context = load_handler("saliency", config_overrides={"handler": {"methods": ["sliding_window"],
                                                                              "default_method": "sliding_window"}})
    [(status, body)] = run_batch(handler, context, [payload("json", _bytes("query.jpg"), _bytes("reference.jpg"),
                                                            {"method": "rise"})])
    assert status == 400 and body["field"] == "options.method" and "sliding_window" in body["error"]


def test_a_failing_group_does_not_fail_the_rest_of_the_batch(saliency, monkeypatch):
    handler, context = saliency
    original = handler.make_generator

    def broken(options):
        if options.method == "random":
            raise RuntimeError("generator crashed")
        return original(options)

    monkeypatch.setattr(handler, "make_generator", broken)
    q, r = _bytes("query.jpg"), _bytes("reference.jpg")
    results = run_batch(handler, context, [payload("multipart", q, r, {"method": "random"}),
                                           payload("multipart", q, r, {"n_masks": 30})])
    assert [s for s, _ in results] == [500, 200]
    assert "generator crashed" in results[0][1]["error"]
    assert results[1][1]["method"] == "rise"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"method": "mask", "n_masks": 4000, "mode": "both"}, "options.n_masks"),  # ~24,000 forward passes
        ({"method": "mask", "n_masks": 2000}, "options.n_masks"),
        ({"method": "lime", "n_masks": 2000}, "options.n_masks"),  # within the default, not within 1000
        ({"method": "sliding_window", "mode": "both"}, "options.mode"),  # likewise
    ],
)
def test_costly_options_within_the_caps_are_400_naming_the_option(options, field):
    """Each option below its own cap, together above the request budget (forward-pass equivalents)."""
    from sane.serving.worker.config import ServingConfig
    from sane.serving.worker.options import validate_saliency_options

    config = ServingConfig(max_cost=1000) if options.get("method") in ("lime", "sliding_window") else ServingConfig()
    with pytest.raises(RequestError) as err:
        validate_saliency_options(options, config)
    assert err.value.field == field and "max_cost" in str(err.value) and "forward passes" in str(err.value)


def test_the_largest_rise_request_the_caps_allow_fits_the_default_budget():
    from sane.serving.worker.config import ServingConfig
    from sane.serving.worker.options import request_cost, validate_saliency_options

    config = ServingConfig()
    options = {"n_masks": config.max_n_masks, "mode": "both", "n_reference_masks": config.max_n_reference_masks}
    assert validate_saliency_options(options, config).n_masks == config.max_n_masks
    assert request_cost("rise", "both", 4000, {"n_reference_masks": 500}) == 4500
    assert request_cost("mask", "fixed", None, {}) == 1500  # the learned mask's 500 iterations, x3
    assert request_cost("sliding_window", "fixed", None, {}) == 625


def test_auto_n_masks_is_served_and_reports_the_masks_it_used(saliency, library):
    handler, context = saliency
    q, r = _bytes("query.jpg"), _bytes("reference.jpg")
    results = run_batch(handler, context, [payload("json", q, r, {"n_masks": "auto", "seed": 4}),
                                           payload("json", q, r, {"method": "lime", "n_masks": "auto"})])
    (status, body), (lime_status, lime_body) = results
    assert status == 200, body
    cap = CAPS["handler"]["max_n_masks"]  # the ceiling: the generator's 2000 within the server's cap
    assert body["options"]["n_masks"] == "auto" and body["options"]["max_masks"] == cap
    used = body["options"]["n_masks_used"]
    assert 128 <= used <= cap
    model, preprocess = library
    expected = RISE(model, n_masks="auto", max_masks=cap, seed=4, batch_size=64, **_served_speed_options()).explain(
        load_image(q, preprocess), load_image(r, preprocess))
    assert expected.n_masks_used == used
    _assert_maps_match(body, expected)
    assert lime_status == 400 and lime_body["field"] == "options.n_masks"


def test_an_auto_request_gets_the_same_answer_whatever_shares_its_batch(saliency):
    handler, context = saliency
    q, r = _bytes("query.jpg"), _bytes("reference.jpg")
    alone = run_batch(handler, context, [payload("json", q, r, {"n_masks": "auto", "seed": 6})])[0][1]
    batched = run_batch(handler, context, [payload("json", _variant(s), r, {"n_masks": "auto", "seed": 6})
                                           for s in (1, 2)] + [payload("json", q, r, {"n_masks": "auto", "seed": 6})])
    assert batched[-1][1]["options"]["n_masks_used"] == alone["options"]["n_masks_used"]
    np.testing.assert_array_equal(decode_npy(batched[-1][1]["saliency"]["query"]["npy"]),
                                  decode_npy(alone["saliency"]["query"]["npy"]))
