"""The `sane` command: data, training, explanations and evaluation from the shell."""

from __future__ import annotations

import argparse
import shlex
import sys

from sane.errors import InputError

DEFAULT_DATA = "data/shapes"


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from sane.data import write_dataset

    root = write_dataset(args.out, args.n, seed=args.seed, image_size=args.image_size, progress=not args.quiet)
    print(f"wrote {args.n} images to {root}")
    return 0


def _cmd_data_example_pair(args: argparse.Namespace) -> int:
    from sane.data import write_example_pair

    q, r = write_example_pair(args.out, seed=args.seed, image_size=args.image_size)
    print(f"wrote {q} and {r}")
    return 0


def _cmd_train_similarity(args: argparse.Namespace) -> int:
    from sane.train.similarity import train_similarity

    command = "sane " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    out = train_similarity(
        args.data, args.out, arch=args.arch, dim=args.dim, image_size=args.image_size, epochs=args.epochs,
        classes_per_batch=args.classes_per_batch, per_class=args.per_class, lr=args.lr, margin=args.margin, mining=args.mining,
        seed=args.seed, weights=args.weights, device=args.device, progress=not args.quiet, command=command,
    )
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(prog="sane", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="generate data sets").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write the Shapes with Attributes data set (AwA2 format)")
    synth.add_argument("--out", default=DEFAULT_DATA)
    synth.add_argument("--n", type=int, default=4200, help="number of images (spread over 42 classes)")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sane` console command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (InputError, FileNotFoundError) as exc:
        print(f"sane: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
