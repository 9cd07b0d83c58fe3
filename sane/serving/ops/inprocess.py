"""Running a handler in-process with a real TorchServe ``Context``: the same code a worker runs,
without the server. Tests compare served results with it; the benchmark uses it as the baseline.

``payload(kind, ...)`` builds the per-request dict exactly as TorchServe hands it to ``handle()``
for each transport: ``multipart`` (form fields: image bytes, options as text), ``json`` (the body
already decoded by TorchServe into a dict under ``"body"``) and ``grpc`` (the input map, all bytes).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from sane.models import default_weights_path
from sane.serving.ops.archive import ARCHIVES, handlers_dir, load_model_config, merge_config, repo_root
from sane.serving.ops.http_client import reference_fields


def make_context(model_name: str, model_dir: str, serialized_file: str | None, model_yaml: dict[str, Any],
                 gpu_id: int | None = None):
    """A ``ts.context.Context`` as a TorchServe worker builds it (manifest, model-config, metrics cache;
    ``gpu_id``: the GPU TorchServe assigned the worker, None on CPU)."""
    import ts
    from ts.context import Context
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    manifest = {"model": {"modelName": model_name, "handler": f"{model_name}_handler.py",
                          **({"serializedFile": serialized_file} if serialized_file else {})}}
    metrics = MetricsCacheYamlImpl(config_file_path=str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
    metrics.initialize_cache()
    metrics.model_name = model_name
    return Context(model_name, model_dir, manifest, int(model_yaml.get("batchSize", 1)), gpu_id, ts.__version__,
                   metrics=metrics, model_yaml_config=model_yaml)


def _handler_class(path: Path) -> type:
    """The one class a handler module defines (TorchServe's rule, checked the same way)."""
    spec = importlib.util.spec_from_file_location(f"_sane_inprocess_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    classes = [v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__]
    if len(classes) != 1:
        raise ValueError(f"{path} must define exactly one class, found {[c.__name__ for c in classes]}")
    return classes[0]


def load_handler(
    archive: str,
    model_path: str | os.PathLike | None = None,
    config_overrides: dict[str, Any] | None = None,
    handlers: str | os.PathLike | None = None,
    gpu_id: int | None = None,
):
    """``(handler, context)``: the archive's handler class from ``handlers/``, initialised as a worker would
    (``gpu_id``: as TorchServe assigns it to a worker of a GPU archive)."""
    spec = ARCHIVES[archive]
    hdir = handlers_dir(handlers)
    model_yaml = merge_config(load_model_config(archive, hdir), config_overrides)
    weights = Path(model_path) if model_path is not None else default_weights_path()
    model_dir = tempfile.mkdtemp(prefix=f"sane-inprocess-{archive}-")
    (Path(model_dir) / "model-config.yaml").write_text(yaml.safe_dump(model_yaml))
    os.symlink(weights.resolve(), Path(model_dir) / weights.name)
    for rel in spec.extra_files:  # what the archive carries beside the weights, at its root
        os.symlink((repo_root() / rel).resolve(), Path(model_dir) / Path(rel).name)
    context = make_context(archive, model_dir, weights.name, model_yaml, gpu_id)
    handler = _handler_class(hdir / spec.handler)()
    handler.initialize(context)
    return handler, context


def load_archive(mar: str | os.PathLike):
    """``(handler, context)`` of a built ``.mar`` as a worker starts it: unpacked into a temporary
    model directory that goes first on ``sys.path`` (as TorchServe does, so a factory's packed code
    imports), its MANIFEST and model-config read, its handler file's class initialised."""
    import sys
    import zipfile

    model_dir = tempfile.mkdtemp(prefix=f"sane-inprocess-{Path(mar).stem}-")
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(model_dir)
    manifest = json.loads((Path(model_dir) / "MAR-INF" / "MANIFEST.json").read_text())["model"]
    model_yaml = yaml.safe_load((Path(model_dir) / manifest.get("configFile", "model-config.yaml")).read_text()) or {}
    sys.path.insert(0, model_dir)
    context = make_context(manifest["modelName"], model_dir, manifest.get("serializedFile"), model_yaml)
    handler = _handler_class(Path(model_dir) / manifest["handler"])()
    handler.initialize(context)
    return handler, context


def payload(kind: str, query: bytes, reference: bytes | list[bytes], options: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """One request as TorchServe delivers it to ``handle()`` for transport ``kind``; ``reference`` is one
    image or a list of K (``references``)."""
    if kind in ("multipart", "grpc"):
        out: dict[str, Any] = {"query": bytearray(query),
                               **{name: bytearray(data) for name, data in reference_fields(reference).items()}}
        if options is not None:  # a multipart text part arrives decoded, a gRPC value as bytes
            out["options"] = json.dumps(options) if kind == "multipart" else bytearray(json.dumps(options).encode())
        return out
    if kind == "json":
        body: dict[str, Any] = {"query": base64.b64encode(query).decode()}
        if isinstance(reference, (bytes, bytearray)):
            body["reference"] = base64.b64encode(reference).decode()
        else:
            body["references"] = [base64.b64encode(r).decode() for r in reference]
        if options is not None:
            body["options"] = options
        return {"body": body}
    raise ValueError(f"kind must be multipart, json or grpc, got {kind!r}")


def run_batch(handler, context, payloads: list[dict[str, Any]]) -> list[tuple[int, dict]]:
    """Call ``handler.handle`` on one batch as the worker would; ``[(status, response_json), ...]``."""
    from ts.context import RequestProcessor

    context.request_processor = [RequestProcessor({}) for _ in payloads]
    context.request_ids = {i: f"inprocess-{i}" for i in range(len(payloads))}
    if context.metrics is not None:
        context.metrics.request_ids = context.request_ids
    bodies = handler.handle(payloads, context)
    return [(context.get_response_status(i)[0], json.loads(body)) for i, body in enumerate(bodies)]
