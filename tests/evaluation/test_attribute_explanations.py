"""Attribute insertion/deletion (SPEC §5) and its check against the exact counterfactual (SPEC §6)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from sane.cli import main
from sane.data import ATTRIBUTES, Scene, open_dataset, random_scene, render, write_dataset
from sane.evaluation.attribute_explanations import (
    _ranker_picks,
    averaged_predictions,
    nearest_in_prediction_space,
    paired_difference,
    retrieval_delta,
)
from sane.explain.ranker import AttributeRanker
from sane.metrics.counterfactual import best_factor, counterfactual_deltas
from sane.models import Embedder, load_similarity
from sane.models.attribute_predictors import RandomAttributes
from sane.models.checkpoint import default_weights_path

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


class FirstTwoChannels(nn.Module):
    """Embeds an image as the means of its first two channels: constant images give known cosines."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))[:, :2]


def constant(c0: float, c1: float) -> torch.Tensor:
    return torch.tensor([c0, c1, 0.0]).view(3, 1, 1).expand(3, 8, 8).clone()


def test_delta_by_hand_with_a_constructed_similarity_model():
    # q = (1, 0) and r = (0, 1) are orthogonal: s(q, r) = 0. Database colours and their s(x, r):
    # (1,1) -> 1/sqrt2, (0,1) -> 1, (1,0) -> 0.
    colours = [(1, 1), (0, 1), (1, 0), (1, 1), (1, 0), (0, 1)]
    emb = Embedder(FirstTwoChannels().eval())(torch.stack([constant(*c) for c in colours] + [constant(1, 0), constant(0, 1)]))
    db, q, r = emb[:6].numpy(), emb[6].numpy(), emb[7].numpy()
    sim_to_r, s_qr = db @ r, float(q @ r)
    assert s_qr == pytest.approx(0.0, abs=1e-6)
    has = np.array([1, 1, 0, 0, 0, 0], dtype=bool)  # attribute 0
    pred_q = np.array([0.9, 0.5, 0.5])
    preds = np.array([[0.9, 0.5, 0.6], [0.9, 0.5, 0.55], [0.1, 0.9, 0.9], [0.1, 0.6, 0.5], [0.1, 0.55, 0.5],
                      [0.1, 0.7, 0.5]])
    # Deletion: lacking attribute 0 are rows 2..5; nearest two (column 0 left out) are 4 (0.05) and 3 (0.1).
    d, idx = retrieval_delta(sim_to_r, s_qr, pred_q, preds, ~has, k=2, ignore=0)
    assert sorted(idx.tolist()) == [3, 4]
    assert d == pytest.approx((1 / math.sqrt(2) + 0) / 2 - 0, abs=1e-6)
    # K larger than the pool takes the whole pool: rows 2..5 -> (0 + 1/sqrt2 + 0 + 1) / 4.
    d, idx = retrieval_delta(sim_to_r, s_qr, pred_q, preds, ~has, k=5, ignore=0)
    assert sorted(idx.tolist()) == [2, 3, 4, 5]
    assert d == pytest.approx((1 / math.sqrt(2) + 1) / 4, abs=1e-6)
    # Insertion: rows having attribute 0 (0 and 1): (1/sqrt2 + 1) / 2.
    d, idx = retrieval_delta(sim_to_r, s_qr, pred_q, preds, has, k=5, ignore=0)
    assert sorted(idx.tolist()) == [0, 1] and d == pytest.approx((1 / math.sqrt(2) + 1) / 2, abs=1e-6)
    # Nothing qualifies: NaN, no rows.
    d, idx = retrieval_delta(sim_to_r, s_qr, pred_q, preds, np.zeros(6, dtype=bool))
    assert math.isnan(d) and len(idx) == 0


def test_retrieval_takes_the_nearest_images_lacking_or_having_the_attribute():
    rng = np.random.default_rng(0)
    preds = rng.random((200, 6))
    labels = rng.random((200, 6)) < 0.4
    pred_q = rng.random(6)
    cols = [1, 2, 3, 4, 5]
    for candidates in (~labels[:, 0], labels[:, 0]):
        idx = nearest_in_prediction_space(pred_q, preds, candidates, k=5, ignore=0)
        assert len(idx) == 5 and candidates[idx].all()
        dist = np.linalg.norm(preds[:, cols] - pred_q[cols], axis=1)
        others = np.setdiff1d(np.flatnonzero(candidates), idx)
        assert dist[idx].max() <= dist[others].min()
    # Column 0 is left out: an image differing from q only there is at distance 0, the nearest.
    preds[7] = pred_q
    preds[7, 0] = pred_q[0] + 5
    labels[7, 0] = False
    assert nearest_in_prediction_space(pred_q, preds, ~labels[:, 0], k=1, ignore=0).tolist() == [7]
    assert nearest_in_prediction_space(pred_q, preds, ~labels[:, 0], k=1).tolist() != [7]


