"""The research subcommands of `sane`: data synth / example-pair, train-similarity, eval-similarity,
eval-saliency, cache-saliency, discover-attributes, name-attributes, train-attributes, calibrate-attributes,
estimate-prior, tune-ranker, eval-attributes, eval-explanations, `pipeline`, which runs the training and
evaluation steps in order, and `discovery-table`, one pipeline per attribute vocabulary.

Registered by ``add_research_commands(sub)`` in :func:`sane.cli.command.build_parser`. Every ``--data`` of
the attribute commands takes either layout, AwA2 or Polyvore Outfits (:func:`sane.data.open_dataset`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from sane.cli.model_args import add_model_options, add_run_options, load_from_args
from sane.data.benchmarks import BENCHMARK_DATA, DEFAULT_DATA, ensure_data
from sane.explain.map_match import DEFAULT_QUERY_MASKS, DEFAULT_TAU
from sane.saliency import GENERATORS
from sane.train.discovery import DEFAULTS as DISCOVERY
from sane.train.discovery import METHODS as DISCOVERY_METHODS
from sane.train.validation_split import DEFAULT_VAL_FRACTION

# Forward batch of the evaluation commands (eval-explanations/eval-attributes, estimate-prior,
# tune-ranker): the compact model runs fastest per image at 32 on a 2-core CPU (bench/table1.py's
# sweep); the results do not depend on it (an eval-attributes run at 128 and 32 printed the same table).
EVAL_BATCH_SIZE = 32
EVAL_BATCH_HELP = "forward batch (32 suits the compact model on a CPU; raise it on a GPU or for larger models)"

DATA_HELP = "data directory, AwA2 or Polyvore Outfits layout"


def command_line() -> str:
    """The command as typed, recorded in checkpoints so they say how to reproduce them."""
    return "sane " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _cmd_cache_saliency(args: argparse.Namespace) -> int:
    """Load the similarity model and cache RISE maps of the training images."""
    from sane.train.saliency_cache import build_saliency_cache

    loaded = load_from_args(args)
    model, preprocess = loaded.model, loaded.preprocess
    out = build_saliency_cache(
        args.data, args.out, model, preprocess, n_masks=args.n_masks, refs=args.refs, size=args.size,
        limit=args.limit, chunk_size=args.chunk_size, val_fraction=args.val_fraction, seed=args.seed,
        batch_size=args.batch_size, device=args.device, progress=not args.quiet,
    )
    print(f"saliency cache in {out}")
    return 0


def _cmd_discover_attributes(args: argparse.Namespace) -> int:
    """Discover attributes over a data set without labels, write them where every command reads labels."""
    from sane.data import open_dataset
    from sane.train.discovery import DiscoverySettings, check_out, discover, write_vocabulary

    settings = DiscoverySettings(method=args.method, n_attributes=args.n_attributes, neighbours=args.neighbours,
                                 keep=args.keep, grid=args.grid, patch=args.patch, n_masks=args.n_masks,
                                 n_reference_masks=args.reference_masks, queries=args.queries,
                                 propagate=args.propagate, batch_size=args.batch_size, seed=args.seed)
    settings.validate()
    loaded = load_from_args(args)
    dataset = open_dataset(ensure_data(args.data), split="all", preprocess=loaded.preprocess)
    check_out(dataset.format, args.data, args.out)
    found = discover(loaded.model, dataset, settings, cache_dir=Path(args.out) / "cache", device=args.device,
                     progress=not args.quiet)
    out = write_vocabulary(dataset, found, args.out)
    covered = int((found.image_attributes.sum(1) > 0).sum())
    print(f"{settings.method} discovery: {len(found.attributes)} attributes over {len(found.unit_image)} "
          f"{'patches' if settings.method == 'patch' else 'images'}; {covered} of {len(dataset)} images have one")
    if dataset.scenes and all(s is not None for s in dataset.scenes):
        from sane.evaluation.discovery import format_recovery, recovery

        print("recovery of the true factors, NMI (purity):")
        print(format_recovery({settings.method: recovery(found, dataset)}))
    print(f"wrote {out}: train on it with `sane train-attributes --data {out}`; contact sheets in "
          f"{out / 'contact-sheets'}; name the attributes in {out / 'discovered-attributes.json'} and run "
          f"`sane name-attributes {out}`")
    return 0


def _cmd_name_attributes(args: argparse.Namespace) -> int:
    """Apply the names edited in discovered-attributes.json."""
    from sane.train.discovery import rename_attributes

    names = rename_attributes(args.dir)
    print(f"{len(names)} attributes named in {args.dir}: {', '.join(names)}")
    return 0


def _cmd_train_attributes(args: argparse.Namespace) -> int:
    """Train one attribute model and print its best validation mAP."""
    from sane.train.attribute_model import train_attributes

    report = train_attributes(
        args.data, args.out, kind=args.model, cache=args.cache, arch=args.arch, image_size=args.image_size,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lam=args.lam, tau=args.tau,
        val_fraction=args.val_fraction, patience=args.patience, limit=args.limit, seed=args.seed,
        weights=args.weights, device=args.device, progress=not args.quiet, command=command_line(),
    )
    print(f"validation mAP {report['best_map']:.4f} at epoch {report['best_epoch']} "
          f"(untrained {report['initial_map']:.4f}); wrote {report['out']}")
    return 0


def _cmd_calibrate_attributes(args: argparse.Namespace) -> int:
    """Recompute the presence thresholds of an attribute checkpoint."""
    from sane.train.attribute_model import calibrate_attributes

    thresholds = calibrate_attributes(args.model, args.data, args.calibration, args.val_fraction, args.seed,
                                      args.out, progress=not args.quiet)
    print(f"wrote {len(thresholds)} {args.calibration} thresholds to {args.out or args.model}")
    return 0


def _cmd_estimate_prior(args: argparse.Namespace) -> int:
    """SPEC §4's prior on held-out training pairs: by the attribute deletion metric or exact counterfactuals."""
    from sane.evaluation.prior import estimate_prior
    from sane.explain.ranker import save_prior

    prior, measure = estimate_prior(args.data, load_from_args(args), by=args.by, sane=args.sane, classifier=args.classifier,
                                    n_pairs=args.pairs, k=args.k, val_fraction=args.val_fraction, seed=args.seed,
                                    batch_size=args.batch_size, device=args.device, progress=not args.quiet)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_prior(args.out, prior)
    top = sorted(prior.items(), key=lambda kv: -kv[1])[:8]
    print(f"prior by {measure}; highest: " + ", ".join(f"{a} {p:.3f}" for a, p in top))
    print(f"wrote {args.out}")
    return 0


