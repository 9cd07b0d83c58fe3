"""The TorchServe handler base: every request of a batch is judged on its own.

TorchServe calls ``initialize(context)`` once per worker and ``handle(data, context)`` per batch
(``data``: one dict per request). This base parses and decodes each request separately (a corrupt
image, a missing field or a bad option becomes that request's own 4xx with ``{"error", "field"}``),
hands the valid ones to the subclass's :meth:`compute` as one batch, and encodes one JSON response
per request. It never looks at the ``explain`` header: ``/predictions``, ``/explanations`` and
gRPC ``Predictions`` take the same path and return the same bytes.

Subclasses (one per archive) define :meth:`parse_options` and :meth:`compute`; the `sane`
archive's handler extends the saliency one with attribute explanations.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import torch

from sane.errors import InputError
from sane.images import load_image
from sane.models.checkpoint import LoadedModel, load_model
from sane.models.optimize import prepare_for_inference, quantize_int8
from sane.models.spec import ModelSpec
from sane.saliency.engine import calibration_batch
from sane.saliency.masks import BANKS
from sane.serving.worker.config import ServingConfig
from sane.serving.worker.metrics import HandlerMetrics
from sane.serving.worker.request import PairRequest, RequestError, parse_pair_request

logger = logging.getLogger(__name__)


@dataclass
class PreparedPair:
    """A decoded, validated request: model-ready tensors and the archive's options object."""

    query: torch.Tensor
    reference: torch.Tensor
    options: Any
    decode_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # further inputs an archive decodes (``prepare``)
    references: list[torch.Tensor] | None = None  # K references (``reference`` is then the first)

    @property
    def all_references(self) -> list[torch.Tensor]:
        return self.references if self.references is not None else [self.reference]


MODEL_SPEC_FILE = "model_spec.json"  # what `sane archive` declares about the model (sane.serving.ops.archive)
CALIBRATION_IMAGES = ("query.jpg", "reference.jpg")  # an int8 worker's calibration pair, at the archive's root


def load_served_model(model_dir: str, serialized: str | None, device) -> LoadedModel:
    """The archive's similarity model as declared in its ``model_spec.json`` (a factory is rebuilt
    from the code in the archive or the environment, its state_dict being the serialized file),
    validated: a model that cannot be served fails the worker at start with a clear message.
    Without a spec (a handler run outside an archive): the serialized file, else the bundled model."""
    spec_file = os.path.join(model_dir, MODEL_SPEC_FILE)
    if not os.path.isfile(spec_file):
        return load_model(serialized, device)
    spec = ModelSpec.load(spec_file)
    if spec.factory:
        return load_model(spec.factory, device, weights=serialized, spec=spec)
    return load_model(serialized, device, spec=spec)


