"""The `sane` command as a user runs it: files written, numbers consistent, errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sane.cli import main
from sane.data import AttributeDataset, write_dataset
from sane.images import load_image
from sane.models import load_similarity
from sane.saliency import RISE
from sane.train.similarity_model import train_similarity

ROOT = Path(__file__).resolve().parents[2]
QUERY, REFERENCE = ROOT / "examples" / "query.jpg", ROOT / "examples" / "reference.jpg"


def test_explain_writes_overlays_maps_and_a_json_equal_to_the_library(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["explain", str(QUERY), str(REFERENCE), "--out", str(out), "--mode", "both", "--n-masks", "200",
            "--seed", "3"]
    assert main(argv) == 0
    report = json.loads((out / "result.json").read_text())
    assert {"query_saliency.png", "reference_saliency.png", "query_saliency.npy"} <= set(report["files"])
    # Overlays at the image's own resolution, enlarged to 448 px on the long side for display; a card.
    assert Image.open(QUERY).size == (112, 112) and Image.open(out / "query_saliency.png").size == (448, 448)
    card = Image.open(out / "card.png")
    assert "card.png" in report["files"] and card.width > 2 * 448 and card.height > 448
    model, pre = load_similarity()
    expected = RISE(model, n_masks=200, seed=3).explain(load_image(QUERY, pre), load_image(REFERENCE, pre), "both")
    assert report["similarity"] == pytest.approx(expected.similarity, abs=1e-6)
    saved = np.load(out / "query_saliency.npy")
    assert saved.dtype == np.float16 and saved.shape == (112, 112)
    np.testing.assert_allclose(saved, expected.query_map.numpy(), atol=2e-3)
    assert "similarity" in capsys.readouterr().out


@pytest.mark.slow
def test_explain_reports_bad_input_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    proc = subprocess.run(
        [sys.executable, "-m", "sane.cli", "explain", str(bad), str(REFERENCE), "--out", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2
    assert "sane: error: query: cannot read image" in proc.stderr and "Traceback" not in proc.stderr
    assert main(["explain", str(tmp_path / "missing.png"), str(REFERENCE)]) == 2
    assert main(["explain", str(QUERY), str(REFERENCE), "--n-masks", "0", "--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_grayscale_and_rgba_inputs_are_explained_as_the_rgb_images_they_show(tmp_path):
    gray = Image.open(QUERY).convert("L")
    gray.save(tmp_path / "gray.png")
    Image.open(REFERENCE).convert("RGBA").save(tmp_path / "rgba.png")  # opaque: it shows the RGB image
    gray.convert("RGB").save(tmp_path / "gray_rgb.png")
    Image.open(REFERENCE).convert("RGB").save(tmp_path / "rgb.png")
    runs = {}
    for name, (q, r) in {"given": ("gray.png", "rgba.png"), "rgb": ("gray_rgb.png", "rgb.png")}.items():
        out = tmp_path / name
        assert main(["explain", str(tmp_path / q), str(tmp_path / r), "--out", str(out), "--method", "sliding_window",
                     "--no-attributes"]) == 0
        runs[name] = (json.loads((out / "result.json").read_text()), np.load(out / "query_saliency.npy"))
    (given, given_map), (rgb, rgb_map) = runs["given"], runs["rgb"]
    assert given["method"] == "sliding_window" and given["similarity"] == rgb["similarity"]
    np.testing.assert_array_equal(given_map, rgb_map)
    assert np.ptp(given_map) > 0  # a real map, not a constant


@pytest.mark.slow
def test_data_synth_then_eval_saliency_prints_the_table(tmp_path, capsys):
    data = tmp_path / "shapes"
    assert main(["data", "synth", "--out", str(data), "--n", "84", "--quiet"]) == 0
    assert (data / "predicate-matrix-binary.txt").is_file()
    out_json = tmp_path / "table.json"
    assert main(["eval-saliency", "--data", str(data), "--pairs", "3", "--n-masks", "150",
                 "--out", str(out_json)]) == 0
    table = json.loads(out_json.read_text())
    assert set(table) == {"rise", "sliding_window", "random"}
    assert all(0 <= row["pointing_game"] <= 1 for row in table.values())
    assert "insertion" in capsys.readouterr().out


@pytest.mark.slow
def test_train_similarity_resumes_after_an_interruption(tmp_path, monkeypatch, capsys):
    import sane.train.similarity_model as training

    data = tmp_path / "shapes"
    write_dataset(data, 84, seed=1, image_size=48, progress=False)
    out = tmp_path / "m.pt"
    real_batches = training.pk_batches
    epochs_run = []

    def interrupt_in_epoch_2(labels, *args):
        epochs_run.append(1)
        if len(epochs_run) == 2:
            raise KeyboardInterrupt
        return real_batches(labels, *args)

    monkeypatch.setattr(training, "pk_batches", interrupt_in_epoch_2)
    options = {"image_size": 48, "epochs": 3, "classes_per_batch": 4, "per_class": 2}
    with pytest.raises(KeyboardInterrupt):
        train_similarity(data, out, **options)
    state = out.with_name(out.name + ".state")
    assert state.is_file() and not out.exists()
    monkeypatch.setattr(training, "pk_batches", real_batches)
    calls = []
    monkeypatch.setattr(training, "pk_batches", lambda *a: calls.append(1) or real_batches(*a))
    train_similarity(data, out, **options)
    assert "resuming from epoch 1" in capsys.readouterr().out
    assert len(calls) == 2 and not state.exists()  # epochs 2 and 3 only
    model, pre = load_similarity(out)
    ds = AttributeDataset(data, "test", pre)
    with torch.inference_mode():
        emb = model(torch.stack([ds[i]["image"] for i in range(4)]))
    assert pre.size == 48 and emb.shape == (4, 64) and torch.isfinite(emb).all()