def _cmd_tune_ranker(args: argparse.Namespace) -> int:
    """SPEC §4's w and γ per attribute model on validation pairs, written into the checkpoints."""
    from sane.evaluation.tuning import format_selection, tune_ranker
    from sane.explain.ranker import load_prior
    from sane.models.attribute_predictors import default_attribute_weights

    paths = {"sane": args.sane or default_attribute_weights("sane"),
             "classifier": args.classifier or default_attribute_weights("classifier")}
    if args.fashionsearchnet:
        paths["fashionsearchnet"] = args.fashionsearchnet
    prior = None if args.prior == "uniform" else load_prior(args.prior)
    selections, utility = tune_ranker(load_from_args(args, "similarity"), paths, args.data, prior, write=not args.dry_run,
                                      device=args.device, n_pairs=args.pairs, n_masks=args.n_masks, k=args.k,
                                      draws=args.draws, val_fraction=args.val_fraction, seed=args.seed,
                                      batch_size=args.batch_size, progress=not args.quiet)
    for name, selection in selections.items():
        print(format_selection(name, selection, utility))
    if not args.dry_run:
        print("wrote prior, w and gamma into " + ", ".join(str(p) for p in paths.values()))
    return 0


def write_report(out: str | None, report: dict) -> None:
    """Write an evaluation report as JSON to ``out`` (parent folders made), if given."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")


def _cmd_eval_attributes(args: argparse.Namespace) -> int:
    """mAP and activation-map pointing game of one attribute model; without --model, the paper's table."""
    from sane.evaluation.attribute_predictions import (
        evaluate_attributes,
        format_attribute_report,
        saliency_agreement,
    )
    from sane.models.attribute_predictors import load_attributes

    if args.model is None:
        return _cmd_eval_explanations(args)
    model, preprocess = load_attributes(args.model, args.device)
    data = ensure_data(args.data or BENCHMARK_DATA[args.benchmark][0])
    report = evaluate_attributes(model, preprocess, data, split=args.split, limit=args.limit, seed=args.seed,
                                 progress=not args.quiet)
    if args.cache:
        report["saliency_agreement"] = saliency_agreement(model, preprocess, data, args.cache, args.tau)
    print(format_attribute_report(report))
    write_report(args.out, report)
    return 0


