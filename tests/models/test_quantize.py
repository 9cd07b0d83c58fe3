"""int8 quantization (``quantize=True``): the quantized forward stays close to fp32 on the bundled model,
its maps still find what a constructed model depends on, it is seeded, and what cannot use it is refused."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from sane.cli import main
from sane.errors import InputError
from sane.images import load_image
from sane.models import load_similarity
from sane.models.embedder import Embedder
from sane.models.optimize import quantize_int8
from sane.saliency import LIME, RISE, LearnedMask

ROOT = Path(__file__).resolve().parents[2]
QUERY, REFERENCE = ROOT / "examples" / "query.jpg", ROOT / "examples" / "reference.jpg"
BOX = (8, 24, 40, 56)  # (y0, y1, x0, x1) of the region ConvRegionModel sees: whole 8 px blocks of blocks64


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def _quantized_modules(model: nn.Module) -> list[str]:
    return [type(m).__module__ for m in model.modules() if "quantized" in type(m).__module__]


def test_int8_rise_on_the_bundled_model_is_close_to_fp32_and_leaves_the_model_alone():
    model, pre = load_similarity()
    q, r = load_image(QUERY, pre), load_image(REFERENCE, pre)
    plain = RISE(model, n_masks=300, seed=1, batch_size=64).explain(q, r)
    int8 = RISE(model, n_masks=300, seed=1, batch_size=64, channels_last=True, quantize=True)
    assert not int8.embedder.calibrated
    result = int8.explain(q, r)
    assert int8.embedder.calibrated and _quantized_modules(int8.model), "the generator must run an int8 model"
    assert not _quantized_modules(model) and next(model.parameters()).dtype == torch.float32
    assert result.similarity == pytest.approx(plain.similarity, abs=1e-2)
    assert _corr(result.query_map, plain.query_map) > 0.98
    # The calibration is kept: a second map with the same generator uses the same int8 model.
    quantized = int8.model
    again = int8.explain(q, r)
    assert int8.model is quantized
    torch.testing.assert_close(again.query_map, result.query_map)


class ConvRegionModel(nn.Module):
    """Convolutions, then only the box ``(y0, y1, x0, x1)`` pooled and projected: torch.fx can quantize it,
    and its saliency must peak in the box."""

    def __init__(self, box: tuple[int, int, int, int]):
        super().__init__()
        torch.manual_seed(0)
        self.box = box
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0, y1, x0, x1 = self.box
        return self.head(self.pool(self.features(x)[:, :, y0:y1, x0:x1]).flatten(1))


def test_int8_maps_peak_on_the_region_the_model_sees_and_are_seeded(blocks64, one_thread):
    model = ConvRegionModel(BOX).eval()
    q, r = blocks64, blocks64.clone()
    box = torch.zeros((64, 64), dtype=torch.bool)
    box[BOX[0] : BOX[1], BOX[2] : BOX[3]] = True
    for make in (lambda: RISE(model, n_masks=400, grid=8, batch_size=100, seed=5, quantize=True),
                 lambda: LIME(model, n_samples=300, batch_size=100, seed=5, quantize=True, segmentation="slic")):
        generator = make()
        first, second = generator.explain(q, r), make().explain(q, r)
        assert _quantized_modules(generator.model)
        torch.testing.assert_close(first.query_map, second.query_map, rtol=0, atol=0)
        top = first.query_map >= first.query_map.max() - 1e-6  # RISE: the peak pixel; LIME: its best region
        assert float(box[top].float().mean()) > 0.5, f"{first.method} int8 map peaks outside the region"


def test_embedder_calibrates_on_its_first_batch_unless_told():
    model, _ = load_similarity()
    x = torch.randn(6, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    fp32 = Embedder(model)(x)
    lazy = Embedder(model, quantize=True)
    out = lazy(x)  # no calibrate(): the first batch is the calibration set
    assert lazy.calibrated and (out * fp32).sum(1).min() > 0.99
    explicit = Embedder(model, quantize=True)
    explicit.calibrate(x)
    torch.testing.assert_close(explicit(x), out)


def test_int8_is_refused_where_it_cannot_work():
    model, _ = load_similarity()
    with pytest.raises(InputError, match="cannot be combined with amp"):
        RISE(model, quantize=True, amp=True)
    with pytest.raises(InputError, match="cannot be combined with amp or compile"):
        Embedder(model, quantize=True, compile=True)
    with pytest.raises(InputError, match="CPU only"):
        Embedder(model, quantize=True, device="cuda")
    with pytest.raises(InputError, match="no gradients"):
        LearnedMask(model, quantize=True)
    with pytest.raises(ValueError, match="eval-mode"):
        quantize_int8(nn.Sequential(nn.Conv2d(3, 4, 3)).train(), torch.randn(2, 3, 8, 8))

    class Branchy(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return y.mean((2, 3)) if y.sum() > 0 else -y.mean((2, 3))

    branchy = Branchy().eval()
    with pytest.warns(UserWarning, match="int8 quantization skipped"):
        assert quantize_int8(branchy, torch.randn(2, 3, 16, 16)) is branchy


def test_explain_cli_int8(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["explain", str(QUERY), str(REFERENCE), "--out", str(out), "--n-masks", "200", "--int8",
            "--no-attributes"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.ao's deprecation notices must not reach the user
        assert main(argv) == 0
    report = json.loads((out / "result.json").read_text())
    assert report["options"]["int8"] is True
    model, pre = load_similarity()
    fp32 = RISE(model, n_masks=200).explain(load_image(QUERY, pre), load_image(REFERENCE, pre))
    assert report["similarity"] == pytest.approx(fp32.similarity, abs=1e-2)
    assert main(["explain", str(QUERY), str(REFERENCE), "--out", str(out), "--int8", "--fast"]) == 2
    assert "int8 replaces fast/amp" in capsys.readouterr().err
