"""Saliency generators for similarity: one class per method, one ``explain()`` verb."""

from sane.saliency.engine import PerturbationExplainer
from sane.saliency.learned_mask import LearnedMask
from sane.saliency.lime import LIME, LimeResult
from sane.saliency.random_map import RandomSaliency
from sane.saliency.result import SaliencyResult
from sane.saliency.rise import RISE
from sane.saliency.sliding_window import SlidingWindow

GENERATORS = {
    "rise": RISE,
    "sliding_window": SlidingWindow,
    "lime": LIME,
    "mask": LearnedMask,
    "random": RandomSaliency,
}

__all__ = ["GENERATORS", "LIME", "LearnedMask", "LimeResult", "PerturbationExplainer", "RISE", "RandomSaliency",
           "SaliencyResult", "SlidingWindow"]
