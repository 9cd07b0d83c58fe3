"""The attribute subcommands of `sane`: cache-saliency, train-attributes and eval-attributes.

Registered by ``add_attribute_commands(sub)`` at the end of :func:`sane.cli.build_parser`, so the
attribute work stays out of cli.py apart from that one call.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from sane.train.heatmap_loss import DEFAULT_TAU
from sane.train.validation_split import DEFAULT_VAL_FRACTION

DEFAULT_DATA = "data/shapes"


def _command_line() -> str:
    """The command as typed, recorded in checkpoints so they say how to reproduce them."""
    return "sane " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _cmd_cache_saliency(args: argparse.Namespace) -> int:
    """Load the similarity model and cache RISE maps of the training images."""
    from sane.models import load_similarity
    from sane.train.saliency_cache import build_saliency_cache

    model, preprocess = load_similarity(args.model, args.device)
    out = build_saliency_cache(
        args.data, args.out, model, preprocess, n_masks=args.n_masks, refs=args.refs, size=args.size,
        limit=args.limit, chunk_size=args.chunk_size, val_fraction=args.val_fraction, seed=args.seed,
        batch_size=args.batch_size, device=args.device, progress=not args.quiet,
    )
    print(f"saliency cache in {out}")
    return 0


def _cmd_train_attributes(args: argparse.Namespace) -> int:
    """Train one attribute model and print its best validation mAP."""
    from sane.train.attributes import train_attributes

    report = train_attributes(
        args.data, args.out, kind=args.model, cache=args.cache, arch=args.arch, image_size=args.image_size,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lam=args.lam, tau=args.tau,
        val_fraction=args.val_fraction, patience=args.patience, limit=args.limit, seed=args.seed,
        weights=args.weights, device=args.device, progress=not args.quiet, command=_command_line(),
    )
    print(f"validation mAP {report['best_map']:.4f} at epoch {report['best_epoch']} "
          f"(untrained {report['initial_map']:.4f}); wrote {report['out']}")
    return 0


def _cmd_calibrate_attributes(args: argparse.Namespace) -> int:
    """Recompute the presence thresholds of an attribute checkpoint."""
    from sane.train.attributes import calibrate_attributes

    thresholds = calibrate_attributes(args.model, args.data, args.calibration, args.val_fraction, args.seed,
                                      args.out, progress=not args.quiet)
    print(f"wrote {len(thresholds)} {args.calibration} thresholds to {args.out or args.model}")
    return 0


def _cmd_estimate_prior(args: argparse.Namespace) -> int:
    """SPEC §4's prior from exact counterfactuals on held-out training-class scenes."""
    import numpy as np

    from sane.data import AttributeDataset
    from sane.explain.ranker import estimate_prior_counterfactual, save_prior
    from sane.models import load_similarity
    from sane.train.validation_split import validation_split

    model, preprocess = load_similarity(args.model, args.device)
    dataset = AttributeDataset(args.data, split="train", preprocess=preprocess)
    if dataset.scenes is None:
        raise ValueError(f"{args.data} has no scenes.jsonl: the counterfactual prior needs synthetic data")
    held_out = np.flatnonzero(validation_split(dataset.targets, args.val_fraction, args.seed))
    prior = estimate_prior_counterfactual(model, preprocess, [dataset.scenes[i] for i in held_out],
                                          n_pairs=args.pairs, seed=args.seed)
    save_prior(args.out, prior)
    top = sorted(prior.items(), key=lambda kv: -kv[1])[:8]
    print("highest priors: " + ", ".join(f"{a} {p:.3f}" for a, p in top))
    print(f"wrote {args.out}")
    return 0


