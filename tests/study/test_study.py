"""The human-study tool without a browser: triplet sampling, variant assignment, the study a build writes
(its explanations are the library's), simulated participants and the statistics of `sane study score`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sane.cli import main as sane_main
from sane.data import open_dataset
from sane.errors import InputError
from sane.models import load_similarity
from sane.saliency import RISE
from sane.study import LibrarySource, build_study, read_answers, read_key, score_study, write_simulated
from sane.study.build import assign_variants, parse_variants
from sane.study.participants import simulate_participant
from sane.study.score import format_score, holm, wilson
from sane.study.triplets import sample_triplets


def _points(n: int = 60, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 4))


def _similarity_of(points: np.ndarray):
    calls = []

    def similarities(anchor: int, others: list[int]) -> list[float]:
        calls.append(len(others))
        return (-np.linalg.norm(points[others] - points[anchor], axis=1)).tolist()

    return similarities, calls


def test_triplets_mix_easy_and_hard_margins_and_balance_the_answer_position():
    points = _points()
    similarities, calls = _similarity_of(points)
    triplets, practice = sample_triplets(similarities, len(points), 20, easy_fraction=0.5, seed=3)
    assert len(triplets) == 20 and len({t.id for t in triplets}) == 20
    easy = [t.margin for t in triplets if t.tier == "easy"]
    hard = [t.margin for t in triplets if t.tier == "hard"]
    assert len(easy) == 10 and len(hard) == 10 and min(easy) > max(hard)
    assert sum(t.answer == "B" for t in triplets) == 10  # always answering one side scores 50 %
    for t in [*triplets, practice]:  # the recorded similarities are the model's, and B/C are A's others
        assert len({t.anchor, t.b, t.c}) == 3
        assert t.s_ab == pytest.approx(-np.linalg.norm(points[t.b] - points[t.anchor]))
        assert t.s_ac == pytest.approx(-np.linalg.norm(points[t.c] - points[t.anchor]))
    assert practice.margin >= max(easy)  # the practice question is the clearest left over
    assert len({t.anchor for t in triplets}) == 20  # the pool allows distinct anchors
    assert max(calls) <= 8  # candidate pairs are scored per anchor, a few at a time
    again, _ = sample_triplets(_similarity_of(points)[0], len(points), 20, easy_fraction=0.5, seed=3)
    assert again == triplets
    assert sample_triplets(_similarity_of(points)[0], len(points), 20, seed=4)[0] != triplets
    all_easy, _ = sample_triplets(_similarity_of(points)[0], len(points), 6, easy_fraction=1.0, seed=3)
    assert {t.tier for t in all_easy} == {"easy"}


def test_sampling_refuses_what_it_cannot_do():
    similarities, _ = _similarity_of(_points(10))
    with pytest.raises(InputError, match="triplets"):
        sample_triplets(similarities, 10, 0)
    with pytest.raises(InputError, match="easy_fraction"):
        sample_triplets(similarities, 10, 3, easy_fraction=1.5)
    with pytest.raises(InputError, match="at least 3 images"):
        sample_triplets(similarities, 2, 1)
    with pytest.raises(InputError, match="distinct triplets"):  # 4 images: few distinct (A, B, C) candidates
        sample_triplets(_similarity_of(_points(4))[0], 4, 200)


def test_variants_are_assigned_in_balanced_blocks():
    variants = parse_variants("none,saliency,attributes,both")
    assignment = assign_variants(variants, 48, seed=1)
    for block in range(12):
        assert sorted(assignment[4 * block: 4 * block + 4]) == sorted(variants)
    assert assignment != assign_variants(variants, 48, seed=2)  # the order within blocks is drawn
    for bad in ("none,colour", "none,none", ""):
        with pytest.raises(InputError, match="variants"):
            parse_variants(bad)


def _key(n_triplets: int = 20, variants=("none", "both"), seed: int = 0) -> dict:
    """A study key as build writes one, over random similarities (no images needed to score)."""
    rng = np.random.default_rng(seed)
    triplets = []
    for i in range(n_triplets):
        s_ab, s_ac = rng.uniform(-1, 1, 2)
        triplets.append({"id": f"t{i + 1:03d}", "answer": "B" if s_ab > s_ac else "C", "margin": abs(s_ab - s_ac),
                         "tier": "easy" if i % 2 else "hard", "s_ab": s_ab, "s_ac": s_ac})
    return {"study": "abc123", "variants": list(variants), "assignment": assign_variants(list(variants), 8),
            "triplets": triplets}


def test_score_puts_a_noisy_model_participant_near_its_noise_and_a_random_one_at_chance(tmp_path):
    key = _key()
    write_simulated(key, tmp_path / "model", range(1, 21), kind="model", noise=0.2, variant="both")
    write_simulated(key, tmp_path / "random", range(21, 41), kind="random", variant="none")
    result = score_study(key, read_answers(key, [tmp_path / "model", tmp_path / "random"]))
    both, none = result["variants"]["both"], result["variants"]["none"]
    assert both["participants"] == none["participants"] == 20 and both["answers"] == 400
    assert both["accuracy"] == pytest.approx(0.8, abs=0.05)
    assert none["accuracy"] == pytest.approx(0.5, abs=0.06)
    assert both["ci95"][0] <= 0.8 <= both["ci95"][1] and none["ci95"][0] <= 0.5 <= none["ci95"][1]
    [pair] = result["tests"]["pairs"]
    assert pair["significant"] and pair["mann_whitney_p_holm"] < 1e-4 and pair["fisher_p"] < 1e-4
    lines = "\n".join(format_score(result))
    assert "Mann-Whitney U" in lines and "Kruskal-Wallis" in lines and "significant" in lines


def test_score_does_not_claim_a_difference_between_two_chance_groups(tmp_path):
    """The significance claimed is honest: two groups of coin-flippers (20 studies' worth) are called
    different about as often as alpha says, not more."""
    key = _key(variants=("none", "saliency"))
    significant = 0
    for study in range(20):
        out = tmp_path / str(study)
        write_simulated(key, out, range(1, 11), kind="random", variant="none", seed=study)
        write_simulated(key, out, range(11, 21), kind="random", variant="saliency", seed=study)
        [pair] = score_study(key, read_answers(key, [out]))["tests"]["pairs"]
        significant += pair["significant"]
    assert significant <= 3  # alpha 0.05: 1 expected in 20; 4 or more has probability < 2 %


def test_score_separates_noise_levels_with_few_participants(tmp_path):
    key = _key()
    write_simulated(key, tmp_path, range(1, 9), kind="model", noise=0.1, variant="both")
    write_simulated(key, tmp_path, range(9, 17), kind="model", noise=0.4, variant="none")
    [pair] = score_study(key, read_answers(key, [tmp_path]))["tests"]["pairs"]
    assert (pair["a"], pair["b"]) == ("none", "both") and pair["difference"] < -0.2 and pair["significant"]


def test_answers_files_are_checked_against_the_study(tmp_path):
    key = _key()
    good = simulate_participant(key, 1)
    for name, change, message in [
        ("other-study", {"study": "zzz"}, "not to this one"),
        ("bad-variant", {"variant": "colour"}, "variant"),
        ("bad-triplet", {"answers": [{"triplet": "t999", "choice": "B"}]}, "names no triplet"),
        ("bad-choice", {"answers": [{"triplet": "t001", "choice": "A"}]}, "choice B/C"),
        ("twice", {"answers": [{"triplet": "t001", "choice": "B"}] * 2}, "answered twice"),
        ("not-ours", {"format": "x"}, "not an answers file"),
    ]:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(good | change))
        with pytest.raises(InputError, match=message):
            read_answers(key, [path])
    (tmp_path / "a").mkdir()
    for folder in ("a", "b"):
        write_simulated(key, tmp_path / folder, [1])
    with pytest.raises(InputError, match="participant 1 answered twice"):
        read_answers(key, [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(FileNotFoundError):
        read_answers(key, [tmp_path / "missing.json"])
    with pytest.raises(InputError, match="noise"):
        simulate_participant(key, 1, noise=2)


def test_statistics_helpers_match_known_values():
    lo, hi = wilson(8, 10)  # Wilson 95 % for 8/10: [0.490, 0.943]
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


@pytest.fixture(scope="module")
def built(shapes48, tmp_path_factory):
    """A four-variant study over the small synthetic test split, explained with the bundled models."""
    out = tmp_path_factory.mktemp("study") / "study"
    paths = [p for p, _ in open_dataset(shapes48, split="test").samples]
    source = LibrarySource(n_masks=200, seed=1, batch_size=100)
    key = build_study(out, paths, source, n_triplets=6, seed=2, participants=8, progress=False)
    return out, paths, source, key


def test_a_built_study_holds_the_page_its_images_and_a_key_the_page_does_not_show(built):
    out, paths, source, key = built
    site = out / "site"
    for name in ("index.html", "quiz.js", "study.css", "study.js"):
        assert (site / name).is_file(), name
    page = json.loads((site / "study.js").read_text().split("=", 1)[1].rstrip().rstrip(";"))
    assert page["id"] == key["study"] and page["assignment"] == key["assignment"]
    assert len(page["questions"]) == 6 and {q["id"] for q in page["questions"]} == {t["id"] for t in key["triplets"]}
    for question in [page["practice"], *page["questions"]]:
        for path in [question["a"], question["b"], question["c"], *question["saliency"].values()]:
            assert (site / path).is_file()
        assert len(question["attributes"]["b"]) == 3
    text = (site / "study.js").read_text()
    assert "s_ab" not in text and "margin" not in text and '"answer"' in text  # the practice answer only
    assert text.count('"answer"') == 1
    lines = (out / "participants.csv").read_text().splitlines()
    assert lines[0] == "participant,variant,link" and lines[1] == f"1,{key['assignment'][0]},index.html?p=1"
    with pytest.raises(FileExistsError, match="already holds a study"):
        build_study(out, paths, source, n_triplets=6)


def test_the_key_holds_the_models_similarities_and_the_page_the_librarys_maps(built):
    out, paths, source, key = built
    model, preprocess = load_similarity()
    for t in key["triplets"][:2]:
        a, b, c = (preprocess.to_tensor(preprocess.open(p)) for p in t["images"])
        with torch.inference_mode():
            e = torch.nn.functional.normalize(model(torch.stack([a, b, c])), dim=1)
        assert t["s_ab"] == pytest.approx(float(e[0] @ e[1]), abs=1e-5)
        assert t["s_ac"] == pytest.approx(float(e[0] @ e[2]), abs=1e-5)
        assert t["answer"] == ("B" if t["s_ab"] > t["s_ac"] else "C")
    # The two maps of one triplet come from one K-reference stream; each equals the single-reference map.
    t = key["triplets"][0]
    a, b, c = (preprocess.to_tensor(preprocess.open(p)) for p in t["images"])
    pair = source.explain(t["images"][0], t["images"][1:])
    single = RISE(model, n_masks=200, seed=1, batch_size=100).explain(a, c)
    np.testing.assert_allclose(pair[1].query_map, single.query_map.numpy(), atol=1e-5)
    assert pair[1].similarity == pytest.approx(t["s_ac"], abs=1e-5)


def test_sane_study_commands_build_simulate_and_score(shapes48, tmp_path, capsys):
    out = tmp_path / "study"
    assert sane_main(["study", "build", "--out", str(out), "--data", shapes48, "--triplets", "4", "--variants",
                      "none,saliency", "--n-masks", "100", "--participants", "4", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "4 triplets (2 easy, 2 hard)" in printed and "site/index.html" in printed
    key = read_key(out)
    assert key["variants"] == ["none", "saliency"] and key["source"]["n_masks"] == 100
    assert sane_main(["study", "simulate", str(out), "--out", str(tmp_path / "answers"), "--participants", "1-4",
                      "--noise", "0"]) == 0
    assert sane_main(["study", "score", str(out), str(tmp_path / "answers")]) == 0
    printed = capsys.readouterr().out
    assert "none " in printed and "saliency " in printed and "1.000" in printed
    for name in ("score.json", "triplets.csv", "accuracy.png"):
        assert (out / "score" / name).is_file()
    assert sane_main(["study", "build", "--out", str(tmp_path / "x"), "--variants", "none,colour"]) == 2
    assert "variants" in capsys.readouterr().err


def test_a_study_of_the_images_alone_explains_nothing(shapes48, tmp_path):
    source = LibrarySource(attributes=False, n_masks=10)
    source.explain = None  # calling it would fail: a "none"-only study needs similarities alone
    paths = [p for p, _ in open_dataset(shapes48, split="test").samples]
    key = build_study(tmp_path, paths, source, n_triplets=3, variants="none", participants=2, progress=False)
    page = json.loads((tmp_path / "site" / "study.js").read_text().split("=", 1)[1].rstrip().rstrip(";"))
    assert key["assignment"] == ["none", "none"]
    assert all("saliency" not in q and "attributes" not in q for q in page["questions"])
    assert not list((tmp_path / "site" / "images").glob("*_for_*"))
