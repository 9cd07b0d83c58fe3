"""Training the attribute models: validation mAP, resuming, calibration, the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sane.cli import main
from sane.data import ATTRIBUTES, AttributeDataset
from sane.images import Preprocess
from sane.metrics.average_precision import mean_average_precision
from sane.models import (
    load_attributes,
    predict_attributes,
    save_similarity,
)
from sane.train.attribute_model import train_attributes
from sane.train.saliency_cache import SaliencyCache, build_saliency_cache
from sane.train.validation_split import validation_split

SMALL = 48  # image side of the test data: 6x6 activation maps with the compact trunk

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


# -- training -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_improves_validation_map_and_keeps_the_best_checkpoint(shapes48, untrained_similarity, tmp_path):
    pre = Preprocess(SMALL)
    # Maps for one image per class: the saliency term is active in most batches.
    build_saliency_cache(shapes48, tmp_path / "cache", untrained_similarity, pre, n_masks=8, batch_size=8, refs=2,
                         size=12, chunk_size=64, limit=34, progress=False)
    report = train_attributes(shapes48, tmp_path / "sane.pt", "sane", cache=tmp_path / "cache", image_size=SMALL,
                              epochs=3, batch_size=16, lr=2e-3, lam=0.5, progress=False)
    assert report["best_map"] > report["initial_map"] + 0.1, report
    assert len(report["history"]) == 3 and report["best_map"] == max(report["history"])
    assert not (tmp_path / "sane.pt.state").exists()
    model, loaded_pre = load_attributes(tmp_path / "sane.pt")
    dataset = AttributeDataset(shapes48, "train", loaded_pre)
    val = np.flatnonzero(validation_split(dataset.targets))
    images = torch.stack([dataset[int(i)]["image"] for i in val])
    scores, _ = predict_attributes(model, images)
    assert mean_average_precision(scores, dataset.image_attributes[val]) == pytest.approx(report["best_map"], abs=1e-5)
    assert model.thresholds.shape == (len(ATTRIBUTES),)


def test_training_resumes_from_the_last_finished_epoch(shapes48, tmp_path, monkeypatch):
    import sane.train.attribute_model as module

    real_validate, calls = module._validate, []

    def validate_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # untrained model, epoch 1, then Ctrl-C during epoch 2's validation
            raise KeyboardInterrupt
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(module, "_validate", validate_then_interrupt)
    options = {"image_size": SMALL, "epochs": 2, "batch_size": 32, "limit": 32, "progress": False}
    with pytest.raises(KeyboardInterrupt):
        train_attributes(shapes48, tmp_path / "c.pt", "classifier", **options)
    assert (tmp_path / "c.pt.state").is_file() and (tmp_path / "c.pt").is_file()
    first_epoch_map = torch.load(tmp_path / "c.pt.state", weights_only=True)["history"][0]
    calls.clear()
    report = train_attributes(shapes48, tmp_path / "c.pt", "classifier", **options)
    assert len(calls) == 1  # only epoch 2 ran: no re-validation of the untrained model, no epoch 1
    assert report["history"][0] == first_epoch_map and len(report["history"]) == 2


def test_sane_needs_a_cache_and_random_is_not_trained(shapes48, tmp_path):
    with pytest.raises(ValueError, match="saliency cache"):
        train_attributes(shapes48, tmp_path / "m.pt", "sane", cache=None, progress=False)
    with pytest.raises(ValueError, match="kind must be one of"):
        train_attributes(shapes48, tmp_path / "m.pt", "random", progress=False)


@pytest.mark.slow
def test_cli_caches_trains_and_evaluates(shapes48, untrained_similarity, tmp_path, capsys):
    save_similarity(tmp_path / "sim.pt", untrained_similarity, Preprocess(SMALL))
    assert main(["cache-saliency", "--data", shapes48, "--out", str(tmp_path / "cache"), "--model", str(tmp_path / "sim.pt"),
                 "--n-masks", "8", "--batch-size", "8", "--refs", "2", "--size", "12", "--limit", "16", "--quiet"]) == 0
    assert len(SaliencyCache(tmp_path / "cache")) == 16
    for kind in ("sane", "fashionsearchnet"):
        assert main(["train-attributes", "--model", kind, "--data", shapes48, "--cache", str(tmp_path / "cache"),
                     "--out", str(tmp_path / f"{kind}.pt"), "--image-size", str(SMALL), "--epochs", "1",
                     "--limit", "32", "--batch-size", "32", "--quiet"]) == 0
    assert main(["eval-attributes", "--model", str(tmp_path / "sane.pt"), "--data", shapes48, "--limit", "12", "--quiet",
                 "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "eval.json")]) == 0
    out = capsys.readouterr().out
    assert "validation mAP" in out and "pointing" in out and "L_hm" in out
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["n_images"] == 12 and 0 <= report["groups"]["colour"]["pointing_game"] <= 1
    assert report["saliency_agreement"]["n_images"] == 16 and 0 <= report["saliency_agreement"]["L_hm"] <= 1
    assert load_attributes(tmp_path / "fashionsearchnet.pt")[0].kind == "fashionsearchnet"


def test_best_f1_thresholds_cut_where_f1_peaks():
    from sane.train.attribute_model import best_f1_thresholds, positive_median_thresholds

    scores = torch.tensor([[0.9, 1.0], [0.8, 1.0], [0.3, 1.0], [0.2, 1.0], [0.1, 1.0]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    # Keeping the top 4 gives F1 2*3/(4+3) = 0.857, the best cut: between 0.2 and 0.1. No positives: 0.
    assert best_f1_thresholds(scores, labels) == pytest.approx([0.15, 0.0])
    # The paper's median of positives (0.8) would drop the positive scored 0.2.
    assert positive_median_thresholds(scores, labels)[0] == pytest.approx(0.8)
