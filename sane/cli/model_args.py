"""The command-line options that name and declare a similarity model, shared by every `sane` command
that takes one (explain, the evaluations, cache-saliency, archive, pipeline, model inspect).

``--model`` (or ``--similarity``) is one of our checkpoints, a TorchScript file, a ``torch.export``
program or a factory ``package.module:callable`` (with ``--weights``); the declarations
(``--input-size N --mean a,b,c --std a,b,c``, ``--preprocess PRESET``, ...) go on top of what is
stored with the model (:mod:`sane.models.spec`).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from sane.errors import InputError
from sane.images import INTERPOLATIONS, RESIZE_POLICIES
from sane.models.spec import PRESETS, SIMILARITIES

# load_model's declaration keywords -> the argparse dest of their flag.
DECLARATIONS = {"preset": "preset", "input_size": "input_size", "mean": "mean", "std": "std", "resize": "resize",
                "resize_size": "resize_size", "interpolation": "interpolation", "output": "output",
                "similarity": "similarity_fn", "normalize": "normalize"}


def add_model_options(parser: argparse.ArgumentParser, flag: str = "--model", default_help: str = "bundled") -> None:
    """``flag`` (the model), ``--weights``, ``--model-kwargs`` and the declaration flags."""
    dest = flag.lstrip("-").replace("-", "_")
    parser.add_argument(flag, dest=dest, default=None,
                        help="similarity model: a sane checkpoint, TorchScript (.pt), torch.export program (.pt2) or "
                             f"factory package.module:callable (default: {default_help})")
    add_declaration_options(parser)


def add_declaration_options(parser: argparse.ArgumentParser) -> None:
    """``--weights``, ``--model-kwargs`` and the flags that declare preprocessing and similarity."""
    group = parser.add_argument_group("declaring the similarity model (default: what is stored with it)")
    group.add_argument("--weights", default=None, help="state_dict file for a factory --model")
    group.add_argument("--model-kwargs", default=None, metavar="JSON",
                       help="keyword arguments of a factory --model, as a JSON object")
    group.add_argument("--preprocess", dest="preset", default=None, choices=sorted(PRESETS),
                       help="preprocessing preset of a model family (published constants); flags below override it")
    group.add_argument("--input-size", type=int, default=None, metavar="N", help="square input side in pixels")
    group.add_argument("--mean", default=None, metavar="R,G,B", help="normalisation mean (0..1 scale)")
    group.add_argument("--std", default=None, metavar="R,G,B", help="normalisation standard deviation")
    group.add_argument("--resize", default=None, choices=RESIZE_POLICIES,
                       help="squash: resize to N x N; crop: shorter side to --resize-size (default N), centre crop")
    group.add_argument("--resize-size", type=int, default=None, metavar="N", help="shorter side before the crop")
    group.add_argument("--interpolation", default=None, choices=sorted(INTERPOLATIONS))
    group.add_argument("--output", default=None, metavar="KEY|INDEX",
                       help="which output is the embedding when the model returns a tuple or dict")
    group.add_argument("--similarity-fn", dest="similarity_fn", default=None, choices=SIMILARITIES,
                       help="how embeddings compare (default cosine; euclidean: negative distance)")
    group.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                       help="L2-normalise embeddings before dot/euclidean (cosine always does)")


def declarations(args: argparse.Namespace) -> dict[str, Any]:
    """The declaration keywords of :func:`sane.models.checkpoint.load_model` given on the command line."""
    found = {keyword: getattr(args, dest, None) for keyword, dest in DECLARATIONS.items()}
    return {k: v for k, v in found.items() if v is not None}


def factory_kwargs(args: argparse.Namespace) -> dict[str, Any] | None:
    text = getattr(args, "model_kwargs", None)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--model-kwargs must be a JSON object: {exc}", "model_kwargs") from exc
    if not isinstance(value, dict):
        raise InputError(f"--model-kwargs must be a JSON object, got {text!r}", "model_kwargs")
    return value


def load_from_args(args: argparse.Namespace, flag: str = "model", default=None, device: str | None = None):
    """The :class:`~sane.models.checkpoint.LoadedModel` the options name (validated), or the default."""
    from sane.models.checkpoint import load_model

    return load_model(getattr(args, flag, None) or default, device or getattr(args, "device", "cpu"),
                      weights=getattr(args, "weights", None), factory_kwargs=factory_kwargs(args),
                      **declarations(args))


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The model options plus where and in what batches it runs (the explain and eval commands)."""
    add_model_options(parser)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)


def mask_count(text: str) -> int | str:
    """``--n-masks``: a number of masks, or ``auto`` (RISE stops once its map is as precise as a map of
    ``max_masks`` independent masks)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of masks or 'auto', got {text!r}") from None
