"""Saving and loading similarity models: our checkpoints, the bundled default, and the user's own
model in every format PyTorch users ship — TorchScript (``.pt``), ``torch.export`` programs
(``.pt2``) and a Python factory (``package.module:callable`` plus a state_dict file).

Every loader returns the model in eval mode with its :class:`~sane.images.Preprocess`; what is
declared about the model (:class:`~sane.models.spec.ModelSpec`) comes from our checkpoint, the
``<model>.sane.json`` file beside a user's model, or the caller's declarations on top, and the
model is checked with a few forward passes at the declared size (:mod:`sane.models.validation`).
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sane.errors import InputError
from sane.images import Preprocess
from sane.models.backbones import build_embedding
from sane.models.spec import COSINE, EmbeddingSpec, ModelSpec, declare, sidecar_path

DEFAULT_SIMILARITY = "similarity_compact.pt"
# The synthetic benchmarks with bundled models: "shapes" (classes by shape x colour, the default
# everywhere) and "shapes_bg" (classes by shape x background: the attribute benchmark where the
# factors that explain a match lie in different places), each its folder under weights/.
BENCHMARKS = ("shapes", "shapes_bg")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def bundled_weights(benchmark: str = "shapes") -> Path:
    """Folder of a benchmark's bundled checkpoints (see :data:`BENCHMARKS`)."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
    weights = Path(str(resources.files("sane.models") / "weights"))
    return weights if benchmark == "shapes" else weights / benchmark


def default_weights_path(benchmark: str = "shapes") -> Path:
    """Path of a committed similarity checkpoint: by default the one trained on Shapes with Attributes."""
    return bundled_weights(benchmark) / (DEFAULT_SIMILARITY if benchmark == "shapes" else "similarity.pt")


def save_similarity(path: str | os.PathLike, model: nn.Module, preprocess: Preprocess, **meta) -> None:
    """Write a checkpoint loadable with ``torch.load(weights_only=True)``: weights plus plain metadata."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(
        {
            "arch": model.arch,
            "dim": model.dim,
            "input_size": preprocess.size,
            "mean": list(preprocess.mean),
            "std": list(preprocess.std),
            "preprocess": preprocess.to_dict(),
            "state_dict": state,
            "meta": {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))},
        },
        path,
    )


class DeclaredEmbedding(nn.Module):
    """A user's network with its declared embedding output: ``forward`` returns the (B, D) tensor.

    ``embedding_spec`` (how embeddings compare) is read by :class:`~sane.models.Embedder`. The
    wrapped network may be a ``torch.export`` module, which cannot be switched to eval mode (its
    mode was fixed when it was exported; validation checks it behaves as eval mode).
    """

    def __init__(self, net: nn.Module, spec: EmbeddingSpec):
        super().__init__()
        self.net = net
        self.embedding_spec = spec
        self.output = spec.output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out if self.output is None else out[self.output]

    def train(self, mode: bool = True) -> DeclaredEmbedding:
        self.training = mode
        try:
            self.net.train(mode)
        except NotImplementedError:  # torch.export modules: the mode was fixed at export
            pass
        return self


class FixedBatch(nn.Module):
    """Runs a network that only takes batches of exactly ``size`` (a torch.export program exported
    without a dynamic batch dimension) on any batch: chunks of ``size``, the last one padded with
    copies of its final image whose outputs are dropped."""

    def __init__(self, net: nn.Module, size: int):
        super().__init__()
        self.net = net
        self.size = int(size)

    def forward(self, x: torch.Tensor):
        outs = []
        for start in range(0, len(x), self.size):
            chunk = x[start : start + self.size]
            short = self.size - len(chunk)
            if short:
                chunk = torch.cat([chunk, chunk[-1:].expand(short, *chunk.shape[1:])])
            out = self.net(chunk)
            outs.append(out[: len(out) - short] if short else out)
        return torch.cat(outs)

    def train(self, mode: bool = True) -> FixedBatch:
        self.training = mode
        return self


@dataclass
class LoadedModel:
    """A loaded similarity model: the module (eval mode, on its device), what is declared about it,
    which format it came in, and the file and weights it came from."""

    model: nn.Module
    spec: ModelSpec
    format: str
    source: str
    weights: str | None = None
    checks: dict[str, Any] | None = None  # what validation found (embedding dimension, input size)

    @property
    def preprocess(self) -> Preprocess:
        return self.spec.preprocess


def is_factory(source: str | os.PathLike) -> bool:
    """Whether ``source`` names a Python factory (``package.module:callable``) rather than a file."""
    text = os.fspath(source)
    return bool(_FACTORY.match(text)) and not Path(text).exists()


def file_format(path: Path) -> str:
    """``"export"``, ``"torchscript"``, ``"pickle"`` (torch.save) or ``"unknown"`` (not a zip: the
    legacy torch.save format, or not a model at all) from a model file's zip records."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "unknown"
    tails = {name.rsplit("/", 1)[-1] for name in names}
    if "archive_format" in tails or any("/models/" in n and n.endswith(".json") for n in names):
        return "export"
    if "constants.pkl" in tails:
        return "torchscript"
    return "pickle"


