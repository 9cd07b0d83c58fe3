"""The `saliency` archive: similarity + saliency maps from any registered generator, in fixed or
both-images mode, a batch of requests explained as one stream of masked images."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

import torch

from sane.errors import InputError
from sane.saliency import GENERATORS, SaliencyResult, make_generator
from sane.serving.worker.encoding import encode_map
from sane.serving.worker.handler import PreparedPair, ServingHandler
from sane.serving.worker.options import SaliencyOptions, validate_saliency_options
from sane.serving.worker.request import RequestError

logger = logging.getLogger(__name__)


class SaliencyHandler(ServingHandler):
    """Requests with equal options are grouped; each group is one
    :meth:`~sane.saliency.SaliencyGenerator.explain_pairs` call (one masked stream where the method shares one)."""

    archive = "saliency"
    extra_option_names: frozenset[str] = frozenset()  # options a subclass (the `sane` archive) adds

    def parse_options(self, options: dict[str, Any], references: int = 1) -> SaliencyOptions:
        return validate_saliency_options(options, self.config, self.extra_option_names, references)

    def make_generator(self, options: SaliencyOptions):
        """The generator for a group, with the server's forward batch size (and precision where it applies)."""
        cls = GENERATORS[options.method]
        server = {"batch_size": self.config.batch_size, "amp": self.config.amp,
                  "channels_last": self.config.channels_last}
        kwargs = {k: v for k, v in server.items() if k in cls.parameters() and (v or k == "batch_size")}
        if self.config.quantize == "pair" and not cls.needs_gradients:
            kwargs["quantize"] = True  # calibrated on the first images it explains: this request's
        if cls.size_option is not None and options.n_masks is not None:
            kwargs[cls.size_option] = options.n_masks  # n_masks, n_samples or iterations
        model = self.float_model if cls.needs_gradients else self.model
        return make_generator(model, options.method, seed=options.seed, preprocess=self.preprocess, **kwargs,
                              **dict(options.generator))

    def compute(self, items: dict[int, PreparedPair]) -> dict[int, Any]:
        groups: dict[tuple, list[int]] = defaultdict(list)
        # A request explained on its own (not in a shared stream) when its answer would otherwise depend on
        # its batch mates: an int8 model calibrated per request, or an adaptive map (a shared stream
        # changes the forward batches, and float rounding could move where a map stops).
        for idx, item in items.items():
            own = self.config.quantize == "pair" or item.options.n_masks == "auto"
            groups[(item.options.group_key(), idx if own else None)].append(idx)
        out: dict[int, Any] = {}
        for indices in groups.values():
            options: SaliencyOptions = items[indices[0]].options
            start = time.perf_counter()
            try:
                generator = self.make_generator(options)
                seen = generator.embedder.images_seen
                results = self._explain_group(generator, [items[i] for i in indices], options.mode)
            except InputError as exc:
                field = exc.field if exc.field in ("query", "reference") else f"options.{exc.field or 'method'}"
                error = RequestError(str(exc), field)
                out.update(dict.fromkeys(indices, error))
                continue
            except Exception as exc:  # a failure of one group must not fail the other groups
                logger.exception("saliency group %s failed", options.group_key())
                out.update(dict.fromkeys(indices, exc))
                continue
            seconds = time.perf_counter() - start
            if self.metrics and seconds > 0:
                self.metrics.record_masks_per_second((generator.embedder.images_seen - seen) / seconds)
            out.update(dict(zip(indices, results)))
        return out

    @staticmethod
    def _explain_group(generator, items: list[PreparedPair], mode: str) -> list:
        """One result per request: a :class:`SaliencyResult`, or a list of K for a request of K references.

        A generator that shares a stream explains every (query, reference) pair of the group in one
        stream (a query's K references share its masked images); the others take each request in one
        call with its references as a batch (LIME fits all K at once)."""
        if generator.shares_stream:
            owners = [(n, k) for n, item in enumerate(items) for k in range(len(item.all_references))]
            flat = generator.explain_pairs([items[n].query for n, _ in owners],
                                           [items[n].all_references[k] for n, k in owners], mode)
            results: list = [[] for _ in items]
            for (n, _), result in zip(owners, flat):
                results[n].append(result)
        else:
            batches = [generator.explain(item.query, torch.stack(item.all_references), mode) for item in items]
            results = [[batch.select(k) for k in range(len(item.all_references))]
                       for item, batch in zip(items, batches)]
        return [found if item.references is not None else found[0] for item, found in zip(items, results)]

    def encode(self, result: SaliencyResult | list[SaliencyResult], item: PreparedPair) -> dict[str, Any]:
        """The response: for K references, ``references`` holds each one's similarity and maps."""
        if item.references is None:
            return {**self._encode_pair(result, item), **self._encode_common(result, item, result.n_masks_used)}
        # auto: each reference's map stops on its own (its entry says when); the request's stream ran
        # until the last one stopped
        streamed = max((r.n_masks_used or 0) for r in result)
        return {**self._encode_common(result[0], item, streamed),
                "references": [self._encode_pair(r, item, k) for k, r in enumerate(result)]}

    def _encode_common(self, result: SaliencyResult, item: PreparedPair, n_masks_used: int | None) -> dict[str, Any]:
        options: SaliencyOptions = item.options
        return {
            "method": result.method,
            "mode": result.mode,
            "options": {**options.as_dict(),
                        **({"n_masks_used": n_masks_used} if options.n_masks == "auto" else {})},
            "timing_ms": {"explain": round(result.timings.get("total_ms", 0.0), 3)},
        }

    def _encode_pair(self, result: SaliencyResult, item: PreparedPair, k: int | None = None) -> dict[str, Any]:
        """One reference's similarity and maps (``k``: its index in a K-reference request)."""
        options: SaliencyOptions = item.options
        # With a cropping preprocess, each map covers the box (left, top, right, bottom) of its image.
        boxes = item.extra.get("boxes")
        boxes = {"query": boxes["query"], "reference": boxes["references"][k or 0]} if boxes else {}
        saliency = {"query": encode_map(result.query_map, options.outputs)}
        if result.reference_map is not None:
            saliency["reference"] = encode_map(result.reference_map, options.outputs)
        for name, part in saliency.items():
            if name in boxes:
                part["box"] = boxes[name]
        used = {"n_masks_used": result.n_masks_used} if k is not None and options.n_masks == "auto" else {}
        return {"similarity": float(result.similarity), "saliency": saliency, **used}
