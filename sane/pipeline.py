"""`sane pipeline`: one command from a data directory (AwA2 or Polyvore Outfits layout) to evaluated explanations.

Steps, in order, each the function its own `sane` command calls, every artifact under ``out``:

1. ``train-similarity``    -> ``similarity.pt``            (:func:`~sane.train.similarity_model.train_similarity`)
   ``discover-attributes`` -> ``discovered/``              with ``--discover``: a vocabulary found over the
                              images (:mod:`sane.train.discovery`), which the later steps learn and evaluate
2. ``cache-saliency``      -> ``saliency_cache/``          (:func:`~sane.train.saliency_cache.build_saliency_cache`)
3. ``train-sane``          -> ``attributes_sane.pt``       (:func:`~sane.train.attribute_model.train_attributes`)
4. ``train-classifier``    -> ``attributes_classifier.pt`` (the same, λ = 0)
5. ``calibrate``           both checkpoints' thresholds, in place (:func:`~sane.train.attribute_model.calibrate_attributes`)
6. ``estimate-prior``      -> ``prior.json``               (:func:`~sane.evaluation.prior.estimate_prior`)
7. ``tune-ranker``         both checkpoints' prior, w and γ, in place (:func:`~sane.evaluation.tuning.tune_ranker`)
8. ``eval-attributes``     -> ``eval_attributes.json``     (both models; mAP, saliency agreement, pointing with masks)
9. ``eval-explanations``   -> ``eval_explanations.json``   (Random / Classifier / SANE, each with its tuned ranker)

Resuming: ``pipeline.json`` records each step's settings and whether it finished. A rerun skips the
finished steps whose settings are unchanged and whose outputs exist; the first other step runs (an
interrupted one resumes from its own state: epoch files, cache chunks) and so does every step after
it, because their inputs may have changed (their stale outputs are removed first). Changing, say,
``--eval-pairs`` therefore reruns the last step only.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sane.explain.map_match import DEFAULT_QUERY_MASKS
from sane.train.discovery import DEFAULTS as DISCOVERY
from sane.train.validation_split import DEFAULT_VAL_FRACTION

STATE_FILE = "pipeline.json"
STATE_FORMAT = 1


@dataclass
class PipelineOptions:
    """Every setting of the pipeline; the defaults are those of the single commands (the paper's where it has one)."""

    arch: str = "compact"  # similarity network
    dim: int = 64
    image_size: int = 112  # input side of the similarity and attribute models
    epochs: int = 15  # similarity training
    classes_per_batch: int = 8
    per_class: int = 4
    n_masks: int = 2000  # RISE masks per cached map
    refs: int = 5
    map_size: int = 28
    cache_limit: int | None = None
    attribute_arch: str = "compact"
    attribute_epochs: int = 300
    patience: int | None = None
    attribute_batch_size: int = 64
    lam: float = 5e-3
    limit: int | None = None  # attribute training images
    calibration: str = "f1"
    prior_by: str = "auto"
    prior_pairs: int = 200
    tune_pairs: int = 200  # validation pairs that choose the ranker's w and γ
    eval_split: str = "test"
    eval_limit: int | None = None
    eval_pairs: int = 40
    eval_n_masks: int = DEFAULT_QUERY_MASKS
    k: int = 5
    draws: int = 3
    val_fraction: float = DEFAULT_VAL_FRACTION
    seed: int = 0
    batch_size: int = 250  # forward batches of RISE and the evaluations (does not change results)
    device: str = "cpu"
    # The user's own similarity model (any format load_model takes) instead of training one: its
    # weights file for a factory, and its declarations (load_model's keywords: input_size, mean, ...).
    similarity_model: str | None = None
    similarity_weights: str | None = None
    similarity_declarations: dict[str, Any] = field(default_factory=dict)
    # Attribute discovery before the attribute steps (patch | full-frame | random; None: the data's own
    # labels): the attribute models then learn the discovered vocabulary written to out/discovered.
    discover: str | None = None
    discover_attributes: int = DISCOVERY.n_attributes
    discover_queries: int | None = DISCOVERY.queries
    discover_n_masks: int = DISCOVERY.n_masks
    discover_propagate: bool = DISCOVERY.propagate
    # An existing saliency cache to use (and extend) instead of out/saliency_cache, never removed by a
    # rerun: what `sane discovery-table` shares between its pipelines (the maps do not depend on labels).
    shared_cache: str | None = None


@dataclass
class Step:
    """One step: its name, the files it owns under ``out``, the settings it depends on, and what runs it."""

    name: str
    outputs: list[str]
    settings: list[str]
    run: Callable[[], str] = field(repr=False)  # returns a one-line summary


def _remove(path: Path) -> None:
    """Delete a step's output (file, directory, or a checkpoint's ``.state`` beside it)."""
    for p in (path, path.with_name(path.name + ".state")):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temporary file, then rename): an interruption never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def _load_state(out: Path, data: str) -> dict:
    """The state of an earlier run in ``out`` (or a fresh one); refuses a folder made from other data."""
    path = out / STATE_FILE
    if not path.is_file():
        return {"format": STATE_FORMAT, "data": data, "steps": {}}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}): delete it to start the pipeline over") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or not isinstance(state.get("steps"), dict):
        raise ValueError(f"{path} is not a sane pipeline state file: delete it or choose another --out")
    if state.get("data") != data:
        raise ValueError(f"{out} holds a pipeline run on {state.get('data')}, not {data}: choose another --out")
    return state