def load_model(
    source: str | os.PathLike | LoadedModel | None = None,
    device: str | torch.device = "cpu",
    *,
    weights: str | os.PathLike | None = None,
    spec: ModelSpec | None = None,
    factory_kwargs: dict[str, Any] | None = None,
    validate: bool = True,
    **declarations: Any,
) -> LoadedModel:
    """Load a similarity model in any supported format and check it.

    ``source``: one of our checkpoints, a TorchScript file, a ``torch.export`` program (``.pt2``),
    ``"package.module:callable"`` (a factory called with ``factory_kwargs``; ``weights`` is then its
    state_dict file), or None for
    the bundled default. ``spec`` replaces what is stored with the model; ``declarations`` (the
    keywords of :func:`~sane.models.spec.declare`: ``preset``, ``input_size``, ``mean``, ``std``,
    ``resize``, ``interpolation``, ``resize_size``, ``output``, ``similarity``, ``normalize``) go on
    top. ``validate`` runs :func:`~sane.models.validation.validate_model` (a few forward passes of three
    random images at the declared size) and raises its clear error instead of a shape traceback later.
    A :class:`LoadedModel` is passed through (moved to ``device``), so commands that load a declared
    model once can hand it to library functions that take a model path.
    """
    if isinstance(source, LoadedModel):
        source.model = source.model.to(device)
        return source
    source = os.fspath(source) if source is not None else str(default_weights_path())
    declarations = {k: v for k, v in declarations.items() if v is not None}
    if is_factory(source):
        base = spec or _stored_spec(weights) or ModelSpec()
        kwargs = base.factory_kwargs if factory_kwargs is None else dict(factory_kwargs)
        base = ModelSpec(base.preprocess, base.embedding, source, kwargs)
        final = declare(base, **declarations)
        net = _build_factory(source, final.factory_kwargs, weights)
        fmt = "factory"
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no model file at {path}")
        if weights is not None or factory_kwargs is not None:
            raise InputError(f"--weights and --model-kwargs go with a factory (package.module:callable), not with the file {path}",
                             "weights")
        fmt, net, stored = _load_file(path)
        beside = _stored_spec(path)
        final = declare(spec or stored or beside or ModelSpec(), **declarations)
        if fmt != "checkpoint" and spec is None and not declarations and beside is None:
            warnings.warn(f"nothing is declared about {path.name}: assuming {final.preprocess.size} px, ImageNet "
                          "mean/std and cosine similarity. Declare what it was trained with (--input-size, --mean, "
                          f"--std or --preprocess), or store it beside the model in {sidecar_path(path).name} "
                          "(`sane model inspect MODEL ... --save`)", stacklevel=2)
    model = net if (fmt == "checkpoint" and final.embedding == COSINE) else DeclaredEmbedding(net, final.embedding)
    model = model.to(device).eval()
    loaded = LoadedModel(model, final, fmt, source, os.fspath(weights) if weights is not None else None)
    if validate:
        from sane.models.validation import ModelValidationError, validate_model

        try:
            loaded.checks = validate_model(loaded, raw=net)
        except ModelValidationError as exc:
            if exc.fixed_batch is None or final.embedding.output is not None:
                raise
            warnings.warn(f"{exc} -- until then it runs {exc.fixed_batch} image(s) per forward pass (slower)",
                          stacklevel=2)
            net = FixedBatch(net, exc.fixed_batch)
            loaded.model = DeclaredEmbedding(net, final.embedding).to(device).eval()
            loaded.checks = validate_model(loaded, raw=net)
    return loaded


