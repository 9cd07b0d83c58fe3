"""Starting, waiting for and stopping TorchServe.

One server per working directory: its ``tmp/`` is the server's TMPDIR (pid file, worker sockets),
``logs/`` its logs, ``key_file.json`` its tokens (TorchServe writes it to its working directory) and
``server.json`` what :func:`stop_server` and the clients need (pid, addresses, models).
Readiness is polled on the management API (``GET /models/<name>`` until a worker is READY), never
a fixed sleep.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

STATE_FILE = "server.json"
KEY_FILE = "key_file.json"


# -- config.properties -----------------------------------------------------------------------
def read_properties(path: str | os.PathLike) -> dict[str, str]:
    """``key=value`` lines of a Java properties file (comments and blank lines skipped)."""
    props: dict[str, str] = {}
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        props[key.strip()] = value.strip()
    return props


def render_properties(base: str | os.PathLike, out: str | os.PathLike, overrides: dict[str, object]) -> Path:
    """Copy ``base`` to ``out`` with ``overrides`` replacing (or appended after) its keys; comments kept."""
    remaining = {k: str(v) for k, v in overrides.items()}
    lines = []
    for line in Path(base).read_text().splitlines():
        key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith(("#", "!")) else None
        if key in remaining:
            lines.append(f"{key}={remaining.pop(key)}")
        else:
            lines.append(line)
    if remaining:
        lines.append("# overrides")
        lines += [f"{k}={v}" for k, v in remaining.items()]
    out = Path(out)
    out.write_text("\n".join(lines) + "\n")
    return out


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS considers free right now (for test servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def loopback_overrides() -> dict[str, object]:
    """Fresh free loopback ports for every TorchServe listener (tests run servers side by side)."""
    return {
        "inference_address": f"http://127.0.0.1:{free_port()}",
        "management_address": f"http://127.0.0.1:{free_port()}",
        "metrics_address": f"http://127.0.0.1:{free_port()}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_inference_port": free_port(),
        "grpc_management_address": "127.0.0.1",
        "grpc_management_port": free_port(),
        "initial_worker_port": free_port(),
    }


# -- server state ----------------------------------------------------------------------------
def _client_url(address: str) -> str:
    """A bind address as a client URL (0.0.0.0 -> 127.0.0.1)."""
    parsed = urlparse(address)
    host = parsed.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"{parsed.scheme or 'http'}://{host}:{parsed.port}"


@dataclass
class ServerInfo:
    """Where a started TorchServe listens and how to reach it."""

    workdir: str
    pid: int
    config: str
    models: list[str]
    inference_url: str
    management_url: str
    metrics_url: str
    grpc_address: str
    token_auth: bool

    @classmethod
    def from_config(cls, workdir: Path, pid: int, config: Path, models: list[str], token_auth: bool) -> ServerInfo:
        props = read_properties(config)
        grpc_host = props.get("grpc_inference_address", "127.0.0.1")
        grpc_host = "127.0.0.1" if grpc_host in ("0.0.0.0", "::") else grpc_host
        return cls(
            workdir=str(workdir), pid=pid, config=str(config), models=list(models),
            inference_url=_client_url(props.get("inference_address", "http://127.0.0.1:8080")),
            management_url=_client_url(props.get("management_address", "http://127.0.0.1:8081")),
            metrics_url=_client_url(props.get("metrics_address", "http://127.0.0.1:8082")),
            grpc_address=f"{grpc_host}:{props.get('grpc_inference_port', '7070')}",
            token_auth=token_auth,
        )

    def save(self) -> None:
        (Path(self.workdir) / STATE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, workdir: str | os.PathLike) -> ServerInfo | None:
        path = Path(workdir) / STATE_FILE
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))

    def keys(self) -> dict[str, str]:
        """The current tokens from key_file.json ({} with token auth off)."""
        return read_keys(self.workdir) if self.token_auth else {}


def read_keys(workdir: str | os.PathLike) -> dict[str, str]:
    """``{"inference": key, "management": key, "API": key}`` from TorchServe's key_file.json."""
    path = Path(workdir) / KEY_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {name: entry["key"] for name, entry in data.items() if isinstance(entry, dict) and "key" in entry}


def _server_env(workdir: Path) -> dict[str, str]:
    tmp, logs = workdir / "tmp", workdir / "logs"
    tmp.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    # TMPDIR for the Python side (pid file, worker sockets), TEMP for the JVM (java.io.tmpdir).
    return {**os.environ, "TMPDIR": str(tmp), "TEMP": str(tmp), "LOG_LOCATION": str(logs),
            "METRICS_LOCATION": str(logs)}


def _torchserve_cmd() -> list[str]:
    return [sys.executable, "-m", "ts.model_server"]


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def running_server(workdir: str | os.PathLike) -> ServerInfo | None:
    """The server started from ``workdir`` if it is still running."""
    info = ServerInfo.load(workdir)
    return info if info is not None and _pid_alive(info.pid) else None


# -- start / wait / stop ---------------------------------------------------------------------
class ServerError(RuntimeError):
    """TorchServe did not start or did not become ready; the message ends with its log's tail."""


def _log_tail(workdir: Path, lines: int = 40) -> str:
    parts = []
    for name in ("torchserve.out", "logs/ts_log.log", "logs/model_log.log"):
        path = workdir / name
        if path.is_file():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {name} ---\n" + "\n".join(text))
    return "\n".join(parts)


