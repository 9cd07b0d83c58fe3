"""`sane study build | simulate | score`: the human study of the seed's §3 (README *A human study*)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from sane.cli.model_args import add_model_options, load_from_args
from sane.errors import InputError


class ServedSource:
    """A study's similarities and explanations from a running server: the ``similarity`` archive scores
    candidate triplets (K references per request), the ``sane`` archive explains A for B and C in one
    request (``references``: one masked stream). Images are shown cropped as the server's model sees them."""

    def __init__(self, url: str, key: str | None, archive: str = "sane", similarity_archive: str = "similarity",
                 options: dict | None = None, max_references: int = 16):
        from sane.serving.ops.http_client import HttpClient

        self.client = HttpClient(url, key)
        self.archive, self.similarity_archive = archive, similarity_archive
        self.options = options or {}
        self.max_references = max_references
        self.description = {"source": "server", "url": url, "archive": archive, "options": self.options}
        self._boxes: dict[str, tuple] = {}

    def _ask(self, archive: str, query: str, references: list[str], options: dict) -> list[dict]:
        status, body = self.client.request(archive, Path(query).read_bytes(),
                                           [Path(r).read_bytes() for r in references], options, body="json")
        if status != 200 or "error" in body:
            raise InputError(f"the server answered {status} for {archive}: {body.get('error', body)}", "server")
        return body["references"]

    def similarities(self, anchor: str, others: list[str]) -> list[float]:
        scores = []
        for start in range(0, len(others), self.max_references):
            scores += [e["similarity"] for e in self._ask(self.similarity_archive, anchor,
                                                          others[start:start + self.max_references], {})]
        return scores

    def explain(self, anchor: str, references: list[str]):
        from sane.serving.worker.encoding import decode_npy
        from sane.study.explanations import PairExplanation

        entries = self._ask(self.archive, anchor, references, {**self.options, "mode": "fixed"})
        explained = []
        for entry in entries:
            query = entry["saliency"]["query"]
            if query.get("box"):
                self._boxes[anchor] = tuple(query["box"])
            explained.append(PairExplanation(float(entry["similarity"]), decode_npy(query["npy"]).astype(np.float32),
                                             entry.get("explanations", [])))
        return explained

    def image(self, path: str):
        from sane.images import open_image

        image = open_image(path, "image")
        box = self._boxes.get(path)
        return image.crop(box) if box else image


def _study_images(data: str, split: str, pool: int, seed: int) -> list[str]:
    from sane.data import open_dataset
    from sane.data.benchmarks import ensure_data

    dataset = open_dataset(ensure_data(data), split=split)
    paths = [path for path, _ in dataset.samples]
    if pool and len(paths) > pool:
        keep = np.random.default_rng([seed, 3]).choice(len(paths), size=pool, replace=False)
        paths = [paths[i] for i in sorted(keep)]
    return paths


def _cmd_build(args: argparse.Namespace) -> int:
    from sane.study.build import build_study, parse_variants
    from sane.study.explanations import LibrarySource

    variants = parse_variants(args.variants)
    attributes = any(v in ("attributes", "both") for v in variants)
    paths = _study_images(args.data, args.split, args.pool, args.seed)
    if args.server:
        key = args.key or os.environ.get("SANE_API_KEY") or None
        source = ServedSource(args.server, key, archive="sane" if attributes else "saliency",
                              options={"n_masks": args.n_masks, "seed": args.seed}
                              | ({"top_k": args.top_k} if attributes else {}))
    else:
        source = LibrarySource(load_from_args(args), attribute_model=args.attribute_model, attributes=attributes,
                               n_masks=args.n_masks, top_k=args.top_k, seed=args.seed, batch_size=args.batch_size,
                               device=args.device)
    key = build_study(args.out, paths, source, n_triplets=args.triplets, variants=variants, seed=args.seed,
                      easy_fraction=args.easy_fraction, participants=args.participants, display=args.display_size,
                      title=args.title, progress=not args.quiet)
    out = Path(args.out)
    tiers = {name: sum(t["tier"] == name for t in key["triplets"]) for name in ("easy", "hard", "middle")}
    print(f"study {key['study']}: {len(key['triplets'])} triplets ({', '.join(f'{v} {k}' for k, v in tiers.items() if v)})"
          f" from {len(paths)} images of {args.data}, variants {', '.join(variants)}")
    print(f"  the page:      {out / 'site' / 'index.html'} (open it from disk, or host the site/ folder)")
    print(f"  participants:  {out / 'participants.csv'} (number, variant, link index.html?p=N)")
    print(f"  answer key:    {out / 'key.json'} (keep it off the host; `sane study score {out} ANSWERS...` reads it)")
    return 0


