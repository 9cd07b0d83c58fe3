"""The attribute ranker (SPEC §4): candidates, match, score, fallback, prior, and `sane explain`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sane.cli import main
from sane.data.synthetic import ATTRIBUTE_FACTORS, ATTRIBUTES, Scene, render
from sane.evaluation.prior import estimate_prior_counterfactual, same_class_pairs
from sane.explain import AttributeRanker, load_prior, save_prior
from sane.explain.map_match import DEFAULT_TAU, saliency_target
from sane.images import load_image
from sane.models import load_similarity
from sane.models.attribute_predictors import load_attributes
from sane.saliency import RISE

ROOT = Path(__file__).resolve().parents[2]
QUERY, REFERENCE = ROOT / "examples" / "query.jpg", ROOT / "examples" / "reference.jpg"
HW = (4, 4)


class FixedAttributes(nn.Module):
    """An attribute model that returns the same chosen scores z (A,) and maps H (A, h, w) for any image."""

    def __init__(self, names: list[str], z: list[float], maps: torch.Tensor, thresholds=None):
        super().__init__()
        self.attributes = names
        self.z = torch.tensor(z, dtype=torch.float32)
        self.maps = maps.float()
        self.thresholds = None if thresholds is None else torch.tensor(thresholds)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.z.expand(len(x), -1), self.maps.expand(len(x), -1, -1, -1)


def corner_saliency() -> torch.Tensor:
    """A (16, 16) saliency map with a bright top-left corner."""
    s = torch.zeros(16, 16)
    s[:4, :4] = 1.0
    return s


def matching_map(saliency: torch.Tensor) -> torch.Tensor:
    """An (h, w) activation map whose spatial softmax equals the ranker's saliency target."""
    return saliency_target(saliency, HW, DEFAULT_TAU).log().reshape(HW)


def model_with(z: list[float], thresholds=None) -> FixedAttributes:
    """Four attributes: a's map matches the corner saliency, b's is flat, c's peaks elsewhere, d's matches."""
    s = corner_saliency()
    other = torch.zeros(HW)
    other[-1, -1] = 5.0
    maps = torch.stack([matching_map(s), torch.zeros(HW), other, matching_map(s)])
    return FixedAttributes(["a", "b", "c", "d"], z, maps, thresholds)


QUERY_T = torch.zeros(3, 16, 16)


def test_candidates_respect_thresholds_given_or_from_the_model():
    model = model_with([2.0, -1.0, 0.5, 3.0], thresholds=[0.0, 0.0, 1.0, 0.0])
    names = {e.attribute for e in AttributeRanker(model).rank(QUERY_T, corner_saliency(), top_k=5)}
    assert names == {"a", "d"}  # b below 0, c below its own threshold 1
    explicit = AttributeRanker(model, thresholds=[-2.0, -2.0, -2.0, 5.0]).rank(QUERY_T, corner_saliency())
    assert {e.attribute for e in explicit} == {"a", "b", "c"}
    assert all(e.present for e in explicit)
    top1 = AttributeRanker(model).rank(QUERY_T, corner_saliency(), top_k=1)
    assert len(top1) == 1


def test_match_is_one_for_the_target_distribution_and_lower_otherwise():
    ranker = AttributeRanker(model_with([1.0, 1.0, 1.0, 1.0]), thresholds=[0.0] * 4)
    t = ranker.terms(QUERY_T, corner_saliency())
    assert t["match"][0] == pytest.approx(1.0, abs=1e-5)
    assert t["match"][1] < 0.99 and t["match"][2] < t["match"][1]  # flat beats the wrong peak
    assert ((t["match"] >= 0) & (t["match"] <= 1)).all()
    # match is 1 - d / sqrt(2) with d the L2 distance of the two distributions
    p = torch.zeros(HW).flatten().softmax(-1)
    target = saliency_target(corner_saliency(), HW, DEFAULT_TAU)
    assert t["match"][1] == pytest.approx(1 - float((p - target).norm()) / math.sqrt(2), abs=1e-5)
    assert t["maps"].shape == (4, *HW)


