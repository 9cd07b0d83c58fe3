"""Building the TorchServe archives (``model_store/<name>.mar``) with torch-model-archiver.

Each archive is one handler file from ``handlers/``, its model-config.yaml, the similarity model
as the serialized file (a sane checkpoint, TorchScript or ``torch.export`` file; a factory's
state_dict), what is declared about it (``model_spec.json``, :class:`~sane.models.spec.ModelSpec`)
and the ``sane`` package as extra files (the worker imports the archive's own copy: TorchServe puts
the unpacked archive first on the worker's PYTHONPATH). A factory's own code travels the same way:
its top-level package (or module) is copied into the archive unless it is installed in the Python
environment (site-packages), which must then be the worker's too; ``code`` adds further files or
folders. The model is loaded and validated before anything is built. The `sane` archive also
carries the attribute model as an extra file; a new archive is one more entry in :data:`ARCHIVES`.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import sane
from sane.models.checkpoint import LoadedModel, load_model
from sane.serving.worker.handler import MODEL_SPEC_FILE


@dataclass(frozen=True)
class ArchiveSpec:
    """What one archive is made of; paths are relative to the handlers directory.

    Handler modules are named ``<archive>_handler.py`` so that no module name collides with a
    package the worker imports (a handler module named ``sane`` would shadow the library).
    """

    name: str
    handler: str
    config: str
    description: str
    extra_files: tuple[str, ...] = ()  # further files for the archive root, relative to the checkout


# What an int8 worker (handler.quantize) calibrates on: the bundled example pair, at the archive's root.
CALIBRATION_FILES = ("examples/query.jpg", "examples/reference.jpg")

ARCHIVES: dict[str, ArchiveSpec] = {
    "similarity": ArchiveSpec("similarity", "similarity_handler.py", "similarity.yaml",
                              "embeddings and similarity scores of image pairs"),
    "saliency": ArchiveSpec("saliency", "saliency_handler.py", "saliency.yaml",
                            "similarity + saliency maps (any registered generator)",
                            extra_files=CALIBRATION_FILES),
    "sane": ArchiveSpec("sane", "sane_handler.py", "sane.yaml",
                        "similarity + saliency maps + the query's top-k attribute explanations",
                        extra_files=("sane/models/weights/attributes_sane.pt", *CALIBRATION_FILES)),
}
DEFAULT_ARCHIVES = ("similarity", "saliency", "sane")


def repo_root() -> Path:
    """The checkout the package was installed from (``pip install -e .``)."""
    return Path(sane.__file__).resolve().parent.parent


def handlers_dir(path: str | os.PathLike | None = None) -> Path:
    """The ``handlers/`` directory: the given one, else the checkout's."""
    found = Path(path) if path is not None else repo_root() / "handlers"
    if not (found / ARCHIVES["saliency"].handler).is_file():
        raise FileNotFoundError(
            f"no handlers directory at {found}: run from a checkout installed with `pip install -e .`, "
            "or pass --handlers DIR"
        )
    return found


def load_model_config(name: str, handlers: str | os.PathLike | None = None) -> dict[str, Any]:
    """The archive's model-config.yaml as a dict."""
    spec = ARCHIVES[name]
    return yaml.safe_load((handlers_dir(handlers) / spec.config).read_text()) or {}


