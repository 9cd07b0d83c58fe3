"""Saliency generators for similarity: one class per method, one ``explain()`` verb."""

from sane.saliency.engine import PerturbationExplainer
from sane.saliency.random_map import RandomSaliency
from sane.saliency.result import SaliencyResult
from sane.saliency.rise import RISE
from sane.saliency.sliding_window import SlidingWindow

GENERATORS = {"rise": RISE, "sliding_window": SlidingWindow, "random": RandomSaliency}

__all__ = ["GENERATORS", "RISE", "PerturbationExplainer", "RandomSaliency", "SaliencyResult",
           "SlidingWindow"]