def _cmd_eval_explanations(args: argparse.Namespace) -> int:
    """Attribute insertion/deletion of Random, the classifier and SANE, against the exact counterfactual."""
    from sane.evaluation.attribute_explanations import evaluate_explanations, format_explanation_table
    from sane.explain.ranker import load_prior
    from sane.models.attribute_predictors import default_attribute_weights, load_attributes
    from sane.models.checkpoint import default_weights_path

    bench = args.benchmark
    loaded = load_from_args(args, "similarity", default_weights_path(bench))
    similarity, preprocess = loaded.model, loaded.preprocess
    attribute_models = {
        "sane": load_attributes(args.sane or default_attribute_weights("sane", bench), args.device),
        "classifier": load_attributes(args.classifier or default_attribute_weights("classifier", bench), args.device),
    }
    fsn = args.fashionsearchnet
    if fsn is None and args.sane is None and default_attribute_weights("fashionsearchnet", bench).is_file():
        fsn = default_attribute_weights("fashionsearchnet", bench)  # the bundled table includes the bundled FSN
    if fsn and fsn != "none":
        attribute_models["fashionsearchnet"] = load_attributes(fsn, args.device)
    data = ensure_data(args.data or BENCHMARK_DATA[bench][0])
    report = evaluate_explanations(similarity, preprocess, attribute_models, data, split=args.split,
                                   n_pairs=args.pairs, n_masks=args.n_masks, k=args.k, draws=args.draws,
                                   seed=args.seed, batch_size=args.batch_size, progress=not args.quiet,
                                   database=args.database,
                                   prior=args.prior if args.prior in (None, "uniform") else load_prior(args.prior))
    print(format_explanation_table(report))
    write_report(args.out, report)
    return 0


def _add_table_options(p: argparse.ArgumentParser) -> None:
    """Options of the attribute-explanation table (eval-explanations, eval-attributes without --model)."""
    p.add_argument("--benchmark", default="shapes", choices=list(BENCHMARK_DATA),
                   help="which bundled models (and synthetic data, unless --data) the table defaults to: shapes "
                        "(classes by shape x colour) or shapes_bg (by shape x background: the explaining factors "
                        "lie in different places)")
    add_model_options(p, "--similarity")
    p.add_argument("--sane", default=None, help="SANE attribute checkpoint (default: bundled)")
    p.add_argument("--classifier", default=None, help="attribute-classifier checkpoint (default: bundled)")
    p.add_argument("--fashionsearchnet", default=None,
                   help="FashionSearchNet checkpoint for its row (default: the bundled one with the bundled models; "
                        "'none' to leave the row out)")
    p.add_argument("--pairs", type=int, default=40, help="same-class pairs to explain")
    p.add_argument("--n-masks", type=int, default=DEFAULT_QUERY_MASKS, help="RISE masks per query saliency map")
    p.add_argument("--k", type=int, default=5, help="images retrieved per insertion/deletion")
    p.add_argument("--database", default="auto", choices=["auto", "split", "all"],
                   help="retrieval database of insertion/deletion: the evaluated split, every split (pairs still "
                        "from the evaluated one), or auto: every split on the synthetic data, the split otherwise")
    p.add_argument("--draws", type=int, default=3,
                   help="counterfactual: random new positions averaged (other factors take every other value)")
    p.add_argument("--prior", default=None, help="ranker prior JSON (sane estimate-prior) or 'uniform'; default: "
                                                  "each model's tuned prior, w and gamma (sane tune-ranker), if any")
    p.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE, help=EVAL_BATCH_HELP)


def _cmd_pipeline(args: argparse.Namespace) -> int:
    """Every step from a data directory to the evaluation reports, resumable, under --out."""
    from sane.pipeline import run_pipeline

    options = _pipeline_options(args)
    result = run_pipeline(args.data, args.out, options, progress=not args.quiet, command=command_line())
    ran = [name for name, status in result["steps"].items() if status == "ran"]
    print(f"pipeline finished in {result['out']}: ran {', '.join(ran) or 'nothing (all steps were done)'}")
    return 0


def _pipeline_options(args: argparse.Namespace):
    """PipelineOptions from the parsed pipeline options (the user's own similarity model included)."""
    from dataclasses import fields

    from sane.cli.model_args import declarations, factory_kwargs
    from sane.pipeline import PipelineOptions

    own = {"similarity_model": args.similarity, "similarity_weights": args.weights,
           "similarity_declarations": {**declarations(args), **({"factory_kwargs": factory_kwargs(args)}
                                                                if args.model_kwargs else {})}}
    return PipelineOptions(**{f.name: getattr(args, f.name) for f in fields(PipelineOptions)
                              if f.name not in own and hasattr(args, f.name)}, **own)


