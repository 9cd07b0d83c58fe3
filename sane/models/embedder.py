"""Running a similarity model: batches in, float32 embeddings out (L2-normalised unless the model
declares another similarity, :class:`~sane.models.spec.EmbeddingSpec`)."""

from __future__ import annotations

import os
import sys
import warnings

import torch
from torch import nn

from sane.errors import InputError
from sane.models.optimize import prepare_for_inference, quantize_int8
from sane.models.spec import embedding_spec


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside the ``sane`` package (the
    user's line), however many of the library's constructors lie between."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for parameter-free modules)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


class Embedder:
    """Runs a similarity model on batches: float32 embeddings ready to compare.

    ``embedding`` (the model's declared :class:`~sane.models.spec.EmbeddingSpec`, cosine unless
    declared) normalises them and compares them: every generator and metric scores with
    ``embedding.score`` / ``matrix`` / ``mean_scores``.

    Speed options (all off by default; these four change nothing beyond float rounding):
    ``amp`` autocasts forwards to bf16 (CPU) / fp16 (CUDA), ``channels_last`` feeds NHWC batches,
    ``fuse`` runs a copy of the model with BatchNorm folded into its convolutions
    (:func:`~sane.models.optimize.fuse_conv_bn`; needs an eval-mode model), ``compile`` runs the
    inference forward through ``torch.compile`` with frozen weights (a one-off compile of seconds to
    a minute per batch shape, repaid over the thousands of forwards of a map; needs a C++ compiler on
    CPU). All are kept by one Embedder (and so one generator object): reuse it across maps.

    ``quantize`` (CPU only; not with ``amp`` or ``compile``) runs an int8 copy of the model
    (:func:`~sane.models.optimize.quantize_int8`), which *does* change the function slightly: it is
    calibrated once, by :meth:`calibrate` or else on the first batch embedded, and that calibration
    is kept for every later call (generators calibrate on their first pair's images and masked copies).
    """

    def __init__(
        self,
        model: nn.Module,
        batch_size: int = 256,
        amp: bool = False,
        channels_last: bool = False,
        device: str | torch.device | None = None,
        fuse: bool = False,
        compile: bool = False,
        quantize: bool = False,
    ):
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}", "batch_size")
        if quantize and (amp or compile):
            raise InputError("quantize (int8) cannot be combined with amp or compile: pick one precision", "quantize")
        if getattr(model, "training", False):
            warnings.warn("model is in training mode; call model.eval() for stable explanations",
                          stacklevel=_caller_level())
        self.device = torch.device(device) if device is not None else model_device(model)
        self.embedding = embedding_spec(model)
        if quantize and self.device.type != "cpu":
            raise InputError(f"quantize (int8) runs on CPU only, not {self.device}; use amp on a GPU", "quantize")
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.model = prepare_for_inference(model, fuse, channels_last, self.amp_dtype if amp else None)
        # A private copy with low-precision weights takes low-precision input (no per-call weight casts).
        self.input_dtype = self.amp_dtype if amp and self.model is not model else None
        # The inference forward: the model, or its torch.compile'd graph (weights frozen as constants).
        self._infer = torch.compile(self.model, dynamic=False, options={"freezing": True}) if compile else self.model
        self.batch_size = int(batch_size)
        self.amp = amp
        self.channels_last = channels_last
        self.quantize = quantize
        self.calibrated = False  # quantize: whether the int8 model exists yet
        self.images_seen = 0  # forward-pass counter (images), for cost accounting

    def __call__(self, x: torch.Tensor, condition=None) -> torch.Tensor:
        """Embed any number of images, at most ``batch_size`` at a time."""
        outs = [self._forward(x[i : i + self.batch_size], condition) for i in range(0, len(x), self.batch_size)]
        return torch.cat(outs)

    def calibrate(self, images: torch.Tensor, condition=None) -> None:
        """With ``quantize``: build the int8 model, its activation ranges observed on ``images``
        ((B, 3, H, W), representative inputs). A no-op once calibrated, and without ``quantize``."""
        if not self.quantize or self.calibrated:
            return
        images = images.to(self.device)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        self.model = self._infer = quantize_int8(self.model, images, self.batch_size, condition)
        self.calibrated = True

    def _forward(self, x: torch.Tensor, condition=None) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.quantize and not self.calibrated:
            self.calibrate(x, condition)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.input_dtype is not None:
            x = x.to(self.input_dtype)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            out = self._infer(x) if condition is None else self._infer(x, condition)
        self.images_seen += len(x)
        if out.dim() != 2:
            raise InputError(f"model must return (B, D) embeddings, got shape {tuple(out.shape)}", "model")
        return self.embedding.embed(out)
