"""`sane deploy` with the real HAProxy (Debian's package) in front of two real TorchServe instances on
loopback: keys checked at the gateway (hashed on disk, added and revoked under load), /healthz without
a key, management never routed, an instance killed with SIGKILL under HTTP and gRPC load without a
failed or wrong answer (and restarted by the supervisor), drain, a rolling restart under load, and a
small second deployment for the per-key rate limit (429) and overload (503 with Retry-After)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from sane.cli import main as sane_main
from sane.serving.ops import deploy
from sane.serving.ops.archive import build_archive
from sane.serving.ops.grpc_client import GrpcClient
from sane.serving.ops.http_client import HttpClient, multipart_body
from sane.serving.ops.inprocess import load_handler, payload, run_batch
from sane.serving.ops.server import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
ARCHIVE = {"batchSize": 4, "maxBatchDelay": 20, "handler": {"max_n_masks": 200, "default_n_masks": 40}}


def _pair() -> tuple[bytes, bytes]:
    return (ROOT / "examples" / "query.jpg").read_bytes(), (ROOT / "examples" / "reference.jpg").read_bytes()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = tmp_path_factory.mktemp("deploy-store")
    for name in ("similarity", "saliency"):
        build_archive(name, store, config_overrides=ARCHIVE)
    return store


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    return tmp_path_factory.mktemp("stubs")


@pytest.fixture(scope="module")
def expected():
    """The in-process similarity of the example pair, which every served answer must equal."""
    q, r = _pair()
    handler, context = load_handler("similarity", config_overrides=ARCHIVE)
    [(status, body)] = run_batch(handler, context, [payload("json", q, r)])
    assert status == 200
    return body["similarity"]


@pytest.fixture(scope="module")
def dep(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy") / "d"
    # The load below comes from one key: lift its rate limit (the `tight` deployment tests the limit).
    d = deploy.up(2, out, free_port(), free_port(), ["gateway.rate_limit=100000"], model_store=store,
                  models=["similarity", "saliency"], config=ROOT / "config.properties")
    try:
        yield d
    finally:
        deploy.down(out, drain_timeout=5)


@pytest.fixture(scope="module")
def key(dep):
    return dep.keys.add("tests", dep.socket)


class Load:
    """Client threads (HTTP similarity, HTTP saliency, gRPC similarity) sending the example pair through
    the gateway until stopped; every answer is recorded and checked against the in-process one."""

    def __init__(self, dep: deploy.Deployment, key: str, expected: float, stubs: Path, http_threads: int = 2):
        self.url, self.grpc_address = dep.urls()
        self.key, self.expected, self.stubs = key, expected, stubs
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._http, args=("similarity",)) for _ in range(http_threads)]
        self.threads += [threading.Thread(target=self._http, args=("saliency",)),
                         threading.Thread(target=self._grpc)]

    def _record(self, what: str, similarity: float | None, error: str | None) -> None:
        with self.lock:
            if error is None and similarity is not None and abs(similarity - self.expected) < 1e-5:
                self.ok += 1
            else:
                self.failures.append(f"{what}: {error or f'wrong similarity {similarity} != {self.expected}'}")

    def _http(self, archive: str) -> None:
        client = HttpClient(self.url, self.key, timeout=120)
        q, r = _pair()
        options = {"n_masks": 20, "seed": 1} if archive == "saliency" else None
        while not self.stop.is_set():
            status, body = client.request(archive, q, r, options)
            self._record(f"HTTP {archive}", body.get("similarity"), None if status == 200 else f"{status} {body}")

    def _grpc(self) -> None:
        q, r = _pair()
        with GrpcClient(self.grpc_address, self.key, stubs_dir=self.stubs, timeout=120) as client:
            while not self.stop.is_set():
                try:
                    body = client.request("similarity", q, r)
                    self._record("gRPC", body.get("similarity"), body.get("error"))
                except grpc.RpcError as exc:
                    self._record("gRPC", None, f"{exc.code()} {exc.details()}")

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(150)

    def wait_for(self, n: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        start = self.ok
        while self.ok < start + n and time.monotonic() < deadline:
            time.sleep(0.1)


def _get(url: str, headers: dict | None = None, method: str = "GET"):
    """(status, headers (case-insensitive: HAProxy sends names in lower case), body)."""
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_keys_are_checked_at_the_gateway_and_stored_hashed(dep, key, stubs, expected):
    url, grpc_address = dep.urls()
    q, r = _pair()
    assert _get(f"{url}/healthz")[0] == 200  # no key needed
    for token in (None, "sane_not-a-key", key + "x"):
        status, body = HttpClient(url, token).request("similarity", q, r)
        assert status == 401 and "similarity" not in body and "key" in body["error"], (token, status, body)
        with GrpcClient(grpc_address, token, stubs_dir=stubs) as client, pytest.raises(grpc.RpcError) as err:
            client.request("similarity", q, r)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    status, body = HttpClient(url, key).request("similarity", q, r)
    assert status == 200 and body["similarity"] == pytest.approx(expected, abs=1e-5)
    with GrpcClient(grpc_address, key, stubs_dir=stubs) as client:
        assert client.request("similarity", q, r)["similarity"] == pytest.approx(expected, abs=1e-5)
    # Only the key's SHA-256 is on disk, anywhere in the deployment's directory.
    for path in dep.out.rglob("*"):
        if path.is_file() and path.suffix not in (".log", ".out") and "logs" not in path.parts:
            assert key.encode() not in path.read_bytes(), path
    assert dep.keys.entries()["tests"]["sha256"] in dep.keys.map_path.read_text()


def test_sane_request_and_the_clients_talk_to_the_gateway_with_a_key(dep, key, stubs, expected, tmp_path, capsys,
                                                                     monkeypatch):
    q, r = str(ROOT / "examples" / "query.jpg"), str(ROOT / "examples" / "reference.jpg")
    base = ["request", q, r, "--archive", "similarity", "--deploy", str(dep.out)]
    assert sane_main([*base, "--key", key, "--out", str(tmp_path / "http")]) == 0
    assert json.loads((tmp_path / "http" / "result.json").read_text())["similarity"] == pytest.approx(expected, abs=1e-5)
    monkeypatch.setenv("SANE_API_KEY", key)
    assert sane_main([*base, "--grpc", "--out", str(tmp_path / "grpc")]) == 0
    assert json.loads((tmp_path / "grpc" / "result.json").read_text())["similarity"] == pytest.approx(expected, abs=1e-5)
    monkeypatch.delenv("SANE_API_KEY")
    capsys.readouterr()
    assert sane_main([*base, "--grpc"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().out
    assert sane_main(base) == 1
    assert "401" in capsys.readouterr().out
    url, grpc_address = dep.urls()
    for script, target in (("explain_over_http.py", ["--url", url]), ("explain_over_grpc.py", ["--address", grpc_address])):
        cmd = [sys.executable, str(ROOT / "clients" / script), q, r, *target, "--n-masks", "20",
               "--out", str(tmp_path / script)]
        env = {**os.environ, "SANE_API_KEY": key}
        done = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "similarity" in done.stdout, (script, done.stdout, done.stderr)
        refused = subprocess.run(cmd, check=False, cwd=ROOT, env={**env, "SANE_API_KEY": ""}, capture_output=True, text=True,
                                 timeout=120)
        assert refused.returncode == 1 and ("401" in refused.stderr or "UNAUTHENTICATED" in refused.stderr), script


def test_management_and_metrics_are_not_reachable_through_the_gateway(dep, key):
    url, _ = dep.urls()
    auth = {"Authorization": f"Bearer {key}"}
    for path, method in (("/models", "GET"), ("/models/similarity?min_worker=3", "PUT"), ("/metrics", "GET"),
                         ("/ping", "GET"), ("/token?type=inference", "POST")):
        status, _, body = _get(f"{url}{path}", auth, method)
        assert status == 404 and b"not found" in body, (path, status, body)
    # The instances listen on loopback only.
    state = dep.read()
    for inst in state["instances"]:
        props = (Path(inst["workdir"]) / "config.properties").read_text()
        for line in props.splitlines():
            if line.startswith(("inference_address", "management_address", "metrics_address")):
                assert "127.0.0.1" in line, line
        assert "disable_token_authorization=true" in props


def test_keys_added_and_revoked_under_load_take_effect_at_once(dep, key, stubs, expected):
    url, _ = dep.urls()
    q, r = _pair()
    with Load(dep, key, expected, stubs) as load:
        load.wait_for(3)
        assert sane_main(["deploy", "keys", "add", "second", "--out", str(dep.out)]) == 0
        second = dep.keys.add("third", dep.socket)
        assert HttpClient(url, second).request("similarity", q, r)[0] == 200
        assert set(dep.keys.loaded(dep.socket).values()) == {"tests", "second", "third"}
        dep.keys.revoke("third", dep.socket)
        assert HttpClient(url, second).request("similarity", q, r)[0] == 401
        assert sane_main(["deploy", "keys", "revoke", "second", "--out", str(dep.out)]) == 0
        load.wait_for(3)
    assert not load.failures, load.failures[:5]
    assert load.ok >= 6
    assert set(dep.keys.entries()) == {"tests"}


def test_an_instance_killed_under_load_fails_no_request_and_rejoins(dep, key, stubs, expected):
    state = dep.read()
    victim = state["instances"][0]
    pid = deploy.instance_pid(victim)
    with Load(dep, key, expected, stubs) as load:
        load.wait_for(4)
        os.kill(pid, signal.SIGKILL)  # the TorchServe frontend (JVM); its workers lose their server
        deploy.wait_until(lambda: deploy.server_state(dep, "i0").get("status", "").startswith("DOWN"), 30,
                          "the gateway to mark i0 down")
        load.wait_for(6)
        # The supervisor starts it again; the gateway puts it back once its archives are READY.
        deploy.wait_until(lambda: deploy.server_state(dep, "i0").get("status") == "UP", 240, "i0 to rejoin")
        assert deploy.instance_pid(victim) not in (None, pid)
        load.wait_for(4)
    assert not load.failures, load.failures[:5]
    assert load.ok >= 14
    assert "restarting it" in (dep.out / "supervisor.log").read_text()


def test_drain_takes_an_instance_out_and_waits_for_its_requests(dep, key, stubs, expected):
    with Load(dep, key, expected, stubs) as load:
        load.wait_for(3)
        assert sane_main(["deploy", "drain", "i1", "--out", str(dep.out)]) == 0
        assert deploy.server_state(dep, "i1")["status"] == "DRAIN"
        assert deploy.in_flight(dep, "i1") == 0
        served = int(deploy.server_state(dep, "i1")["stot"])
        load.wait_for(4)
        assert int(deploy.server_state(dep, "i1")["stot"]) == served  # nothing new went to i1
        assert deploy.status(dep.out)["instances"][1]["desired"] == deploy.DRAINED
        assert sane_main(["deploy", "undrain", "i1", "--out", str(dep.out)]) == 0
        load.wait_for(3)
    assert not load.failures, load.failures[:5]


def test_a_rolling_restart_under_load_fails_no_request(dep, key, stubs, expected, capsys):
    before = {i["name"]: deploy.instance_pid(i) for i in dep.read()["instances"]}
    with Load(dep, key, expected, stubs) as load:
        load.wait_for(3)
        assert sane_main(["deploy", "restart", "--rolling", "--out", str(dep.out)]) == 0
        load.wait_for(3)
    assert not load.failures, load.failures[:5]
    after = {i["name"]: deploy.instance_pid(i) for i in dep.read()["instances"]}
    assert all(after[n] and after[n] != before[n] for n in before), (before, after)
    assert "back in rotation" in capsys.readouterr().out
    report = deploy.status(dep.out)
    assert [r["gateway"] for r in report["instances"]] == ["UP", "UP"] and report["gateway"]["healthz"] == 200


def test_status_command_reports_every_instance(dep, capsys):
    assert sane_main(["deploy", "status", "--out", str(dep.out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in report["instances"]] == ["i0", "i1"]
    assert report["gateway"]["running"] and report["supervisor"] and report["keys"] >= 1
    assert all(r["pid"] and r["served"] >= 0 for r in report["instances"])


# -- a second, small deployment: one instance, a queue of one, a low per-key rate ------------------------
@pytest.fixture(scope="module")
def tight(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy-tight") / "d"
    d = deploy.up(1, out, free_port(), free_port(), ["job_queue_size=1", "gateway.rate_limit=6", "gateway.retries=1"],
                  model_store=store, models=["saliency"], config=ROOT / "config.properties")
    try:
        yield d
    finally:
        deploy.down(out, drain_timeout=5)


def test_per_key_rate_limit_answers_429_with_retry_after(tight):
    url, _ = tight.urls()
    limited, other = tight.keys.add("limited", tight.socket), tight.keys.add("other", tight.socket)
    statuses, headers = [], {}
    for _ in range(10):  # /predictions/none: the instance answers 404 at once
        status, headers_, _ = _get(f"{url}/predictions/none", {"Authorization": f"Bearer {limited}"})
        statuses.append(status)
        headers = headers_ if status == 429 else headers
    assert statuses[:6] == [404] * 6 and 429 in statuses[6:], statuses
    assert int(headers["Retry-After"]) > 0
    # The limit is per key: another key is not affected.
    assert _get(f"{url}/predictions/none", {"Authorization": f"Bearer {other}"})[0] == 404


def test_overload_answers_503_with_retry_after_and_json(tight):
    url, _ = tight.urls()
    n = 12  # a batch of 4 running, 1 queued: the rest overflow. One key each (the rate limit is 6 per key).
    keys = [tight.keys.add(f"burst-{i}", tight.socket) for i in range(n)]
    start = threading.Barrier(n)
    q, r = _pair()
    body, content_type = multipart_body({"query": (q, "image/jpeg", "q"), "reference": (r, "image/jpeg", "r"),
                                         "options": (b'{"n_masks": 200, "seed": 3}', "application/json", None)})
    results = []

    def one(key):
        start.wait()
        request = urllib.request.Request(f"{url}/predictions/saliency", data=body, method="POST", headers={
            "Content-Type": content_type, "Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                results.append((response.status, response.headers, json.loads(response.read())))
        except urllib.error.HTTPError as exc:
            results.append((exc.code, exc.headers, json.loads(exc.read())))

    threads = [threading.Thread(target=one, args=(key,)) for key in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    statuses = sorted(s for s, _, _ in results)
    assert 200 in statuses and 503 in statuses, statuses
    for status, headers, answer in results:
        if status == 503:
            assert "overloaded" in answer["error"] and int(headers["Retry-After"]) > 0, (headers, answer)
            assert headers["Content-Type"] == "application/json"
    assert _get(f"{url}/healthz")[0] == 200  # overloaded is not down


def test_overload_over_grpc_is_unavailable_not_internal(tight, tmp_path):
    _, grpc_address = tight.urls()
    q, r = _pair()
    codes, lock = [], threading.Lock()
    n = 12  # a batch of 4 running, 1 queued: the rest overflow. One key each (the rate limit is 6 per key).
    clients = [GrpcClient(grpc_address, tight.keys.add(f"burst-grpc-{i}", tight.socket), stubs_dir=tmp_path,
                          timeout=120) for i in range(n)]
    start = threading.Barrier(n)

    def one(client):
        start.wait()
        with client:
            try:
                client.request("saliency", q, r, {"n_masks": 200, "seed": 4})
                code = "OK"
            except grpc.RpcError as exc:
                code = (exc.code(), exc.details())
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=one, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert "OK" in codes, codes
    refused = [c for c in codes if c != "OK"]
    assert refused and all(c[0] == grpc.StatusCode.UNAVAILABLE and "overloaded" in c[1] for c in refused), codes


def test_the_pods_prestop_waits_until_nothing_is_queued(dep):
    # deploy/k8s/torchserve.yaml's preStop, run against a live instance's management port.
    inst = dep.read()["instances"][0]
    management = f"http://127.0.0.1:{inst['ports']['management']}"
    assert deploy.pending_requests(management) == 0
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "sane.serving.ops.deploy", "wait-idle", management, "0", "30"],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - start < 20
