"""Choosing the ranker's w and γ on validation pairs (SPEC §4: "w and γ chosen on validation pairs").

For same-class pairs (q, r) whose query is a validation image of a *training* class (the reference
another training image of its class; the test classes stay unseen), every attribute model's ranker terms (confidence, map match) are computed once for
q's fixed-reference RISE map, together with how good each attribute of q would be as the pair's
explanation:

- on synthetic data (scenes known), 1 when the attribute belongs to the factor whose exact
  counterfactual change lowers s(q, r) the most (SPEC §6), else 0;
- on real data, minus the attribute's retrieval deletion Δ (SPEC §5), so a more negative Δ is better.

A grid of (w, γ) is then scored without further forward passes: each pair's top-1 candidate under
``prior^γ · (w·conf + (1 − w)·match)`` earns that attribute's utility; the best mean wins (ties go to
the paper's w = 0.5, γ = 1, then to the smaller γ).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from sane.data import open_dataset
from sane.data.synthetic import ATTRIBUTE_FACTORS
from sane.evaluation.attribute_explanations import retrieval_space, same_class_index_pairs
from sane.explain.map_match import DEFAULT_QUERY_MASKS
from sane.explain.ranker import DEFAULT_GAMMA, DEFAULT_W, AttributeRanker, spec_score
from sane.images import Preprocess
from sane.metrics.counterfactual import best_factor, counterfactual_deltas
from sane.models.embedder import Embedder
from sane.saliency import RISE
from sane.train.validation_split import DEFAULT_VAL_FRACTION, validation_split

W_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
GAMMA_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


@dataclass
class PairTerms:
    """One validation pair as the grid search needs it (arrays over the model's attributes)."""

    confidence: np.ndarray  # (A,)
    match: np.ndarray  # (A,)
    candidates: np.ndarray  # (A,) bool: predicted present (the ranker's candidates)
    utility: np.ndarray  # (A,) how good each attribute is as the explanation (NaN: unknown)


def top1_utility(pairs: Sequence[PairTerms], prior: np.ndarray, w: float, gamma: float) -> float:
    """Mean utility of each pair's top-1 candidate under ``prior^γ · (w·conf + (1−w)·match)``.

    Pairs without a candidate or whose top-1 has unknown utility are left out (NaN if none is left).
    """
    values = []
    for p in pairs:
        idx = np.flatnonzero(p.candidates)
        if len(idx) == 0:
            continue
        score = spec_score(p.confidence[idx], p.match[idx], prior[idx], w, gamma)
        u = p.utility[idx[int(np.argmax(score))]]
        if np.isfinite(u):
            values.append(float(u))
    return float(np.mean(values)) if values else float("nan")


def select_weights(
    pairs: Sequence[PairTerms],
    prior: np.ndarray,
    w_grid: Sequence[float] = W_GRID,
    gamma_grid: Sequence[float] = GAMMA_GRID,
) -> dict:
    """The (w, γ) of the grids with the best :func:`top1_utility`; returns ``{"w", "gamma", "utility", "grid"}``
    with ``grid`` the utility of every (w, γ) (rows: γ, columns: w)."""
    grid = np.array([[top1_utility(pairs, prior, w, g) for w in w_grid] for g in gamma_grid])
    if not np.isfinite(grid).any():
        raise ValueError("no validation pair has a candidate attribute with a known utility")
    best = np.nanmax(grid)
    ties = [(gi, wi) for gi in range(len(gamma_grid)) for wi in range(len(w_grid)) if grid[gi, wi] >= best - 1e-12]
    paper = [(gi, wi) for gi, wi in ties if w_grid[wi] == DEFAULT_W and gamma_grid[gi] == DEFAULT_GAMMA]
    gi, wi = paper[0] if paper else min(ties, key=lambda t: (gamma_grid[t[0]], abs(w_grid[t[1]] - DEFAULT_W)))
    return {"w": float(w_grid[wi]), "gamma": float(gamma_grid[gi]), "utility": float(best),
            "grid": grid.tolist(), "w_grid": list(w_grid), "gamma_grid": list(gamma_grid)}


def validation_terms(
    similarity_model: nn.Module,
    similarity_preprocess: Preprocess,
    attribute_models: Mapping[str, tuple[nn.Module, Preprocess]],
    data_dir: str | os.PathLike,
    n_pairs: int = 200,
    n_masks: int = DEFAULT_QUERY_MASKS,
    k: int = 5,
    draws: int = 3,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    batch_size: int = 128,
    progress: bool = True,
) -> tuple[dict[str, list[PairTerms]], str]:
    """Per model name, the :class:`PairTerms` of ``n_pairs`` validation pairs (query: a held-out image of
    a training class, reference: another training image of its class); and the utility used
    (``"counterfactual"`` on synthetic data, ``"deletion"`` otherwise, retrieving from the training split)."""
    rng = np.random.default_rng([seed, 4])
    sim_data = open_dataset(data_dir, split="train", preprocess=similarity_preprocess)
    held_out = validation_split(sim_data.targets, val_fraction, seed)
    if not held_out.any():
        raise ValueError(f"no held-out images in the training split of {data_dir} (val_fraction {val_fraction})")
    pairs = same_class_index_pairs(sim_data.targets, n_pairs, rng, queries_from=held_out)
    scenes = sim_data.scenes
    # the counterfactual utility needs the synthetic attributes (a discovered vocabulary names no factor)
    synthetic = (scenes is not None and all(s is not None for s in scenes)
                 and all(a in ATTRIBUTE_FACTORS for a in sim_data.attributes))
    space = None
    if synthetic:  # only the pairs' images are needed
        needed = sorted({i for pair in pairs for i in pair})

        def stack(dataset) -> dict[int, torch.Tensor]:
            return dict(zip(needed, dataset.stack_images(needed, progress=progress)))

        images_sim = stack(sim_data)
        images_attr = {name: images_sim if pre == similarity_preprocess
                       else stack(open_dataset(data_dir, split="train", preprocess=pre))
                       for name, (_, pre) in attribute_models.items()}
    else:  # the deletion metric retrieves from the whole training split
        space = retrieval_space(similarity_model, similarity_preprocess, dict(attribute_models), data_dir, "train",
                                batch_size, progress)
        images_sim, images_attr = space.images, space.model_images
    attributes = list(sim_data.attributes)
    embedder = Embedder(similarity_model, batch_size)
    rise = RISE(similarity_model, n_masks=n_masks, batch_size=batch_size, seed=seed, fuse=True, channels_last=True)
    rankers = {name: AttributeRanker(model, prior="uniform") for name, (model, _) in attribute_models.items()}
    out: dict[str, list[PairTerms]] = {name: [] for name in attribute_models}
    for qi, ri in tqdm(pairs, desc="validation pairs", disable=not progress):
        if synthetic:
            best = best_factor(counterfactual_deltas(embedder, similarity_preprocess, scenes[qi], images_sim[ri], draws,
                                                     rng))
            utility_by_name = {a: float(ATTRIBUTE_FACTORS.get(a) == best) for a in attributes}
        else:
            present = np.flatnonzero(space.labels[qi])
            deltas = space.deltas(qi, ri, present, insert=False, k=k)
            utility_by_name = {attributes[j]: -d for j, d in zip(present, deltas)}
        saliency = rise.explain(images_sim[qi], images_sim[ri]).query_map
        for name, ranker in rankers.items():
            t = ranker.terms(images_attr[name][qi], saliency)
            out[name].append(PairTerms(
                confidence=t["confidence"].numpy(),
                match=t["match"].numpy(),
                candidates=(t["z"] >= ranker.thresholds).numpy(),
                utility=np.array([utility_by_name.get(a, np.nan) for a in ranker.attributes]),
            ))
    return out, "counterfactual" if synthetic else "deletion"


def prior_vector(prior: Mapping[str, float] | None, attributes: Sequence[str]) -> np.ndarray:
    """The prior as an (A,) array in ``attributes`` order (None: uniform); names it lacks get 0."""
    if prior is None:
        return np.full(len(attributes), 1.0 / len(attributes))
    return np.array([float(prior.get(a, 0.0)) for a in attributes])


def format_selection(name: str, selection: dict, utility: str) -> str:
    """A short report: the chosen (w, γ), and the utility at the paper's (0.5, 1) and at γ = 0 (no prior)."""
    grid = np.array(selection["grid"])
    w_grid, g_grid = selection["w_grid"], selection["gamma_grid"]
    paper = grid[g_grid.index(DEFAULT_GAMMA), w_grid.index(DEFAULT_W)] if DEFAULT_W in w_grid and \
        DEFAULT_GAMMA in g_grid else float("nan")
    no_prior = np.nanmax(grid[g_grid.index(0.0)]) if 0.0 in g_grid else float("nan")
    what = "counterfactual top-1" if utility == "counterfactual" else "-(retrieval deletion Δ)"
    return (f"{name}: w={selection['w']:g} gamma={selection['gamma']:g} -> {what} {selection['utility']:.3f} "
            f"(paper's w=0.5, gamma=1: {paper:.3f}; best without the prior: {no_prior:.3f})")


def tune_ranker_weights(
    terms: Mapping[str, list[PairTerms]],
    attribute_models: Mapping[str, tuple[nn.Module, Preprocess]],
    prior: Mapping[str, float] | None,
) -> dict[str, dict]:
    """:func:`select_weights` per model, with the prior in each model's attribute order."""
    for name, (model, _) in attribute_models.items():
        unknown = sorted(set(prior or {}) - set(model.attributes))
        if unknown:
            raise ValueError(f"the prior names attributes that model {name!r} lacks: {', '.join(unknown)}")
    return {
        name: select_weights(terms[name], prior_vector(prior, list(model.attributes)))
        for name, (model, _) in attribute_models.items()
    }



def tune_ranker(
    similarity_path: str | os.PathLike | None,
    attribute_paths: Mapping[str, str | os.PathLike],
    data_dir: str | os.PathLike,
    prior: Mapping[str, float] | None,
    write: bool = True,
    device: str = "cpu",
    **options,
) -> tuple[dict[str, dict], str]:
    """`sane tune-ranker`: choose (w, γ) per attribute model on validation pairs and, with ``write``,
    store ``{"prior", "w", "gamma"}`` in each checkpoint as its ranker defaults (weights, thresholds
    and metadata kept). ``options`` go to :func:`validation_terms`. Returns the selections and the
    utility used."""
    from sane.models import load_similarity
    from sane.models.attribute_predictors import load_attributes, read_attribute_checkpoint, save_attributes

    similarity_model, similarity_preprocess = load_similarity(similarity_path, device)
    models = {name: load_attributes(path, device) for name, path in attribute_paths.items()}
    terms, utility = validation_terms(similarity_model, similarity_preprocess, models, data_dir, **options)
    selections = tune_ranker_weights(terms, models, prior)
    if write:
        for name, path in attribute_paths.items():
            ckpt = read_attribute_checkpoint(path)
            model, preprocess = models[name]
            ranker = {"prior": dict(prior) if prior is not None else None,
                      "w": selections[name]["w"], "gamma": selections[name]["gamma"]}
            save_attributes(path, model.cpu(), preprocess, ckpt.get("thresholds"), ranker=ranker,
                            **{**ckpt.get("meta", {}), "ranker_utility": utility})
    return selections, utility
