"""Saving and loading similarity models: our checkpoints, the bundled default, and user TorchScript."""

from __future__ import annotations

import os
import pickle
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from sane.images import Preprocess
from sane.models.backbones import build_embedding

DEFAULT_SIMILARITY = "similarity_compact.pt"
# The synthetic benchmarks with bundled models: "shapes" (classes by shape x colour, the default
# everywhere) and "shapes_bg" (classes by shape x background: the attribute benchmark where the
# factors that explain a match lie in different places), each its folder under weights/.
BENCHMARKS = ("shapes", "shapes_bg")


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
            "state_dict": state,
            "meta": {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))},
        },
        path,
    )


def load_similarity(
    path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Preprocess]:
    """Load a similarity model in eval mode with its preprocessing.

    ``path`` is one of our checkpoints, a TorchScript file (``torch.jit.save``; then ImageNet
    normalisation at 112 px is assumed), or None for the bundled default.
    """
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError):  # not ours: maybe TorchScript
        ckpt = None
    if isinstance(ckpt, dict) and "state_dict" in ckpt and "arch" in ckpt:
        model = build_embedding(ckpt["arch"], ckpt["dim"])
        model.load_state_dict(ckpt["state_dict"])
        preprocess = Preprocess(ckpt["input_size"], tuple(ckpt["mean"]), tuple(ckpt["std"]))
    else:
        model = load_torchscript(path)
        preprocess = Preprocess()
    return model.to(device).eval(), preprocess


def load_torchscript(path: str | os.PathLike) -> nn.Module:
    """Load a user's TorchScript embedding model ((B, 3, H, W) -> (B, D))."""
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        raise ValueError(f"{path} is neither a sane checkpoint nor a TorchScript model: {exc}") from exc
