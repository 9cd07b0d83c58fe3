"""The gateway in front of the TorchServe instances: HAProxy's configuration, its key store and its
runtime API.

HAProxy (Debian's ``haproxy`` 2.6) does what TorchServe cannot across instances: bearer keys that
never expire, L7 balancing of HTTP and of gRPC (HTTP/2 per stream), health checks on each
instance's management API, retries on another instance, per-key rate limits and drain.

Keys are stored hashed: ``keys.map`` holds ``<sha256 hex of the key> <name>`` lines, the file HAProxy
looks the hash of each request's bearer key up in; ``keys.json`` holds the names and dates. A key is
256 random bits, so a plain SHA-256 is enough (no salt or slow hash: there is nothing to guess).
Adding or revoking a key rewrites both files and edits HAProxy's in-memory map through its runtime
API (``add map`` / ``del map``): effective at once, without a reload.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import socket
import string
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

KEYS_MAP = "keys.map"
KEYS_JSON = "keys.json"
KEY_PREFIX = "sane_"
NAME_CHARS = set(string.ascii_letters + string.digits + "-_.")

# A request is retried on another instance only if it fits one buffer: 2 photos of up to ~4.5 MB
# each as a multipart form, or ~3.4 MB each base64-encoded in a JSON body (x 4/3).
DEFAULT_BUFSIZE = 10 * 1024 * 1024


@dataclass(frozen=True)
class GatewaySettings:
    """What the rendered haproxy.cfg is made of (``sane deploy up --set gateway.KEY=VALUE``)."""

    bind: str = "127.0.0.1"  # address the gateway listens on (0.0.0.0 to face a network)
    port: int = 8080  # HTTP
    grpc_port: int = 7070  # gRPC (HTTP/2 cleartext)
    bufsize: int = DEFAULT_BUFSIZE  # bytes; the largest request that can be retried
    rate_limit: int = 100  # requests per key per 10 s; beyond: 429
    retries: int = 3  # further attempts on another instance
    retry_after: int = 5  # seconds, in Retry-After of 503 and 429 answers
    timeout: int = 310  # s; above TorchServe's default_response_timeout (300)
    maxconn: int = 256  # concurrent connections; each carrying a request may hold up to 2 x bufsize
    check_interval: str = "1s"

    @classmethod
    def from_overrides(cls, values: dict[str, object]) -> GatewaySettings:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown gateway setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        converted = {}
        for name, value in values.items():
            kind = type(getattr(cls(), name))
            try:
                converted[name] = kind(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"gateway.{name}: expected {kind.__name__}, got {value!r}") from exc
        return cls(**converted)


@dataclass(frozen=True)
class Backend:
    """One TorchServe instance as the gateway sees it."""

    name: str
    host: str
    http_port: int
    grpc_port: int
    management_port: int


def template_path() -> Path:
    from sane.serving.ops.archive import repo_root

    return repo_root() / "deploy" / "gateway" / "haproxy.cfg.in"


def _health_checks(models: list[str]) -> list[str]:
    checks = []
    for model in models:  # one connection per archive, each must show a READY worker
        checks += ["    http-check connect",
                   f"    http-check send meth GET uri /models/{model}",
                   '    http-check expect rstring "status\\":\\s*\\"READY\\""']
    return checks


def _render(settings: GatewaySettings, models: list[str], socket_path: str, keys_map: str, http_servers: list[str],
            grpc_checks: list[str], grpc_servers: list[str], resolvers: str = "") -> str:
    return string.Template(template_path().read_text()).substitute(
        maxconn=settings.maxconn, socket=socket_path, bufsize=settings.bufsize,
        timeout=settings.timeout, retries=settings.retries, retry_after=settings.retry_after,
        keys_map=keys_map, bind=settings.bind, port=settings.port, grpc_port=settings.grpc_port,
        rate_limit=settings.rate_limit, check_interval=settings.check_interval,
        checks="\n".join(_health_checks(models)), http_servers="\n".join(http_servers),
        grpc_checks="\n".join(grpc_checks), grpc_servers="\n".join(grpc_servers), resolvers=resolvers,
    )


def render_config(settings: GatewaySettings, backends: list[Backend], models: list[str], state_dir: str | Path) -> str:
    """haproxy.cfg for ``backends`` serving ``models``; ``state_dir`` holds the key map and the socket.
    A gRPC server tracks its instance's HTTP server: both leave and join rotation together."""
    state_dir = Path(state_dir)
    http_servers = [f"    server {b.name} {b.host}:{b.http_port} check port {b.management_port}" for b in backends]
    grpc_servers = [f"    server {b.name} {b.host}:{b.grpc_port} proto h2 track be_http/{b.name}" for b in backends]
    return _render(settings, models, str(state_dir / "haproxy.sock"), str(state_dir / KEYS_MAP), http_servers, [],
                   grpc_servers)


