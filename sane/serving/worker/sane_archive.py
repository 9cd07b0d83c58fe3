"""The `sane` archive: the saliency response plus the query's top-k attributes that explain its map.

The saliency maps are computed exactly as by the `saliency` archive (requests with equal options
share one stream of masked images); then each request's query map is ranked by
:class:`~sane.explain.ranker.AttributeRanker` (one cheap forward pass of the attribute model per
request). The attribute model travels in the archive as an extra file (``handler.attribute_model``,
default ``attributes_sane.pt``); without it (a handler run outside an archive) the bundled one is used.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from sane.explain.ranker import AttributeExplanation, AttributeRanker, load_prior
from sane.models.attribute_predictors import DEFAULT_ATTRIBUTE_MODEL, load_attributes
from sane.saliency import SaliencyResult
from sane.serving.worker.handler import PreparedPair
from sane.serving.worker.options import SaliencyOptions, check_int, validate_saliency_options
from sane.serving.worker.request import PairRequest
from sane.serving.worker.saliency_archive import SaliencyHandler

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 5
MAX_TOP_K = 20


@dataclass(frozen=True)
class SaneOptions(SaliencyOptions):
    """Saliency options plus ``top_k`` (which does not change the maps, so not part of the group key)."""

    top_k: int = DEFAULT_TOP_K

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "top_k": self.top_k}


@dataclass
class SaneResult:
    """One request's saliency result and its ranked attributes."""

    saliency: SaliencyResult
    explanations: list[AttributeExplanation]
    rank_ms: float


@dataclass(frozen=True)
class RankerSettings:
    """The ``handler:`` keys of the `sane` archive's model-config beyond the saliency ones."""

    attribute_model: str = DEFAULT_ATTRIBUTE_MODEL  # file name inside the archive
    prior: str | None = None  # JSON prior inside the archive (``save_prior``); None: the model's tuned prior
    w: float | None = None  # None: the attribute model's tuned w (else 0.5)
    gamma: float | None = None  # None: the attribute model's tuned γ (else 1)
    default_top_k: int = DEFAULT_TOP_K
    max_top_k: int = MAX_TOP_K

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> RankerSettings:
        """Build from :attr:`ServingConfig.extra`; a bad value fails the worker at start."""
        known = set(cls.__dataclass_fields__)
        settings = cls(**{k: v for k, v in extra.items() if k in known})
        for name in ("default_top_k", "max_top_k"):
            value = getattr(settings, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model-config handler.{name} must be an integer >= 1, got {value!r}")
        if settings.default_top_k > settings.max_top_k:
            raise ValueError(f"model-config handler.default_top_k ({settings.default_top_k}) exceeds "
                             f"max_top_k ({settings.max_top_k})")
        for name in ("w", "gamma"):
            value = getattr(settings, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"model-config handler.{name} must be a number, got {value!r}")
        return settings


class SaneHandler(SaliencyHandler):
    """Similarity + saliency + the query's top-k attribute explanations."""

    archive = "sane"
    extra_option_names = frozenset({"top_k"})

    def __init__(self):
        super().__init__()
        self.ranker: AttributeRanker | None = None
        self.attribute_preprocess = None
        self.settings = RankerSettings()

    def initialize(self, context) -> None:
        super().initialize(context)
        self.settings = RankerSettings.from_extra(self.config.extra)
        model_dir = context.system_properties.get("model_dir") or ""
        path = os.path.join(model_dir, self.settings.attribute_model)
        if not os.path.isfile(path):  # outside an archive: the bundled model of that name
            logger.warning("no %s in %s: using the bundled attribute model", self.settings.attribute_model, model_dir)
            path = None
        model, self.attribute_preprocess = load_attributes(path, self.device)
        prior = load_prior(os.path.join(model_dir, self.settings.prior)) if self.settings.prior else None
        self.ranker = AttributeRanker(model, prior=prior, w=self.settings.w, gamma=self.settings.gamma)

    def parse_options(self, options: dict[str, Any], references: int = 1) -> SaneOptions:
        base = validate_saliency_options(options, self.config, self.extra_option_names, references)
        top_k = check_int(options, "top_k", self.settings.default_top_k, 1, self.settings.max_top_k, "max_top_k")
        return SaneOptions(**{f: getattr(base, f) for f in SaliencyOptions.__dataclass_fields__}, top_k=top_k)

    def prepare(self, pair: PairRequest, options: SaneOptions) -> PreparedPair:
        """Decode the query once; the attribute model sees the part of it the similarity model sees."""
        item = super().prepare(pair, options)
        query = self.preprocess.visible(item.extra["query_image"])
        item.extra["attribute_query"] = (
            item.query if self.attribute_preprocess == self.preprocess else self.attribute_preprocess.to_tensor(query)
        )
        return item

    def compute(self, items: dict[int, PreparedPair]) -> dict[int, Any]:
        out = super().compute(items)  # the saliency batch, unchanged
        for idx, result in out.items():
            if isinstance(result, Exception):
                continue  # that request's error stands
            item = items[idx]
            try:  # the query's attributes for each reference's query map
                ranked = [self._rank(item, r) for r in (result if isinstance(result, list) else [result])]
            except Exception as exc:  # one request's ranking failure answers that request only
                logger.exception("ranking request %d failed", idx)
                out[idx] = exc
                continue
            out[idx] = ranked if isinstance(result, list) else ranked[0]
        return out

    def _rank(self, item: PreparedPair, result: SaliencyResult) -> SaneResult:
        start = time.perf_counter()
        explanations = self.ranker.rank(item.extra["attribute_query"], result.query_map, item.options.top_k)
        return SaneResult(result, explanations, (time.perf_counter() - start) * 1e3)

    def _explanations(self, result: SaneResult) -> list[dict[str, Any]]:
        """The ranked attributes; a discovered one also names its id and contact sheet (where a person
        can see what the attribute is)."""
        vocabulary = getattr(self.ranker.model, "vocabulary", None) or {}
        return [{**e.to_dict(), **vocabulary.get(e.attribute, {})} for e in result.explanations]

    def encode(self, result: SaneResult | list[SaneResult], item: PreparedPair) -> dict[str, Any]:
        if isinstance(result, list):
            body = super().encode([r.saliency for r in result], item)
            for entry, r in zip(body["references"], result):
                entry["explanations"] = self._explanations(r)
            body["timing_ms"]["rank"] = round(sum(r.rank_ms for r in result), 3)
            return body
        body = super().encode(result.saliency, item)
        body["explanations"] = self._explanations(result)
        body["timing_ms"]["rank"] = round(result.rank_ms, 3)
        return body
