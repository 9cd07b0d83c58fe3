"""Checking a similarity model at load time, so a bad model fails with a message that says what is
wrong and what to do (at ``sane archive`` time and at worker start), never with a tensor-shape
traceback at the first request.

The checks, on a few random images at the declared input size: the model accepts that size (else
the sizes it does accept are named), returns one (D,) embedding per image (the declared output of a
tuple or dict), finite; an image's embedding does not depend on the rest of its batch (BatchNorm in
training mode or other batch statistics); different images get different embeddings (not a
constant, e.g. an untrained zero head); and two identical forward passes agree (dropout or other
randomness in eval mode).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch
from torch import nn

from sane.errors import InputError

if TYPE_CHECKING:
    from sane.models.checkpoint import LoadedModel

# Input sides tried when the declared one is refused, to tell the user which it should be.
COMMON_SIZES = (224, 112, 96, 128, 160, 192, 256, 288, 320, 336, 384, 448, 518, 64, 32)
BATCH = 3
TOLERANCE = 1e-3  # relative change of an embedding that counts as "not the same"


class ModelValidationError(InputError):
    """A model that cannot be explained as declared; the message says which check failed and what to do.
    ``fixed_batch``: for a torch.export program exported with a fixed batch size, that size."""

    def __init__(self, message: str, check: str, fixed_batch: int | None = None):
        super().__init__(message, "model")
        self.check = check
        self.fixed_batch = fixed_batch


FORMAT_NAMES = {"checkpoint": "sane checkpoint", "torchscript": "TorchScript model", "export": "torch.export program",
                "factory": "factory model"}


def _short(exc: BaseException) -> str:
    """The line of a model's exception that says what went wrong (TorchScript puts it last)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    line = lines[-1] if lines and "TorchScript interpreter" in lines[0] else (lines[0] if lines else "")
    return f"{type(exc).__name__}: {line[:200]}"


def _forward(net: nn.Module, x: torch.Tensor):
    with torch.inference_mode():
        return net(x)


def _accepted_sizes(net: nn.Module, declared: int, device: torch.device) -> list[int]:
    """Input sides among :data:`COMMON_SIZES` the network runs at (one image each; stops at two)."""
    found = []
    for size in COMMON_SIZES:
        if size == declared:
            continue
        try:
            _forward(net, torch.zeros((1, 3, size, size), device=device))
        except Exception:  # noqa: BLE001 - any failure means "not this size"
            continue
        found.append(size)
        if len(found) == 2:
            break
    return found


def _relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm().clamp_min(1e-12))


def _static_batch(name: str, exc: BaseException) -> None:
    """Raise the clear error for a torch.export program whose batch size was fixed at export."""
    static = re.search(r"size\(\)\[0\] == (\d+)", str(exc))
    if static:
        raise ModelValidationError(
            f"{name} was exported with a fixed batch size of {static.group(1)} and cannot embed batches: export "
            "it with a dynamic batch dimension, e.g. torch.export.export(model, (x,), "
            "dynamic_shapes=({0: torch.export.Dim('batch')},))", "batch_size", int(static.group(1))) from exc


def validate_model(loaded: LoadedModel, raw: nn.Module | None = None, seed: int = 0) -> dict[str, object]:
    """Run the checks on ``loaded`` (see the module docstring); returns what was found (embedding
    dimension, input size) or raises :class:`ModelValidationError` naming the failed check."""
    model = loaded.model
    spec = loaded.spec
    size = spec.preprocess.size
    name = f"{FORMAT_NAMES.get(loaded.format, loaded.format)} {loaded.source}"
    device = next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn((BATCH, 3, size, size), generator=gen).to(device)
    net = raw if raw is not None else model

    # 1. The declared size: one image first (a static-batch export also fails on BATCH images).
    try:
        single = _forward(net, images[:1])
    except Exception as exc:  # noqa: BLE001 - the model's own error, reported with what to do
        _static_batch(name, exc)
        if "more than 1 value per channel when training" in str(exc):
            raise ModelValidationError(
                f"{name} is in training mode (BatchNorm uses the batch's statistics, so an image's embedding "
                "depends on its batch): put it in eval mode (model.eval()) before you save or export it",
                "batch_dependent") from exc
        sizes = _accepted_sizes(net, size, device)
        hint = (f"; it runs at {' and '.join(f'{s} px' for s in sizes)}: declare that with --input-size {sizes[0]}"
                if sizes else "; declare the size it was built for with --input-size N")
        raise ModelValidationError(
            f"{name} rejects images of the declared input size {size} x {size} px ({_short(exc)}){hint}",
            "input_size") from exc
    try:
        single = spec.embedding.select(single)
    except InputError as exc:
        raise ModelValidationError(f"{name}: {exc}", "output") from exc

    try:
        batch = _forward(model, images)
    except Exception as exc:  # noqa: BLE001
        _static_batch(name, exc)
        raise ModelValidationError(f"{name} fails on a batch of {BATCH} images of {size} px: {_short(exc)}",
                                   "batch_size") from exc
    if not isinstance(batch, torch.Tensor) or not batch.is_floating_point():
        raise ModelValidationError(f"{name} returns {type(batch).__name__}, not a float tensor of embeddings", "output")
    if batch.dim() != 2 or batch.shape[0] != BATCH:
        hint = (": pool or select one vector per image (e.g. the CLS token) in the model or its factory"
                if batch.dim() > 2 else "")
        raise ModelValidationError(
            f"{name} returns shape {tuple(batch.shape)} for {BATCH} images; expected (B, D) embeddings, one row per "
            f"image{hint}", "output_rank")
    if not torch.isfinite(batch).all():
        raise ModelValidationError(f"{name} returns NaN or infinite embeddings for random images", "finite")
    spread = float((batch.float() - batch[:1].float()).norm() / batch.float().norm().clamp_min(1e-12))
    if spread < 1e-6:
        raise ModelValidationError(
            f"{name} returns the same embedding for different images (all zeros: {bool(batch.eq(0).all())}), so "
            "nothing can explain a match: were its weights loaded? (torchvision's ViT starts with a zero head: "
            "load trained weights, or replace model.heads by torch.nn.Identity() to embed the class token)",
            "constant")

    # 2. Determinism in eval mode (first: randomness would also look like batch dependence).
    again = _forward(model, images)
    change = _relative_change(batch.float(), again.float())
    if change > TOLERANCE:
        raise ModelValidationError(
            f"{name} is not deterministic: two forward passes of the same images differ by {change:.1%} (dropout or "
            "other randomness still active): save or export it in eval mode (model.eval())", "deterministic")
    # 3. Batch independence: image 0 alone (the first forward pass) vs in a batch of BATCH.
    alone = single
    change = _relative_change(alone[0].float(), batch[0].float())
    if change > TOLERANCE:
        raise ModelValidationError(
            f"{name} mixes the images of a batch: an image's embedding changes by {change:.1%} when other images "
            "are in its batch (BatchNorm in training mode, or batch statistics): put the model in eval mode "
            "before saving or exporting it, and keep its forward per image", "batch_dependent")

    return {"input_size": size, "dim": int(batch.shape[1]), "format": loaded.format}