def load_similarity(
    path: str | os.PathLike | None = None, device: str | torch.device = "cpu", **options: Any
) -> tuple[nn.Module, Preprocess]:
    """Load a similarity model in eval mode with its preprocessing (see :func:`load_model`, whose
    keywords ``options`` are: ``weights``, ``spec``, ``validate`` and the declarations).

    ``path`` is one of our checkpoints, a TorchScript file, a ``torch.export`` program, a factory
    ``"package.module:callable"`` or None for the bundled default.
    """
    loaded = load_model(path, device, **options)
    return loaded.model, loaded.preprocess


def load_torchscript(path: str | os.PathLike) -> nn.Module:
    """Load a user's TorchScript embedding model ((B, 3, H, W) -> (B, D))."""
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated upstream; users still ship it
            warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=FutureWarning)
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        raise ValueError(f"{path} is not a TorchScript model: {exc}") from exc


def _stored_spec(path: str | os.PathLike | None) -> ModelSpec | None:
    """The ``<model>.sane.json`` beside a model (or weights) file, if there is one."""
    if path is None:
        return None
    meta = sidecar_path(path)
    return ModelSpec.load(meta) if meta.is_file() else None


def _load_file(path: Path) -> tuple[str, nn.Module, ModelSpec | None]:
    """(format, network, the spec stored inside the file if any) of a model file."""
    kind = file_format(path)
    if kind == "export":
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise ValueError(f"{path} looks like a torch.export program but does not load: {exc}") from exc
        return "export", program.module(), None
    if kind == "torchscript":
        return "torchscript", load_torchscript(path), None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if kind != "pickle" or "Weights only load failed" not in str(exc):
            raise ValueError(_not_a_model(path, exc)) from exc
        raise ValueError(
            f"{path} is a pickled Python object (torch.save(model)), which is not loaded for safety: save the "
            "model as TorchScript (torch.jit.save) or torch.export (.pt2), or give its factory with "
            "--model package.module:callable --weights FILE (a state_dict)") from exc
    except (RuntimeError, EOFError, ValueError) as exc:
        raise ValueError(_not_a_model(path, exc)) from exc
    if isinstance(ckpt, dict) and "state_dict" in ckpt and "arch" in ckpt:
        model = build_embedding(ckpt["arch"], ckpt["dim"])
        model.load_state_dict(ckpt["state_dict"])
        data = ckpt.get("preprocess") or {"input_size": ckpt["input_size"], "mean": ckpt["mean"], "std": ckpt["std"]}
        return "checkpoint", model, ModelSpec(Preprocess.from_dict(data))
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"{path} holds a state_dict (weights without the network): give the code that builds the "
                         f"network as --model package.module:callable with --weights {path}")
    raise ValueError(_not_a_model(path))


def _not_a_model(path: Path, exc: BaseException | None = None) -> str:
    reason = f": {str(exc).splitlines()[0][:200]}" if exc is not None and str(exc) else ""
    return f"{path} is neither a sane checkpoint nor a TorchScript model nor a torch.export program (.pt2){reason}"


def import_factory(name: str):
    """The callable named ``package.module:callable`` (dots after the colon reach attributes)."""
    module_name, _, attr = name.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a factory in the current directory, as `python -m` would find it
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(f"cannot import {module_name!r} for the factory {name}: {exc}. Install it, or put it on "
                         "PYTHONPATH (in an archive: sane archive --code DIR)", "model") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"{module_name} has no {attr!r} (factory {name})", "model")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"{name} is not callable", "model")
    return obj


def _build_factory(name: str, kwargs: dict[str, Any], weights: str | os.PathLike | None) -> nn.Module:
    """Call the factory and load its state_dict from ``weights`` (strictly: every key must match)."""
    try:
        net = import_factory(name)(**kwargs)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"the factory {name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed: "
                         f"{type(exc).__name__}: {exc}", "model") from exc
    if not isinstance(net, nn.Module):
        raise InputError(f"the factory {name} returned {type(net).__name__}, not a torch.nn.Module", "model")
    if weights is None:
        warnings.warn(f"no --weights for {name}: the network keeps the factory's own initial weights", stacklevel=3)
        return net
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path} is not a state_dict file loadable with torch.load(weights_only=True): "
                         f"{str(exc).splitlines()[0][:200]}", "weights") from exc
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise InputError(f"{path} does not hold a state_dict (got {type(state).__name__})", "weights")
    result = net.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InputError(f"{path} does not fit the network built by {name}: missing keys "
                         f"{result.missing_keys[:5]}{'...' if len(result.missing_keys) > 5 else ''}, unexpected keys "
                         f"{result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}", "weights")
    return net
