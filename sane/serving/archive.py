"""Building the TorchServe archives (``model_store/<name>.mar``) with torch-model-archiver.

Each archive is one handler file from ``handlers/``, its model-config.yaml, the similarity weights
as the serialized file and the ``sane`` package as extra files (the worker imports the archive's own
copy: TorchServe puts the unpacked archive first on the worker's PYTHONPATH). The `sane` archive
also carries the attribute model as an extra file; a new archive is one more entry in :data:`ARCHIVES`.
"""

from __future__ import annotations

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
from sane.models import default_weights_path


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


ARCHIVES: dict[str, ArchiveSpec] = {
    "similarity": ArchiveSpec("similarity", "similarity_handler.py", "similarity.yaml",
                              "embeddings and similarity scores of image pairs"),
    "saliency": ArchiveSpec("saliency", "saliency_handler.py", "saliency.yaml",
                            "similarity + saliency maps (any registered generator)"),
    "sane": ArchiveSpec("sane", "sane_handler.py", "sane.yaml",
                        "similarity + saliency maps + the query's top-k attribute explanations",
                        extra_files=("sane/models/weights/attributes_sane.pt",)),
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


def _stage_package(dest: Path) -> Path:
    """Copy the ``sane`` package under ``dest/sane``: code only (no caches; weights travel explicitly,
    as the serialized file or an archive's ``extra_files``)."""
    src = Path(sane.__file__).resolve().parent
    shutil.copytree(src, dest / "sane", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "weights"))
    return dest


def build_archive(
    name: str,
    export_path: str | os.PathLike = "model_store",
    model_path: str | os.PathLike | None = None,
    handlers: str | os.PathLike | None = None,
    config_overrides: dict[str, Any] | None = None,
    version: str = sane.__version__,
) -> Path:
    """Build ``<export_path>/<name>.mar`` (replacing an existing one) and return its path.

    ``model_path``: a similarity checkpoint or TorchScript file (default: the bundled weights).
    ``config_overrides``: model-config keys to change, e.g. ``{"batchSize": 8, "handler": {"max_n_masks": 500}}``.
    """
    if name not in ARCHIVES:
        raise ValueError(f"unknown archive {name!r}; choose from {', '.join(ARCHIVES)}")
    spec = ARCHIVES[name]
    hdir = handlers_dir(handlers)
    weights = Path(model_path) if model_path is not None else default_weights_path()
    if not weights.is_file():
        raise FileNotFoundError(f"no model file at {weights}")
    export = Path(export_path)
    export.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"sane-archive-{name}-") as tmp:
        staging = Path(tmp)
        extra = _stage_package(staging / "extra")
        for rel in spec.extra_files:
            shutil.copy2(repo_root() / rel, extra / Path(rel).name)
        config = staging / "model-config.yaml"
        config.write_text(yaml.safe_dump(merge_config(load_model_config(name, hdir), config_overrides), sort_keys=False))
        cmd = [
            sys.executable, "-m", "model_archiver.model_packaging",
            "--model-name", name,
            "--version", version,
            "--handler", str(hdir / spec.handler),
            "--serialized-file", str(weights.resolve()),
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
    return export / f"{name}.mar"
