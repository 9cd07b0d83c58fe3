"""Inference-time model rewrites that keep the function: BatchNorm folded into its convolution.

RISE, sliding window and LIME spend nearly all their time in forward passes of one model on
thousands of perturbed images, so the per-forward cost is the generator's cost. Folding each
eval-mode BatchNorm into the convolution before it removes a full pass over every activation map;
with ``channels_last`` memory and bf16 autocast (the Embedder's ``channels_last`` and ``amp``) the
default model's forward on CPU is several times faster (``bench/table1.py`` measures it).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` contains any BatchNorm layer (nothing to fuse otherwise)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """A copy of eval-mode ``model`` with every Conv2d → BatchNorm2d pair folded into one Conv2d.

    The fused model computes the same function (up to float rounding, ~1e-6 relative) and supports
    gradients (the learned mask optimises through it). The original is left untouched. Models that
    torch.fx cannot trace (TorchScript, data-dependent control flow) and models without BatchNorm
    are returned unchanged, with a warning in the first case. A model in training mode is an error:
    folding uses the running statistics, which only eval mode uses.
    """
    if model.training:
        raise ValueError("fuse_conv_bn needs an eval-mode model (call model.eval()): BN folding uses running stats")
    if isinstance(model, torch.jit.ScriptModule) or not has_batchnorm(model):
        if isinstance(model, torch.jit.ScriptModule):
            warnings.warn("TorchScript model: conv-BN fusion skipped (torch.fx cannot trace it)", stacklevel=2)
        return model
    from torch.fx.experimental.optimization import fuse

    try:
        fused = fuse(copy.deepcopy(model))
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "run the model as it is"
        warnings.warn(f"conv-BN fusion skipped: torch.fx could not trace the model ({exc})", stacklevel=2)
        return model
    return _keep_attributes(model, fused).eval()


def _keep_attributes(model: nn.Module, rewritten: nn.Module) -> nn.Module:
    """``rewritten`` (an fx GraphModule, which drops plain attributes) with the ones the library reads
    from ``model`` (e.g. EmbeddingNet.dim, .arch; an attribute model's names)."""
    for name in ("dim", "arch", "attributes", "embedding_spec"):
        if hasattr(model, name) and not hasattr(rewritten, name):
            setattr(rewritten, name, getattr(model, name))
    return rewritten


def prepare_for_inference(
    model: nn.Module, fuse: bool = False, channels_last: bool = False, dtype: torch.dtype | None = None
) -> nn.Module:
    """``model`` with BN folded (``fuse``) and, when that made a copy, its weights NHWC
    (``channels_last``) and cast to ``dtype`` (the autocast precision: cast once, not at every call).

    The caller's model is never modified: without fusion it is returned as it is (inputs are still
    made NHWC and autocast by the Embedder; only a private copy gets NHWC or low-precision weights).
    """
    prepared = fuse_conv_bn(model) if fuse else model
    if prepared is not model:
        if channels_last:
            prepared = prepared.to(memory_format=torch.channels_last)
        if dtype is not None:
            prepared = prepared.to(dtype)
    return prepared


def quantize_int8(model: nn.Module, calibration: torch.Tensor, batch_size: int = 64, condition=None) -> nn.Module:
    """An int8 copy of eval-mode ``model`` for CPU inference: static post-training quantization
    (torch.ao FX graph mode, the x86 backend: per-channel int8 weights, int8 activations whose
    ranges are observed on ``calibration``, a (B, 3, H, W) batch of representative inputs).

    Unlike :func:`fuse_conv_bn` this changes the function: embeddings move by the quantization
    error (cosine ~0.999 to fp32 on the default model), so maps are close to, not equal to, fp32's.
    On this project's 2-core AVX512-VNNI machine the default model's forward took ~0.22 ms per image
    against 0.64 in fp32, each at its fastest batch (``bench/table1.py``'s sweep).
    Models that torch.fx cannot trace are returned unchanged, with a warning; the original model is
    never modified.
    """
    if model.training:
        raise ValueError("quantize_int8 needs an eval-mode model (call model.eval())")
    if calibration.dim() != 4 or len(calibration) == 0:
        raise ValueError(f"calibration must be a non-empty (B, 3, H, W) batch, got shape {tuple(calibration.shape)}")
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    extra = () if condition is None else (condition,)
    try:
        with warnings.catch_warnings():  # torch.ao's own deprecation notices are not the caller's business
            warnings.simplefilter("ignore")
            torch.backends.quantized.engine = "x86"
            prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"),
                                  example_inputs=(calibration[:1], *extra))
            with torch.no_grad():  # observers update their buffers in place
                for start in range(0, len(calibration), batch_size):
                    prepared(calibration[start : start + batch_size], *extra)
            quantized = convert_fx(prepared)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "run the model as it is"
        warnings.warn(f"int8 quantization skipped: torch.fx could not quantize the model ({exc})", stacklevel=2)
        return model
    return _keep_attributes(model, quantized).eval()