def _cmd_discovery_table(args: argparse.Namespace) -> int:
    """One pipeline per attribute vocabulary, then the seed's Table 2 from their evaluations."""
    from dataclasses import replace

    from sane.models import default_weights_path
    from sane.pipeline import format_discovery_table, run_discovery_table

    if (args.data is None) == (args.benchmark is None):
        raise ValueError("give --benchmark (a bundled benchmark) or --data (your data set), one of them")
    options = _pipeline_options(args)
    data = args.data
    if args.benchmark is not None:
        data = ensure_data(BENCHMARK_DATA[args.benchmark][0])
        if options.similarity_model is None:
            options = replace(options, similarity_model=str(default_weights_path(args.benchmark)))
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    rows = run_discovery_table(data, args.out, options, methods, progress=not args.quiet, command=command_line())
    print(f"\nTable 2 on {data} (SANE's attribute insertion/deletion x100, seed {args.seed}; "
          f"{args.out}/table2.json):")
    print(format_discovery_table(rows))
    return 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from sane.data import write_dataset

    root = write_dataset(args.out, args.n, seed=args.seed, image_size=args.image_size, progress=not args.quiet,
                         classes_by=tuple(args.classes_by.split(",")))
    print(f"wrote {args.n} images to {root}")
    return 0


def _cmd_data_example_pair(args: argparse.Namespace) -> int:
    from sane.data import write_example_pair

    q, r = write_example_pair(args.out, seed=args.seed, image_size=args.image_size)
    print(f"wrote {q} and {r}")
    return 0


def _cmd_train_similarity(args: argparse.Namespace) -> int:
    from sane.train.similarity_model import train_similarity

    out = train_similarity(
        args.data, args.out, arch=args.arch, dim=args.dim, image_size=args.image_size, epochs=args.epochs,
        classes_per_batch=args.classes_per_batch, per_class=args.per_class, lr=args.lr, margin=args.margin, mining=args.mining,
        seed=args.seed, weights=args.weights, device=args.device, progress=not args.quiet, command=command_line(),
    )
    print(f"wrote {out}")
    return 0


def _cmd_eval_similarity(args: argparse.Namespace) -> int:
    from sane.evaluation import evaluate_similarity

    loaded = load_from_args(args)
    model, preprocess = loaded.model, loaded.preprocess
    report = evaluate_similarity(model, preprocess, ensure_data(args.data), n_pairs=args.pairs, seed=args.seed)
    print(f"recall@1 on {report['n_images']} {report['split']} images: {report['recall@1']:.3f}")
    if "counterfactual" in report:
        print("mean change of s(q, r) when one factor of q is re-rendered (same-class pairs):")
        for factor, row in report["counterfactual"].items():
            print(f"  {factor:<12}{row['mean_delta']:+.3f} (std {row['std_delta']:.3f})")
    write_report(args.out, report)
    return 0


def _cmd_eval_saliency(args: argparse.Namespace) -> int:
    from sane.evaluation import evaluate_saliency, format_saliency_table

    loaded = load_from_args(args)
    model, preprocess = loaded.model, loaded.preprocess
    table = evaluate_saliency(
        model, preprocess, ensure_data(args.data), methods=tuple(args.methods), n_pairs=args.pairs,
        n_masks=args.n_masks, n_samples=args.n_samples, iterations=args.iterations, batch_size=args.batch_size,
        substrate=args.substrate, seed=args.seed,
    )
    print(format_saliency_table(table))
    write_report(args.out, table)
    return 0


