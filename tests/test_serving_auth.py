"""The production config.properties (only its ports moved to free loopback ones): a request without
the token is refused over HTTP and gRPC, with it it succeeds, and the model API is off."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from sane.serving.grpc_client import GrpcClient
from sane.serving.http_client import HttpClient
from sane.serving.server import read_keys, read_properties, temporary_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchserve-prod")
    with temporary_server(root, ["similarity"], ROOT / "config.properties") as info:
        yield info


def _pair() -> tuple[bytes, bytes]:
    return (ROOT / "examples" / "query.jpg").read_bytes(), (ROOT / "examples" / "reference.jpg").read_bytes()


def test_the_served_config_is_production_but_for_its_ports(server):
    production, served = read_properties(ROOT / "config.properties"), read_properties(server.config)
    moved = {k for k in production if production[k] != served.get(k)}
    assert moved <= {"inference_address", "management_address", "metrics_address", "grpc_inference_address",
                     "grpc_inference_port", "grpc_management_address", "grpc_management_port"}
    assert served["disable_token_authorization"] == "false" and server.token_auth


def test_http_without_the_token_is_refused_and_with_it_succeeds(server):
    q, r = _pair()
    keys = read_keys(server.workdir)
    for token in (None, "not-the-key", keys["management"]):
        status, body = HttpClient(server.inference_url, token).request("similarity", q, r)
        assert status in (400, 401, 403), (token, status)
        assert "similarity" not in body and "Token Authorization failed" in json.dumps(body)
    status, body = HttpClient(server.inference_url, keys["inference"]).request("similarity", q, r)
    assert status == 200 and 0.9 < body["similarity"] <= 1.0


def test_grpc_without_the_token_is_refused_and_with_it_succeeds(server, tmp_path):
    q, r = _pair()
    with GrpcClient(server.grpc_address, stubs_dir=tmp_path) as client, pytest.raises(grpc.RpcError) as err:
        client.request("similarity", q, r)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with GrpcClient(server.grpc_address, read_keys(server.workdir)["inference"], stubs_dir=tmp_path) as client:
        assert 0.9 < client.request("similarity", q, r)["similarity"] <= 1.0


def test_the_model_api_is_off(server):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{server.management_url}/models?url=similarity.mar", method="POST")
    request.add_header("Authorization", f"Bearer {read_keys(server.workdir)['management']}")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 405
