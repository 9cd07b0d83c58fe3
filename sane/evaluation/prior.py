"""The ranker's prior (SPEC §4) on any data: how often each attribute is the best explanation of a held-out pair.

Two measures of "best explanation":

- ``deletion`` (the paper's, any data set): for a pair (q, r), every attribute a that q has (by its
  labels) is deleted with the retrieval metric of SPEC §5 (:meth:`RetrievalSpace.deltas`: swap q for
  its K nearest images lacking a in the averaged attribute-prediction space, Δ = mean_k s(x_k, r) −
  s(q, r)); the attribute(s) with the most negative Δ are the pair's best explanation.
- ``counterfactual`` (synthetic data only): re-render q with one factor changed
  (:func:`estimate_prior_counterfactual`): exact, no retrieval noise.

Held-out pairs: queries are the validation hold-out of the training split
(:func:`~sane.train.validation_split.validation_split`, images no attribute model trained on),
references other images of the query's class in the training split; the retrieval database is the
whole training split without q and r. Priors are credit frequencies with additive smoothing,
``(count + smoothing) / (n_pairs + 2·smoothing)``, as in the counterfactual estimate.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from sane.data.synthetic import ATTRIBUTE_FACTORS, ATTRIBUTES, Scene, render, scene_attributes
from sane.evaluation.attribute_explanations import DEFAULT_K, retrieval_space, same_class_index_pairs
from sane.images import Preprocess
from sane.metrics.counterfactual import best_factor, counterfactual_deltas
from sane.models.embedder import Embedder
from sane.train.validation_split import DEFAULT_VAL_FRACTION, validation_split

PRIOR_MEASURES = ("auto", "deletion", "counterfactual")


def deletion_credits(deltas: Mapping[str, float], tolerance: float = 1e-9) -> list[str]:
    """The attributes whose deletion Δ is the most negative (ties within ``tolerance`` all credited);
    none when no deletion lowers the similarity or no Δ is finite."""
    finite = {a: d for a, d in deltas.items() if math.isfinite(d)}
    if not finite:
        return []
    best = min(finite.values())
    if best >= 0:
        return []
    return sorted(a for a, d in finite.items() if d <= best + tolerance)


def smoothed_prior(counts: Mapping[str, int], n_pairs: int, smoothing: float = 1.0) -> dict[str, float]:
    """Credit frequencies with additive smoothing, so no attribute is ruled out by a zero prior."""
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    if n_pairs + 2 * smoothing <= 0:
        raise ValueError("no pairs and no smoothing: the prior is undefined")
    return {a: (c + smoothing) / (n_pairs + 2 * smoothing) for a, c in counts.items()}


def estimate_prior_deletion(
    similarity_model: nn.Module,
    similarity_preprocess: Preprocess,
    attribute_models: dict[str, tuple[nn.Module, Preprocess]],
    data_dir: str | os.PathLike,
    n_pairs: int = 200,
    k: int = DEFAULT_K,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    smoothing: float = 1.0,
    batch_size: int = 128,
    progress: bool = True,
) -> dict[str, float]:
    """Prior(a) over the data set's attributes by the attribute deletion metric on held-out training pairs.

    ``attribute_models`` (name -> (model, preprocess)) define the retrieval space, as in
    :func:`~sane.evaluation.attribute_explanations.evaluate_explanations`.
    """
    space = retrieval_space(similarity_model, similarity_preprocess, attribute_models, data_dir, "train", batch_size,
                            progress)
    held_out = validation_split(space.dataset.targets, val_fraction, seed)
    if not held_out.any():
        raise ValueError(f"no held-out images in the training split of {data_dir} (val_fraction {val_fraction})")
    rng = np.random.default_rng([seed, 37])
    pairs = same_class_index_pairs(space.dataset.targets, n_pairs, rng, queries_from=held_out)
    counts = dict.fromkeys(space.attributes, 0)
    for qi, ri in tqdm(pairs, desc="prior by deletion", disable=not progress):
        present = np.flatnonzero(space.labels[qi])
        deltas = space.deltas(qi, ri, present, insert=False, k=k)
        for a in deletion_credits({space.attributes[j]: d for j, d in zip(present, deltas)}):
            counts[a] += 1
    return smoothed_prior(counts, len(pairs), smoothing)


def estimate_prior(
    data_dir: str | os.PathLike,
    similarity: str | os.PathLike | None = None,
    by: str = "auto",
    sane: str | os.PathLike | None = None,
    classifier: str | os.PathLike | None = None,
    n_pairs: int = 200,
    k: int = DEFAULT_K,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    batch_size: int = 128,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[dict[str, float], str]:
    """(prior, the measure used): what `sane estimate-prior` computes, from checkpoint paths.

    ``by`` is ``deletion``, ``counterfactual`` (needs scenes and the synthetic attributes) or ``auto``
    (counterfactual when the data has both, else deletion). ``similarity``, ``sane`` and ``classifier`` default to the bundled models.
    """
    from sane.data import open_dataset
    from sane.models import load_similarity
    from sane.models.attribute_predictors import default_attribute_weights, load_attributes

    if by not in PRIOR_MEASURES:
        raise ValueError(f"by must be one of {PRIOR_MEASURES}, got {by!r}")
    model, preprocess = load_similarity(similarity, device)
    dataset = open_dataset(data_dir, split="train", preprocess=preprocess).require_attributes()
    has_scenes = dataset.scenes is not None and all(s is not None for s in dataset.scenes)
    # The counterfactual credits factors, so it needs attributes that name one (the synthetic set's own;
    # not a vocabulary discovered over its images)
    factored = all(a in ATTRIBUTE_FACTORS for a in dataset.attributes)
    if by == "auto":
        by = "counterfactual" if has_scenes and factored else "deletion"
    if by == "counterfactual":
        if not has_scenes:
            raise ValueError(f"{data_dir} has no scenes.jsonl: the counterfactual prior needs synthetic data "
                             "(use the deletion measure on real data)")
        if not factored:
            unknown = [a for a in dataset.attributes if a not in ATTRIBUTE_FACTORS][:5]
            raise ValueError(f"the counterfactual prior credits the synthetic factors, and {data_dir}'s attributes "
                             f"({', '.join(unknown)}, ...) are not theirs: use the deletion measure")
        held_out = np.flatnonzero(validation_split(dataset.targets, val_fraction, seed))
        prior = estimate_prior_counterfactual(model, preprocess, [dataset.scenes[i] for i in held_out],
                                              n_pairs=n_pairs, seed=seed, batch_size=batch_size,
                                              classes=[dataset.targets[i] for i in held_out])
        return prior, by
    attribute_models = {
        "sane": load_attributes(sane or default_attribute_weights("sane"), device),
        "classifier": load_attributes(classifier or default_attribute_weights("classifier"), device),
    }
    prior = estimate_prior_deletion(model, preprocess, attribute_models, data_dir, n_pairs=n_pairs, k=k,
                                    val_fraction=val_fraction, seed=seed, batch_size=batch_size, progress=progress)
    return prior, by


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