def test_predictions_are_averaged_over_models_by_attribute_name():
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a, b = RandomAttributes(["x", "y"], seed=1), RandomAttributes(["y", "z"], seed=2)
    out = averaged_predictions([a, b], [images, images], ["x", "y", "z", "w"])
    za, zb = a(images)[0].sigmoid().numpy(), b(images)[0].sigmoid().numpy()
    np.testing.assert_allclose(out[:, 0], za[:, 0], atol=1e-6)
    np.testing.assert_allclose(out[:, 1], (za[:, 1] + zb[:, 0]) / 2, atol=1e-6)
    np.testing.assert_allclose(out[:, 2], zb[:, 1], atol=1e-6)
    np.testing.assert_allclose(out[:, 3], 0.5)


def test_rankers_delete_a_predicted_present_attribute_and_insert_one_the_reference_has_and_the_query_lacks():
    model = RandomAttributes(list(ATTRIBUTES), seed=0)
    ranker = AttributeRanker(model)
    gen = torch.Generator().manual_seed(3)
    query, reference = torch.randn(3, 48, 48, generator=gen), torch.randn(3, 48, 48, generator=gen)
    sal_q, sal_r = torch.rand(48, 48, generator=gen), torch.rand(48, 48, generator=gen)
    deletion, insertion = _ranker_picks(ranker, query, reference, sal_q, sal_r)
    tq, tr = ranker.terms(query, sal_q), ranker.terms(reference, sal_r)
    in_q = {a for a, on in zip(ATTRIBUTES, (tq["z"] >= 0).tolist()) if on}
    in_r = {a for a, on in zip(ATTRIBUTES, (tr["z"] >= 0).tolist()) if on}
    assert deletion == ranker.rank(query, sal_q, top_k=1)[0].attribute and deletion in in_q
    lacking = [i for i, a in enumerate(ATTRIBUTES) if a in in_r - in_q]
    assert len(lacking) > 1  # the check below would be vacuous otherwise
    # Ranked on the reference, with the reference's map: not by the query's terms.
    assert insertion == ATTRIBUTES[max(lacking, key=lambda i: float(tr["score"][i]))]
    # Insertion may be limited to attributes the database has; none insertable: no pick.
    worst = ATTRIBUTES[min(lacking, key=lambda i: float(tr["score"][i]))]
    assert _ranker_picks(ranker, query, reference, sal_q, sal_r, {worst, deletion}) == (deletion, worst)
    assert _ranker_picks(ranker, query, reference, sal_q, sal_r, in_q) == (deletion, None)
    # A reference with nothing the query lacks (the query itself): no insertion.
    assert _ranker_picks(ranker, query, query, sal_q, sal_q)[1] is None


