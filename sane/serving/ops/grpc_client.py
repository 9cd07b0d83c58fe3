"""A Python gRPC client of TorchServe's ``Predictions`` RPC, with stubs generated at build time.

The stubs are not committed: :func:`build_stubs` extracts ``proto/inference.proto`` and
``proto/management.proto`` from the TorchServe jar (``ts/frontend/model-server.jar``) and runs
``grpc_tools.protoc`` on them (``google/rpc/status.proto`` comes from googleapis-common-protos).
The request is the protocol's input map ``{"query": bytes, "reference": bytes, "options": json}``;
the reply carries exactly the bytes an HTTP request gets.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

from sane.serving.ops.http_client import reference_fields

PROTOS = ("inference.proto", "management.proto")


def torchserve_jar() -> Path:
    import ts

    jar = Path(ts.__file__).resolve().parent / "frontend" / "model-server.jar"
    if not jar.is_file():
        raise FileNotFoundError(f"TorchServe jar not found at {jar}")
    return jar


def default_stubs_dir() -> Path:
    """``build/grpc`` of the checkout (git-ignored), keyed by the TorchServe version."""
    from ts.version import __version__ as ts_version

    from sane.serving.ops.archive import repo_root

    return repo_root() / "build" / f"grpc-ts{ts_version}"


def _stubs_present(out: Path) -> bool:
    # The *_pb2_grpc.py files are moved in last: when they are there, everything is.
    return all((out / f"{p[:-6]}_pb2_grpc.py").is_file() for p in PROTOS)


def build_stubs(out_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Generate ``inference_pb2(_grpc).py`` and ``management_pb2(_grpc).py`` in ``out_dir`` from the
    protos inside the TorchServe jar; returns ``out_dir``. Skips the work when they are already there.

    Safe when many threads or processes create clients at once: one builds under a file lock (``flock``
    holds between threads too: each opens its own file description), in a private directory, then
    moves the files in, the ``_grpc`` modules last; the others wait and find them complete."""
    out = Path(out_dir) if out_dir is not None else default_stubs_dir()
    if not force and _stubs_present(out):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and _stubs_present(out):
            return out  # another thread or process built them while this one waited
        with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as tmp:
            _generate(Path(tmp))
            shutil.rmtree(out / "proto", ignore_errors=True)
            os.replace(Path(tmp) / "proto", out / "proto")
            names = [f"{p[:-6]}_pb2.py" for p in PROTOS] + [f"{p[:-6]}_pb2_grpc.py" for p in PROTOS]
            for name in names:
                os.replace(Path(tmp) / name, out / name)
    return out


def _generate(out: Path) -> None:
    import grpc_tools
    from google.rpc import status_pb2
    from grpc_tools import protoc

    src = out / "proto"
    src.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(torchserve_jar()) as jar:
        for name in PROTOS:
            (src / name).write_bytes(jar.read(f"proto/{name}"))
    includes = [
        str(src),
        str(Path(grpc_tools.__file__).parent / "_proto"),  # google/protobuf/*.proto
        str(Path(status_pb2.__file__).resolve().parents[2]),  # google/rpc/status.proto
    ]
    args = ["grpc_tools.protoc", *[f"-I{i}" for i in includes], f"--python_out={out}", f"--grpc_python_out={out}",
            *[str(src / name) for name in PROTOS]]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(PROTOS)} (from {torchserve_jar()})")


def load_stubs(out_dir: str | os.PathLike | None = None) -> tuple[ModuleType, ModuleType]:
    """``(inference_pb2, inference_pb2_grpc)``, generated first if needed."""
    out = build_stubs(out_dir)
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    return importlib.import_module("inference_pb2"), importlib.import_module("inference_pb2_grpc")


class GrpcClient:
    """``Predictions`` calls to a TorchServe gRPC inference address (``host:port``)."""

    def __init__(self, address: str, token: str | None = None, stubs_dir: str | os.PathLike | None = None,
                 timeout: float = 300.0):
        import grpc

        self.pb2, pb2_grpc = load_stubs(stubs_dir)
        options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        self.channel = grpc.insecure_channel(address, options=options)
        self.stub = pb2_grpc.InferenceAPIsServiceStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")] if token else None
        self.timeout = timeout

    def predict_bytes(self, archive: str, inputs: dict[str, bytes]) -> bytes:
        """The raw prediction bytes for an input map (raises ``grpc.RpcError`` on a transport error)."""
        request = self.pb2.PredictionsRequest(model_name=archive, input=inputs)
        reply = self.stub.Predictions(request, metadata=self.metadata, timeout=self.timeout)
        return reply.prediction

    def request(self, archive: str, query: bytes, reference: bytes | list[bytes],
                options: dict[str, Any] | None = None) -> dict:
        """The protocol's JSON response (an error response is returned as its ``{"error", "field"}`` dict);
        ``reference`` is one image or a list of K (input map keys ``references.0``, ...)."""
        inputs = {"query": query, **reference_fields(reference)}
        if options:
            inputs["options"] = json.dumps(options).encode()
        return json.loads(self.predict_bytes(archive, inputs))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
