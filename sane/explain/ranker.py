"""Explanation selection (SPEC §4): which named attributes of the query explain a similarity map.

For a pair (q, r) with q's saliency map S, every attribute a the attribute model predicts present in q
is scored by

    conf(a)  = sigmoid(z_a(q))
    match(a) = 1 - || softmax(H_a(q)) - Ŝ ||_2 / sqrt(2)
    score(a) = prior(a)^gamma * (w * conf(a) + (1 - w) * match(a))

where Ŝ is S turned into a distribution exactly as the SANE training target (:func:`saliency_target`:
area-downsampled to the activation maps' h x w, standardised over its cells, tau-sharpened softmax), so
``match`` is one minus the training distance scaled to [0, 1].

The prior is "how often is a the best explanation" on held-out pairs. The paper measures it with the
attribute deletion metric (SPEC §5); :func:`estimate_prior_counterfactual` measures it on the synthetic
data with the exact counterfactual instead (re-render the query with one factor changed and see which
change drops the similarity most), which needs no saliency maps or inpainting and has no metric noise.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sane.data.synthetic import ATTRIBUTES, FACTORS, Scene, render, scene_attributes
from sane.images import Preprocess
from sane.metrics.counterfactual import best_factor, counterfactual_deltas
from sane.models.embedder import Embedder, model_device
from sane.train.heatmap_loss import DEFAULT_TAU, map_distances, saliency_target

# Which scene factor each Shapes-with-Attributes attribute belongs to (derived attributes included).
ATTRIBUTE_FACTORS: dict[str, str] = {
    **dict.fromkeys(("circle", "square", "triangle", "star", "hexagon", "diamond", "round", "pointy"), "shape"),
    **dict.fromkeys(("red", "orange", "yellow", "green", "cyan", "blue", "purple", "warm", "cool"), "colour"),
    **dict.fromkeys(("solid", "striped", "dotted", "checkered", "textured"), "pattern"),
    **dict.fromkeys(("small", "medium", "large"), "size"),
    **dict.fromkeys(("h_left", "h_center", "h_right", "v_top", "v_middle", "v_bottom"), "position"),
    **dict.fromkeys(("bg_plain", "bg_noise", "bg_gradient", "bg_grid"), "background"),
}
assert set(ATTRIBUTE_FACTORS) == set(ATTRIBUTES) and set(ATTRIBUTE_FACTORS.values()) == set(FACTORS)


def map_match(maps: torch.Tensor, saliency: torch.Tensor, tau: float = DEFAULT_TAU) -> torch.Tensor:
    """SPEC §4's ``match`` (B, A) of every activation map (B, A, h, w) with its image's saliency map
    (B, H', W'): one minus the training distance (:func:`map_distances` to :func:`saliency_target`)
    over its maximum sqrt(2), in [0, 1]."""
    target = saliency_target(saliency.float(), tuple(maps.shape[-2:]), tau)
    dist = map_distances(maps, target[:, None])[:, 0]
    return (1.0 - dist / math.sqrt(2.0)).clamp(0.0, 1.0)


DEFAULT_W = 0.5  # SPEC §4's weight of confidence against map match, when a model carries no tuned value
DEFAULT_GAMMA = 1.0  # exponent of the prior, likewise


def spec_score(confidence, match, prior, w: float, gamma: float):
    """SPEC §4's ``prior^γ · (w·conf + (1 − w)·match)``, elementwise on tensors or NumPy arrays of
    broadcastable shapes (the ranker, ``sane tune-ranker``'s grid search and the analyses share it)."""
    return prior**gamma * (w * confidence + (1.0 - w) * match)


@dataclass
class AttributeExplanation:
    """One ranked attribute: its score and the terms it is made of, plus its activation map (h, w).

    ``present`` is False only for the confidence fallback (no attribute passed its threshold).
    """

    attribute: str
    score: float
    confidence: float
    match: float
    prior: float
    activation_map: torch.Tensor
    present: bool = True

    def to_dict(self) -> dict:
        """JSON-able summary (without the activation map)."""
        return {
            "attribute": self.attribute,
            "score": self.score,
            "confidence": self.confidence,
            "match": self.match,
            "prior": self.prior,
            "present": self.present,
        }


class AttributeRanker:
    """Rank the query's attributes by how well they explain a saliency map (SPEC §4).

    ``attribute_model`` maps a (B, 3, H, W) batch to ``(z (B, A), H (B, A, h, w))`` and carries
    ``attributes`` (names). ``thresholds`` (A,) logits: an attribute is a candidate when
    ``z_a >= threshold_a``; None takes the model's ``thresholds`` (from its checkpoint), or 0
    (probability 0.5) when it has none. ``prior`` maps names to probabilities; names it lacks get
    prior 0; ``"uniform"`` is 1/A each (which leaves the order to ``w·conf + (1−w)·match``).
    ``w`` weighs confidence against map match, ``gamma`` the prior. ``prior``, ``w`` and ``gamma``
    left None take the model's ``ranker_defaults`` (the checkpoint's tuned values, ``sane
    tune-ranker``), else uniform, 0.5 and 1. ``tau`` sharpens the saliency target and defaults to
    the training default so ``match`` uses the distance SANE was trained on.
    """

    def __init__(
        self,
        attribute_model: nn.Module,
        thresholds: Sequence[float] | torch.Tensor | None = None,
        prior: Mapping[str, float] | str | None = None,
        w: float | None = None,
        gamma: float | None = None,
        tau: float = DEFAULT_TAU,
    ):
        tuned = getattr(attribute_model, "ranker_defaults", None) or {}
        prior = tuned.get("prior") if prior is None else prior
        prior = None if prior == "uniform" else prior
        w = float(tuned.get("w", DEFAULT_W)) if w is None else w
        gamma = float(tuned.get("gamma", DEFAULT_GAMMA)) if gamma is None else gamma
        self.model = attribute_model
        self.attributes = list(attribute_model.attributes)
        n = len(self.attributes)
        if thresholds is None:
            thresholds = getattr(attribute_model, "thresholds", None)
        self.thresholds = (
            torch.zeros(n) if thresholds is None else torch.as_tensor(thresholds, dtype=torch.float32).flatten().cpu()
        )
        if len(self.thresholds) != n:
            raise ValueError(f"{len(self.thresholds)} thresholds for {n} attributes")
        if prior is None:
            self.prior = torch.full((n,), 1.0 / n)
        else:
            unknown = sorted(set(prior) - set(self.attributes))
            if unknown:
                raise ValueError(f"prior names unknown attributes: {', '.join(unknown)}")
            self.prior = torch.tensor([float(prior.get(a, 0.0)) for a in self.attributes])
            if not torch.isfinite(self.prior).all() or (self.prior < 0).any():
                raise ValueError("prior probabilities must be finite and >= 0")
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"w must be in [0, 1], got {w}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.w, self.gamma, self.tau = float(w), float(gamma), float(tau)

    def terms(self, query: torch.Tensor, saliency_map: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every attribute's terms: ``z``, ``confidence``, ``match``, ``prior``, ``score`` (A,), ``maps`` (A, h, w).

        ``query`` is one normalised (3, H, W) image (the attribute model's preprocessing),
        ``saliency_map`` its (H', W') saliency map (any size: it is area-downsampled to h x w).
        """
        if query.dim() != 3:
            raise ValueError(f"query must be one (3, H, W) image, got shape {tuple(query.shape)}")
        if saliency_map.dim() != 2:
            raise ValueError(f"saliency_map must be (H, W), got shape {tuple(saliency_map.shape)}")
        with torch.inference_mode():
            z, maps = self.model(query[None].to(model_device(self.model)))
        z, maps = z[0].float().cpu(), maps[0].float().cpu()
        match = map_match(maps[None], saliency_map.detach().float().cpu()[None], self.tau)[0]
        conf = z.sigmoid()
        score = spec_score(conf, match, self.prior, self.w, self.gamma)
        return {"z": z, "confidence": conf, "match": match, "prior": self.prior, "score": score, "maps": maps}

    def rank(self, query: torch.Tensor, saliency_map: torch.Tensor, top_k: int = 5) -> list[AttributeExplanation]:
        """The top_k candidate attributes of ``query`` for ``saliency_map``, best score first.

        Candidates are the attributes predicted present (``z_a >= threshold_a``). If none passes its
        threshold, the top_k attributes by confidence become the candidates instead (marked
        ``present=False``), so a ranking is always returned; they are ordered by score like the rest.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        t = self.terms(query, saliency_map)
        present = t["z"] >= self.thresholds
        if present.any():
            candidates = torch.nonzero(present).flatten()
        else:
            candidates = t["confidence"].topk(min(top_k, len(self.attributes))).indices
        order = candidates[t["score"][candidates].argsort(descending=True, stable=True)][:top_k]
        return [
            AttributeExplanation(
                attribute=self.attributes[i],
                score=float(t["score"][i]),
                confidence=float(t["confidence"][i]),
                match=float(t["match"][i]),
                prior=float(t["prior"][i]),
                activation_map=t["maps"][i].clone(),
                present=bool(present[i]),
            )
            for i in order.tolist()
        ]


def save_prior(path: str | os.PathLike, prior: Mapping[str, float]) -> None:
    """Write a prior (attribute name -> probability) as a JSON object."""
    clean = {str(k): float(v) for k, v in prior.items()}
    Path(path).write_text(json.dumps(clean, indent=2) + "\n")


def load_prior(path: str | os.PathLike) -> dict[str, float]:
    """Read a prior written by :func:`save_prior` (a JSON object of name -> non-negative number)."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a prior must be a JSON object of attribute name -> probability")
    prior = {}
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{path}: prior of {name!r} must be a finite number >= 0, got {value!r}")
        prior[name] = float(value)
    return prior


def same_class_pairs(
    scenes: Sequence[Scene], n_pairs: int, rng: np.random.Generator, classes: Sequence | None = None
) -> list[tuple[Scene, Scene]]:
    """``n_pairs`` random (query, reference) pairs of different scenes of the same class: ``classes[i]``
    (e.g. the data set's labels) or, by default, the scene's (shape, colour) class."""
    labels = [s.class_name for s in scenes] if classes is None else list(classes)
    if len(labels) != len(scenes):
        raise ValueError(f"{len(labels)} classes for {len(scenes)} scenes")
    by_class: dict = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    queries = [i for i, label in enumerate(labels) if len(by_class[label]) > 1]
    if not queries:
        raise ValueError("no class has two scenes: cannot form same-class pairs")
    pairs = []
    for _ in range(n_pairs):
        qi = queries[int(rng.integers(len(queries)))]
        others = [j for j in by_class[labels[qi]] if j != qi]
        pairs.append((scenes[qi], scenes[others[int(rng.integers(len(others)))]]))
    return pairs


def estimate_prior_counterfactual(
    similarity_model: nn.Module,
    preprocess: Preprocess,
    scenes: Iterable[Scene],
    n_pairs: int = 200,
    seed: int = 0,
    smoothing: float = 1.0,
    attributes: Sequence[str] = ATTRIBUTES,
    batch_size: int = 256,
    classes: Sequence | None = None,
    draws: int = 3,
) -> dict[str, float]:
    """Prior(a) = how often a is the best explanation of a held-out same-class pair (synthetic data).

    For each of ``n_pairs`` random same-class pairs (q, r) of ``scenes`` (use held-out scenes; their
    data set's labels as ``classes`` when its classes are not (shape, colour)), q is
    re-rendered with one factor changed at a time (:func:`~sane.metrics.counterfactual.counterfactual_deltas`:
    every other value of a categorical factor, ``draws`` random positions); the factor whose change
    drops s(q, r) the most on average is the pair's best explanation, and every attribute of that
    factor present in q gets the credit (e.g. ``red`` and ``warm`` for colour; see
    :data:`ATTRIBUTE_FACTORS`). A pair no change lowers credits nothing. The result is each attribute's
    credit frequency over the pairs with additive smoothing, ``(count + smoothing) / (n + 2·smoothing)``,
    so no attribute is ruled out by a zero prior.

    This is SPEC §4's prior measured with the exact counterfactual rather than the attribute
    deletion metric of §5: on rendered scenes the effect of removing a factor is known exactly.
    """
    unknown = sorted(set(attributes) - set(ATTRIBUTE_FACTORS))
    if unknown:
        raise ValueError(f"no factor known for attributes: {', '.join(unknown)}")
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    scenes = list(scenes)
    rng = np.random.default_rng(seed)
    embedder = Embedder(similarity_model, batch_size)
    index = {a: i for i, a in enumerate(ATTRIBUTES)}
    counts = dict.fromkeys(attributes, 0)
    pairs = same_class_pairs(scenes, n_pairs, rng, classes)
    for q, r in pairs:
        deltas = counterfactual_deltas(embedder, preprocess, q, preprocess.to_tensor(render(r, preprocess.size).image),
                                       draws, rng)
        best = best_factor(deltas)
        if deltas[best] >= 0:
            continue
        on = scene_attributes(q)
        for a in attributes:
            if ATTRIBUTE_FACTORS[a] == best and on[index[a]]:
                counts[a] += 1
    n = len(pairs)
    return {a: (counts[a] + smoothing) / (n + 2 * smoothing) for a in attributes}
