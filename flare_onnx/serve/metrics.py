"""Prometheus metrics and the one-line JSON access log of ``flare-onnx serve``.

Each app gets its own registry (``prometheus-client``, the Prometheus project's client), so
two services in one process never share counters. Nothing here records texts or keys.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

__all__ = ["ServiceMetrics", "access_log"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: the access log: one JSON object per request (``flare-onnx serve`` sends it to stderr)
access_log = logging.getLogger("flare_onnx.access")


class ServiceMetrics:
    """Request counts by route, status and model, latency, queue depth, batch sizes, tokens,
    queue wait and inference time by model, and what each model is."""

    def __init__(self, queued: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "flare_onnx_requests", "HTTP requests by route, status and model", ["route", "status", "model"], registry=r
        )
        self.latency = Histogram(
            "flare_onnx_request_seconds", "request time by route", ["route", "model"], buckets=_BUCKETS, registry=r
        )
        self.tokens = Counter("flare_onnx_tokens", "tokens of the texts accepted for inference", ["model"], registry=r)
        self.batch_texts = Histogram(
            "flare_onnx_batch_texts",
            "texts per engine call",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.queue_wait = Histogram(
            "flare_onnx_queue_wait_seconds",
            "time a request waited for its first slice",
            ["model"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "flare_onnx_inference_seconds", "inference time per engine call", ["model"], buckets=_BUCKETS, registry=r
        )
        queue = Gauge("flare_onnx_queue_texts", "texts waiting for the inference thread", registry=r)
        queue.set_function(queued)
        self._info = Info("flare_onnx_model", "the served models", ["model"], registry=r)

    def describe(self, name: str, model: Any) -> None:
        """Record what ``name`` serves (at start and after a reload)."""
        self._info.labels(model=name).info(
            {
                "task": model.manifest.task,
                "tasks": ",".join(model.tasks),
                "precision": model.precision,
                "backend": model.backend,
                "bundle": str(model.path.name),
            }
        )

    def observe_request(self, route: str, status: int, started: float, texts: int | None, model: str) -> None:
        elapsed = time.perf_counter() - started
        self.requests.labels(route=route, status=str(status), model=model).inc()
        self.latency.labels(route=route, model=model).observe(elapsed)
        access_log.info(
            json.dumps(
                {"route": route, "status": status, "ms": round(elapsed * 1e3, 2), "texts": texts, "model": model}
            )
        )

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
