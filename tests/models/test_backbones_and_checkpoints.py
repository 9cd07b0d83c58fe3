"""Similarity networks: every architecture builds and embeds; checkpoints and TorchScript load."""

from __future__ import annotations

import pytest
import torch

from sane.images import Preprocess
from sane.models import build_embedding, default_weights_path, load_similarity, save_similarity


@pytest.mark.parametrize("arch,size", [("compact", 112), ("resnet18", 64), ("resnet50", 64)])
def test_architectures_map_images_to_embeddings(arch, size):
    model = build_embedding(arch, dim=64).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 64) and torch.isfinite(out).all()


def test_unknown_architecture_and_compact_weights_are_refused():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_embedding("vgg")
    with pytest.raises(ValueError, match="no torchvision weights"):
        build_embedding("compact", weights="IMAGENET1K_V1")


def test_checkpoint_round_trip_keeps_outputs_and_preprocessing(tmp_path):
    model = build_embedding("compact", dim=16).eval()
    pre = Preprocess(size=96, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    save_similarity(tmp_path / "m.pt", model, pre, note="test")
    loaded, loaded_pre = load_similarity(tmp_path / "m.pt")
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x))
    assert loaded_pre == pre and not loaded.training


def test_torchscript_models_load(tmp_path):
    model = build_embedding("compact", dim=8).eval()
    torch.jit.trace(model, torch.randn(1, 3, 112, 112)).save(str(tmp_path / "ts.pt"))
    loaded, pre = load_similarity(tmp_path / "ts.pt")
    x = torch.randn(1, 3, 112, 112)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x))
    assert pre.size == 112


def test_bad_model_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_similarity(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="neither a sane checkpoint nor a TorchScript"):
        load_similarity(tmp_path / "junk.pt")


def test_default_weights_are_bundled_and_small():
    path = default_weights_path()
    assert path.is_file() and path.stat().st_size < 5_000_000
    model, pre = load_similarity()
    assert model.arch == "compact" and pre.size == 112


def test_every_bundled_benchmark_has_its_weights_and_its_data_recipe():
    """The checkpoint folder's benchmarks and the evaluation commands' --benchmark choices are one list."""
    from sane.data.benchmarks import BENCHMARK_DATA
    from sane.models.attribute_predictors import default_attribute_weights
    from sane.models.checkpoint import BENCHMARKS

    assert set(BENCHMARK_DATA) == set(BENCHMARKS)
    for benchmark in BENCHMARKS:
        assert default_weights_path(benchmark).is_file()
        for kind in ("sane", "classifier", "fashionsearchnet"):
            assert default_attribute_weights(kind, benchmark).is_file()
