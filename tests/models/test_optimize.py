"""Conv-BN fusion: the fused model computes the same function (and gradients), generators built with
``fuse=True`` give the same maps, and what cannot be fused is refused or passed through with a warning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sane.models import build_embedding
from sane.models.embedder import Embedder
from sane.models.optimize import fuse_conv_bn, has_batchnorm
from sane.saliency import RISE
from sane.serving.worker.config import ServingConfig


def _trained_bn_model(arch: str = "compact", size: int = 64) -> nn.Module:
    """A model whose BatchNorm layers hold non-trivial running statistics (so folding matters)."""
    torch.manual_seed(0)
    model = build_embedding(arch, dim=16)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, size, size) * 2 + 0.5)
    return model.eval()


@pytest.mark.parametrize("arch", ["compact", "resnet18"])
def test_fused_model_has_no_batchnorm_and_same_outputs_and_gradients(arch):
    model = _trained_bn_model(arch)
    fused = fuse_conv_bn(model)
    assert has_batchnorm(model) and not has_batchnorm(fused)
    assert fused.dim == model.dim and fused.arch == model.arch
    x = torch.randn(4, 3, 64, 64, requires_grad=True)
    out, out_fused = model(x), fused(x)
    torch.testing.assert_close(out_fused, out, rtol=1e-4, atol=1e-4)
    (g,) = torch.autograd.grad(out.square().sum(), x)
    (g_fused,) = torch.autograd.grad(out_fused.square().sum(), x)
    torch.testing.assert_close(g_fused, g, rtol=1e-3, atol=1e-4)
    assert has_batchnorm(model), "the original model must be left untouched"


def test_rise_with_fuse_and_channels_last_gives_the_same_map():
    model = _trained_bn_model()
    q, r = torch.randn(3, 64, 64), torch.randn(3, 64, 64)
    plain = RISE(model, n_masks=64, grid=4, batch_size=32).explain(q, r)
    fast = RISE(model, n_masks=64, grid=4, batch_size=32, fuse=True, channels_last=True).explain(q, r)
    assert fast.similarity == pytest.approx(plain.similarity, abs=1e-4)
    torch.testing.assert_close(fast.query_map, plain.query_map, rtol=1e-3, atol=1e-4)


def test_training_mode_is_refused_and_untraceable_models_pass_through():
    model = build_embedding("compact", dim=8)
    with pytest.raises(ValueError, match="eval-mode"):
        fuse_conv_bn(model.train())
    scripted = torch.jit.trace(model.eval(), torch.randn(1, 3, 32, 32))
    with pytest.warns(UserWarning, match="TorchScript"):
        assert fuse_conv_bn(scripted) is scripted
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()).eval()
    assert fuse_conv_bn(plain) is plain  # nothing to fuse: no copy

    class Branchy(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return y.mean((2, 3)) if y.sum() > 0 else -y.mean((2, 3))

    branchy = Branchy().eval()
    with pytest.warns(UserWarning, match="could not trace"):
        assert fuse_conv_bn(branchy) is branchy
    assert Embedder(branchy, fuse=False).model is branchy


def test_serving_config_reads_fuse_and_rejects_non_booleans():
    assert ServingConfig.from_model_yaml({"handler": {"fuse": True}}).fuse is True
    with pytest.raises(ValueError, match="handler.fuse must be true or false"):
        ServingConfig.from_model_yaml({"handler": {"fuse": "yes"}})


@pytest.mark.slow
def test_compiled_forward_gives_the_same_map_and_leaves_gradients_to_the_eager_model():
    model = _trained_bn_model()
    q, r = torch.randn(3, 64, 64), torch.randn(3, 64, 64)
    plain = RISE(model, n_masks=48, grid=4, batch_size=16).explain(q, r)
    compiled = RISE(model, n_masks=48, grid=4, batch_size=16, fuse=True, compile=True)
    assert compiled.embedder._infer is not compiled.model  # the learned mask's gradients use the eager copy
    fast = compiled.explain(q, r)
    assert fast.similarity == pytest.approx(plain.similarity, abs=1e-4)
    torch.testing.assert_close(fast.query_map, plain.query_map, rtol=1e-3, atol=1e-4)


def test_amp_with_fuse_casts_the_private_copy_once_and_keeps_the_map():
    model = _trained_bn_model()
    q, r = torch.randn(3, 64, 64), torch.randn(3, 64, 64)
    plain = RISE(model, n_masks=64, grid=4, batch_size=32).explain(q, r)
    fast = RISE(model, n_masks=64, grid=4, batch_size=32, fuse=True, channels_last=True, amp=True)
    assert next(fast.model.parameters()).dtype == torch.bfloat16  # weights cast once, not per call
    assert next(model.parameters()).dtype == torch.float32  # the caller's model untouched
    result = fast.explain(q, r)
    assert result.query_map.dtype == torch.float32
    corr = torch.corrcoef(torch.stack([result.query_map.flatten(), plain.query_map.flatten()]))[0, 1]
    assert corr > 0.99 and result.similarity == pytest.approx(plain.similarity, abs=2e-2)
