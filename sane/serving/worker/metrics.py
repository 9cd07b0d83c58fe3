"""Custom handler metrics (per-request latency, masked images per second, batch size).

They go through TorchServe's metrics cache, so with ``metrics_mode=prometheus`` and
``model_metrics_auto_detect=true`` they appear on the metrics endpoint (``GET :8082/metrics``) as
``SaneRequestLatency``, ``SaneMasksPerSecond`` and ``SaneBatchSize`` (gauges: the last value) and
``SaneRequestSeconds``, a histogram of every request's latency in seconds: ``SaneRequestSeconds_bucket``
series with TorchServe's Prometheus buckets (the Java client's defaults, 0.005 ... 10 s, and +Inf), so
p50/p99 come from ``histogram_quantile(0.99, sum by (le) (rate(SaneRequestSeconds_bucket[5m])))``.
Without a metrics cache (a bare in-process context) recording is a no-op.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

LATENCY = "SaneRequestLatency"  # ms, per request: handler time from batch start to its response
MASKS_PER_SECOND = "SaneMasksPerSecond"  # masked images through the backbone per second, per stream
BATCH_SIZE = "SaneBatchSize"  # requests in the batch TorchServe handed the handler
LATENCY_HISTOGRAM = "SaneRequestSeconds"  # s, per request, as a histogram (the same time as LATENCY)
DIMENSIONS = ["ModelName", "Level"]


class HandlerMetrics:
    """Metrics registered once per worker; ``record_*`` update them (and log them for the frontend, which
    keeps a gauge's last value and adds each histogram observation to its buckets)."""

    def __init__(self, context):
        self.model_name = getattr(context, "model_name", "model")
        self._metrics = {}
        cache = getattr(context, "metrics", None)
        if cache is None:
            return
        try:
            from ts.metrics.metric_type_enum import MetricTypes

            for name, unit, kind in ((LATENCY, "ms", MetricTypes.GAUGE), (MASKS_PER_SECOND, "count", MetricTypes.GAUGE),
                                     (BATCH_SIZE, "count", MetricTypes.GAUGE),
                                     (LATENCY_HISTOGRAM, "s", MetricTypes.HISTOGRAM)):
                self._metrics[name] = cache.add_metric_to_cache(
                    metric_name=name, unit=unit, dimension_names=list(DIMENSIONS), metric_type=kind
                )
        except Exception:  # metrics must never take a worker down
            logger.warning("custom metrics unavailable", exc_info=True)
            self._metrics = {}

    def _update(self, name: str, value: float) -> None:
        metric = self._metrics.get(name)
        if metric is None:
            return
        try:
            metric.add_or_update(float(value), [self.model_name, "Model"])
        except Exception:
            logger.warning("could not record metric %s", name, exc_info=True)

    def record_latency(self, ms: float) -> None:
        self._update(LATENCY, ms)
        self._update(LATENCY_HISTOGRAM, ms / 1000.0)

    def record_masks_per_second(self, rate: float) -> None:
        self._update(MASKS_PER_SECOND, rate)

    def record_batch_size(self, n: int) -> None:
        self._update(BATCH_SIZE, n)
