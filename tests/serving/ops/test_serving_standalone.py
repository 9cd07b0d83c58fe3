"""`sane serve` with the shipped config.properties (only its ports moved to free ones): an instance that
does not stop answering after an hour. TorchServe's own token auth (keys that expire after 60 minutes,
/ping and health checks included, and differ per instance) is off; API keys live at the gateway
(`sane deploy`, tests/serving/ops/test_deploy.py). Every address is loopback; the model API is off."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sane.serving.ops.grpc_client import GrpcClient
from sane.serving.ops.http_client import HttpClient
from sane.serving.ops.server import KEY_FILE, read_properties, temporary_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
ADDRESSES = ("inference_address", "management_address", "metrics_address", "grpc_inference_address",
             "grpc_management_address")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchserve-standalone")
    with temporary_server(root, ["similarity"], ROOT / "config.properties") as info:
        yield info


def _pair() -> tuple[bytes, bytes]:
    return (ROOT / "examples" / "query.jpg").read_bytes(), (ROOT / "examples" / "reference.jpg").read_bytes()


def _status(url: str, method: str = "GET") -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_served_config_is_the_shipped_one_but_for_its_ports(server):
    shipped, served = read_properties(ROOT / "config.properties"), read_properties(server.config)
    moved = {k for k in shipped if shipped[k] != served.get(k)}
    assert moved <= {*ADDRESSES, "grpc_inference_port", "grpc_management_port"}
    assert shipped["disable_token_authorization"] == "true" and not server.token_auth
    assert not (Path(server.workdir) / KEY_FILE).exists()  # no key to expire


def test_requests_and_health_checks_need_no_expiring_token(server, tmp_path):
    q, r = _pair()
    assert _status(server.inference_url + "/ping") == 200
    assert _status(f"{server.management_url}/models/similarity") == 200
    status, body = HttpClient(server.inference_url).request("similarity", q, r)
    assert status == 200 and 0.9 < body["similarity"] <= 1.0
    with GrpcClient(server.grpc_address, stubs_dir=tmp_path) as client:
        assert client.request("similarity", q, r)["similarity"] == pytest.approx(body["similarity"], abs=1e-6)


def _outward_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_every_address_is_loopback(server):
    served = read_properties(server.config)
    for name in ADDRESSES:
        assert served[name].split("//")[-1].split(":")[0] == "127.0.0.1", (name, served[name])
    outward = _outward_address()
    if outward is not None:  # the inference port is not reachable from the machine's own network address
        port = int(server.inference_url.rsplit(":", 1)[1])
        with socket.socket() as s:
            s.settimeout(3)
            assert s.connect_ex((outward, port)) != 0


def test_the_model_api_is_off(server):
    assert _status(f"{server.management_url}/models?url=similarity.mar", "POST") == 405
