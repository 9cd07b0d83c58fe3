"""The generator registry: method names to classes, and building one with the options that fit it."""

from __future__ import annotations

from torch import nn

from sane.errors import InputError
from sane.images import Preprocess
from sane.saliency.base import SIZE_OPTIONS, SaliencyGenerator
from sane.saliency.learned_mask import LearnedMask
from sane.saliency.lime import LIME
from sane.saliency.random_map import RandomSaliency
from sane.saliency.rise import RISE
from sane.saliency.sliding_window import SlidingWindow

GENERATORS: dict[str, type[SaliencyGenerator]] = {
    cls.method: cls for cls in (RISE, SlidingWindow, LIME, LearnedMask, RandomSaliency)
}


def generator_class(method: str) -> type[SaliencyGenerator]:
    """The class registered as ``method``, or an :class:`InputError` naming ``method``."""
    if method not in GENERATORS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(GENERATORS)}", "method")
    return GENERATORS[method]


def make_generator(model: nn.Module, method: str, *, preprocess: Preprocess | None = None, **options):
    """A generator by name. Of the size options (``n_masks``, ``n_samples``, ``iterations``) only the
    method's own is passed, and only when not None (else its default): callers may give all three.
    ``preprocess`` gives LIME the model's mean/std (its superpixels are computed on the RGB image).
    """
    cls = generator_class(method)
    options = {k: v for k, v in options.items() if k not in SIZE_OPTIONS or (k == cls.size_option and v is not None)}
    if preprocess is not None and {"mean", "std"} <= cls.parameters():
        options = {"mean": preprocess.mean, "std": preprocess.std, **options}
    return cls(model, **options)
