"""The `sane` command: explanations, models, data, training, evaluation and serving from the shell."""

from __future__ import annotations

import argparse
import sys

from sane.cli.model_args import add_declaration_options, add_run_options, load_from_args, mask_count
from sane.cli.research import add_research_commands
from sane.cli.serving import add_serving_commands
from sane.cli.study import add_study_commands
from sane.errors import InputError
from sane.explain.outputs import summary_lines
from sane.saliency import GENERATORS

METHODS = sorted(GENERATORS)


def _cmd_explain(args: argparse.Namespace) -> int:
    from sane.explain.pair import explain_files

    report = explain_files(
        args.query, args.reference, args.out, method=args.method, mode=args.mode, model_path=load_from_args(args),
        n_masks=args.n_masks, n_samples=args.n_samples, iterations=args.iterations, seed=args.seed,
        batch_size=args.batch_size, device=args.device, amp=args.amp, fast=args.fast, int8=args.int8,
        attributes=args.attributes,
        top_k=args.top_k, attribute_model=args.attribute_model, prior=args.prior, display=args.display_size,
    )
    for line in summary_lines(report, args.out):
        print(line)
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

    explain = sub.add_parser("explain", help="explain why two images match: heat maps + JSON")
    explain.add_argument("query", help="query image file")
    explain.add_argument("reference", help="reference image file")
    explain.add_argument("--method", default="rise", choices=METHODS)
    explain.add_argument("--mode", default="fixed", choices=["fixed", "both"])
    explain.add_argument("--out", default="out", help="directory for the PNG overlays, card.png and result.json")
    explain.add_argument("--display-size", type=int, default=448,
                         help="overlays at least this many pixels on the long side (0: the image's own size)")
    add_run_options(explain)
    explain.add_argument("--n-masks", type=mask_count, default=2000,
                         help="RISE masks, or 'auto': as precise as a map of 2000 independent masks, with fewer")
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

    model = sub.add_parser("model", help="inspect and declare similarity models").add_subparsers(
        dest="model_command", required=True)
    inspect = model.add_parser("inspect", help="load and check a model; print the preprocessing and similarity used")
    inspect.add_argument("model", help="checkpoint, TorchScript (.pt), torch.export (.pt2) or package.module:callable")
    add_declaration_options(inspect)
    inspect.add_argument("--device", default="cpu")
    inspect.add_argument("--save", action="store_true",
                         help="store the declarations beside the model (MODEL.sane.json; beside --weights for a factory)")
    inspect.set_defaults(func=_cmd_model_inspect)

    add_research_commands(sub)  # data, training, evaluation, pipeline
    add_serving_commands(sub)
    add_study_commands(sub)  # the human study
    return parser


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