def test_score_formula_and_ordering_with_a_prior_and_gamma():
    z = [2.0, 1.0, 1.5, 0.2]
    model = model_with(z, thresholds=[0.0] * 4)
    prior = {"a": 0.1, "b": 0.6, "c": 0.3, "d": 0.9}
    w, gamma = 0.3, 2.0
    ranker = AttributeRanker(model, prior=prior, w=w, gamma=gamma)
    t = ranker.terms(QUERY_T, corner_saliency())
    ranked = ranker.rank(QUERY_T, corner_saliency(), top_k=4)
    for e in ranked:
        i = model.attributes.index(e.attribute)
        conf = 1 / (1 + math.exp(-z[i]))
        assert e.confidence == pytest.approx(conf, abs=1e-6)
        assert e.prior == pytest.approx(prior[e.attribute])
        assert e.match == pytest.approx(float(t["match"][i]), abs=1e-6)
        assert e.score == pytest.approx(prior[e.attribute] ** gamma * (w * conf + (1 - w) * e.match), abs=1e-6)
        assert e.activation_map.shape == HW
    scores = [e.score for e in ranked]
    assert scores == sorted(scores, reverse=True)
    assert [e.attribute for e in ranked][0] == "d"  # high prior and a perfect match
    # a uniform prior puts a (most confident, perfect match) first instead
    assert AttributeRanker(model, thresholds=[0.0] * 4).rank(QUERY_T, corner_saliency())[0].attribute == "a"
    # gamma = 0 ignores the prior
    flat = AttributeRanker(model, prior=prior, gamma=0.0).rank(QUERY_T, corner_saliency())
    assert flat[0].attribute == "a" and flat[0].prior == pytest.approx(0.1)


def test_fallback_to_the_most_confident_when_nothing_passes():
    model = model_with([2.0, -1.0, 0.5, 3.0], thresholds=[10.0] * 4)
    ranked = AttributeRanker(model).rank(QUERY_T, corner_saliency(), top_k=2)
    assert {e.attribute for e in ranked} == {"d", "a"}
    assert not any(e.present for e in ranked)
    scores = [e.score for e in ranked]
    assert scores == sorted(scores, reverse=True)


def test_bad_arguments_are_rejected():
    model = model_with([0.0] * 4)
    with pytest.raises(ValueError, match="unknown"):
        AttributeRanker(model, prior={"zebra": 1.0})
    with pytest.raises(ValueError, match="thresholds"):
        AttributeRanker(model, thresholds=[0.0, 0.0])
    with pytest.raises(ValueError, match="top_k"):
        AttributeRanker(model).rank(QUERY_T, corner_saliency(), top_k=0)


def test_prior_json_round_trip(tmp_path):
    prior = {name: (i + 1) / 100 for i, name in enumerate(ATTRIBUTES)}
    save_prior(tmp_path / "prior.json", prior)
    assert load_prior(tmp_path / "prior.json") == pytest.approx(prior)
    (tmp_path / "bad.json").write_text(json.dumps({"red": -1}))
    with pytest.raises(ValueError, match="red"):
        load_prior(tmp_path / "bad.json")


def test_every_attribute_has_a_factor():
    assert set(ATTRIBUTE_FACTORS) == set(ATTRIBUTES)
    assert ATTRIBUTE_FACTORS["warm"] == "colour" and ATTRIBUTE_FACTORS["pointy"] == "shape"
    assert ATTRIBUTE_FACTORS["v_top"] == "position" and ATTRIBUTE_FACTORS["textured"] == "pattern"


@pytest.fixture(scope="module")
def red_circles() -> tuple[Scene, Scene]:
    q = Scene("circle", "red", "striped", "medium", 0.35, 0.4, "noise", seed=1)
    r = Scene("circle", "red", "solid", "large", 0.6, 0.6, "plain", seed=2)
    return q, r


