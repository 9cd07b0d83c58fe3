"""``sane study build``: sample triplets, explain them, and write a self-contained study.

What it writes to ``out``::

    site/               the study page: host it on any static host, or open site/index.html from disk
      index.html, quiz.js, study.css
      study.js          the questions (images and explanations, never the model's answers)
      images/           A, B, C and A's heat-map overlays for B and for C, per triplet (JPEG)
    key.json            the answer key: each triplet's images, similarities, answer, margin and tier;
                        the variants and their assignment (what `sane study score` reads; do not host it)
    participants.csv    participant number, variant, the link to send them (index.html?p=N)

Assignment is block-randomised: each consecutive block of ``len(variants)`` participant numbers gets every
variant once, in a seeded random order; so any 4k participants of a 4-variant study are balanced.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from sane.errors import InputError
from sane.heatmap import for_display, overlay
from sane.images import to_rgb
from sane.study.explanations import PairExplanation
from sane.study.triplets import Triplet, sample_triplets

VARIANTS = ("none", "saliency", "attributes", "both")
PAGE_FILES = ("index.html", "quiz.js", "study.css")
DISPLAY_SIDE = 320  # pixels on the long side of each image on the page (about a third of a laptop screen's width)
DEFAULT_PARTICIPANTS = 48
TITLE = "Which image did the model match?"


def parse_variants(text: str | list[str]) -> list[str]:
    """``"none,saliency,..."`` -> a list of known, distinct variants (a clear error otherwise)."""
    names = [v.strip() for v in text.split(",")] if isinstance(text, str) else list(text)
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names or len(set(names)) != len(names):
        raise InputError(f"variants: distinct names from {', '.join(VARIANTS)}; got {','.join(names) or 'none'}",
                         "variants")
    return names


def assign_variants(variants: list[str], participants: int, seed: int = 0) -> list[str]:
    """The variant of participants 1..``participants`` (index p-1): block-randomised (see the module)."""
    rng = np.random.default_rng([seed, 7])
    blocks = -(-participants // len(variants))
    return [variants[i] for _ in range(blocks) for i in rng.permutation(len(variants))][:participants]


def _display(image: Image.Image, side: int) -> Image.Image:
    """``image`` with a long side of ``side`` pixels: small images enlarged, large photographs shrunk."""
    shown = for_display(to_rgb(image), side)
    if max(shown.size) > side:
        shown = shown.copy()
        shown.thumbnail((side, side), Image.LANCZOS)
    return shown


def _question(triplet: Triplet, paths: list[str], explained: list[PairExplanation] | None, source, images: Path,
              side: int, attributes: bool) -> dict:
    """The page's view of one triplet: image files, overlays and attribute names (without ``explained``:
    the images alone); never the similarities."""
    name = triplet.id
    shown = {role: source.image(paths[index]) for role, index in (("a", triplet.anchor), ("b", triplet.b),
                                                                 ("c", triplet.c))}
    question = {"id": name}
    for role, image in shown.items():
        _display(image, side).save(images / f"{name}_{role}.jpg", quality=92)
        question[role] = f"images/{name}_{role}.jpg"
    if explained is None:
        return question
    anchor = _display(shown["a"], side)
    question["saliency"] = {}
    for role, explanation in zip("bc", explained):
        overlay(anchor, explanation.query_map).save(images / f"{name}_a_for_{role}.jpg", quality=92)
        question["saliency"][role] = f"images/{name}_a_for_{role}.jpg"
    if attributes:
        question["attributes"] = {role: [e["attribute"].replace("_", " ") for e in explanation.attributes]
                                  for role, explanation in zip("bc", explained)}
    return question


def build_study(
    out: str | os.PathLike,
    paths: list[str],
    source,
    n_triplets: int = 20,
    variants: str | list[str] = VARIANTS,
    seed: int = 0,
    easy_fraction: float = 0.5,
    participants: int = DEFAULT_PARTICIPANTS,
    display: int = DISPLAY_SIDE,
    title: str = TITLE,
    progress: bool = True,
) -> dict:
    """Write a study over the images ``paths`` with similarities and explanations from ``source``
    (:class:`~sane.study.explanations.LibrarySource` or a served one); returns the key (key.json's content)."""
    variants = parse_variants(variants)
    if participants < 1:
        raise InputError(f"participants: at least 1, got {participants}", "participants")
    if display < 64:
        raise InputError(f"display: at least 64 pixels, got {display}", "display")
    out = Path(out)
    if (out / "key.json").exists():
        raise FileExistsError(f"{out} already holds a study (key.json): answers collected for it would no longer "
                              "match; build into another directory")
    attributes = any(v in ("attributes", "both") for v in variants)
    needs_maps = any(v != "none" for v in variants)

    def similarities(anchor: int, others: list[int]) -> list[float]:
        return source.similarities(paths[anchor], [paths[i] for i in others])

    triplets, practice = sample_triplets(similarities, len(paths), n_triplets, easy_fraction, seed)
    site = out / "site"
    images = site / "images"
    images.mkdir(parents=True, exist_ok=True)
    questions = []
    for triplet in tqdm([practice, *triplets], desc="explaining triplets", disable=not progress):
        # A study of the "none" variant alone shows the images only: nothing to explain.
        explained = source.explain(paths[triplet.anchor], [paths[triplet.b], paths[triplet.c]]) if needs_maps else None
        questions.append(_question(triplet, paths, explained, source, images, display, attributes))
    practice_question, questions = questions[0], questions[1:]
    practice_question["answer"] = practice.answer  # the practice question shows the right answer afterwards
    key_triplets = [t.to_dict() | {"images": [paths[t.anchor], paths[t.b], paths[t.c]]} for t in triplets]
    study_id = hashlib.sha256(json.dumps([key_triplets, variants, seed]).encode()).hexdigest()[:12]
    assignment = assign_variants(variants, participants, seed)
    page = {"id": study_id, "title": title, "variants": variants, "assignment": assignment,
            "practice": practice_question, "questions": questions}
    (site / "study.js").write_text("// The questions of one study, written by `sane study build` (no answers here).\n"
                                   f"window.SANE_STUDY = {json.dumps(page, indent=1)};\n")
    for name in PAGE_FILES:
        with resources.as_file(resources.files("sane.study") / "page" / name) as page_file:
            shutil.copyfile(page_file, site / name)
    key = {
        "study": study_id, "title": title, "seed": seed, "variants": variants, "assignment": assignment,
        "easy_fraction": easy_fraction, "source": getattr(source, "description", {}),
        "triplets": key_triplets,
        "practice": practice.to_dict() | {"images": [paths[practice.anchor], paths[practice.b], paths[practice.c]]},
    }
    (out / "key.json").write_text(json.dumps(key, indent=1) + "\n")
    with open(out / "participants.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["participant", "variant", "link"])
        writer.writerows((p, v, f"index.html?p={p}") for p, v in enumerate(assignment, 1))
    return key