# Kubernetes (deploy/k8s/): the gateway is its own Deployment; it finds the TorchServe pods through the
# DNS of a headless Service (one A record per ready pod), up to K8S_MAX_PODS of them.
K8S_NAMESPACE = "sane"
K8S_SERVICE = "sane-torchserve"
K8S_MAX_PODS = 32
K8S_KEYS_MAP = "/etc/haproxy/keys/keys.map"  # from the Secret sane-gateway-keys


def render_kubernetes_config(models: list[str], settings: GatewaySettings | None = None) -> str:
    """The gateway's haproxy.cfg inside Kubernetes (the ConfigMap of deploy/k8s/gateway.yaml)."""
    settings = settings or GatewaySettings(bind="0.0.0.0")
    host = f"{K8S_SERVICE}.{K8S_NAMESPACE}.svc.cluster.local"
    resolvers = ("# The TorchServe pods: the A records of their headless Service, re-resolved every few seconds.\n"
                 "resolvers kube\n    parse-resolv-conf\n    hold valid 5s\n    hold obsolete 5s\n")
    common = "resolvers kube init-addr none check port 8081"
    http_servers = [f"    server-template ts {K8S_MAX_PODS} {host}:8080 {common}"]
    # A template cannot `track` another backend's servers: the gRPC backend runs the same checks itself.
    grpc_checks = ["    option httpchk", *_health_checks(models),
                   f"    default-server inter {settings.check_interval} fall 2 rise 1"]
    grpc_servers = [f"    server-template ts {K8S_MAX_PODS} {host}:7070 proto h2 {common}"]
    return _render(settings, models, "/var/run/haproxy/haproxy.sock", K8S_KEYS_MAP, http_servers, grpc_checks,
                   grpc_servers, resolvers)


def kubernetes_configmap(models: list[str] | None = None) -> str:
    """deploy/k8s/gateway-config.yaml: the ConfigMap holding :func:`render_kubernetes_config`'s haproxy.cfg.
    Regenerate it after changing the template: ``python -m sane.serving.ops.gateway > deploy/k8s/gateway-config.yaml``."""
    from sane.serving.ops.archive import DEFAULT_ARCHIVES

    cfg = render_kubernetes_config(list(models or DEFAULT_ARCHIVES))
    body = "".join(f"    {line}\n" if line else "\n" for line in cfg.splitlines())
    return ("# Generated by `python -m sane.serving.ops.gateway` from deploy/gateway/haproxy.cfg.in: do not edit.\n"
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sane-gateway-config\n  namespace: sane\n"
            "data:\n  haproxy.cfg: |\n" + body)


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.path.exists(p)), None)
    if found is None:
        raise FileNotFoundError("haproxy is not installed: `sudo apt-get install haproxy` (Debian/Ubuntu, 2.6 or "
                                "later), or your distribution's package")
    return found


# -- runtime API -------------------------------------------------------------------------------
class GatewayError(RuntimeError):
    """HAProxy's runtime API refused a command or is unreachable."""


