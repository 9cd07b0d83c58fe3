"""`sane pipeline` end to end on tiny AwA2 and Polyvore Outfits directories; the deletion prior and the
retrieval space that real data uses (no scenes: no counterfactual)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from tiny_real_data import write_tiny_awa2, write_tiny_csv, write_tiny_folders, write_tiny_polyvore

from sane.cli import main
from sane.data import open_dataset
from sane.evaluation.attribute_explanations import METHODS, RetrievalSpace
from sane.evaluation.prior import deletion_credits, smoothed_prior
from sane.explain.ranker import load_prior
from sane.models import load_similarity
from sane.models.attribute_predictors import load_attributes
from sane.pipeline import STATE_FILE, PipelineOptions, run_pipeline
from sane.serving.ops.archive import build_archive
from sane.serving.ops.inprocess import load_archive, payload, run_batch
from sane.train.saliency_cache import SaliencyCache

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = ["train-similarity", "cache-saliency", "train-sane", "train-classifier", "calibrate", "estimate-prior",
         "tune-ranker", "eval-attributes", "eval-explanations"]
PRIOR_PAIRS = 5
TINY = ["--image-size", "32", "--epochs", "2", "--classes-per-batch", "3", "--per-class", "4", "--n-masks", "8",
        "--refs", "2", "--map-size", "8", "--attribute-epochs", "2", "--attribute-batch-size", "16",
        "--prior-pairs", str(PRIOR_PAIRS), "--tune-pairs", "4", "--eval-pairs", "4", "--eval-n-masks", "8", "--k", "2",
        "--batch-size", "32",
        "--quiet"]
BUILDERS = {"awa2": write_tiny_awa2, "polyvore": write_tiny_polyvore}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def data(request, tmp_path_factory) -> Path:
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


def step_lines(printed: str) -> dict[str, str]:
    """Step name -> "ran" or "skipped", from the per-step progress lines."""
    status = {}
    for line in printed.splitlines():
        for name in STEPS:
            if line.startswith("[") and f"] {name}" in line:
                if "skipped" in line:
                    status[name] = "skipped"
                elif " done in " in line:
                    status[name] = "ran"
    return status


@pytest.mark.slow
def test_pipeline_runs_every_step_and_a_rerun_skips_them(data: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert main(["pipeline", "--data", str(data), "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert step_lines(printed) == dict.fromkeys(STEPS, "ran")
    assert "counterfactual check (SPEC §6) is skipped" in printed
    train = open_dataset(data, "train")
    test = open_dataset(data, "test")

    # Every artifact exists under --out and loads.
    similarity, preprocess = load_similarity(out / "similarity.pt")
    assert preprocess.size == 32 and similarity(torch.zeros(2, 3, 32, 32)).shape == (2, 64)
    cache = SaliencyCache(out / "saliency_cache")
    assert cache.manifest["n_masks"] == 8 and cache.maps.shape[1:] == (2, 8, 8) and len(cache) > 0
    assert set(cache.manifest["paths"]) == {train.relative_path(i) for i in range(len(train))}
    for kind in ("sane", "classifier"):
        model, pre = load_attributes(out / f"attributes_{kind}.pt")
        ckpt = torch.load(out / f"attributes_{kind}.pt", weights_only=True)
        assert model.kind == kind and model.attributes == train.attributes and pre.size == 32
        assert model.thresholds.shape == (len(train.attributes),)
        assert ckpt["meta"]["calibration"] == "f1"  # written by the calibrate step, not by training
        assert ckpt["meta"]["lambda"] == (5e-3 if kind == "sane" else 0.0)
        # tune-ranker stored the prior and the chosen w, gamma as the checkpoint's ranker defaults.
        assert ckpt["ranker"]["prior"] == pytest.approx(load_prior(out / "prior.json"))
        assert 0 <= ckpt["ranker"]["w"] <= 1 and ckpt["ranker"]["gamma"] >= 0

    # The prior: SPEC §4 by attribute deletion (no scenes), one smoothed frequency per attribute.
    state = json.loads((out / STATE_FILE).read_text())
    assert state["prior_by"] == "deletion" and all(state["steps"][s]["done"] for s in STEPS)
    prior = load_prior(out / "prior.json")
    assert list(prior) == train.attributes
    floor, ceiling = 1 / (PRIOR_PAIRS + 2), (PRIOR_PAIRS + 1) / (PRIOR_PAIRS + 2)
    for value in prior.values():
        assert floor - 1e-9 <= value <= ceiling + 1e-9
        assert math.isclose((value * (PRIOR_PAIRS + 2) - 1), round(value * (PRIOR_PAIRS + 2) - 1), abs_tol=1e-9)
    assert any(v > floor + 1e-9 for v in prior.values())  # some pair's deletion lowered the similarity

    reports = json.loads((out / "eval_attributes.json").read_text())
    for kind in ("sane", "classifier"):
        report = reports[kind]
        assert report["split"] == "test" and report["n_images"] == len(test) and not report["masks"]
        assert "groups" not in report
        # The reported mAP is scikit-learn's AP of the saved model's scores on the test images, averaged
        # over the attributes with a positive: recomputed here from the checkpoint and the images.
        model, pre = load_attributes(out / f"attributes_{kind}.pt")
        images = open_dataset(data, split="test", preprocess=pre)
        with torch.inference_mode():
            scores = model(torch.stack([images[i]["image"] for i in range(len(images))]))[0].numpy()
        labels = np.asarray(images.image_attributes)
        expected = {a: average_precision_score(labels[:, j], scores[:, j]) for j, a in enumerate(train.attributes)
                    if labels[:, j].any()}
        assert report["per_attribute"] == pytest.approx(expected, abs=1e-6)
        assert report["mAP"] == pytest.approx(np.mean(list(expected.values())), abs=1e-6)
        assert 0 <= report["saliency_agreement"]["L_hm"] <= 1 and report["saliency_agreement"]["n_images"] == len(cache)

    explanations = json.loads((out / "eval_explanations.json").read_text())
    assert explanations["counterfactual"] is False and explanations["n_pairs"] == 4
    assert explanations["same_type_retrieval"] == (test.format == "polyvore")
    assert "agreement" not in explanations and explanations["prior"] == str(out / "prior.json")
    assert list(explanations["methods"]) == list(METHODS)
    for method, row in explanations["methods"].items():
        assert method in printed and "counterfactual_top1" not in row
        assert 1 <= row["n_deletion"] <= 4 and math.isfinite(row["deletion"]) and abs(row["deletion"]) <= 200

    # A rerun finds every step finished: nothing runs, nothing is rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    assert main(["pipeline", "--data", str(data), "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert step_lines(printed) == dict.fromkeys(STEPS, "skipped") and "ran nothing" in printed
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # A run recorded before a setting existed (here train-sane's lam) was made at its default: still finished.
    state = json.loads((out / STATE_FILE).read_text())
    del state["steps"]["train-sane"]["settings"]["lam"]
    (out / STATE_FILE).write_text(json.dumps(state))
    assert main(["pipeline", "--data", str(data), "--out", str(out), *TINY]) == 0
    assert step_lines(capsys.readouterr().out) == dict.fromkeys(STEPS, "skipped")
    assert main(["pipeline", "--data", str(data), "--out", str(out), *TINY, "--lam", "0.5", "--eval-pairs", "3"]) == 0
    assert step_lines(capsys.readouterr().out)["train-sane"] == "ran"  # not at the default: made otherwise
    assert main(["pipeline", "--data", str(data), "--out", str(out), *TINY]) == 0  # back to the defaults
    capsys.readouterr()

    # Changing an evaluation setting reruns only the step that depends on it.
    assert main(["pipeline", "--data", str(data), "--out", str(out), *TINY, "--eval-pairs", "3"]) == 0
    assert step_lines(capsys.readouterr().out) == {**dict.fromkeys(STEPS[:-1], "skipped"), STEPS[-1]: "ran"}
    assert json.loads((out / "eval_explanations.json").read_text())["n_pairs"] == 3
    assert (out / "similarity.pt").stat().st_mtime_ns == stamps[out / "similarity.pt"]


@pytest.mark.slow
def test_an_interrupted_pipeline_resumes_at_the_interrupted_step(tmp_path: Path, monkeypatch):
    import sane.train.attribute_model as attributes

    data = write_tiny_polyvore(tmp_path / "polyvore")
    options = PipelineOptions(image_size=32, epochs=1, classes_per_batch=3, n_masks=8, refs=2, map_size=8,
                              attribute_epochs=1, attribute_batch_size=16, prior_pairs=3, eval_pairs=2,
                              eval_n_masks=8, k=2, batch_size=32)
    real = attributes.calibrate_attributes

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(attributes, "calibrate_attributes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(data, tmp_path / "run", options, progress=False, log=lambda line: None)
    state = json.loads((tmp_path / "run" / STATE_FILE).read_text())
    assert [s for s in STEPS if state["steps"].get(s, {}).get("done")] == STEPS[:4]
    assert state["steps"]["calibrate"]["done"] is False and not (tmp_path / "run" / "prior.json").exists()

    monkeypatch.setattr(attributes, "calibrate_attributes", real)
    stamp = (tmp_path / "run" / "attributes_sane.pt").stat().st_mtime_ns
    result = run_pipeline(data, tmp_path / "run", options, progress=False, log=lambda line: None)
    assert result["steps"] == {**dict.fromkeys(STEPS[:4], "skipped"), **dict.fromkeys(STEPS[4:], "ran")}
    assert (tmp_path / "run" / "attributes_sane.pt").stat().st_mtime_ns != stamp  # recalibrated in place
    assert set(result["eval_explanations"]["methods"]) == set(METHODS)

    with pytest.raises(ValueError, match="holds a pipeline run on"):
        run_pipeline(write_tiny_awa2(tmp_path / "awa2", per_class=2), tmp_path / "run", options, log=lambda line: None)


def test_counterfactual_prior_and_synthetic_models_are_refused_on_real_data(tmp_path: Path, capsys):
    data = write_tiny_awa2(tmp_path / "awa2", per_class=3, size=24)
    assert main(["estimate-prior", "--data", str(data), "--by", "counterfactual", "--out", str(tmp_path / "p.json")]) == 2
    assert "no scenes.jsonl" in capsys.readouterr().err
    # The bundled attribute models know the synthetic attributes only: a clear error, not a meaningless table.
    assert main(["eval-explanations", "--data", str(data), "--pairs", "1", "--quiet"]) == 2
    assert "predict none of the attributes" in capsys.readouterr().err


def test_deletion_credits_the_most_negative_deletions():
    assert deletion_credits({"a": -0.2, "b": -0.5, "c": 0.1}) == ["b"]
    assert deletion_credits({"a": -0.5, "b": -0.5 + 1e-12, "c": float("nan")}) == ["a", "b"]  # ties share the credit
    assert deletion_credits({"a": 0.0, "b": 0.3}) == []  # nothing lowers the similarity: no best explanation
    assert deletion_credits({"a": float("nan")}) == [] and deletion_credits({}) == []
    assert smoothed_prior({"a": 3, "b": 0}, 4) == {"a": 4 / 6, "b": 1 / 6}
    assert smoothed_prior({"a": 3, "b": 0}, 4, smoothing=0) == {"a": 0.75, "b": 0.0}
    with pytest.raises(ValueError, match="smoothing"):
        smoothed_prior({"a": 1}, 2, smoothing=-1)


def test_retrieval_on_polyvore_keeps_to_the_query_item_type(tmp_path: Path):
    dataset = open_dataset(write_tiny_polyvore(tmp_path / "p"), "test")
    n, targets = len(dataset), np.asarray(dataset.targets)
    labels = dataset.image_attributes.astype(bool)
    # Embeddings: s(x, r) = x's first coordinate share; the reference is image 1.
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, 4))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    preds = labels.astype(float) + rng.uniform(0, 0.1, size=labels.shape)
    qi = 0
    ri = int(np.flatnonzero((targets == targets[qi]) & (np.arange(n) != qi))[0])
    column = int(np.flatnonzero(labels[qi])[0])
    kwargs = {"dataset": dataset, "attributes": dataset.attributes, "labels": labels, "images": torch.zeros(n, 3, 2, 2),
              "model_images": {}, "preds": preds, "embeddings": emb}
    typed, anywhere = RetrievalSpace(**kwargs, same_type=True), RetrievalSpace(**kwargs, same_type=False)
    cand = typed.candidates(qi, ri, column, insert=False)
    assert not cand[[qi, ri]].any() and (targets[cand] == targets[qi]).all() and not labels[cand, column].any()
    expected = ~labels[:, column] & (targets == targets[qi])
    expected[[qi, ri]] = False
    assert np.array_equal(cand, expected)
    assert anywhere.candidates(qi, ri, column, insert=False).sum() > cand.sum()
    # Δ by hand: the K=1 nearest candidate in prediction space (the attribute's column left out).
    cols = np.arange(labels.shape[1]) != column
    rows = np.flatnonzero(cand)
    nearest = rows[np.argmin(np.linalg.norm(preds[rows][:, cols] - preds[qi, cols], axis=1))]
    (delta,) = typed.deltas(qi, ri, [column], insert=False, k=1)
    assert delta == pytest.approx(emb[nearest] @ emb[ri] - emb[qi] @ emb[ri])


@pytest.mark.slow
def test_on_synthetic_data_the_pipeline_keeps_the_ground_truth_checks(tmp_path: Path, capsys):
    from sane.data import write_dataset

    data = write_dataset(tmp_path / "shapes", 168, seed=1, image_size=32, progress=False)
    out = tmp_path / "run"
    assert main(["pipeline", "--data", str(data), "--out", str(out), *TINY, "--val-fraction", "0.5", "--draws", "1"]) == 0
    printed = capsys.readouterr().out
    assert step_lines(printed) == dict.fromkeys(STEPS, "ran") and "counterfactual top-1" in printed
    assert json.loads((out / STATE_FILE).read_text())["prior_by"] == "counterfactual"
    assert all(0 < v < 1 for v in load_prior(out / "prior.json").values())
    reports = json.loads((out / "eval_attributes.json").read_text())
    assert reports["sane"]["masks"] and 0 <= reports["sane"]["groups"]["colour"]["pointing_game"] <= 1
    explanations = json.loads((out / "eval_explanations.json").read_text())
    assert explanations["counterfactual"] is True and sum(explanations["best_factor_counts"].values()) == 4
    assert all(0 <= row["counterfactual_top1"] <= 1 for row in explanations["methods"].values())


@pytest.mark.slow
def test_a_data_set_without_attribute_labels_goes_through_the_pipeline_with_discovery(tmp_path: Path, capsys):
    data = write_tiny_awa2(tmp_path / "awa2")
    for name in ("predicates.txt", "predicate-matrix-binary.txt"):
        (data / name).unlink()  # AwA2 images and classes, no attribute labels
    images = sorted(p.relative_to(data) for p in (data / "JPEGImages").rglob("*.jpg"))
    out = tmp_path / "run"
    assert main(["pipeline", "--data", str(data), "--out", str(out), *TINY]) == 2  # refused before any training
    assert "no attribute labels" in capsys.readouterr().err and not (out / "similarity.pt").exists()
    discover = ["--discover", "patch", "--discover-attributes", "4", "--discover-queries", "10",
                "--discover-n-masks", "8"]
    assert main(["pipeline", "--data", str(data), "--out", str(out), *TINY, *discover]) == 0
    assert step_lines(capsys.readouterr().out) == dict.fromkeys(STEPS, "ran")
    state = json.loads((out / STATE_FILE).read_text())
    assert state["steps"]["discover-attributes"]["done"]
    vocabulary = open_dataset(out / "discovered", split="all")
    assert vocabulary.attributes == [f"discovered_{c:02d}" for c in range(4)]
    model, _ = load_attributes(out / "attributes_sane.pt")
    assert list(model.attributes) == vocabulary.attributes  # the SANE model learned the discovered vocabulary
    report = json.loads((out / "eval_explanations.json").read_text())
    assert set(report["methods"]) == set(METHODS)
    # served: a `sane` archive on the discovered vocabulary answers with its names and contact sheets
    mar = build_archive("sane", tmp_path / "store", out / "similarity.pt", attribute_model=out / "attributes_sane.pt")
    handler, context = load_archive(mar)
    query, reference = (data / "JPEGImages" / "antelope" / f"antelope_{n}.jpg" for n in (10001, 10002))
    [(status, body)] = run_batch(handler, context, [payload("json", query.read_bytes(), reference.read_bytes(),
                                                            {"n_masks": 8, "top_k": 2})])
    assert status == 200, body
    sheets = {a["id"]: a["contact_sheet"] for a in
              json.loads((out / "discovered" / "discovered-attributes.json").read_text())["attributes"]}
    for explanation in body["explanations"]:
        assert explanation["attribute"] in vocabulary.attributes
        assert explanation["contact_sheet"] == sheets[explanation["id"]]
        assert (out / "discovered" / explanation["contact_sheet"]).is_file()
    # other discovery settings rerun discovery and what follows; the data's own images are never touched
    assert main(["pipeline", "--data", str(data), "--out", str(out), *TINY, *discover[:-1], "12"]) == 0
    assert step_lines(capsys.readouterr().out)["train-similarity"] == "skipped"
    assert sorted(p.relative_to(data) for p in (data / "JPEGImages").rglob("*.jpg")) == images


def test_polyvore_outfits_as_published_goes_through_the_pipeline_with_discovery_and_its_names(tmp_path: Path,
                                                                                                capsys):
    """Polyvore Outfits without polyvore_attributes.json (as published): discovery writes the attribute
    file over the same items, the pipeline trains on it, and names edited by a person reach the model."""
    data = write_tiny_polyvore(tmp_path / "polyvore")
    (data / "polyvore_attributes.json").unlink()
    assert open_dataset(data, split="all").attributes == []  # loads, without labels
    out = tmp_path / "run"
    assert main(["pipeline", "--data", str(data), "--out", str(out), *TINY]) == 2
    assert "no attribute labels" in capsys.readouterr().err
    discover = ["--discover", "patch", "--discover-attributes", "3", "--discover-queries", "10",
                "--discover-n-masks", "8"]
    assert main(["pipeline", "--data", str(data), "--out", str(out), *TINY, *discover]) == 0
    discovered = out / "discovered"
    vocabulary = open_dataset(discovered, split="all")
    assert vocabulary.format == "polyvore" and vocabulary.attributes == [f"discovered_{c:02d}" for c in range(3)]
    assert vocabulary.item_ids == open_dataset(data, split="all").item_ids  # the same items, linked
    assert (discovered / "images").resolve() == (data / "images").resolve()
    assert not (data / "polyvore_attributes.json").exists()  # the data itself is never written to
    model, _ = load_attributes(out / "attributes_sane.pt")
    assert list(model.attributes) == vocabulary.attributes
    assert model.vocabulary["discovered_01"]["id"] == "discovered_01"
    # a person names the attributes: the attribute file and a model trained on it carry the names
    edited = json.loads((discovered / "discovered-attributes.json").read_text())
    names = ("strap", "collar", "sole")  # not in the ids' order: the loader sorts names
    for entry, name in zip(edited["attributes"], names):
        entry["name"] = name
    (discovered / "discovered-attributes.json").write_text(json.dumps(edited))
    assert main(["name-attributes", str(discovered)]) == 0
    renamed = open_dataset(discovered, split="all")
    assert renamed.attributes == sorted(names)
    for c, name in enumerate(names):  # same labels, new names
        assert (renamed.image_attributes[:, renamed.attributes.index(name)] == vocabulary.image_attributes[:, c]).all()
    assert main(["train-attributes", "--model", "classifier", "--data", str(discovered), "--out",
                 str(tmp_path / "named.pt"), "--epochs", "1", "--image-size", "32", "--quiet"]) == 0
    named, _ = load_attributes(tmp_path / "named.pt")
    assert named.vocabulary["sole"]["id"] == "discovered_02" and named.vocabulary["strap"]["id"] == "discovered_00"


def _unlabelled(layout: str, root: Path) -> Path:
    """A tiny class-folder or labels.csv set without attribute columns (what most catalogues have)."""
    if layout == "folders":
        data = write_tiny_folders(root)
        (data / "attributes.csv").unlink()
        return data
    data = write_tiny_csv(root)
    rows = [line.split(",") for line in (data / "labels.csv").read_text().splitlines()]
    (data / "labels.csv").write_text("".join(f"{r[0]},{r[1]},{r[-1]}\n" for r in rows))  # image,class,split
    return data


@pytest.mark.parametrize("layout", ["folders", "csv"])
def test_class_folders_and_csv_sets_without_labels_go_through_the_pipeline_with_discovery(layout: str, tmp_path: Path,
                                                                                         capsys):
    """Discovery writes a labels.csv over the same images (per image: class folders' attributes.csv holds
    classes only), with the data's own split; the pipeline trains on it and edited names reach it."""
    data = _unlabelled(layout, tmp_path / layout)
    before = sorted((p.relative_to(data), p.stat().st_size) for p in data.rglob("*") if p.is_file())
    source = open_dataset(data, split="all")
    assert source.attributes == [] and source.format == layout
    out = tmp_path / "run"
    discover = ["--discover", "patch", "--discover-attributes", "3", "--discover-queries", "10",
                "--discover-n-masks", "8", "--discover-propagate"]
    assert main(["pipeline", "--data", str(data), "--out", str(out), *TINY, *discover]) == 0
    discovered = out / "discovered"
    vocabulary = open_dataset(discovered, split="all")
    assert vocabulary.format == "csv" and vocabulary.attributes == [f"discovered_{c:02d}" for c in range(3)]
    for split in ("all", "train", "test"):  # the same images, classes and split
        mine, theirs = open_dataset(discovered, split=split), open_dataset(data, split=split)
        assert [mine.relative_path(i) for i in range(len(mine))] == [theirs.relative_path(i) for i in range(len(theirs))]
        assert [mine.classes[t] for t in mine.targets] == [theirs.classes[t] for t in theirs.targets]
    assert json.loads((discovered / "discovered-attributes.json").read_text())["settings"]["propagate"] is True
    model, _ = load_attributes(out / "attributes_sane.pt")
    assert list(model.attributes) == vocabulary.attributes
    edited = json.loads((discovered / "discovered-attributes.json").read_text())
    for entry, name in zip(edited["attributes"], ("dark", "striped", "pale")):
        entry["name"] = name
    (discovered / "discovered-attributes.json").write_text(json.dumps(edited))
    assert main(["name-attributes", str(discovered)]) == 0
    renamed = open_dataset(discovered, split="all")
    assert renamed.attributes == ["dark", "striped", "pale"]
    assert (renamed.image_attributes == vocabulary.image_attributes).all()
    assert sorted((p.relative_to(data), p.stat().st_size) for p in data.rglob("*") if p.is_file()) == before
    inside = data / "discovered"  # in these layouts a folder inside the data would be read as data
    assert main(["discover-attributes", "--data", str(data), "--out", str(inside), "--method", "random"]) == 2
    assert "outside the data directory" in capsys.readouterr().err and not inside.exists()