def add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    """The pipeline's options (also `discovery-table`'s, which runs one pipeline per vocabulary)."""
    add_model_options(parser, "--similarity", "trained by the pipeline's first step; give yours to explain it instead")
    parser.add_argument("--out", required=True, help="folder for every artifact and pipeline.json (a rerun resumes it)")
    group = parser.add_argument_group("similarity model")
    group.add_argument("--arch", default="compact", choices=["compact", "resnet18", "resnet50"])
    group.add_argument("--dim", type=int, default=64)
    group.add_argument("--image-size", type=int, default=112, help="input side of the similarity and attribute models")
    group.add_argument("--epochs", type=int, default=15, help="similarity training epochs")
    group.add_argument("--classes-per-batch", type=int, default=8)
    group.add_argument("--per-class", type=int, default=4)
    group = parser.add_argument_group("attribute discovery (for data without attribute labels)")
    group.add_argument("--discover", default=None, choices=DISCOVERY_METHODS,
                       help="discover the attributes first (sane discover-attributes) and learn those")
    group.add_argument("--discover-attributes", type=int, default=DISCOVERY.n_attributes, help="attributes to discover")
    group.add_argument("--discover-queries", type=int, default=DISCOVERY.queries, help="images used as discovery "
                       "queries (default: all)")
    group.add_argument("--discover-n-masks", type=int, default=DISCOVERY.n_masks, help="RISE masks per discovery query")
    group.add_argument("--discover-propagate", action="store_true", help="patch discovery also labels every image by "
                       "its own grid patches (discover-attributes --propagate)")
    group = parser.add_argument_group("saliency cache")
    group.add_argument("--n-masks", type=int, default=2000, help="RISE masks per cached map")
    group.add_argument("--refs", type=int, default=5, help="same-class references per training image, at most")
    group.add_argument("--map-size", type=int, default=28, help="side of the stored maps")
    group.add_argument("--cache-limit", type=int, default=None, help="cache only this many images")
    group = parser.add_argument_group("attribute models")
    group.add_argument("--attribute-arch", default="compact", choices=["compact", "resnet50"])
    group.add_argument("--attribute-epochs", type=int, default=300)
    group.add_argument("--patience", type=int, default=None, help="stop after this many epochs without a better mAP")
    group.add_argument("--attribute-batch-size", type=int, default=64)
    group.add_argument("--lam", type=float, default=5e-3, help="weight of the saliency loss (SANE)")
    group.add_argument("--limit", type=int, default=None, help="train the attribute models on this many images only")
    group.add_argument("--calibration", default="f1", choices=["f1", "median"])
    group = parser.add_argument_group("prior and evaluation")
    group.add_argument("--prior-by", default="auto", choices=["auto", "deletion", "counterfactual"],
                       help="auto: exact counterfactuals when the data has scenes (synthetic), else attribute deletion")
    group.add_argument("--prior-pairs", type=int, default=200)
    group.add_argument("--tune-pairs", type=int, default=200, help="validation pairs choosing the ranker's w and gamma")
    group.add_argument("--eval-split", default="test", choices=["train", "test", "all"])
    group.add_argument("--eval-limit", type=int, default=None, help="eval-attributes on a random subset of this size")
    group.add_argument("--eval-pairs", type=int, default=40, help="same-class pairs explained by eval-explanations")
    group.add_argument("--eval-n-masks", type=int, default=DEFAULT_QUERY_MASKS, help="RISE masks per query map in eval-explanations")
    group.add_argument("--k", type=int, default=5, help="images retrieved per attribute insertion/deletion")
    group.add_argument("--draws", type=int, default=3, help="counterfactual: random new positions averaged (synthetic data)")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250, help="forward batches of RISE and the evaluations")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (the per-step lines stay)")


