"""`sane deploy`: N TorchServe instances behind the HAProxy gateway, on one machine.

A deployment lives in one directory (``--out``, default ``out/deploy/``)::

    deploy.json          what was started: instances (ports, desired state), gateway, supervisor
    gateway/             haproxy.cfg, haproxy.sock (runtime API), keys.map + keys.json, gateway.log
    instances/i0/ ...    one TorchServe working directory each (config.properties, logs/, tmp/ = TMPDIR)
    supervisor.log       what the supervisor did

Each instance listens on loopback only, with TorchServe's token auth off: the gateway is the only
way in, and it checks the keys. A supervisor process restarts an instance whose TorchServe died
(it rejoins the gateway once its archives are READY again) unless the instance was drained or is
being restarted on purpose. Drain and rolling restarts use the gateway's runtime API: an instance is
set to DRAIN (no new requests), its in-flight requests finish, then it is stopped.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sane.serving.ops import gateway
from sane.serving.ops.server import (
    ServerError,
    _pid_alive,
    free_port,
    render_properties,
    running_server,
    start_server,
    stop_server,
)

DEFAULT_OUT = "out/deploy"
STATE = "deploy.json"
UP, DRAINED, RESTARTING, STOPPED = "up", "drained", "restarting", "stopped"


class DeployError(RuntimeError):
    """A deployment command could not do what was asked; the message says why and what to do."""


# -- state -----------------------------------------------------------------------------------------
class Deployment:
    """The deployment in ``out``: its state file (read and written under a lock) and its parts."""

    def __init__(self, out: str | os.PathLike = DEFAULT_OUT):
        self.out = Path(out).resolve()
        self.state_path = self.out / STATE
        self.gateway_dir = self.out / "gateway"
        self.socket = self.gateway_dir / "haproxy.sock"
        self.keys = gateway.KeyStore(self.gateway_dir)

    def exists(self) -> bool:
        return self.state_path.is_file()

    def read(self) -> dict[str, Any]:
        if not self.exists():
            raise DeployError(f"no deployment in {self.out}: start one with `sane deploy up --out {self.out}`")
        return json.loads(self.state_path.read_text())

    @contextmanager
    def editing(self) -> Iterator[dict[str, Any]]:
        """The state, locked against the supervisor and other commands, written back on exit."""
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / ".deploy.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = json.loads(self.state_path.read_text()) if self.exists() else {}
            yield state
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=2) + "\n")
            os.replace(tmp, self.state_path)

    def instance(self, state: dict, name: str) -> dict:
        for inst in state["instances"]:
            if inst["name"] == name:
                return inst
        names = ", ".join(i["name"] for i in state["instances"])
        raise DeployError(f"no instance {name!r} in {self.out}; the instances are {names}")

    def set_desired(self, name: str, desired: str) -> None:
        with self.editing() as state:
            self.instance(state, name)["desired"] = desired

    def gateway_running(self, state: dict | None = None) -> bool:
        state = state if state is not None else self.read()
        return bool(state.get("haproxy_pid")) and _pid_alive(state["haproxy_pid"])

    def urls(self, state: dict | None = None) -> tuple[str, str]:
        """(HTTP URL, gRPC address) of the gateway as a client on this machine reaches it."""
        g = (state if state is not None else self.read())["gateway"]
        host = "127.0.0.1" if g["bind"] in ("0.0.0.0", "::") else g["bind"]
        return f"http://{host}:{g['port']}", f"{host}:{g['grpc_port']}"


def _split_overrides(pairs: list[str] | None) -> tuple[dict[str, str], dict[str, str]]:
    """``--set`` pairs: ``gateway.KEY=VALUE`` for the gateway, anything else for config.properties."""
    props, gw = {}, {}
    for pair in pairs or []:
        if "=" not in pair:
            raise DeployError(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        if key.startswith("gateway."):
            gw[key[len("gateway."):]] = value
        else:
            props[key] = value
    return props, gw


# Instance settings the deployment owns: loopback listeners and no TorchServe token auth (the gateway checks keys).
OWNED = ("inference_address", "management_address", "metrics_address", "grpc_inference_address",
         "grpc_inference_port", "grpc_management_address", "grpc_management_port", "initial_worker_port",
         "disable_token_authorization")


def _instance_properties(ports: dict[str, int]) -> dict[str, object]:
    return {
        "inference_address": f"http://127.0.0.1:{ports['http']}",
        "management_address": f"http://127.0.0.1:{ports['management']}",
        "metrics_address": f"http://127.0.0.1:{ports['metrics']}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_inference_port": ports["grpc"],
        "grpc_management_address": "127.0.0.1",
        "grpc_management_port": ports["grpc_management"],
        "initial_worker_port": ports["worker"],
        "disable_token_authorization": "true",
    }


def _backends(state: dict) -> list[gateway.Backend]:
    return [gateway.Backend(i["name"], "127.0.0.1", i["ports"]["http"], i["ports"]["grpc"], i["ports"]["management"])
            for i in state["instances"]]


# -- instances -------------------------------------------------------------------------------------
def _kill_leftovers(workdir: Path) -> int:
    """Kill worker processes of a dead instance (their socket names carry the instance's TMPDIR)."""
    import psutil

    tmp = str(workdir / "tmp")
    killed = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if "model_service_worker" in cmdline and tmp in cmdline:
            try:
                proc.kill()
                killed.append(proc)
            except psutil.Error:
                pass
    psutil.wait_procs(killed, timeout=10)
    return len(killed)


def start_instance(state: dict, inst: dict, timeout: float = 300.0) -> None:
    """Start one instance's TorchServe and wait until its archives are READY."""
    workdir = Path(inst["workdir"])
    _kill_leftovers(workdir)
    start_server(state["model_store"], state["models"], workdir / "config.properties", workdir,
                 disable_token_auth=True, timeout=timeout)


def instance_pid(inst: dict) -> int | None:
    info = running_server(inst["workdir"])
    return info.pid if info else None


# -- gateway ---------------------------------------------------------------------------------------
def _write_gateway_config(dep: Deployment, state: dict) -> Path:
    settings = gateway.GatewaySettings(**state["gateway"])
    dep.keys.ensure()
    cfg = dep.gateway_dir / "haproxy.cfg"
    cfg.write_text(gateway.render_config(settings, _backends(state), state["models"], dep.gateway_dir))
    check = subprocess.run([gateway.haproxy_binary(), "-c", "-q", "-f", str(cfg)], check=False, capture_output=True, text=True)
    if check.returncode != 0:
        raise DeployError(f"haproxy rejected {cfg}:\n{check.stdout}{check.stderr}")
    return cfg


def start_gateway(dep: Deployment, state: dict) -> int:
    """Start HAProxy (master-worker, in the foreground of its own session, logging to gateway.log)."""
    cfg = _write_gateway_config(dep, state)
    dep.socket.unlink(missing_ok=True)
    log = open(dep.gateway_dir / "gateway.log", "ab")
    proc = subprocess.Popen([gateway.haproxy_binary(), "-W", "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 20
    while not dep.socket.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (dep.gateway_dir / "gateway.log").read_text(errors="replace")[-2000:]
            raise DeployError(f"haproxy did not start (exit {proc.poll()}):\n{tail}")
        time.sleep(0.1)
    return proc.pid


def healthz(dep: Deployment, state: dict | None = None, timeout: float = 3.0) -> int:
    """The gateway's ``GET /healthz`` status (0 when it does not answer)."""
    url, _ = dep.urls(state)
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def server_state(dep: Deployment, name: str, backend: str = "be_http") -> dict[str, str]:
    return gateway.server_stats(dep.socket).get((backend, name), {})


def set_server_state(dep: Deployment, name: str, admin: str) -> None:
    """``ready`` | ``drain`` | ``maint`` for the instance in both back ends."""
    for backend in ("be_http", "be_grpc"):
        answer = gateway.runtime(dep.socket, f"set server {backend}/{name} state {admin}").strip()
        if answer:
            raise DeployError(f"the gateway refused to set {backend}/{name} to {admin}: {answer}")


def in_flight(dep: Deployment, name: str) -> int:
    """Requests the gateway has at the instance now, HTTP and gRPC (current sessions + queued)."""
    stats = gateway.server_stats(dep.socket)
    return sum(int(stats.get((b, name), {}).get(k) or 0) for b in ("be_http", "be_grpc") for k in ("scur", "qcur"))


def wait_until(predicate, timeout: float, what: str, poll: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise DeployError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def drain_instance(dep: Deployment, name: str, timeout: float = 330.0) -> None:
    """Out of rotation (DRAIN), then wait until its in-flight requests are answered."""
    set_server_state(dep, name, "drain")
    wait_until(lambda: in_flight(dep, name) == 0, timeout, f"{name}'s in-flight requests")


def wait_in_rotation(dep: Deployment, name: str, timeout: float = 60.0) -> None:
    wait_until(lambda: server_state(dep, name).get("status") == "UP", timeout, f"the gateway to see {name} UP")


def pending_requests(management_url: str) -> int:
    """Requests queued at a TorchServe instance, over all its models (``jobQueueStatus`` of describe)."""
    import urllib.request

    with urllib.request.urlopen(f"{management_url}/models", timeout=10) as response:
        names = [m["modelName"] for m in json.load(response)["models"]]
    total = 0
    for name in names:
        with urllib.request.urlopen(f"{management_url}/models/{name}", timeout=10) as response:
            for version in json.load(response):
                total += int((version.get("jobQueueStatus") or {}).get("pendingRequests") or 0)
    return total


def wait_idle(management_url: str, settle: float = 10.0, timeout: float = 300.0, poll: float = 1.0) -> None:
    """A pod's preStop (deploy/k8s/): wait ``settle`` s for the gateway to stop sending (the pod has left
    the Service's DNS and fails its checks), then until no request is queued, twice ``poll`` s apart.
    A batch still running when TorchServe then stops is answered again by another pod: the gateway
    retries a request whose instance closed the connection (retry-on empty-response)."""
    time.sleep(settle)
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 2 and time.monotonic() < deadline:
        quiet = quiet + 1 if pending_requests(management_url) == 0 else 0
        time.sleep(poll)


# -- supervisor ------------------------------------------------------------------------------------
def supervise(out: str | os.PathLike, poll: float = 1.0) -> None:
    """Restart instances (desired ``up``) whose TorchServe died, and a dead gateway; until SIGTERM."""
    dep = Deployment(out)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log = open(dep.out / "supervisor.log", "a", buffering=1)

    def say(message: str) -> None:
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    say(f"supervising {dep.out} (pid {os.getpid()})")
    while not stop.is_set():
        state = dep.read()
        for inst in state["instances"]:
            if stop.is_set() or inst["desired"] != UP or running_server(inst["workdir"]):
                continue
            say(f"{inst['name']}: TorchServe is not running; restarting it")
            try:
                start_instance(state, inst)
                say(f"{inst['name']}: READY again (pid {instance_pid(inst)})")
            except (ServerError, OSError) as exc:
                say(f"{inst['name']}: restart failed: {str(exc).splitlines()[0]}")
        if not stop.is_set() and not dep.gateway_running(dep.read()):
            say("gateway: HAProxy is not running; restarting it")
            try:
                pid = start_gateway(dep, state)
                with dep.editing() as current:
                    current["haproxy_pid"] = pid
            except (DeployError, OSError) as exc:
                say(f"gateway: restart failed: {exc}")
        stop.wait(poll)
    say("supervisor stopped")


def _start_supervisor(dep: Deployment) -> int:
    log = open(dep.out / "supervisor.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "sane.serving.ops.deploy", "supervise", str(dep.out)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return proc.pid


def _stop_pid(pid: int | None, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    import psutil

    if not pid or not _pid_alive(pid):
        return
    try:
        proc = psutil.Process(pid)
        proc.send_signal(sig)
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        proc.kill()
    except psutil.Error:
        pass


# -- commands --------------------------------------------------------------------------------------
def up(
    instances: int = 2,
    out: str | os.PathLike = DEFAULT_OUT,
    port: int = 8080,
    grpc_port: int = 7070,
    overrides: list[str] | None = None,
    model_store: str | os.PathLike = "model_store",
    models: list[str] | None = None,
    config: str | os.PathLike = "config.properties",
    timeout: float = 300.0,
) -> Deployment:
    """Start ``instances`` TorchServe instances and the gateway; returns once ``/healthz`` is 200."""
    from sane.serving.ops.archive import DEFAULT_ARCHIVES

    if instances < 1:
        raise DeployError(f"--instances must be >= 1, got {instances}")
    dep = Deployment(out)
    if dep.exists() and (dep.gateway_running() or any(instance_pid(i) for i in dep.read()["instances"])):
        raise DeployError(f"a deployment is already running in {dep.out}: `sane deploy down --out {dep.out}` first")
    gateway.haproxy_binary()
    models = list(models or DEFAULT_ARCHIVES)
    store = Path(model_store).resolve()
    for name in models:
        if not (store / f"{name}.mar").is_file():
            raise DeployError(f"no archive {store / (name + '.mar')}: build it with `sane archive`")
    config = Path(config)
    if not config.is_file():
        raise DeployError(f"no TorchServe configuration at {config}")
    props, gw = _split_overrides(overrides)
    owned = sorted(set(props) & set(OWNED))
    if owned:
        raise DeployError(f"--set {', '.join(owned)}: the deployment sets these itself (loopback, no token auth)")
    settings = gateway.GatewaySettings.from_overrides({**gw, "port": port, "grpc_port": grpc_port})
    dep.gateway_dir.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"model_store": str(store), "models": models, "config": str(config.resolve()),
                             "properties": props, "gateway": asdict(settings), "instances": []}
    for i in range(instances):
        workdir = dep.out / "instances" / f"i{i}"
        workdir.mkdir(parents=True, exist_ok=True)
        ports = {k: free_port() for k in ("http", "grpc", "management", "metrics", "grpc_management")}
        ports["worker"] = 9000 + 100 * i
        render_properties(config, workdir / "config.properties", {**props, **_instance_properties(ports)})
        state["instances"].append({"name": f"i{i}", "workdir": str(workdir), "ports": ports, "desired": UP})
    with dep.editing() as current:
        current.clear()
        current.update(state)
    errors: list[str] = []

    def start(inst):
        try:
            start_instance(state, inst, timeout)
        except ServerError as exc:
            errors.append(f"{inst['name']}: {exc}")

    threads = [threading.Thread(target=start, args=(inst,)) for inst in state["instances"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        down(dep.out, drain_timeout=0)
        raise DeployError("an instance did not start:\n" + "\n".join(errors))
    try:
        pid = start_gateway(dep, state)
        with dep.editing() as current:
            current["haproxy_pid"] = pid
        wait_until(lambda: healthz(dep) == 200, 60, "the gateway's /healthz to answer 200")
        with dep.editing() as current:
            current["supervisor_pid"] = _start_supervisor(dep)
    except BaseException:
        down(dep.out, drain_timeout=0)
        raise
    return dep


def down(out: str | os.PathLike = DEFAULT_OUT, drain_timeout: float = 330.0) -> bool:
    """Drain every instance, then stop the supervisor, the gateway and the instances. Keys are kept."""
    dep = Deployment(out)
    if not dep.exists():
        return False
    state = dep.read()
    _stop_pid(state.get("supervisor_pid"))
    if drain_timeout and dep.gateway_running(state):
        for inst in state["instances"]:
            try:
                set_server_state(dep, inst["name"], "drain")
            except (DeployError, gateway.GatewayError):
                pass
        try:
            wait_until(lambda: all(in_flight(dep, i["name"]) == 0 for i in state["instances"]), drain_timeout,
                       "in-flight requests to finish")
        except (DeployError, gateway.GatewayError):
            pass
    _stop_pid(state.get("haproxy_pid"))
    threads = [threading.Thread(target=stop_server, args=(inst["workdir"],)) for inst in state["instances"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for inst in state["instances"]:
        _kill_leftovers(Path(inst["workdir"]))
    with dep.editing() as current:
        current["haproxy_pid"] = current["supervisor_pid"] = None
        for inst in current["instances"]:
            inst["desired"] = STOPPED
    dep.socket.unlink(missing_ok=True)
    return True


def status(out: str | os.PathLike = DEFAULT_OUT) -> dict[str, Any]:
    """Each instance's process, gateway health state and in-flight load; the gateway's and keys'."""
    dep = Deployment(out)
    state = dep.read()
    running = dep.gateway_running(state)
    stats = gateway.server_stats(dep.socket) if running else {}
    rows = []
    for inst in state["instances"]:
        http, grpc = stats.get(("be_http", inst["name"]), {}), stats.get(("be_grpc", inst["name"]), {})
        rows.append({
            "name": inst["name"], "pid": instance_pid(inst), "desired": inst["desired"],
            "gateway": http.get("status", "-"), "in_flight_http": int(http.get("scur") or 0),
            "in_flight_grpc": int(grpc.get("scur") or 0), "queued": int(http.get("qcur") or 0) + int(grpc.get("qcur") or 0),
            "served": int(http.get("stot") or 0) + int(grpc.get("stot") or 0),
            "http_port": inst["ports"]["http"], "management_port": inst["ports"]["management"],
        })
    url, grpc_address = dep.urls(state)
    return {"out": str(dep.out), "gateway": {"running": running, "pid": state.get("haproxy_pid"), "http": url,
                                             "grpc": grpc_address, "healthz": healthz(dep, state) if running else 0},
            "supervisor": bool(state.get("supervisor_pid")) and _pid_alive(state["supervisor_pid"]),
            "keys": len(dep.keys.entries()), "instances": rows}


def drain(out: str | os.PathLike, name: str, timeout: float = 330.0) -> None:
    dep = Deployment(out)
    state = dep.read()
    dep.instance(state, name)
    dep.set_desired(name, DRAINED)
    drain_instance(dep, name, timeout)


def undrain(out: str | os.PathLike, name: str, timeout: float = 300.0) -> None:
    """Back into rotation (started again first if it is not running)."""
    dep = Deployment(out)
    state = dep.read()
    inst = dep.instance(state, name)
    if not running_server(inst["workdir"]):
        dep.set_desired(name, RESTARTING)
        start_instance(state, inst, timeout)
    set_server_state(dep, name, "ready")
    dep.set_desired(name, UP)
    wait_in_rotation(dep, name)


def restart_rolling(out: str | os.PathLike, timeout: float = 330.0, say=print) -> None:
    """Restart the instances one at a time (new archives are loaded): drain, stop, start, back in rotation."""
    dep = Deployment(out)
    state = dep.read()
    if not dep.gateway_running(state):
        raise DeployError(f"the gateway of {dep.out} is not running: `sane deploy up` first")
    if len(state["instances"]) < 2:
        say("warning: one instance: while it restarts the gateway answers 503 with Retry-After")
    for inst in state["instances"]:
        name = inst["name"]
        dep.set_desired(name, RESTARTING)
        say(f"{name}: draining ...")
        drain_instance(dep, name, timeout)
        set_server_state(dep, name, "maint")
        stop_server(inst["workdir"])
        say(f"{name}: restarting ...")
        start_instance(state, inst, timeout)
        set_server_state(dep, name, "ready")
        wait_in_rotation(dep, name)
        dep.set_desired(name, UP)
        say(f"{name}: back in rotation (pid {instance_pid(inst)})")


# -- CLI -------------------------------------------------------------------------------------------
if __name__ == "__main__":
    # the supervisor: python -m sane.serving.ops.deploy supervise OUT
    # a pod's preStop: python -m sane.serving.ops.deploy wait-idle MANAGEMENT_URL [SETTLE_S [TIMEOUT_S]]
    if len(sys.argv) == 3 and sys.argv[1] == "supervise":
        supervise(sys.argv[2])
    elif 3 <= len(sys.argv) <= 5 and sys.argv[1] == "wait-idle":
        wait_idle(sys.argv[2], *map(float, sys.argv[3:]))
    else:
        sys.exit("usage: python -m sane.serving.ops.deploy supervise OUT | wait-idle MANAGEMENT_URL [SETTLE_S [TIMEOUT_S]]")
