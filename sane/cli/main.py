"""The `sane` command: data, training, explanations and evaluation from the shell."""

from __future__ import annotations

import argparse
import sys

from sane.cli.model_args import add_declaration_options, add_model_options, load_from_args
from sane.cli.research import add_attribute_commands, command_line, write_report
from sane.cli.serving import add_serving_commands
from sane.data.benchmarks import DEFAULT_DATA, ensure_data
from sane.errors import InputError
from sane.explain.outputs import summary_lines
from sane.saliency import GENERATORS

METHODS = sorted(GENERATORS)



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


def _cmd_explain(args: argparse.Namespace) -> int:
    from sane.explain.pair import explain_files

    report = explain_files(
        args.query, args.reference, args.out, method=args.method, mode=args.mode, model_path=load_from_args(args),
        n_masks=args.n_masks, n_samples=args.n_samples, iterations=args.iterations, seed=args.seed,
        batch_size=args.batch_size, device=args.device, amp=args.amp, fast=args.fast, int8=args.int8,
        attributes=args.attributes,
        top_k=args.top_k, attribute_model=args.attribute_model, prior=args.prior,
    )
    for line in summary_lines(report, args.out):
        print(line)
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


def _cmd_model_inspect(args: argparse.Namespace) -> int:
    from sane.models.spec import sidecar_path

    loaded = load_from_args(args)
    print(f"{loaded.source}: {loaded.format}" + (f", weights {loaded.weights}" if loaded.weights else ""))
    for line in loaded.spec.describe():
        print(f"  {line}")
    print(f"  checked        forward passes of three random images at {loaded.preprocess.size} px: "
          f"{loaded.checks['dim']}-d embeddings, batch-independent, deterministic")
    if args.save:
        anchor = loaded.weights if loaded.format == "factory" else loaded.source
        if anchor is None:
            raise InputError("--save needs a file to put the metadata beside: give the factory's --weights", "save")
        print(f"wrote {loaded.spec.save(sidecar_path(anchor))} (read whenever this model is loaded)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(prog="sane", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

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

    explain = sub.add_parser("explain", help="explain why two images match: heat maps + JSON")
    explain.add_argument("query", help="query image file")
    explain.add_argument("reference", help="reference image file")
    explain.add_argument("--method", default="rise", choices=METHODS)
    explain.add_argument("--mode", default="fixed", choices=["fixed", "both"])
    explain.add_argument("--out", default="out", help="directory for the PNG overlays and result.json")
    _model_options(explain)
    explain.add_argument("--n-masks", type=int, default=2000, help="RISE masks")
    explain.add_argument("--n-samples", type=int, default=None, help="LIME samples (default 1000)")
    explain.add_argument("--iterations", type=int, default=None, help="learned-mask steps (default 500)")
    explain.add_argument("--seed", type=int, default=0)
    explain.add_argument("--amp", action="store_true", help="mixed precision forward passes")
    explain.add_argument("--fast", action="store_true",
                         help="BatchNorm folded into the convs + NHWC + mixed precision (several x faster on CPU)")
    explain.add_argument("--int8", action="store_true",
                         help="int8-quantized model on CPU, calibrated on the pair (faster than --fast on CPUs "
                              "with AVX512-VNNI; maps close to fp32's, not equal); not with --fast/--amp")
    explain.add_argument("--attributes", action=argparse.BooleanOptionalAction, default=True,
                         help="rank the query's attributes as explanations (SPEC §4; default on)")
    explain.add_argument("--top-k", type=int, default=5, help="how many attributes to report")
    explain.add_argument("--attribute-model", default=None, help="attribute checkpoint (default: bundled SANE)")
    explain.add_argument("--prior", default=None, help="attribute prior JSON (name -> probability), or 'uniform' "
                         "(default: the attribute model's tuned prior, if any)")
    explain.set_defaults(func=_cmd_explain)

    eval_sim = sub.add_parser("eval-similarity", help="recall@1 and the counterfactual table")
    eval_sim.add_argument("--data", default=DEFAULT_DATA)
    _model_options(eval_sim)
    eval_sim.add_argument("--pairs", type=int, default=300, help="pairs for the counterfactual table")
    eval_sim.add_argument("--seed", type=int, default=0)
    eval_sim.add_argument("--out", default=None, help="also write the report as JSON here")
    eval_sim.set_defaults(func=_cmd_eval_similarity)

    eval_sal = sub.add_parser("eval-saliency", help="compare saliency generators on synthetic test pairs")
    eval_sal.add_argument("--data", default=DEFAULT_DATA)
    _model_options(eval_sal)
    eval_sal.add_argument("--methods", nargs="+", default=["rise", "sliding_window", "random"], choices=METHODS)
    eval_sal.add_argument("--pairs", type=int, default=50)
    eval_sal.add_argument("--n-masks", type=int, default=1000)
    eval_sal.add_argument("--n-samples", type=int, default=None, help="LIME samples (default 1000)")
    eval_sal.add_argument("--iterations", type=int, default=None, help="learned-mask steps (default 500)")
    eval_sal.add_argument("--substrate", default="constant", choices=["constant", "blur"])
    eval_sal.add_argument("--seed", type=int, default=0)
    eval_sal.add_argument("--out", default="results/eval_saliency.json", help="JSON table path ('' to skip)")
    eval_sal.set_defaults(func=_cmd_eval_saliency)

    model = sub.add_parser("model", help="inspect and declare similarity models").add_subparsers(
        dest="model_command", required=True)
    inspect = model.add_parser("inspect", help="load and check a model; print the preprocessing and similarity used")
    inspect.add_argument("model", help="checkpoint, TorchScript (.pt), torch.export (.pt2) or package.module:callable")
    add_declaration_options(inspect)
    inspect.add_argument("--device", default="cpu")
    inspect.add_argument("--save", action="store_true",
                         help="store the declarations beside the model (MODEL.sane.json; beside --weights for a factory)")
    inspect.set_defaults(func=_cmd_model_inspect)

    add_attribute_commands(sub)
    add_serving_commands(sub)
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sane` console command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (InputError, FileNotFoundError, ValueError) as exc:
        print(f"sane: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
