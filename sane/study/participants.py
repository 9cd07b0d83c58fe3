"""Simulated participants, for testing the tool and as a sanity check of a study's scoring.

- ``model``: answers as the similarity model did (the key's answer, which build computed with the model),
  flipping each answer with probability ``noise``: its expected accuracy is ``1 - noise``.
- ``random``: a fair coin per question: expected accuracy 0.5 whatever the triplets.

Their answers files have the page's format (plus ``"simulated"``), so `sane study score` reads them as it
reads people's; answer times are drawn from a log-normal around 4 s (not a measurement).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sane.errors import InputError
from sane.study.score import ANSWERS_FORMAT

KINDS = ("model", "random")


def simulate_participant(key: dict, participant: int, kind: str = "model", noise: float = 0.2,
                         variant: str | None = None, seed: int = 0) -> dict:
    """One simulated participant's answers file (a dict). ``variant``: the one to record (default: the
    study's assignment for ``participant``)."""
    if kind not in KINDS:
        raise InputError(f"kind: one of {', '.join(KINDS)}, got {kind!r}", "kind")
    if not 0.0 <= noise <= 1.0:
        raise InputError(f"noise: a probability in [0, 1], got {noise}", "noise")
    if participant < 1:
        raise InputError(f"participant numbers start at 1, got {participant}", "participant")
    assignment = key["assignment"]
    variant = variant or assignment[(participant - 1) % len(assignment)]
    if variant not in key["variants"]:
        raise InputError(f"variant {variant!r} is not one of the study's ({', '.join(key['variants'])})", "variant")
    rng = np.random.default_rng([seed, participant, KINDS.index(kind)])
    order = rng.permutation(len(key["triplets"]))
    now = datetime.now(timezone.utc).isoformat()
    answers = []
    for position, index in enumerate(order, 1):
        triplet = key["triplets"][index]
        if kind == "model":
            flip = rng.random() < noise
            choice = triplet["answer"] if not flip else ("C" if triplet["answer"] == "B" else "B")
        else:
            choice = "B" if rng.random() < 0.5 else "C"
        answers.append({"triplet": triplet["id"], "choice": choice, "ms": float(np.round(rng.lognormal(8.3, 0.4))),
                        "position": position, "at": now})
    return {"format": ANSWERS_FORMAT, "study": key["study"], "participant": participant, "variant": variant,
            "started": now, "finished": now, "user_agent": f"simulated {kind} participant (noise {noise})",
            "simulated": {"kind": kind, "noise": noise if kind == "model" else None, "seed": seed},
            "practice": None, "answers": answers}


def write_simulated(key: dict, out: str | os.PathLike, participants: list[int], **options) -> list[Path]:
    """Answers files ``answers-<study>-p<N>.json`` for each participant number in ``participants``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for number in participants:
        path = out / f"answers-{key['study']}-p{number}.json"
        path.write_text(json.dumps(simulate_participant(key, number, **options), indent=1) + "\n")
        written.append(path)
    return written