@pytest.mark.slow
def test_the_discovery_table_trains_sane_on_each_vocabulary_with_one_similarity_model_and_cache(tmp_path: Path,
                                                                                                 capsys):
    data = write_tiny_awa2(tmp_path / "awa2")
    out = tmp_path / "table"
    discover = ["--discover-attributes", "4", "--discover-queries", "8", "--discover-n-masks", "8"]
    assert main(["discovery-table", "--data", str(data), "--out", str(out), *TINY, *discover]) == 0
    printed = capsys.readouterr().out
    rows = json.loads((out / "table2.json").read_text())
    assert list(rows) == ["random", "full-frame", "patch", "supervised"]
    for method, label in (("random", "Random"), ("full-frame", "Full Frame Discovery"), ("patch", "Patch Discovery"),
                          ("supervised", "Supervised Attributes")):
        report = json.loads((out / method / "eval_explanations.json").read_text())
        for key in ("insertion", "deletion"):  # NaN where no pair had an attribute to insert on tiny data
            assert rows[method][key] == pytest.approx(report["methods"]["SANE"][key], nan_ok=True)
        assert any(line.startswith(label) for line in printed.splitlines())
    assert open_dataset(out / "patch" / "discovered", split="all").attributes[0] == "discovered_00"
    assert load_attributes(out / "supervised" / "attributes_sane.pt")[0].attributes == open_dataset(data).attributes
    for method in ("full-frame", "patch", "supervised"):  # the first run's model and cache, not new ones
        state = json.loads((out / method / STATE_FILE).read_text())["steps"]
        assert state["cache-saliency"]["settings"]["shared_cache"] == str((out / "random" / "saliency_cache").resolve())
        assert not (out / method / "saliency_cache").exists() and not (out / method / "similarity.pt").exists()
    assert (out / "random" / "saliency_cache").is_dir()
    # a row beyond the seed's added to the finished table: the four resume, the new one shares their cache
    before = {m: (out / m / STATE_FILE).read_text() for m in rows}
    five = "random,full-frame,patch,patch-propagated,supervised"
    assert main(["discovery-table", "--data", str(data), "--out", str(out), *TINY, *discover, "--methods", five]) == 0
    assert "Patch, propagated" in capsys.readouterr().out
    assert list(json.loads((out / "table2.json").read_text())) == five.split(",")
    assert all((out / m / STATE_FILE).read_text() == before[m] for m in rows)
    state = json.loads((out / "patch-propagated" / STATE_FILE).read_text())["steps"]
    assert state["discover-attributes"]["settings"]["discover_propagate"] is True
    assert state["cache-saliency"]["settings"]["shared_cache"] == str((out / "random" / "saliency_cache").resolve())
    seed_only = open_dataset(out / "patch" / "discovered", split="all").image_attributes
    propagated = open_dataset(out / "patch-propagated" / "discovered", split="all").image_attributes
    assert (propagated.sum(1) > 0).sum() > (seed_only.sum(1) > 0).sum()
    assert main(["discovery-table", "--data", str(data), "--out", str(out), "--methods", "patch,kmeans"]) == 2
    assert "kmeans" in capsys.readouterr().err
    assert main(["discovery-table", "--out", str(out)]) == 2  # neither --data nor --benchmark
    assert "--benchmark" in capsys.readouterr().err
    unlabelled = write_tiny_polyvore(tmp_path / "published")
    (unlabelled / "polyvore_attributes.json").unlink()
    assert main(["discovery-table", "--data", str(unlabelled), "--out", str(tmp_path / "t2")]) == 2  # supervised
    assert "no attribute labels" in capsys.readouterr().err and not (tmp_path / "t2").exists()