def start_server(
    model_store: str | os.PathLike,
    models: list[str],
    config: str | os.PathLike,
    workdir: str | os.PathLike = "out/serve",
    disable_token_auth: bool = False,
    timeout: float = 300.0,
) -> ServerInfo:
    """Start TorchServe with ``config`` serving ``models`` (archive names in ``model_store``) and wait
    until each reports a READY worker. On failure the server is stopped and :class:`ServerError` raised."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if running_server(workdir):
        raise ServerError(f"a TorchServe started from {workdir} is already running: stop it first (sane serve --stop)")
    store = Path(model_store).resolve()
    for name in models:
        if not (store / f"{name}.mar").is_file():
            raise FileNotFoundError(f"no archive {store / (name + '.mar')}: build it with `sane archive`")
    config = Path(config).resolve()
    (workdir / KEY_FILE).unlink(missing_ok=True)  # a stale key file would hide a failed start
    env = _server_env(workdir)
    cmd = [*_torchserve_cmd(), "--start", "--ncs", "--model-store", str(store), "--ts-config", str(config),
           "--models", *[f"{name}={name}.mar" for name in models]]
    if disable_token_auth:
        cmd.append("--disable-token-auth")
    with open(workdir / "torchserve.out", "ab") as out:
        proc = subprocess.run(cmd, check=False, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    pid_file = workdir / "tmp" / ".model_server.pid"
    if proc.returncode != 0 or not pid_file.is_file():
        raise ServerError(f"torchserve --start failed (exit {proc.returncode})\n{_log_tail(workdir)}")
    pid = int(pid_file.read_text().split()[0])
    token_auth = not disable_token_auth and read_properties(config).get("disable_token_authorization", "false") != "true"
    info = ServerInfo.from_config(workdir, pid, config, models, token_auth)
    info.save()
    try:
        wait_ready(info, timeout)
    except BaseException:
        stop_server(workdir)
        raise
    return info


def _get(url: str, token: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(info: ServerInfo, timeout: float = 300.0, poll: float = 1.0) -> None:
    """Poll ``GET <management>/models/<name>`` until every model has a READY worker."""
    deadline = time.monotonic() + timeout
    pending = list(info.models)
    last = ""
    while pending:
        if not _pid_alive(info.pid):
            raise ServerError(f"TorchServe (pid {info.pid}) exited during start-up\n{_log_tail(Path(info.workdir))}")
        if time.monotonic() > deadline:
            raise ServerError(
                f"models {pending} not READY after {timeout:.0f} s (last answer: {last})\n{_log_tail(Path(info.workdir))}"
            )
        token = info.keys().get("management") if info.token_auth else None
        if info.token_auth and token is None:
            time.sleep(poll)  # key_file.json is written once the frontend is up
            continue
        try:
            status, body = _get(f"{info.management_url}/models/{pending[0]}", token)
            last = f"{status} {body[:200]!r}"
            if status == 200:
                workers = json.loads(body)[0].get("workers", [])
                if any(w.get("status") == "READY" for w in workers):
                    pending.pop(0)
                    continue
        except (OSError, ValueError) as exc:  # not listening yet
            last = repr(exc)
        time.sleep(poll)


def stop_server(workdir: str | os.PathLike = "out/serve", timeout: float = 60.0) -> bool:
    """Stop the TorchServe started from ``workdir`` (``torchserve --stop``), then make sure its JVM and
    workers are gone. Returns whether a running server was found."""
    import psutil

    workdir = Path(workdir).resolve()
    info = ServerInfo.load(workdir)
    if info is None or not _pid_alive(info.pid):
        (workdir / STATE_FILE).unlink(missing_ok=True)
        return False
    try:
        procs = [psutil.Process(info.pid), *psutil.Process(info.pid).children(recursive=True)]
    except psutil.Error:
        procs = []
    env = _server_env(workdir)
    with open(workdir / "torchserve.out", "ab") as out:
        subprocess.run([*_torchserve_cmd(), "--stop"], check=False, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:  # workers that outlived their frontend
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)
    (workdir / STATE_FILE).unlink(missing_ok=True)
    return True


@contextmanager
def temporary_server(
    root: str | os.PathLike,
    models: list[str],
    base_config: str | os.PathLike,
    archive_overrides: dict[str, Any] | None = None,
    config_overrides: dict[str, object] | None = None,
    timeout: float = 300.0,
    build: bool = True,
) -> Iterator[ServerInfo]:
    """Build ``models`` into ``root/model_store`` (unless ``build`` is False: they are there already),
    start TorchServe from ``root/serve`` with ``base_config`` on fresh loopback ports, yield its
    :class:`ServerInfo` and always stop it (tests, benchmark)."""
    from sane.serving.ops.archive import build_archive

    root = Path(root)
    store = root / "model_store"
    for name in models if build else ():
        build_archive(name, store, config_overrides=archive_overrides)
    config = render_properties(base_config, root / "config.properties", {**loopback_overrides(), **(config_overrides or {})})
    workdir = root / "serve"
    try:
        yield start_server(store, models, config, workdir, timeout=timeout)
    finally:
        stop_server(workdir)