def _cmd_eval_attributes(args: argparse.Namespace) -> int:
    """mAP and activation-map pointing game of an attribute model on held-out images."""
    from sane.evaluation.attributes import evaluate_attributes, format_attribute_report, saliency_agreement
    from sane.models.attributes import load_attributes

    model, preprocess = load_attributes(args.model, args.device)
    report = evaluate_attributes(model, preprocess, args.data, split=args.split, limit=args.limit, seed=args.seed,
                                 progress=not args.quiet)
    if args.cache:
        report["saliency_agreement"] = saliency_agreement(model, preprocess, args.data, args.cache, args.tau)
    print(format_attribute_report(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def _cmd_eval_explanations(args: argparse.Namespace) -> int:
    """Attribute insertion/deletion of Random, the classifier and SANE, against the exact counterfactual."""
    from sane.evaluation.attribute_explanations import evaluate_explanations, format_explanation_table
    from sane.explain.ranker import load_prior
    from sane.models import load_similarity
    from sane.models.attributes import default_attribute_weights, load_attributes

    similarity, preprocess = load_similarity(args.similarity, args.device)
    attribute_models = {
        "sane": load_attributes(args.sane or default_attribute_weights("sane"), args.device),
        "classifier": load_attributes(args.classifier or default_attribute_weights("classifier"), args.device),
    }
    report = evaluate_explanations(similarity, preprocess, attribute_models, args.data, split=args.split,
                                   n_pairs=args.pairs, n_masks=args.n_masks, k=args.k, draws=args.draws,
                                   seed=args.seed, batch_size=args.batch_size, progress=not args.quiet,
                                   prior=load_prior(args.prior) if args.prior else None)
    print(format_explanation_table(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def add_attribute_commands(sub: argparse._SubParsersAction) -> None:
    """Add the attribute subcommands to `sane`'s subparsers."""
    cache = sub.add_parser("cache-saliency", help="cache RISE maps of training images against same-class references")
    cache.add_argument("--data", default=DEFAULT_DATA, help="AwA2-format directory")
    cache.add_argument("--out", required=True, help="cache directory (a rerun resumes it)")
    cache.add_argument("--model", default=None, help="similarity checkpoint or TorchScript file (default: bundled)")
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

    train = sub.add_parser("train-attributes", help="train the SANE attribute predictor or a baseline")
    train.add_argument("--model", default="sane", choices=["sane", "classifier", "fashionsearchnet"])
    train.add_argument("--data", default=DEFAULT_DATA, help="AwA2-format directory")
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

    ev = sub.add_parser("eval-attributes", help="attribute mAP and activation-map pointing game on held-out images")
    ev.add_argument("--model", default=None, help="attribute checkpoint (default: bundled SANE model)")
    ev.add_argument("--data", default=DEFAULT_DATA)
    ev.add_argument("--split", default="test", choices=["train", "test", "all"])
    ev.add_argument("--limit", type=int, default=None, help="evaluate a random subset of this many images")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--cache", default=None, help="also score the maps against this saliency cache (L_hm)")
    ev.add_argument("--tau", type=float, default=DEFAULT_TAU, help="sharpness of the saliency targets (with --cache)")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--out", default=None, help="also write the report as JSON here")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=_cmd_eval_attributes)

    pri = sub.add_parser("estimate-prior", help="prior of each attribute being the best explanation (synthetic data)")
    pri.add_argument("--data", default=DEFAULT_DATA)
    pri.add_argument("--model", default=None, help="similarity checkpoint (default: bundled)")
    pri.add_argument("--pairs", type=int, default=200)
    pri.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    pri.add_argument("--seed", type=int, default=0)
    pri.add_argument("--device", default="cpu")
    pri.add_argument("--out", required=True, help="JSON file for `sane explain --prior`")
    pri.set_defaults(func=_cmd_estimate_prior)

    cal = sub.add_parser("calibrate-attributes", help="recompute an attribute model's presence thresholds")
    cal.add_argument("--model", required=True, help="attribute checkpoint (rewritten in place unless --out)")
    cal.add_argument("--data", default=DEFAULT_DATA)
    cal.add_argument("--calibration", default="f1", choices=["f1", "median"],
                     help="f1: best F1 on validation images (default); median: median score of positives (paper)")
    cal.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--out", default=None)
    cal.add_argument("--quiet", action="store_true")
    cal.set_defaults(func=_cmd_calibrate_attributes)

    exp = sub.add_parser("eval-explanations",
                         help="attribute insertion/deletion of Random, classifier and SANE vs the exact counterfactual")
    exp.add_argument("--data", default=DEFAULT_DATA, help="synthetic AwA2-format directory (with scenes.jsonl)")
    exp.add_argument("--split", default="test", choices=["train", "test", "all"], help="pairs and retrieval database")
    exp.add_argument("--similarity", default=None, help="similarity checkpoint (default: bundled)")
    exp.add_argument("--sane", default=None, help="SANE attribute checkpoint (default: bundled)")
    exp.add_argument("--classifier", default=None, help="attribute-classifier checkpoint (default: bundled)")
    exp.add_argument("--pairs", type=int, default=40, help="same-class pairs to explain")
    exp.add_argument("--n-masks", type=int, default=300, help="RISE masks per query saliency map")
    exp.add_argument("--k", type=int, default=5, help="images retrieved per insertion/deletion")
    exp.add_argument("--draws", type=int, default=3, help="counterfactual renders averaged per factor")
    exp.add_argument("--prior", default=None, help="ranker prior JSON (sane estimate-prior); default uniform")
    exp.add_argument("--seed", type=int, default=0)
    exp.add_argument("--batch-size", type=int, default=128)
    exp.add_argument("--device", default="cpu")
    exp.add_argument("--out", default=None, help="also write the report as JSON here")
    exp.add_argument("--quiet", action="store_true")
    exp.set_defaults(func=_cmd_eval_explanations)