class ServingHandler:
    """Shared TorchServe handler logic; subclasses say what is computed and returned."""

    archive = "base"

    def __init__(self):
        self.initialized = False
        self.config: ServingConfig | None = None
        self.model = None  # what generators run: the float model, or its int8 copy (handler.quantize)
        self.float_model = None  # for generators that need gradients (the learned mask)
        self.preprocess = None
        self.device = torch.device("cpu")
        self.metrics: HandlerMetrics | None = None

    # -- TorchServe entry points -----------------------------------------------------------
    def initialize(self, context) -> None:
        """Load the archive's model (its serialized file, else the bundled default) and settings."""
        props = context.system_properties
        self.config = ServingConfig.from_model_yaml(getattr(context, "model_yaml_config", None))
        if self.config.threads:
            torch.set_num_threads(int(self.config.threads))
        self.device = self.config.resolve_device(props.get("gpu_id"))
        if self.device.type == "cuda":  # this worker's GPU is the current one (streams, caches, amp)
            torch.cuda.set_device(self.device)
        BANKS.resize(self.config.mask_cache_mb * 2**20)
        loaded = load_served_model(props.get("model_dir") or "", self.model_path(context), self.device)
        self.model, self.preprocess = loaded.model, loaded.preprocess
        # Once per worker: BN folded into the convs (+ NHWC weights), shared by every request's generator.
        self.float_model = self.model = prepare_for_inference(self.model, self.config.fuse, self.config.channels_last)
        if self.config.quantize != "off" and self.device.type != "cpu":
            raise ValueError(f"model-config handler.quantize (int8) runs on the CPU, not on {self.device}")
        if self.config.quantize == "worker":  # an int8 copy, calibrated once on the archive's images
            self.model = self.quantized(props.get("model_dir") or "", loaded.model)
        if self.config.compile:  # compiled once per worker (per batch shape), reused by every generator
            self.model = torch.compile(self.model)
        self.metrics = HandlerMetrics(context)
        self.initialized = True
        logger.info("%s handler ready on %s (%s)", self.archive, self.device, self.config)

    def quantized(self, model_dir: str, model: torch.nn.Module) -> torch.nn.Module:
        """The int8 copy of ``model`` (:func:`~sane.models.optimize.quantize_int8`) calibrated on
        :func:`~sane.saliency.engine.calibration_batch` of the archive's :data:`CALIBRATION_IMAGES`."""
        paths = [os.path.join(model_dir, name) for name in CALIBRATION_IMAGES]
        if not all(os.path.isfile(path) for path in paths):
            raise ValueError(f"handler.quantize needs the calibration images {', '.join(CALIBRATION_IMAGES)} in "
                             f"the archive ({model_dir})")
        images = torch.stack([load_image(path, self.preprocess) for path in paths])
        batch = calibration_batch(images)
        if self.config.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return quantize_int8(model, batch, self.config.batch_size)

    @staticmethod
    def model_path(context) -> str | None:
        """The archive's ``--serialized-file`` inside the unpacked model directory, if any."""
        manifest = getattr(context, "manifest", None) or {}
        serialized = (manifest.get("model") or {}).get("serializedFile")
        model_dir = context.system_properties.get("model_dir") or ""
        return os.path.join(model_dir, serialized) if serialized else None

    def handle(self, data: list[dict], context) -> list[str]:
        """One JSON string per request, in order; statuses set per request on ``context``."""
        start = time.perf_counter()
        responses: list[str | None] = [None] * len(data)
        prepared: dict[int, PreparedPair] = {}
        for idx, raw in enumerate(data):
            t = time.perf_counter()
            try:
                pair = parse_pair_request(raw)
                k = len(pair.references) if pair.references is not None else 1
                if k > self.config.max_references:
                    raise RequestError(f"references: {k} images, above the limit of {self.config.max_references} "
                                       "(the server's max_references)", "references")
                item = self.prepare(pair, self.parse_options(pair.options, k))
                item.decode_ms = (time.perf_counter() - t) * 1e3
                prepared[idx] = item
            except InputError as exc:
                responses[idx] = self._error(context, idx, exc)
            except Exception as exc:  # a bug hit by one request answers that request only (500)
                logger.exception("request %d could not be prepared", idx)
                responses[idx] = self._error(context, idx, exc)
        t_compute = time.perf_counter()
        try:
            results = self.compute(prepared) if prepared else {}
        except InputError as exc:  # the library refused the batch's common settings
            results = dict.fromkeys(prepared, exc)
        except Exception as exc:  # answered per request (500) rather than failing the worker's batch
            logger.exception("%s batch of %d failed", self.archive, len(prepared))
            results = dict.fromkeys(prepared, exc)
        compute_ms = (time.perf_counter() - t_compute) * 1e3
        for idx, item in prepared.items():
            result = results.get(idx)
            if isinstance(result, Exception) or result is None:
                responses[idx] = self._error(context, idx, result or RuntimeError("no result"))
                continue
            t = time.perf_counter()
            body = self.encode(result, item)
            encode_ms = (time.perf_counter() - t) * 1e3
            handler_ms = (time.perf_counter() - start) * 1e3
            body["timing_ms"] = {
                **body.get("timing_ms", {}),
                "decode": round(item.decode_ms, 3),
                "compute": round(compute_ms, 3),
                "encode": round(encode_ms, 3),
                "handler": round(handler_ms, 3),
            }
            responses[idx] = json.dumps(body)
            context.set_response_content_type(idx, "application/json")
            if self.metrics:
                self.metrics.record_latency(handler_ms)
        if self.metrics:
            self.metrics.record_batch_size(len(data))
        return responses

    # -- what an archive defines -------------------------------------------------------------
    def prepare(self, pair: PairRequest, options: Any) -> PreparedPair:
        """Decode a parsed request's images into model-ready tensors (an archive may add ``extra`` inputs;
        ``extra["query_image"]``, the decoded query; ``extra["boxes"]``, with a cropping preprocess, the
        part of each image the model sees)."""
        query = self.preprocess.open(pair.query, "query")  # a JPEG at the reduced scale the model allows
        if pair.references is None:
            references = [self.preprocess.open(pair.reference, "reference")]
        else:
            references = [self.preprocess.open(data, f"references.{k}") for k, data in enumerate(pair.references)]
        tensors = [self.preprocess.to_tensor(image) for image in references]
        item = PreparedPair(self.preprocess.to_tensor(query), tensors[0], options,
                            references=tensors if pair.references is not None else None)
        item.extra["query_image"] = query
        if self.preprocess.resize == "crop":
            item.extra["boxes"] = {"query": list(self.preprocess.crop_box(*query.size)),
                                   "references": [list(self.preprocess.crop_box(*image.size)) for image in references]}
        return item

    def parse_options(self, options: dict[str, Any], references: int = 1) -> Any:
        """Validate the options of a request with ``references`` references (raise :class:`RequestError`
        naming the field)."""
        raise NotImplementedError

    def compute(self, items: dict[int, PreparedPair]) -> dict[int, Any]:
        """Results of all valid requests of the batch by index (an Exception for a failed one)."""
        raise NotImplementedError

    def encode(self, result: Any, item: PreparedPair) -> dict[str, Any]:
        """The JSON response of one request (``timing_ms`` is completed by :meth:`handle`)."""
        raise NotImplementedError

    # -- errors ------------------------------------------------------------------------------
    def _error(self, context, idx: int, exc: BaseException) -> str:
        if isinstance(exc, InputError):  # RequestError included
            status, body = exc.status, {"error": str(exc), "field": exc.field}
        else:
            logger.error("request %d failed", idx, exc_info=exc)
            status, body = 500, {"error": f"internal error: {type(exc).__name__}: {exc}", "field": None}
        context.set_response_status(status, HTTPStatus(status).phrase, idx)
        context.set_response_content_type(idx, "application/json")
        return json.dumps(body)
