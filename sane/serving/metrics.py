"""Custom handler metrics (per-request latency, masked images per second, batch size).

They go through TorchServe's metrics cache, so with ``metrics_mode=prometheus`` and
``model_metrics_auto_detect=true`` they appear on the metrics endpoint (``GET :8082/metrics``) as
``SaneRequestLatency``, ``SaneMasksPerSecond`` and ``SaneBatchSize``. Without a metrics cache (a bare
in-process context) recording is a no-op.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

LATENCY = "SaneRequestLatency"  # ms, per request: handler time from batch start to its response
MASKS_PER_SECOND = "SaneMasksPerSecond"  # masked images through the backbone per second, per stream
BATCH_SIZE = "SaneBatchSize"  # requests in the batch TorchServe handed the handler
DIMENSIONS = ["ModelName", "Level"]


class HandlerMetrics:
    """Gauges registered once per worker; ``record_*`` update them (and log them for the frontend)."""

    def __init__(self, context):
        self.model_name = getattr(context, "model_name", "model")
        self._gauges = {}
        cache = getattr(context, "metrics", None)
        if cache is None:
            return
        try:
            from ts.metrics.metric_type_enum import MetricTypes

            for name, unit in ((LATENCY, "ms"), (MASKS_PER_SECOND, "count"), (BATCH_SIZE, "count")):
                self._gauges[name] = cache.add_metric_to_cache(
                    metric_name=name, unit=unit, dimension_names=list(DIMENSIONS), metric_type=MetricTypes.GAUGE
                )
        except Exception:  # metrics must never take a worker down
            logger.warning("custom metrics unavailable", exc_info=True)
            self._gauges = {}

    def _update(self, name: str, value: float) -> None:
        gauge = self._gauges.get(name)
        if gauge is None:
            return
        try:
            gauge.add_or_update(float(value), [self.model_name, "Model"])
        except Exception:
            logger.warning("could not record metric %s", name, exc_info=True)

    def record_latency(self, ms: float) -> None:
        self._update(LATENCY, ms)

    def record_masks_per_second(self, rate: float) -> None:
        self._update(MASKS_PER_SECOND, rate)

    def record_batch_size(self, n: int) -> None:
        self._update(BATCH_SIZE, n)
