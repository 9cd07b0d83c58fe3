"""Explain one (query, reference) pair from files or bytes: the code path of `sane explain`."""

from __future__ import annotations

import os
import time

import torch
from PIL import Image
from torch import nn

from sane.errors import InputError
from sane.explain.outputs import write_explanation
from sane.explain.ranker import AttributeExplanation, AttributeRanker, load_prior
from sane.heatmap import DISPLAY_SIDE
from sane.images import Preprocess, open_image
from sane.models import load_similarity
from sane.models.attribute_predictors import load_attributes
from sane.saliency import SaliencyResult, make_generator


def explain_images(
    model: nn.Module,
    preprocess: Preprocess,
    query: Image.Image,
    reference: Image.Image,
    method: str = "rise",
    mode: str = "fixed",
    n_masks: int = 2000,
    n_samples: int | None = None,
    iterations: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    amp: bool = False,
    fast: bool = False,
    int8: bool = False,
) -> SaliencyResult:
    """Saliency for two RGB PIL images with a loaded model.

    ``fast`` folds BatchNorm into the convolutions, runs NHWC and autocasts (``amp``): several times
    faster on CPU, maps equal to bf16 rounding (``bench/table1.py`` reports their correlation).
    ``int8`` (CPU; instead of ``fast``/``amp``) runs an int8-quantized copy of the model, calibrated on
    the pair and masked copies of it: faster still on CPUs with AVX512-VNNI, maps close to fp32's.
    The learned mask (``method="mask"``) optimises through the model and rejects ``int8``.
    """
    if int8 and (fast or amp):
        raise InputError("int8 replaces fast/amp (another precision): pass one of them", "int8")
    speed = {"amp": True, "fuse": True, "channels_last": True} if fast else {"amp": amp}
    if int8:
        speed = {"quantize": True, "channels_last": True}
    generator = make_generator(
        model, method, n_masks=n_masks, n_samples=n_samples, iterations=iterations, seed=seed, batch_size=batch_size,
        preprocess=preprocess, **speed,
    )
    return generator.explain(preprocess.to_tensor(query), preprocess.to_tensor(reference), mode=mode)


def explain_files(
    query: str | os.PathLike,
    reference: str | os.PathLike,
    out: str | os.PathLike,
    method: str = "rise",
    mode: str = "fixed",
    model_path: str | os.PathLike | None = None,
    device: str = "cpu",
    attributes: bool = True,
    top_k: int = 5,
    attribute_model: str | os.PathLike | None = None,
    prior: str | os.PathLike | dict | None = None,
    display: int = DISPLAY_SIDE,
    **options,
) -> dict:
    """Explain two image files; write heat-map overlays (PNG, at least ``display`` pixels on the long
    side; 0: the image's own size), raw maps (.npy), card.png and result.json to ``out``
(:func:`~sane.explain.outputs.write_explanation`, as `sane request` does); returns result.json's content.

    With ``attributes`` the query's top_k attributes (SPEC §4, :class:`AttributeRanker`) for the
    run's query map go into result.json as ``explanations``: ``attribute_model`` is an attribute
    checkpoint (default: the bundled SANE model), ``prior`` a prior JSON file or dict (default: the
    attribute model's tuned prior, see ``sane tune-ranker``; ``"uniform"`` for none).
    """
    if attributes and top_k < 1:
        raise InputError(f"top_k must be >= 1, got {top_k}", "top_k")
    start = time.perf_counter()
    q_img, r_img = open_image(query, "query"), open_image(reference, "reference")
    model, preprocess = load_similarity(model_path, device)
    t_loaded = time.perf_counter()
    # The model sees the images as a server decodes them (a JPEG at the reduced scale its size allows);
    # the overlays are drawn on the full images.
    model_q, model_r = preprocess.open(query, "query"), preprocess.open(reference, "reference")
    result = explain_images(model, preprocess, model_q, model_r, method=method, mode=mode, **options)
    t_explained = time.perf_counter()
    explanations = None
    if attributes:
        explanations = rank_attributes(preprocess.visible(model_q), result.query_map, top_k, attribute_model, prior,
                                       device)
    t_ranked = time.perf_counter()
    report = {
        "query": str(query),
        "reference": str(reference),
        "similarity": float(result.similarity),
        "method": result.method,
        "mode": result.mode,
        "options": {k: v for k, v in options.items() if isinstance(v, (int, float, str, bool))}
        | ({"n_masks_used": result.n_masks_used} if options.get("n_masks") == "auto" else {}),
        "preprocess": preprocess.to_dict(),
        "timing_ms": {
            "load": (t_loaded - start) * 1e3,
            "explain": (t_explained - t_loaded) * 1e3,
            **({"attributes": (t_ranked - t_explained) * 1e3} if attributes else {}),
            **{k: round(v, 3) for k, v in result.timings.items()},
        },
    }
    if explanations is not None:
        report["explanations"] = [e.to_dict() for e in explanations]
    maps = {"query": result.query_map.numpy()}
    if result.reference_map is not None:
        maps["reference"] = result.reference_map.numpy()
    images = {"query": preprocess.visible(q_img), "reference": preprocess.visible(r_img)}
    return write_explanation(out, report, maps, images, display=display)


def rank_attributes(
    query: Image.Image,
    query_map: torch.Tensor,
    top_k: int = 5,
    attribute_model: str | os.PathLike | None = None,
    prior: str | os.PathLike | dict | None = None,
    device: str = "cpu",
) -> list[AttributeExplanation]:
    """The query image's top_k :class:`AttributeExplanation` for its (H, W) saliency map."""
    model, preprocess = load_attributes(attribute_model, device)
    if prior is not None and prior != "uniform" and not isinstance(prior, dict):
        prior = load_prior(prior)
    ranker = AttributeRanker(model, prior=prior)
    return ranker.rank(preprocess.to_tensor(query), query_map, top_k)