def _as_recorded(record: dict, settings: dict) -> dict:
    """A step's recorded settings, with each setting added to the step since it ran (absent from the
    record) at its default: the run was made with that default."""
    saved = record.get("settings", {})
    defaults = asdict(PipelineOptions())
    return {**saved, **{name: defaults[name] for name in settings if name not in saved}}


def run_pipeline(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    options: PipelineOptions | None = None,
    progress: bool = True,
    command: str = "",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) every step on ``data_dir``, writing under ``out``; returns ``{"steps": {name:
    "ran" | "skipped"}, "out": out, "prior_by": measure}`` plus the two evaluation reports.

    ``progress`` shows the steps' progress bars; one line per step start and end is always logged.
    """
    from sane.data import detect_format, open_dataset

    opts = options or PipelineOptions()
    data = str(Path(data_dir).resolve())
    layout = detect_format(data)  # fail before creating anything when the directory is not a data set
    if opts.discover is None:
        open_dataset(data, split="all").require_attributes()  # before hours of training, not after
    else:
        from sane.train.discovery import check_out

        check_out(layout, data, Path(out) / "discovered")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = _load_state(out, data)
    paths = {
        "similarity": out / "similarity.pt",
        "cache": Path(opts.shared_cache) if opts.shared_cache else out / "saliency_cache",
        "sane": out / "attributes_sane.pt",
        "classifier": out / "attributes_classifier.pt",
        "prior": out / "prior.json",
        "eval_attributes": out / "eval_attributes.json",
        "eval_explanations": out / "eval_explanations.json",
        "discovered": out / "discovered",
    }
    # Where the attribute steps read labels: the data, or the vocabulary discovered over its images
    # (the same images and relative paths, so the saliency cache made on the data fits it).
    labels = str(paths["discovered"]) if opts.discover else data
    results: dict[str, Any] = {}

    @functools.cache
    def own_similarity():
        """The user's own similarity model, loaded and validated once."""
        from sane.models.checkpoint import load_model

        return load_model(opts.similarity_model, opts.device, weights=opts.similarity_weights,
                          **opts.similarity_declarations)

    def similarity_source():
        """The similarity model the later steps use: the trained similarity.pt, or the user's own."""
        return paths["similarity"] if opts.similarity_model is None else own_similarity()

    def own_similarity_step() -> str:
        model = similarity_source()
        return (f"using {model.source} ({model.format}, {model.preprocess.size} px, {model.spec.embedding.similarity}"
                f", {model.checks['dim']}-d)")

    def train_similarity_step() -> str:
        from sane.train.similarity_model import train_similarity

        train_similarity(data, paths["similarity"], arch=opts.arch, dim=opts.dim, image_size=opts.image_size,
                         epochs=opts.epochs, classes_per_batch=opts.classes_per_batch, per_class=opts.per_class,
                         seed=opts.seed, device=opts.device, progress=progress, command=command)
        return f"wrote {paths['similarity']}"

    def cache_step() -> str:
        from sane.models import load_similarity
        from sane.train.saliency_cache import SaliencyCache, build_saliency_cache

        model, preprocess = load_similarity(similarity_source(), opts.device)
        build_saliency_cache(data, paths["cache"], model, preprocess, n_masks=opts.n_masks, refs=opts.refs,
                             size=opts.map_size, limit=opts.cache_limit, val_fraction=opts.val_fraction, seed=opts.seed,
                             batch_size=opts.batch_size, device=opts.device, progress=progress)
        return f"{len(SaliencyCache(paths['cache']))} images cached in {paths['cache']}"

    def discover_step() -> str:
        from sane.models import load_similarity
        from sane.train.discovery import DiscoverySettings, discover, write_vocabulary

        model, preprocess = load_similarity(similarity_source(), opts.device)
        settings = DiscoverySettings(method=opts.discover, n_attributes=opts.discover_attributes,
                                     queries=opts.discover_queries, n_masks=opts.discover_n_masks,
                                     propagate=opts.discover_propagate, batch_size=opts.batch_size, seed=opts.seed)
        dataset = open_dataset(data, split="all", preprocess=preprocess)
        found = discover(model, dataset, settings, cache_dir=out / "discovery_cache", device=opts.device,
                         progress=progress)
        write_vocabulary(dataset, found, paths["discovered"])
        return f"{opts.discover} discovery: {len(found.attributes)} attributes; wrote {paths['discovered']}"

    def attribute_step(kind: str) -> Callable[[], str]:
        def run() -> str:
            from sane.train.attribute_model import train_attributes

            report = train_attributes(
                labels, paths[kind], kind=kind, cache=paths["cache"] if kind == "sane" else None,
                arch=opts.attribute_arch, image_size=opts.image_size, epochs=opts.attribute_epochs,
                batch_size=opts.attribute_batch_size, lam=opts.lam, val_fraction=opts.val_fraction,
                patience=opts.patience, limit=opts.limit, seed=opts.seed, device=opts.device, progress=progress,
                command=command,
            )
            return (f"validation mAP {report['best_map']:.4f} at epoch {report['best_epoch']} "
                    f"(untrained {report['initial_map']:.4f}); wrote {paths[kind]}")

        return run

    def calibrate_step() -> str:
        from sane.train.attribute_model import calibrate_attributes

        for kind in ("sane", "classifier"):
            calibrate_attributes(paths[kind], labels, opts.calibration, opts.val_fraction, opts.seed, progress=progress)
        return f"{opts.calibration} thresholds in {paths['sane'].name} and {paths['classifier'].name}"

    def prior_step() -> str:
        from sane.evaluation.prior import estimate_prior
        from sane.explain.ranker import save_prior

        prior, measure = estimate_prior(labels, similarity_source(), by=opts.prior_by, sane=paths["sane"],
                                        classifier=paths["classifier"], n_pairs=opts.prior_pairs, k=opts.k,
                                        val_fraction=opts.val_fraction, seed=opts.seed, batch_size=opts.batch_size,
                                        device=opts.device, progress=progress)
        save_prior(paths["prior"], prior)
        state["prior_by"] = measure
        top = sorted(prior.items(), key=lambda kv: -kv[1])[:5]
        return f"prior by {measure}: " + ", ".join(f"{a} {p:.3f}" for a, p in top) + f"; wrote {paths['prior']}"

    def tune_step() -> str:
        from sane.evaluation.tuning import format_selection, tune_ranker
        from sane.explain.ranker import load_prior

        selections, utility = tune_ranker(
            similarity_source(), {kind: paths[kind] for kind in ("sane", "classifier")}, labels,
            load_prior(paths["prior"]), device=opts.device, n_pairs=opts.tune_pairs, n_masks=opts.eval_n_masks,
            k=opts.k, draws=opts.draws, val_fraction=opts.val_fraction, seed=opts.seed, batch_size=opts.batch_size,
            progress=progress)
        return "; ".join(format_selection(kind, sel, utility) for kind, sel in selections.items())

    def eval_attributes_step() -> str:
        from sane.evaluation.attribute_predictions import (
            evaluate_attributes,
            format_attribute_report,
            saliency_agreement,
        )
        from sane.models.attribute_predictors import load_attributes

        reports = {}
        for kind in ("sane", "classifier"):
            model, preprocess = load_attributes(paths[kind], opts.device)
            report = evaluate_attributes(model, preprocess, labels, split=opts.eval_split, limit=opts.eval_limit,
                                         seed=opts.seed, batch_size=opts.batch_size, progress=progress)
            report["saliency_agreement"] = saliency_agreement(model, preprocess, labels, paths["cache"],
                                                              batch_size=opts.batch_size)
            log(f"{kind}: " + format_attribute_report(report))
            reports[kind] = report
        _write_json(paths["eval_attributes"], reports)
        return f"test mAP sane {reports['sane']['mAP']:.4f}, classifier {reports['classifier']['mAP']:.4f}; " \
               f"wrote {paths['eval_attributes']}"

    def eval_explanations_step() -> str:
        from sane.evaluation.attribute_explanations import evaluate_explanations, format_explanation_table
        from sane.models import load_similarity
        from sane.models.attribute_predictors import load_attributes

        similarity, preprocess = load_similarity(similarity_source(), opts.device)
        models = {kind: load_attributes(paths[kind], opts.device) for kind in ("sane", "classifier")}
        report = evaluate_explanations(similarity, preprocess, models, labels, split=opts.eval_split,
                                       n_pairs=opts.eval_pairs, n_masks=opts.eval_n_masks, k=opts.k, draws=opts.draws,
                                       seed=opts.seed, batch_size=opts.batch_size, progress=progress)
        report["prior"] = str(paths["prior"])
        log(format_explanation_table(report))
        _write_json(paths["eval_explanations"], report)
        return f"wrote {paths['eval_explanations']}"

    training = ["attribute_arch", "image_size", "attribute_epochs", "patience", "attribute_batch_size", "limit",
                "val_fraction", "seed"]
    first = Step("train-similarity", ["similarity.pt"],
                 ["arch", "dim", "image_size", "epochs", "classes_per_batch", "per_class", "seed"], train_similarity_step)
    if opts.similarity_model is not None:
        first = Step("own-similarity", [], ["similarity_model", "similarity_weights", "similarity_declarations"],
                     own_similarity_step)
    discovery = [Step("discover-attributes", ["discovered"],
                      ["discover", "discover_attributes", "discover_queries", "discover_n_masks", "discover_propagate",
                       "seed"],
                      discover_step)] if opts.discover else []
    steps = [
        first,
        *discovery,
        Step("cache-saliency", [] if opts.shared_cache else ["saliency_cache"],
             ["n_masks", "refs", "map_size", "cache_limit", "val_fraction", "seed", "shared_cache"], cache_step),
        Step("train-sane", ["attributes_sane.pt"], [*training, "lam"], attribute_step("sane")),
        Step("train-classifier", ["attributes_classifier.pt"], training, attribute_step("classifier")),
        Step("calibrate", [], ["calibration", "val_fraction", "seed"], calibrate_step),
        Step("estimate-prior", ["prior.json"], ["prior_by", "prior_pairs", "k", "val_fraction", "seed"], prior_step),
        Step("tune-ranker", [], ["tune_pairs", "eval_n_masks", "k", "draws", "val_fraction", "seed"], tune_step),
        Step("eval-attributes", ["eval_attributes.json"], ["eval_split", "eval_limit", "seed"], eval_attributes_step),
        Step("eval-explanations", ["eval_explanations.json"],
             ["eval_split", "eval_pairs", "eval_n_masks", "k", "draws", "seed"], eval_explanations_step),
    ]
    values = asdict(opts)
    log(f"pipeline on {data} ({layout} layout) -> {out}")
    status: dict[str, str] = {}
    stale = False  # once a step runs, every later step must run again
    for number, step in enumerate(steps, 1):
        settings = {name: values[name] for name in step.settings}
        record = state["steps"].get(step.name)
        recorded = None if record is None else _as_recorded(record, settings)
        outputs = [out / name for name in step.outputs]
        finished = record is not None and record.get("done") and recorded == settings
        if not stale and finished and all(p.exists() for p in outputs):
            log(f"[{number}/{len(steps)}] {step.name}: finished before, skipped")
            status[step.name] = "skipped"
            continue
        if stale or (record is not None and recorded != settings) or (record or {}).get("done"):
            for p in outputs:  # made from other inputs or settings: start this step over
                _remove(p)
        elif outputs and any(p.exists() for p in outputs):
            log(f"[{number}/{len(steps)}] {step.name}: resuming an interrupted run")
        stale = True
        state["steps"][step.name] = {"settings": settings, "done": False}
        _write_json(out / STATE_FILE, state)
        log(f"[{number}/{len(steps)}] {step.name} ...")
        start = time.perf_counter()
        summary = step.run()
        seconds = time.perf_counter() - start
        state["steps"][step.name] = {"settings": settings, "done": True, "seconds": round(seconds, 2)}
        _write_json(out / STATE_FILE, state)
        log(f"[{number}/{len(steps)}] {step.name} done in {seconds:.1f} s: {summary}")
        status[step.name] = "ran"
    results["steps"] = status
    results["out"] = str(out)
    results["prior_by"] = state.get("prior_by")
    for key in ("eval_attributes", "eval_explanations"):
        results[key] = json.loads(paths[key].read_text())
    return results