def test_counterfactual_deltas_average_every_other_value_exactly():
    """With an embedder that sees only the object's colour, Δ_cf(colour) is the exact mean over the other
    colours and every other factor's Δ_cf is about 0."""
    from sane.data import COLOURS

    def colour_embedder(batch: torch.Tensor) -> torch.Tensor:
        # The object's colour is the centre pixel (a large solid object in the middle).
        centre = batch[:, :, batch.shape[2] // 2, batch.shape[3] // 2]
        return torch.nn.functional.normalize(centre + 3.0, dim=1)

    pre = load_similarity()[1]
    q = Scene("square", "red", "solid", "large", 0.5, 0.5, "plain", seed=7)
    reference = pre.to_tensor(render(q.replace(seed=8), pre.size).image)
    deltas = counterfactual_deltas(colour_embedder, pre, q, reference, 2, np.random.default_rng(0))
    e_q = colour_embedder(pre.to_tensor(render(q, pre.size).image)[None])[0]
    e_r = colour_embedder(reference[None])[0]
    others = [colour_embedder(pre.to_tensor(render(q.replace(colour=c), pre.size).image)[None])[0]
              for c in COLOURS if c != "red"]
    expected = float((torch.stack(others) @ e_r).mean())
    assert deltas["colour"] == pytest.approx(expected - float(e_q @ e_r), abs=1e-5)
    assert deltas["colour"] < -0.05
    for f in ("shape", "pattern", "background"):  # the centre pixel stays the object's (shading aside)
        assert abs(deltas[f]) < 0.01
    assert best_factor(deltas) == "colour"


@pytest.mark.parametrize(("benchmark", "class_factors"), [("shapes", ("shape", "colour")),
                                                         ("shapes_bg", ("shape", "background"))])
def test_counterfactually_best_factor_of_a_bundled_model_is_one_its_classes_are_made_of(benchmark, class_factors):
    """Each bundled similarity model matches on the two factors its benchmark's classes are made of."""
    model, pre = load_similarity(default_weights_path(benchmark))
    embedder = Embedder(model, 64)
    rng = np.random.default_rng(0)

    bests = []
    for _ in range(4):
        q = random_scene(rng)
        r = random_scene(rng, **{f: getattr(q, f) for f in class_factors})
        deltas = counterfactual_deltas(embedder, pre, q, pre.to_tensor(render(r, pre.size).image), 3, rng)
        assert set(deltas) == {"shape", "colour", "pattern", "size", "position", "background"}
        assert min(deltas[f] for f in class_factors) < -0.2
        bests.append(best_factor(deltas))
    assert set(bests) <= set(class_factors)


def test_paired_difference_counts_only_pairs_both_methods_picked_for():
    hits = [{"SANE": True, "clf": False}, {"SANE": True, "clf": True}, {"SANE": False, "clf": True},
            {"SANE": True, "clf": False}, {"SANE": True}]  # the last pair: no pick by clf, left out
    d = paired_difference(hits, "SANE", "clf")
    diffs = np.array([1.0, 0.0, -1.0, 1.0])
    assert d["n"] == 4 and d["difference"] == pytest.approx(0.25)
    assert d["standard_error"] == pytest.approx(diffs.std(ddof=1) / 2)
    assert d["standard_error"] > 0
    empty = paired_difference([{"SANE": True}], "SANE", "clf")
    assert empty["n"] == 0 and math.isnan(empty["difference"])


@pytest.mark.parametrize(("command", "database"), [("eval-explanations", "split"), ("eval-attributes", None)])
def test_command_runs_end_to_end_and_prints_the_papers_table(tmp_path, capsys, command, database):
    """Both commands print the paper's table (eval-attributes without --model): the bundled Random,
    Attribute Classifier, FashionSearchNet and SANE rows with insertion, deletion, mAP, counterfactual top-1.
    The retrieval database is the test split or, by default on the synthetic data, every split."""
    write_dataset(tmp_path / "shapes", 84, image_size=112, progress=False)
    out = tmp_path / "report.json"
    extra = ["--database", database] if database else []
    assert main([command, "--data", str(tmp_path / "shapes"), "--pairs", "3", "--n-masks", "20",
                 "--k", "3", "--draws", "1", "--batch-size", "32", "--quiet", "--out", str(out), *extra]) == 0
    printed = capsys.readouterr().out
    assert "insertion ↑" in printed and "deletion ↓" in printed and "counterfactual top-1 ↑" in printed
    assert "mAP ↑" in printed and "Spearman" in printed
    methods = ("Random", "Attribute Classifier", "FashionSearchNet", "SANE")
    assert all(method in printed for method in methods)
    report = json.loads(out.read_text())
    assert report["n_pairs"] == 3 and list(report["methods"]) == list(methods)
    for row in report["methods"].values():
        assert 0 <= row["counterfactual_top1"] <= 1 and row["n_deletion"] == 3 and row["n_insertion"] <= 3
    assert report["methods"]["Random"]["n_insertion"] == 3
    n_test = len(open_dataset(tmp_path / "shapes", split="test"))
    assert n_test < 84
    assert report["database"] == (database or "all")
    assert report["n_database"] == (n_test if database == "split" else 84) - 2
    # Trained models predict the attributes far better than random scores.
    for method in methods[1:]:
        assert report["methods"][method]["mAP"] > report["methods"]["Random"]["mAP"] + 0.2
    assert sum(report["best_factor_counts"].values()) == 3 and report["agreement"]["n_items"] > 0
    # The paired margin is the difference of the two rows' top-1 (every method picked for all 3 pairs).
    paired = report["paired_top1"]
    assert set(paired) == {"Random", "Attribute Classifier", "FashionSearchNet"}
    for method, row in paired.items():
        expected = report["methods"]["SANE"]["counterfactual_top1"] - report["methods"][method]["counterfactual_top1"]
        assert row["n"] == 3 and row["difference"] == pytest.approx(expected)
    assert "± " in printed


def test_shapes_bg_benchmark_uses_its_bundled_models(tmp_path, capsys):
    """--benchmark shapes_bg: the bundled shape x background models, whose similarity matches on shape and
    background, so every pair's counterfactually best factor is one of those two."""
    data = tmp_path / "shapes_bg"
    write_dataset(data, 96, image_size=112, progress=False, classes_by=("shape", "background"))
    out = tmp_path / "report.json"
    assert main(["eval-attributes", "--benchmark", "shapes_bg", "--data", str(data), "--pairs", "4",
                 "--n-masks", "20", "--k", "3", "--draws", "1", "--batch-size", "32", "--quiet",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["methods"]) == ["Random", "Attribute Classifier", "FashionSearchNet", "SANE"]
    counts = report["best_factor_counts"]
    assert sum(counts.values()) == 4 and counts["shape"] + counts["background"] == 4
    for method in ("Attribute Classifier", "FashionSearchNet", "SANE"):
        assert report["methods"][method]["mAP"] > report["methods"]["Random"]["mAP"] + 0.2
