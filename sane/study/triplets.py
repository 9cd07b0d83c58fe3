"""The questions of a study: triplets (A, B, C) with the model's answer (B or C matches A better), sampled
with a documented mix of easy and hard ones.

How triplets are drawn (:func:`sample_triplets`): candidate triplets take an anchor A and two other images
at random; the model's *margin* ``|s(A, B) - s(A, C)|`` ranks them. *Easy* triplets come from the top third
of the candidates' margins, *hard* ones from the bottom third (``easy_fraction`` of the study is easy, the
rest hard; each anchor at most once where the pool allows). Half the questions (rounded) have the model's
choice in position B, the others in C, so that always answering one side scores 50 %.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from sane.errors import InputError

# Candidate triplets drawn per question asked (more: tiers closer to their ideal; the cost is similarities only).
CANDIDATES_PER_TRIPLET = 12
PAIRS_PER_ANCHOR = 4  # candidate (B, C) pairs per anchor: 2 x this many similarities in one call


@dataclass(frozen=True)
class Triplet:
    """One question: image indices ``anchor`` (A), ``b`` and ``c``, the model's similarities of A to each,
    and the tier it was drawn from (``easy``, ``hard``, or ``practice``)."""

    id: str
    anchor: int
    b: int
    c: int
    s_ab: float
    s_ac: float
    tier: str

    @property
    def answer(self) -> str:
        """``"B"`` or ``"C"``: the image the model matched better to A."""
        return "B" if self.s_ab > self.s_ac else "C"

    @property
    def margin(self) -> float:
        """How clearly the model prefers its answer: ``|s(A, B) - s(A, C)|``."""
        return abs(self.s_ab - self.s_ac)

    def swapped(self) -> Triplet:
        """The same question with B and C exchanged."""
        return Triplet(self.id, self.anchor, self.c, self.b, self.s_ac, self.s_ab, self.tier)

    def to_dict(self) -> dict:
        return asdict(self) | {"answer": self.answer, "margin": self.margin}


def sample_triplets(
    similarities: Callable[[int, list[int]], Sequence[float]],
    n_images: int,
    n: int,
    easy_fraction: float = 0.5,
    seed: int = 0,
) -> tuple[list[Triplet], Triplet]:
    """``n`` question triplets and one practice triplet over images ``0..n_images-1``.

    ``similarities(anchor, others)`` is the model's similarity of image ``anchor`` to each of ``others``
    (one call per anchor: a batch, or one served request with K references). The practice triplet is the
    clearest candidate left (largest margin), answered on the page but not scored.
    """
    if n < 1:
        raise InputError(f"triplets: at least 1, got {n}", "triplets")
    if not 0.0 <= easy_fraction <= 1.0:
        raise InputError(f"easy_fraction: must be in [0, 1], got {easy_fraction}", "easy_fraction")
    if n_images < 3:
        raise InputError(f"a study needs at least 3 images, the data has {n_images}", "data")
    rng = np.random.default_rng(seed)
    n_candidates = max(CANDIDATES_PER_TRIPLET * (n + 1), 3 * PAIRS_PER_ANCHOR)
    n_anchors = -(-n_candidates // PAIRS_PER_ANCHOR)
    anchors = rng.permutation(n_images)[:n_anchors] if n_anchors <= n_images else rng.integers(0, n_images, n_anchors)
    candidates: list[tuple[int, int, int, float, float]] = []
    seen: set[tuple[int, frozenset]] = set()
    for anchor in anchors.tolist():
        others = [i for i in range(n_images) if i != anchor]
        pairs = min(PAIRS_PER_ANCHOR, len(others) // 2)
        picked = rng.choice(others, size=2 * pairs, replace=False).tolist()
        scores = [float(s) for s in similarities(anchor, picked)]
        if len(scores) != len(picked):
            raise ValueError(f"similarities returned {len(scores)} scores for {len(picked)} images")
        for k in range(pairs):
            b, c = picked[2 * k], picked[2 * k + 1]
            if (anchor, frozenset((b, c))) not in seen:  # small pools draw the same question more than once
                seen.add((anchor, frozenset((b, c))))
                candidates.append((anchor, b, c, scores[2 * k], scores[2 * k + 1]))
    margins = np.array([abs(s_b - s_c) for *_, s_b, s_c in candidates])
    order = rng.permutation(len(candidates))  # ties and equal margins in no particular order
    low, high = np.quantile(margins, [1 / 3, 2 / 3])
    easy_pool = [i for i in order if margins[i] >= high and margins[i] > 0]
    hard_pool = [i for i in order if margins[i] <= low and margins[i] > 0]
    n_easy = round(n * easy_fraction)
    anchors_used: set[int] = set()
    chosen = _take(easy_pool, n_easy, candidates, anchors_used) + _take(hard_pool, n - n_easy, candidates, anchors_used)
    chosen = _fill(chosen, n, order, margins, candidates)
    used = set(chosen)
    left = [i for i in np.argsort(-margins, kind="stable") if i not in used]
    practice_index = left[0] if left else int(np.argmax(margins))
    triplets = []
    for number, index in enumerate(chosen):
        anchor, b, c, s_b, s_c = candidates[index]
        tier = "easy" if margins[index] >= high else "hard" if margins[index] <= low else "middle"
        triplets.append(Triplet(f"t{number + 1:03d}", anchor, b, c, s_b, s_c, tier))
    order_in_study = rng.permutation(len(triplets))
    wants_b = set(order_in_study[: (len(triplets) + 1) // 2].tolist())  # model's choice shown as B in half
    triplets = [t if (t.answer == "B") == (i in wants_b) else t.swapped() for i, t in enumerate(triplets)]
    anchor, b, c, s_b, s_c = candidates[practice_index]
    return triplets, Triplet("practice", anchor, b, c, s_b, s_c, "practice")


def _take(pool: list[int], count: int, candidates: list, anchors_used: set[int]) -> list[int]:
    """Up to ``count`` indices from ``pool``, distinct anchors first, then any."""
    taken = []
    for index in pool:
        if len(taken) == count:
            return taken
        if candidates[index][0] not in anchors_used:
            taken.append(index)
            anchors_used.add(candidates[index][0])
    return taken + [i for i in pool if i not in taken][: count - len(taken)]


def _fill(chosen: list[int], n: int, order: np.ndarray, margins: np.ndarray, candidates: list) -> list[int]:
    """``chosen`` completed to ``n`` candidates (a tier short of candidates: the middle third fills in)."""
    rest = [i for i in order if i not in chosen and margins[i] > 0]
    chosen = chosen + rest[: n - len(chosen)]
    if len(chosen) < n:
        raise InputError(f"only {len(chosen)} distinct triplets with a non-zero margin in this data; ask for fewer "
                         f"(--triplets) or give more images", "triplets")
    return chosen