# -- the seed's Table 2: SANE on discovered vocabularies and on the supervised attributes ------------
TABLE2_METHODS = ("random", "full-frame", "patch", "supervised")  # the seed's rows, the default
# Rows beyond the seed: patch discovery with propagation (every image labelled by its own grid patches).
TABLE2_EXTRA = ("patch-propagated",)
TABLE2_LABELS = {"random": "Random", "full-frame": "Full Frame Discovery", "patch": "Patch Discovery",
                 "patch-propagated": "Patch, propagated", "supervised": "Supervised Attributes"}


def run_discovery_table(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    options: PipelineOptions | None = None,
    methods: tuple[str, ...] = TABLE2_METHODS,
    progress: bool = True,
    command: str = "",
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, float]]:
    """One pipeline per vocabulary under ``out/<method>`` (``supervised``: the data's own labels),
    sharing one similarity model and one saliency cache (the first run's: ``shared_cache`` of the others);
    returns {method: SANE's attribute insertion/deletion (x100) and its test mAP} (SPEC §5)."""
    opts = options or PipelineOptions()
    unknown = [m for m in methods if m not in TABLE2_METHODS + TABLE2_EXTRA]
    if unknown or not methods:
        raise ValueError(f"methods must be among {', '.join(TABLE2_METHODS + TABLE2_EXTRA)}, got {list(methods)}")
    if "supervised" in methods:  # before the discovery runs, not after them
        from sane.data import open_dataset

        open_dataset(data_dir, split="all").require_attributes()
    out = Path(out)
    rows: dict[str, dict[str, float]] = {}
    first: Path | None = None
    for method in methods:
        run_out = out / method
        run_opts = replace(opts, discover=None if method == "supervised" else method)
        if method == "patch-propagated":
            run_opts = replace(run_opts, discover="patch", discover_propagate=True)
        if first is not None:
            if opts.similarity_model is None:  # the first run trained it: the others explain that model
                run_opts = replace(run_opts, similarity_model=str(first / "similarity.pt"))
            run_opts = replace(run_opts, shared_cache=str((first / "saliency_cache").resolve()))
        log(f"== {TABLE2_LABELS[method]} -> {run_out}")
        result = run_pipeline(data_dir, run_out, run_opts, progress=progress, command=command, log=log)
        sane = result["eval_explanations"]["methods"]["SANE"]
        rows[method] = {"insertion": sane["insertion"], "deletion": sane["deletion"],
                        "mAP": result["eval_attributes"]["sane"]["mAP"]}
        first = first or run_out
    _write_json(out / "table2.json", rows)
    return rows


def format_discovery_table(rows: dict[str, dict[str, float]]) -> str:
    """The seed's Table 2 layout: attribute vocabulary, SANE's insertion ↑ and deletion ↓ (x100)."""
    lines = [f"{'attribute types':<24}{'insertion ^':>12}{'deletion v':>12}{'test mAP':>10}"]
    for method, row in rows.items():
        lines.append(f"{TABLE2_LABELS[method]:<24}{row['insertion']:>12.1f}{row['deletion']:>12.1f}{row['mAP']:>10.3f}")
    return "\n".join(lines)