def merge_config(base: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``overrides`` on top of ``base``; the ``handler`` section is merged key by key."""
    merged = dict(base)
    for key, value in (overrides or {}).items():
        if key == "handler" and isinstance(value, dict):
            merged["handler"] = {**(base.get("handler") or {}), **value}
        else:
            merged[key] = value
    return merged


PROFILES = ("cpu", "gpu")


def _positive(name: str, value: Any, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer in 1..{high}, got {value!r}" if high is not None
                         else f"{name} must be an integer >= 1, got {value!r}")
    return value


def profile_config(profile: str, gpus: int | None = None, workers_per_gpu: int | None = None,
                   workers: int | None = None, cores: int | None = None) -> dict[str, Any]:
    """Model-config keys that suit the target (``sane archive --profile``), to merge under ``--set``.

    ``gpu``: ``gpus`` (default 1) x ``workers_per_gpu`` (default 2) workers, TorchServe spreading them
    round-robin over ``deviceIds`` 0..gpus-1 (each worker pins itself to its ``gpu_id``); larger
    forward and request batches, fp16 autocast, NHWC, BatchNorm folded into the convolutions (the same
    function; bench/gpu_check.py: ResNet-50 compiled 64 vs 76 ms a map on an H200), one CPU thread per
    worker (its CPU work is decoding and encoding). ``cpu``: ``workers`` workers (default: one per 4 cores) of
    ``cores // workers`` threads each, so threads x workers <= cores (``cores``: the target machine's,
    default this one's), each running an int8 copy of the model calibrated per request
    (``quantize: pair``) on NHWC batches. Arguments of the other profile are refused."""
    if profile == "gpu":
        if workers is not None or cores is not None:
            raise ValueError("--workers and --cores are for --profile cpu; on GPU use --gpus and --workers-per-gpu")
        gpus = _positive("--gpus", 1 if gpus is None else gpus)
        n = gpus * _positive("--workers-per-gpu", 2 if workers_per_gpu is None else workers_per_gpu)
        return {"minWorkers": n, "maxWorkers": n, "deviceType": "gpu", "deviceIds": list(range(gpus)),
                "batchSize": 8, "maxBatchDelay": 20,
                "handler": {"device": "auto", "batch_size": 500, "amp": True, "channels_last": True, "fuse": True,
                            "threads": 1}}
    if profile == "cpu":
        if gpus is not None or workers_per_gpu is not None:
            raise ValueError("--gpus and --workers-per-gpu are for --profile gpu")
        cores = _positive("--cores", cores if cores is not None else (os.cpu_count() or 1))
        workers = _positive("--workers", workers if workers is not None else max(1, cores // 4), high=cores)
        return {"minWorkers": workers, "maxWorkers": workers, "deviceType": "cpu",
                # int8 calibrated per request on its own images: maps at Pearson >= 0.999 to fp32's
                # (tests/serving/worker/test_int8.py; once per worker they fall under that bar)
                "handler": {"device": "cpu", "threads": cores // workers, "quantize": "pair",
                            "channels_last": True}}
    raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")


def _stage_package(dest: Path) -> Path:
    """Copy the ``sane`` package under ``dest/sane``: code only (no caches; weights travel explicitly,
    as the serialized file or an archive's ``extra_files``)."""
    src = Path(sane.__file__).resolve().parent
    shutil.copytree(src, dest / "sane", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "weights"))
    return dest


def factory_code(factory: str) -> list[Path]:
    """The code a factory's worker must import that is not installed: the factory's top-level package
    folder (or single module file), unless it lives in site-packages or is ``sane`` itself."""
    top = factory.partition(":")[0].split(".")[0]
    if top == "sane":
        return []
    module = importlib.import_module(top)
    file = getattr(module, "__file__", None)
    if file is None:
        return []
    path = Path(file).resolve()
    if any(part in ("site-packages", "dist-packages") for part in path.parts):
        return []
    return [path.parent if path.name == "__init__.py" else path]


def build_archive(
    name: str,
    export_path: str | os.PathLike = "model_store",
    model_path: str | os.PathLike | LoadedModel | None = None,
    handlers: str | os.PathLike | None = None,
    config_overrides: dict[str, Any] | None = None,
    version: str = sane.__version__,
    code: tuple[str | os.PathLike, ...] = (),
    attribute_model: str | os.PathLike | None = None,
    model_name: str | None = None,
) -> Path:
    """Build ``<export_path>/<model_name>.mar`` (replacing an existing one) and return its path: an
    archive of kind ``name`` (similarity, saliency or sane) served as ``model_name`` (default ``name``).

    ``model_path``: a similarity model in any format :func:`~sane.models.checkpoint.load_model` takes, or a
    :class:`~sane.models.checkpoint.LoadedModel` with its declarations (default: the bundled
    weights); it is loaded and validated first, so a model that cannot be served fails here with a
    clear message. ``code``: further files or folders for the archive root (a factory's code that
    is not found automatically). ``attribute_model``: the `sane` archive's attribute checkpoint
    (default: the bundled SANE model). ``config_overrides``: model-config keys to change, e.g.
    ``{"batchSize": 8, "handler": {"max_n_masks": 500}}``.
    """
    if name not in ARCHIVES:
        raise ValueError(f"unknown archive {name!r}; choose from {', '.join(ARCHIVES)}")
    spec = ARCHIVES[name]
    hdir = handlers_dir(handlers)
    loaded = load_model(model_path)  # validated: a model that cannot be served fails before any build
    if loaded.format == "factory":
        weights = Path(loaded.weights) if loaded.weights else None
        code = (*factory_code(loaded.source), *code)
    else:
        weights = Path(loaded.source)
    for path in code:
        if not Path(path).exists():
            raise FileNotFoundError(f"no code to pack at {path}")
    export = Path(export_path)
    export.mkdir(parents=True, exist_ok=True)
    if model_name is not None and not model_name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"archive name {model_name!r}: use letters, digits, '_' and '-'")
    with tempfile.TemporaryDirectory(prefix=f"sane-archive-{name}-") as tmp:
        staging = Path(tmp)
        extra = _stage_package(staging / "extra")
        for rel in spec.extra_files:
            source = Path(attribute_model) if attribute_model is not None and rel.endswith("attributes_sane.pt") \
                else repo_root() / rel
            shutil.copy2(source, extra / Path(rel).name)
        loaded.spec.save(extra / MODEL_SPEC_FILE)
        for path in map(Path, code):
            if path.is_dir():
                shutil.copytree(path, extra / path.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, extra / path.name)
        config = staging / "model-config.yaml"
        config.write_text(yaml.safe_dump(merge_config(load_model_config(name, hdir), config_overrides), sort_keys=False))
        cmd = [
            sys.executable, "-m", "model_archiver.model_packaging",
            "--model-name", model_name or name,
            "--version", version,
            "--handler", str(hdir / spec.handler),
            *(["--serialized-file", str(weights.resolve())] if weights is not None else []),
            "--extra-files", str(extra),
            "--config-file", str(config),
            "--export-path", str(export.resolve()),
            "--force",
        ]
        # The archiver stages files in $TMPDIR/<model-name>: a private TMPDIR keeps parallel builds apart.
        work = staging / "tmp"
        work.mkdir()
        env = {**os.environ, "TMPDIR": str(work)}
        proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed for {name}:\n{proc.stdout}{proc.stderr}")
    return export / f"{model_name or name}.mar"