def add_research_commands(sub: argparse._SubParsersAction) -> None:
    """Add the research subcommands to `sane`'s subparsers."""
    methods = sorted(GENERATORS)
    data = sub.add_parser("data", help="generate data sets").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write the Shapes with Attributes data set (AwA2 format)")
    synth.add_argument("--out", default=DEFAULT_DATA)
    synth.add_argument("--n", type=int, default=4200, help="number of images (spread over the classes)")
    synth.add_argument("--classes-by", default="shape,colour",
                       help="the two factors a class is defined by (default shape,colour: 42 classes; "
                            "shape,background: 24 classes whose explaining factors lie apart)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=int, default=112)
    synth.add_argument("--quiet", action="store_true")
    synth.set_defaults(func=_cmd_data_synth)
    pair = data.add_parser("example-pair", help="write query.jpg and reference.jpg of one class")
    pair.add_argument("--out", default="examples")
    pair.add_argument("--seed", type=int, default=0)
    pair.add_argument("--image-size", type=int, default=112)
    pair.set_defaults(func=_cmd_data_example_pair)

    train = sub.add_parser("train-similarity", help="train a similarity model with a triplet loss")
    train.add_argument("--data", default=DEFAULT_DATA, help="AwA2-format directory")
    train.add_argument("--out", required=True, help="checkpoint path to write")
    train.add_argument("--arch", default="compact", choices=["compact", "resnet18", "resnet50"])
    train.add_argument("--dim", type=int, default=64)
    train.add_argument("--image-size", type=int, default=112)
    train.add_argument("--epochs", type=int, default=15)
    train.add_argument("--classes-per-batch", type=int, default=8)
    train.add_argument("--per-class", type=int, default=4)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--margin", type=float, default=0.2)
    train.add_argument("--mining", default="batch_all", choices=["batch_all", "batch_hard"])
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--weights", default=None, help="torchvision weights name for resnet trunks (downloads)")
    train.add_argument("--device", default="cpu")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(func=_cmd_train_similarity)

    eval_sim = sub.add_parser("eval-similarity", help="recall@1 and the counterfactual table")
    eval_sim.add_argument("--data", default=DEFAULT_DATA)
    add_run_options(eval_sim)
    eval_sim.add_argument("--pairs", type=int, default=300, help="pairs for the counterfactual table")
    eval_sim.add_argument("--seed", type=int, default=0)
    eval_sim.add_argument("--out", default=None, help="also write the report as JSON here")
    eval_sim.set_defaults(func=_cmd_eval_similarity)

    eval_sal = sub.add_parser("eval-saliency", help="compare saliency generators on synthetic test pairs")
    eval_sal.add_argument("--data", default=DEFAULT_DATA)
    add_run_options(eval_sal)
    eval_sal.add_argument("--methods", nargs="+", default=["rise", "sliding_window", "random"], choices=methods)
    eval_sal.add_argument("--pairs", type=int, default=50)
    eval_sal.add_argument("--n-masks", type=int, default=1000)
    eval_sal.add_argument("--n-samples", type=int, default=None, help="LIME samples (default 1000)")
    eval_sal.add_argument("--iterations", type=int, default=None, help="learned-mask steps (default 500)")
    eval_sal.add_argument("--substrate", default="constant", choices=["constant", "blur"])
    eval_sal.add_argument("--seed", type=int, default=0)
    eval_sal.add_argument("--out", default="results/eval_saliency.json", help="JSON table path ('' to skip)")
    eval_sal.set_defaults(func=_cmd_eval_saliency)

    cache = sub.add_parser("cache-saliency", help="cache RISE maps of training images against same-class references")
    cache.add_argument("--data", default=DEFAULT_DATA, help=DATA_HELP)
    cache.add_argument("--out", required=True, help="cache directory (a rerun resumes it)")
    add_model_options(cache)
    cache.add_argument("--n-masks", type=int, default=2000, help="RISE masks per image")
    cache.add_argument("--refs", type=int, default=5, help="references (same-class images) per image, at most")
    cache.add_argument("--size", type=int, default=28, help="side of the stored (downsampled) maps")
    cache.add_argument("--limit", type=int, default=None, help="cache only this many images (a class-balanced subset)")
    cache.add_argument("--chunk-size", type=int, default=32, help="images per atomically written chunk")
    cache.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                       help="share of each training class held out for validation (not cached)")
    cache.add_argument("--seed", type=int, default=0)
    cache.add_argument("--batch-size", type=int, default=250)
    cache.add_argument("--device", default="cpu")
    cache.add_argument("--quiet", action="store_true")
    cache.set_defaults(func=_cmd_cache_saliency)

    disc = sub.add_parser("discover-attributes",
                          help="discover attributes for data without attribute labels (the seed's section 4)")
    disc.add_argument("--data", default=DEFAULT_DATA,
                      help="data directory: AwA2, Polyvore Outfits, labels.csv or a folder per class (labels not "
                      "needed)")
    disc.add_argument("--out", required=True, help="where the discovered vocabulary is written (a data set "
                      "over the same images; a rerun resumes its cache)")
    disc.add_argument("--method", default=DISCOVERY.method, choices=DISCOVERY_METHODS)
    disc.add_argument("--n-attributes", type=int, default=DISCOVERY.n_attributes, help="attributes (clusters) to discover")
    disc.add_argument("--neighbours", type=int, default=DISCOVERY.neighbours,
                      help="K: nearest neighbours explained per query")
    disc.add_argument("--keep", type=int, default=DISCOVERY.keep, help="N: neighbours kept per query")
    disc.add_argument("--grid", type=int, default=DISCOVERY.grid, help="cells per side of the peak grid (seed: 7)")
    disc.add_argument("--patch", type=int, default=DISCOVERY.patch, help="patch side in model-input pixels (seed: 30)")
    disc.add_argument("--n-masks", type=int, default=DISCOVERY.n_masks, help="RISE masks over each query")
    disc.add_argument("--reference-masks", type=int, default=DISCOVERY.n_reference_masks,
                      help="RISE masks over each neighbour")
    disc.add_argument("--queries", type=int, default=DISCOVERY.queries, help="images used as queries (default: all)")
    disc.add_argument("--propagate", action="store_true", help="patch: also give every image the attributes its "
                      "own grid patches fall in (beyond the seed; labels the images no query kept, e.g. with --queries)")
    disc.add_argument("--seed", type=int, default=0)
    disc.add_argument("--quiet", action="store_true")
    add_run_options(disc)
    disc.set_defaults(func=_cmd_discover_attributes, batch_size=DISCOVERY.batch_size)

    name = sub.add_parser("name-attributes", help="apply the names edited in DIR/discovered-attributes.json")
    name.add_argument("dir", help="a discover-attributes --out directory")
    name.set_defaults(func=_cmd_name_attributes)

    train = sub.add_parser("train-attributes", help="train the SANE attribute predictor or a baseline")
    train.add_argument("--model", default="sane", choices=["sane", "classifier", "fashionsearchnet"])
    train.add_argument("--data", default=DEFAULT_DATA, help=DATA_HELP)
    train.add_argument("--cache", default=None, help="saliency cache directory (needed by --model sane)")
    train.add_argument("--out", required=True, help="checkpoint path to write (the best validation mAP)")
    train.add_argument("--arch", default="compact", choices=["compact", "resnet50"])
    train.add_argument("--image-size", type=int, default=112)
    train.add_argument("--epochs", type=int, default=300)
    train.add_argument("--patience", type=int, default=None, help="stop after this many epochs without a better mAP")
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=5e-4)
    train.add_argument("--lam", type=float, default=5e-3, help="weight of the saliency loss (sane only)")
    train.add_argument("--tau", type=float, default=DEFAULT_TAU, help="sharpness of the saliency targets")
    train.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    train.add_argument("--limit", type=int, default=None, help="train on this many images only (quick runs)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--weights", default=None, help="torchvision weights name for the resnet50 trunk (downloads)")
    train.add_argument("--device", default="cpu")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(func=_cmd_train_attributes)

    ev = sub.add_parser("eval-attributes", help="the paper's attribute table (Random, Attribute Classifier, "
                                               "FashionSearchNet, SANE: insertion, deletion, mAP); with --model, "
                                               "one model's mAP and activation-map pointing game")
    ev.add_argument("--model", default=None, help="one attribute checkpoint to report on (default: the table)")
    _add_table_options(ev)
    ev.add_argument("--data", default=None, help=DATA_HELP + " (default: the --benchmark's synthetic data)")
    ev.add_argument("--split", default="test", choices=["train", "test", "all"])
    ev.add_argument("--limit", type=int, default=None, help="evaluate a random subset of this many images")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--cache", default=None, help="also score the maps against this saliency cache (L_hm)")
    ev.add_argument("--tau", type=float, default=DEFAULT_TAU, help="sharpness of the saliency targets (with --cache)")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--out", default=None, help="also write the report as JSON here")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=_cmd_eval_attributes)

    pri = sub.add_parser("estimate-prior", help="prior of each attribute being the best explanation (held-out pairs)")
    pri.add_argument("--data", default=DEFAULT_DATA, help=DATA_HELP)
    add_model_options(pri)
    pri.add_argument("--by", default="auto", choices=["auto", "deletion", "counterfactual"],
                     help="best explanation by the attribute deletion metric (SPEC §5, any data) or by exact "
                          "counterfactuals (synthetic data only); auto: counterfactual when the data has scenes")
    pri.add_argument("--sane", default=None, help="SANE attribute checkpoint for --by deletion (default: bundled)")
    pri.add_argument("--classifier", default=None, help="classifier checkpoint for --by deletion (default: bundled)")
    pri.add_argument("--pairs", type=int, default=200)
    pri.add_argument("--k", type=int, default=5, help="images retrieved per deletion (--by deletion)")
    pri.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE, help=EVAL_BATCH_HELP)
    pri.add_argument("--quiet", action="store_true")
    pri.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    pri.add_argument("--seed", type=int, default=0)
    pri.add_argument("--device", default="cpu")
    pri.add_argument("--out", required=True, help="JSON file for `sane explain --prior`")
    pri.set_defaults(func=_cmd_estimate_prior)

    tune = sub.add_parser("tune-ranker", help="choose the ranker's w and gamma on validation pairs (SPEC §4) and "
                                              "store them, with the prior, in the attribute checkpoints")
    tune.add_argument("--data", default=DEFAULT_DATA, help=DATA_HELP)
    tune.add_argument("--prior", required=True, help="prior JSON (sane estimate-prior), or 'uniform'")
    add_model_options(tune, "--similarity")
    tune.add_argument("--sane", default=None, help="SANE attribute checkpoint (default: bundled; rewritten)")
    tune.add_argument("--classifier", default=None, help="classifier checkpoint (default: bundled; rewritten)")
    tune.add_argument("--fashionsearchnet", default=None, help="also tune this FashionSearchNet checkpoint")
    tune.add_argument("--pairs", type=int, default=200, help="validation pairs (training classes)")
    tune.add_argument("--n-masks", type=int, default=DEFAULT_QUERY_MASKS, help="RISE masks per query saliency map")
    tune.add_argument("--k", type=int, default=5, help="images retrieved per deletion (data without scenes)")
    tune.add_argument("--draws", type=int, default=3, help="counterfactual: random new positions averaged (synthetic data)")
    tune.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE, help=EVAL_BATCH_HELP)
    tune.add_argument("--device", default="cpu")
    tune.add_argument("--dry-run", action="store_true", help="report the choice without writing the checkpoints")
    tune.add_argument("--quiet", action="store_true")
    tune.set_defaults(func=_cmd_tune_ranker)

    cal = sub.add_parser("calibrate-attributes", help="recompute an attribute model's presence thresholds")
    cal.add_argument("--model", required=True, help="attribute checkpoint (rewritten in place unless --out)")
    cal.add_argument("--data", default=DEFAULT_DATA, help=DATA_HELP)
    cal.add_argument("--calibration", default="f1", choices=["f1", "median"],
                     help="f1: best F1 on validation images (default); median: median score of positives (paper)")
    cal.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--out", default=None)
    cal.add_argument("--quiet", action="store_true")
    cal.set_defaults(func=_cmd_calibrate_attributes)

    exp = sub.add_parser("eval-explanations",
                         help="attribute insertion/deletion of Random, classifier and SANE vs the exact counterfactual")
    exp.add_argument("--data", default=None,
                     help=DATA_HELP + " (default: the --benchmark's synthetic data; the counterfactual check needs "
                                      "scenes.jsonl, i.e. the synthetic data)")
    exp.add_argument("--split", default="test", choices=["train", "test", "all"],
                     help="the pairs' split (and the retrieval database's, see --database)")
    _add_table_options(exp)
    exp.add_argument("--seed", type=int, default=0)
    exp.add_argument("--device", default="cpu")
    exp.add_argument("--out", default=None, help="also write the report as JSON here")
    exp.add_argument("--quiet", action="store_true")
    exp.set_defaults(func=_cmd_eval_explanations)

    pipe = sub.add_parser(
        "pipeline",
        help="train similarity, cache saliency, train SANE and the classifier, calibrate, estimate the prior, "
             "evaluate: every step on one data set, resumable",
        description="Runs train-similarity, cache-saliency, train-attributes (sane, classifier), calibrate-attributes, "
                    "estimate-prior, eval-attributes and eval-explanations on --data (AwA2 or Polyvore Outfits "
                    "layout), every artifact under --out. A rerun skips finished steps and resumes an interrupted one.",
    )
    pipe.add_argument("--data", required=True, help=DATA_HELP + ", a labels.csv, or a folder per class")
    add_pipeline_options(pipe)
    pipe.set_defaults(func=_cmd_pipeline)

    table = sub.add_parser(
        "discovery-table",
        help="the seed's Table 2: SANE trained on random, full-frame and patch-discovered attributes and on the "
             "supervised ones, attribute insertion/deletion of each (one pipeline per vocabulary)",
    )
    table.add_argument("--benchmark", default=None, choices=sorted(BENCHMARK_DATA),
                       help="a bundled benchmark: its data set and its bundled similarity model")
    table.add_argument("--data", default=None, help=DATA_HELP + " (or --benchmark); the supervised row needs the "
                       "data's own attribute labels (leave it out of --methods for a set without them)")
    table.add_argument("--methods", default="random,full-frame,patch,supervised",
                       help="comma-separated, among random, full-frame, patch, supervised (the seed's rows) and "
                       "patch-propagated (patch discovery with --discover-propagate)")
    add_pipeline_options(table)
    table.set_defaults(func=_cmd_discovery_table)