def _participant_numbers(text: str) -> list[int]:
    """``"1-10"``, ``"3"`` or ``"1,4,7"`` -> participant numbers."""
    numbers = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        try:
            numbers += list(range(int(first), int(last or first) + 1))
        except ValueError:
            raise argparse.ArgumentTypeError(f"participants: numbers or ranges like 1-10, got {text!r}") from None
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"participants: numbers from 1, got {text!r}")
    return numbers


def _cmd_simulate(args: argparse.Namespace) -> int:
    from sane.study.participants import write_simulated
    from sane.study.score import read_key

    key = read_key(args.study)
    written = write_simulated(key, args.out, args.participants, kind=args.kind, noise=args.noise,
                              variant=args.variant, seed=args.seed)
    print(f"wrote {len(written)} simulated {args.kind} participants' answers to {args.out}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from sane.study.score import format_score, read_answers, read_key, score_study, write_score

    key = read_key(args.study)
    result = score_study(key, read_answers(key, args.answers))
    for line in format_score(result):
        print(line)
    out = Path(args.out) if args.out else Path(args.study) / "score"
    written = write_score(result, out)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def add_study_commands(sub: argparse._SubParsersAction) -> None:
    """Add `sane study build | simulate | score` to `sane`'s subparsers."""
    from sane.data.benchmarks import DEFAULT_DATA
    from sane.study.build import DEFAULT_PARTICIPANTS, DISPLAY_SIDE, TITLE, VARIANTS

    study = sub.add_parser("study", help="a human study: do explanations help people predict the model? "
                                         "(build the quiz page, simulate, score)").add_subparsers(
        dest="study_command", required=True)
    build = study.add_parser("build", help="sample triplets, explain them, write a static quiz page and its key")
    build.add_argument("--out", required=True, help="new directory for the study (site/, key.json, participants.csv)")
    build.add_argument("--data", default=DEFAULT_DATA, help=f"images to draw triplets from (default {DEFAULT_DATA}, "
                       "generated on first use)")
    build.add_argument("--split", default="test", choices=["train", "test", "valid", "all"],
                       help="which split's images (default test: not seen in training)")
    build.add_argument("--pool", type=int, default=400, help="draw from at most this many images (0: all)")
    build.add_argument("--triplets", type=int, default=20, help="questions per participant")
    build.add_argument("--variants", default=",".join(VARIANTS),
                       help=f"comma-separated, from {','.join(VARIANTS)} (one per participant)")
    build.add_argument("--easy-fraction", type=float, default=0.5,
                       help="share of easy triplets (large model margin); the rest are hard (small margin)")
    build.add_argument("--participants", type=int, default=DEFAULT_PARTICIPANTS,
                       help="participant numbers to assign variants to (block-randomised)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--display-size", type=int, default=DISPLAY_SIDE, help="pixels per image on the page")
    build.add_argument("--title", default=TITLE, help="the page's title")
    build.add_argument("--n-masks", type=int, default=2000, help="RISE masks per explanation")
    build.add_argument("--top-k", type=int, default=3, help="attributes shown per pair")
    build.add_argument("--server", default=None, metavar="URL",
                       help="explain with a running server (its similarity and sane archives) instead of the library")
    build.add_argument("--key", default=None, help="the server's API key (default: $SANE_API_KEY)")
    add_model_options(build)
    build.add_argument("--attribute-model", default=None, help="attribute checkpoint (default: bundled SANE)")
    build.add_argument("--device", default="cpu")
    build.add_argument("--batch-size", type=int, default=256)
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(func=_cmd_build)

    simulate = study.add_parser("simulate", help="answers files of simulated participants (testing, sanity checks)")
    simulate.add_argument("study", help="the study directory (its key.json)")
    simulate.add_argument("--out", required=True, help="directory for the answers files")
    simulate.add_argument("--kind", default="model", choices=["model", "random"],
                          help="model: the model's answers, each flipped with probability --noise; random: coin flips")
    simulate.add_argument("--noise", type=float, default=0.2)
    simulate.add_argument("--participants", type=_participant_numbers, default=_participant_numbers("1-8"),
                          help="participant numbers, e.g. 1-8 or 1,5,9 (default 1-8)")
    simulate.add_argument("--variant", default=None, help="record this variant for all (default: the assignment)")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.set_defaults(func=_cmd_simulate)

    score = study.add_parser("score", help="accuracy per variant, tests between variants, difficulty per triplet")
    score.add_argument("study", help="the study directory (its key.json)")
    score.add_argument("answers", nargs="+", help="answers files, or directories of them")
    score.add_argument("--out", default=None, help="where score.json, triplets.csv, accuracy.png go "
                                                   "(default STUDY/score)")
    score.set_defaults(func=_cmd_score)
