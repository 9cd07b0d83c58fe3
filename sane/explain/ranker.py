"""Explanation selection (SPEC §4): which named attributes of the query explain a similarity map.

For a pair (q, r) with q's saliency map S, every attribute a the attribute model predicts present in q
is scored by

    conf(a)  = sigmoid(z_a(q))
    match(a) = 1 - || softmax(H_a(q)) - Ŝ ||_2 / sqrt(2)
    score(a) = prior(a)^gamma * (w * conf(a) + (1 - w) * match(a))

where Ŝ is S turned into a distribution exactly as the SANE training target (:func:`saliency_target`:
area-downsampled to the activation maps' h x w, standardised over its cells, tau-sharpened softmax), so
``match`` is one minus the training distance scaled to [0, 1].

The prior is "how often is a the best explanation" on held-out pairs, estimated by the research layer
(:mod:`sane.evaluation.prior`) and read here from a JSON file or the attribute checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sane.errors import InputError
from sane.explain.map_match import DEFAULT_TAU, map_match
from sane.models.embedder import model_device

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
            raise InputError(f"{len(self.thresholds)} thresholds for {n} attributes", "thresholds")
        if prior is None:
            self.prior = torch.full((n,), 1.0 / n)
        else:
            unknown = sorted(set(prior) - set(self.attributes))
            if unknown:
                raise InputError(f"prior names unknown attributes: {', '.join(unknown)}", "prior")
            self.prior = torch.tensor([float(prior.get(a, 0.0)) for a in self.attributes])
            if not torch.isfinite(self.prior).all() or (self.prior < 0).any():
                raise InputError("prior probabilities must be finite and >= 0", "prior")
        if not 0.0 <= w <= 1.0:
            raise InputError(f"w must be in [0, 1], got {w}", "w")
        if gamma < 0:
            raise InputError(f"gamma must be >= 0, got {gamma}", "gamma")
        if tau <= 0:
            raise InputError(f"tau must be > 0, got {tau}", "tau")
        self.w, self.gamma, self.tau = float(w), float(gamma), float(tau)

    def terms(self, query: torch.Tensor, saliency_map: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every attribute's terms: ``z``, ``confidence``, ``match``, ``prior``, ``score`` (A,), ``maps`` (A, h, w).

        ``query`` is one normalised (3, H, W) image (the attribute model's preprocessing),
        ``saliency_map`` its (H', W') saliency map (any size: it is area-downsampled to h x w).
        """
        if query.dim() != 3:
            raise InputError(f"query must be one (3, H, W) image, got shape {tuple(query.shape)}", "query")
        if saliency_map.dim() != 2:
            raise InputError(f"saliency_map must be (H, W), got shape {tuple(saliency_map.shape)}", "saliency_map")
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
            raise InputError(f"top_k must be >= 1, got {top_k}", "top_k")
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
        raise InputError(f"{path}: a prior must be a JSON object of attribute name -> probability", "prior")
    prior = {}
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise InputError(f"{path}: prior of {name!r} must be a finite number >= 0, got {value!r}", "prior")
        prior[name] = float(value)
    return prior
