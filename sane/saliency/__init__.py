"""Saliency generators for similarity: one class per method on one base, one ``explain()`` verb.

:data:`GENERATORS` is the registry by method name; :func:`make_generator` builds one with the
options that apply to it.
"""

from sane.saliency.base import MODES, SaliencyGenerator, check_pair
from sane.saliency.engine import PerturbationGenerator
from sane.saliency.learned_mask import LearnedMask
from sane.saliency.lime import LIME, LimeResult
from sane.saliency.random_map import RandomSaliency
from sane.saliency.registry import GENERATORS, generator_class, make_generator
from sane.saliency.result import SaliencyResult
from sane.saliency.rise import RISE
from sane.saliency.sliding_window import SlidingWindow

__all__ = ["GENERATORS", "LIME", "MODES", "LearnedMask", "LimeResult", "PerturbationGenerator", "RISE",
           "RandomSaliency", "SaliencyGenerator", "SaliencyResult", "SlidingWindow", "check_pair", "generator_class",
           "make_generator"]