def runtime(socket_path: str | Path, command: str, timeout: float = 5.0) -> str:
    """Send one command to HAProxy's stats socket; returns its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(socket_path))
        except OSError as exc:
            raise GatewayError(f"the gateway's runtime socket {socket_path} is not answering: {exc}") from exc
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def server_stats(socket_path: str | Path) -> dict[tuple[str, str], dict[str, str]]:
    """``show stat`` as ``{(backend, server): row}`` (rows of servers only)."""
    text = runtime(socket_path, "show stat")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# "):
        raise GatewayError(f"unexpected `show stat` answer: {text[:200]!r}")
    header = lines[0][2:].split(",")
    out = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("svname") not in ("FRONTEND", "BACKEND"):
            out[(row["pxname"], row["svname"])] = row
    return out


# -- key store ---------------------------------------------------------------------------------
def hash_key(key: str) -> str:
    """The hex SHA-256 HAProxy computes of a bearer key (``http_auth_bearer,sha2(256),hex,lower``)."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyNameError(ValueError):
    """A key name that is malformed, taken or unknown."""


class KeyStore:
    """The deployment's API keys, hashed, in ``state_dir``; ``socket`` (if the gateway runs) is kept in sync."""

    def __init__(self, state_dir: str | Path):
        self.dir = Path(state_dir)
        self.map_path = self.dir / KEYS_MAP
        self.json_path = self.dir / KEYS_JSON

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".keys.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def entries(self) -> dict[str, dict]:
        """``{name: {"sha256", "created"}}``."""
        if not self.json_path.is_file():
            return {}
        return json.loads(self.json_path.read_text())

    def ensure(self) -> None:
        """Create the (empty) store so HAProxy can load its map."""
        with self._locked():
            if not self.map_path.exists():
                self._write(self.entries())

    def _write(self, entries: dict[str, dict]) -> None:
        for path, text in ((self.json_path, json.dumps(entries, indent=2) + "\n"),
                           (self.map_path, "".join(f"{e['sha256']} {n}\n" for n, e in entries.items()))):
            tmp = path.with_suffix(path.suffix + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)

    def add(self, name: str, socket_path: str | Path | None = None, replace: bool = False) -> str:
        """A new key for ``name`` (returned once; only its hash is stored)."""
        if not name or not set(name) <= NAME_CHARS or len(name) > 64:
            raise KeyNameError(f"key name {name!r}: use 1-64 letters, digits, '-', '_' or '.'")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        digest = hash_key(key)
        with self._locked():
            entries = self.entries()
            old = entries.get(name)
            if old is not None and not replace:
                raise KeyNameError(f"a key named {name!r} exists: revoke it first, or pass --replace")
            entries[name] = {"sha256": digest, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            self._write(entries)
            if socket_path is not None:
                self._runtime(socket_path, f"add map {self.map_path} {digest} {name}")
                if old is not None:
                    self._runtime(socket_path, f"del map {self.map_path} {old['sha256']}")
        return key

    def revoke(self, name: str, socket_path: str | Path | None = None) -> None:
        with self._locked():
            entries = self.entries()
            if name not in entries:
                raise KeyNameError(f"no key named {name!r}; the keys are: {', '.join(entries) or 'none'}")
            digest = entries.pop(name)["sha256"]
            self._write(entries)
            if socket_path is not None:
                self._runtime(socket_path, f"del map {self.map_path} {digest}")

    @staticmethod
    def _runtime(socket_path: str | Path, command: str) -> None:
        if not Path(socket_path).exists():
            return  # the gateway is not running: it loads the file when it starts
        answer = runtime(socket_path, command).strip()
        if answer:
            raise GatewayError(f"the gateway refused `{command.split()[0]} map`: {answer}")

    def loaded(self, socket_path: str | Path) -> dict[str, str]:
        """HAProxy's in-memory map: ``{sha256: name}`` (what is in force now)."""
        out = {}
        for line in runtime(socket_path, f"show map {self.map_path}").splitlines():
            parts = line.split()
            if len(parts) == 3:
                out[parts[1]] = parts[2]
        return out


if __name__ == "__main__":
    print(kubernetes_configmap(), end="")