def test_bundled_models_rank_a_red_circle_pair(red_circles):
    sim, sim_pre = load_similarity()
    attr, attr_pre = load_attributes()
    q, r = (render(s, sim_pre.size).image for s in red_circles)
    saliency = RISE(sim, n_masks=200, seed=0).explain(sim_pre.to_tensor(q), sim_pre.to_tensor(r)).query_map
    ranked = AttributeRanker(attr).rank(attr_pre.to_tensor(q), saliency, top_k=5)
    assert 1 <= len(ranked) <= 5
    assert all(e.attribute in ATTRIBUTES for e in ranked)
    assert all(0.0 <= e.score <= 1.0 and 0.0 <= e.confidence <= 1.0 and 0.0 <= e.match <= 1.0 for e in ranked)
    assert [e.score for e in ranked] == sorted((e.score for e in ranked), reverse=True)
    assert len({e.attribute for e in ranked}) == len(ranked)


def test_counterfactual_prior_credits_only_what_the_similarity_model_uses():
    # the bundled model matches on shape and colour only (weights README): only those attributes get credit
    sim, pre = load_similarity()
    rng = np.random.default_rng(0)
    scenes = [
        Scene(shape, colour, pattern, "medium", float(x), float(y), "plain", seed=int(rng.integers(1000)))
        for shape, colour in (("circle", "red"), ("star", "blue"))
        for pattern, x, y in (("solid", 0.4, 0.4), ("dotted", 0.6, 0.5), ("striped", 0.5, 0.6))
    ]
    prior = estimate_prior_counterfactual(sim, pre, scenes, n_pairs=6, seed=0, smoothing=0.0)
    assert set(prior) == set(ATTRIBUTES)
    credited = {a for a, p in prior.items() if p > 0}
    assert credited and {ATTRIBUTE_FACTORS[a] for a in credited} <= {"shape", "colour"}
    assert credited <= {"circle", "red", "round", "warm", "star", "blue", "pointy", "cool"}
    assert all(0.0 <= p <= 1.0 for p in prior.values())
    smoothed = estimate_prior_counterfactual(sim, pre, scenes[:2], n_pairs=1, smoothing=1.0)
    assert min(smoothed.values()) > 0  # smoothing rules nothing out
    with pytest.raises(ValueError, match="same-class"):
        same_class_pairs(scenes[:1], 1, rng)


def test_sane_explain_writes_explanations(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["explain", str(QUERY), str(REFERENCE), "--out", str(out), "--mode", "both", "--n-masks", "100",
            "--seed", "3", "--top-k", "3"]
    assert main(argv) == 0
    report = json.loads((out / "result.json").read_text())
    explanations = report["explanations"]
    assert 1 <= len(explanations) <= 3
    assert all({"attribute", "score", "confidence", "match", "prior"} <= set(e) for e in explanations)
    # the same ranking as the library on the run's query map
    sim, sim_pre = load_similarity()
    attr, attr_pre = load_attributes()
    expected = RISE(sim, n_masks=100, seed=3).explain(load_image(QUERY, sim_pre), load_image(REFERENCE, sim_pre),
                                                      "both")
    ranked = AttributeRanker(attr).rank(load_image(QUERY, attr_pre), expected.query_map, top_k=3)
    assert [e["attribute"] for e in explanations] == [e.attribute for e in ranked]
    assert [e["score"] for e in explanations] == pytest.approx([e.score for e in ranked], abs=1e-5)
    assert explanations[0]["attribute"] in capsys.readouterr().out

    off = tmp_path / "off"
    assert main(["explain", str(QUERY), str(REFERENCE), "--out", str(off), "--n-masks", "50", "--no-attributes"]) == 0
    assert "explanations" not in json.loads((off / "result.json").read_text())


def test_estimate_prior_command_writes_a_prior_that_explain_accepts(tmp_path):
    from sane.data import write_dataset

    data = tmp_path / "shapes"
    write_dataset(data, 420, seed=2, progress=False)  # 10 per class: 2 held out each, enough for pairs
    assert main(["estimate-prior", "--data", str(data), "--pairs", "6", "--out", str(tmp_path / "p.json")]) == 0
    prior = load_prior(tmp_path / "p.json")
    assert set(prior) == set(ATTRIBUTES) and all(0 < p < 1 for p in prior.values())
    # The bundled similarity model matches on shape and colour: only those factors earn credit.
    credited = {a for a, p in prior.items() if p > min(prior.values())}
    assert credited and {ATTRIBUTE_FACTORS[a] for a in credited} <= {"shape", "colour"}
