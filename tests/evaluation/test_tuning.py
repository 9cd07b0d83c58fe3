"""Choosing w and γ on validation pairs (SPEC §4) and the tuned defaults an attribute checkpoint carries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sane.evaluation.tuning import PairTerms, format_selection, select_weights, top1_utility
from sane.explain import AttributeRanker
from sane.images import Preprocess
from sane.models.attribute_predictors import build_attribute_model, load_attributes, save_attributes


def _pair(conf, match, utility, candidates=None) -> PairTerms:
    n = len(conf)
    return PairTerms(np.array(conf, float), np.array(match, float),
                     np.ones(n, bool) if candidates is None else np.array(candidates, bool), np.array(utility, float))


def test_top1_utility_scores_the_ranked_first_candidate():
    pairs = [_pair([0.9, 0.6], [0.1, 0.9], [0.0, 1.0])]
    prior = np.array([0.5, 0.5])
    assert top1_utility(pairs, prior, w=1.0, gamma=1.0) == 0.0  # confidence alone picks attribute 0
    assert top1_utility(pairs, prior, w=0.0, gamma=1.0) == 1.0  # the map match picks attribute 1
    # A candidate-less pair is left out, a non-candidate is never picked.
    pairs.append(_pair([0.9, 0.6], [0.1, 0.9], [1.0, 1.0], candidates=[False, False]))
    pairs.append(_pair([0.9, 0.6], [0.1, 0.9], [1.0, 0.0], candidates=[True, False]))
    assert top1_utility(pairs, prior, w=0.0, gamma=1.0) == 1.0


def test_selection_finds_the_term_that_carries_the_signal():
    rng = np.random.default_rng(0)
    # The true explanation has the best map match; confidence is noise; the prior favours a wrong attribute.
    pairs = []
    for _ in range(60):
        best = int(rng.integers(3))
        match = rng.uniform(0.2, 0.6, 3)
        match[best] = 0.9
        pairs.append(_pair(rng.uniform(0.5, 1.0, 3), match, np.eye(3)[best]))
    prior = np.array([0.6, 0.2, 0.2])
    chosen = select_weights(pairs, prior)
    assert chosen["utility"] == 1.0 and chosen["w"] < 0.5 and chosen["gamma"] == 0.0
    grid = np.array(chosen["grid"])
    assert grid.shape == (len(chosen["gamma_grid"]), len(chosen["w_grid"]))
    assert grid[0, -1] < 0.6  # confidence alone (w = 1) is near chance
    assert f"w={chosen['w']:g} gamma=0" in format_selection("sane", chosen, "counterfactual")
    # When only the prior knows (match and confidence uninformative), a positive gamma wins.
    pairs = [_pair([0.8, 0.8, 0.8], [0.5, 0.5, 0.5], [1.0, 0.0, 0.0]) for _ in range(10)]
    assert select_weights(pairs, prior)["gamma"] > 0
    with pytest.raises(ValueError, match="no validation pair"):
        select_weights([_pair([0.5], [0.5], [np.nan])], np.array([1.0]))


def test_checkpoint_carries_tuned_defaults_that_the_ranker_uses(tmp_path):
    names = ["a", "b", "c"]
    model = build_attribute_model("sane", names, "compact").eval()
    prior = {"a": 0.7, "b": 0.2, "c": 0.1}
    save_attributes(tmp_path / "m.pt", model, Preprocess(32), ranker={"prior": prior, "w": 0.2, "gamma": 0.5})
    loaded, _ = load_attributes(tmp_path / "m.pt")
    ranker = AttributeRanker(loaded)
    assert (ranker.w, ranker.gamma) == (0.2, 0.5)
    torch.testing.assert_close(ranker.prior, torch.tensor([0.7, 0.2, 0.1]))
    explicit = AttributeRanker(loaded, prior="uniform", w=0.9, gamma=2.0)  # arguments win over the defaults
    assert (explicit.w, explicit.gamma) == (0.9, 2.0)
    torch.testing.assert_close(explicit.prior, torch.full((3,), 1 / 3))
    save_attributes(tmp_path / "plain.pt", model, Preprocess(32))
    plain = AttributeRanker(load_attributes(tmp_path / "plain.pt")[0])
    assert (plain.w, plain.gamma) == (0.5, 1.0) and torch.allclose(plain.prior, torch.full((3,), 1 / 3))


@pytest.mark.slow
def test_tune_ranker_command_writes_the_choice_into_copies_of_the_bundled_models(tmp_path, capsys):
    import shutil

    from sane.cli import main
    from sane.data import write_dataset
    from sane.explain import save_prior
    from sane.models.attribute_predictors import default_attribute_weights, read_attribute_checkpoint

    data = write_dataset(tmp_path / "shapes", 84, image_size=112, progress=False)
    paths = {kind: tmp_path / f"{kind}.pt" for kind in ("sane", "classifier")}
    for kind, path in paths.items():
        shutil.copy(default_attribute_weights(kind), path)
    prior = {"red": 0.5, "circle": 0.25}
    save_prior(tmp_path / "prior.json", prior)
    args = ["tune-ranker", "--data", str(data), "--prior", str(tmp_path / "prior.json"), "--sane", str(paths["sane"]),
            "--classifier", str(paths["classifier"]), "--pairs", "4", "--n-masks", "16", "--draws", "1",
            "--batch-size", "32", "--quiet"]
    before = {kind: read_attribute_checkpoint(path) for kind, path in paths.items()}
    assert main([*args, "--dry-run"]) == 0
    assert "counterfactual top-1" in capsys.readouterr().out
    assert all(read_attribute_checkpoint(p)["ranker"] == before[k]["ranker"] for k, p in paths.items())
    assert main(args) == 0
    printed = capsys.readouterr().out
    for kind, path in paths.items():
        ckpt = read_attribute_checkpoint(path)
        assert ckpt["ranker"]["prior"] == prior and f"{kind}: w=" in printed
        assert ckpt["ranker"]["w"] in [round(w, 1) for w in np.linspace(0, 1, 11)]
        torch.testing.assert_close(ckpt["state_dict"], before[kind]["state_dict"])  # weights kept
        assert ckpt["thresholds"] == before[kind]["thresholds"]
