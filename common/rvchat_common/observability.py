"""Request IDs, structured logs and Prometheus metrics."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30, 60)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(service: str, level: str = "info", as_json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if as_json:
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {service} %(levelname)s [%(request_id)s] %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Our middleware logs each request with its id; uvicorn's access log would repeat it.
    logging.getLogger("uvicorn.access").disabled = True
    # Client libraries log every call at INFO; our own request log is enough.
    for name in ("httpx", "httpx2", "httpcore", "openai", "faster_whisper"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


class Metrics:
    """A service's metrics, in a registry of its own so apps built in one process never clash."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests_total", "HTTP requests served", ["method", "path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds", "HTTP request latency", ["method", "path"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.inference = Histogram(
            "model_inference_seconds", "Time spent in model inference", ["operation"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.websockets = Counter(
            "websocket_sessions_total", "WebSocket sessions opened", ["path"],
            registry=self.registry,
        )

    @contextmanager
    def time_inference(self, operation: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.inference.labels(operation).observe(time.perf_counter() - start)

    def histogram(self, name: str, doc: str, labels: list[str] | None = None,
                  buckets: tuple = _LATENCY_BUCKETS) -> Histogram:
        """A service-specific histogram in this registry."""
        return Histogram(name, doc, labels or [], buckets=buckets, registry=self.registry)
