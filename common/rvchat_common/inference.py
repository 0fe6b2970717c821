"""Run blocking model calls off the event loop, one at a time, with a bounded queue.

One model instance is shared by every request; a lock serialises calls into it
(CPU inference does not get faster by running two at once on 2 cores). When
more than ``max_queue`` callers are already waiting, new ones get 503 with
``Retry-After`` instead of piling up.

The queue keeps its own metrics (depth, the job running, time spent waiting, refusals); the app
skeleton exports them on ``/metrics`` of whichever service holds the queue
(``rvchat_common.app.build_app``), so each service's queue is visible without extra wiring.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable, Iterable, TypeVar

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from .errors import APIError

T = TypeVar("T")

# From a free model (well under 1 ms) to a reply stuck behind several long jobs.
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


class InferenceQueue:
    def __init__(self, max_queue: int = 8, retry_after_s: int = 1) -> None:
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self._lock = asyncio.Lock()
        self._waiting = 0
        # For callers on plain threads (e.g. a streaming generator's worker thread).
        self.thread_lock = threading.Lock()
        # Not registered anywhere: collect() hands them to the app's registry at scrape time.
        self.wait_seconds = Histogram("inference_queue_wait_seconds", "Time a model job waited for the model",
                                      buckets=_WAIT_BUCKETS, registry=None)
        self.rejected = Counter("inference_queue_rejected", "Model jobs refused with 503 (queue full)",
                                registry=None)

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def busy(self) -> bool:
        """A job holds the model or waits for it (a draining service waits for this to clear)."""
        return self._lock.locked() or self._waiting > 0

    def collect(self) -> Iterable[Metric]:
        """Prometheus metrics: depth (jobs waiting), the job running, the limit, waits and refusals."""
        depth = GaugeMetricFamily("inference_queue_depth", "Model jobs waiting for the model")
        depth.add_metric([], self._waiting)
        running = GaugeMetricFamily("inference_queue_running", "1 while a job holds the model")
        running.add_metric([], 1 if self._lock.locked() else 0)
        limit = GaugeMetricFamily("inference_queue_limit", "Jobs allowed to wait (more get 503)")
        limit.add_metric([], self.max_queue)
        yield from (depth, running, limit)
        yield from self.wait_seconds.collect()
        yield from self.rejected.collect()

    def _check_room(self) -> None:
        if self._waiting >= self.max_queue:
            self.rejected.inc()
            raise APIError(
                503, "server is busy: too many requests queued for the model; retry shortly",
                "queue_full", headers={"Retry-After": str(self.retry_after_s)},
            )

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async with self.slot():
            return await asyncio.to_thread(self._locked_call, fn, args, kwargs)

    def _locked_call(self, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
        with self.thread_lock:
            return fn(*args, **kwargs)

    def slot(self) -> "_Slot":
        """Async context manager holding the model for a longer, multi-call job.

        Raises 503 at once when the queue is full.
        """
        self._check_room()
        return _Slot(self)


class _Slot:
    def __init__(self, queue: InferenceQueue) -> None:
        self.queue = queue

    async def __aenter__(self) -> "_Slot":
        self.queue._waiting += 1
        t0 = time.perf_counter()
        try:
            await self.queue._lock.acquire()
        finally:
            self.queue._waiting -= 1
        self.queue.wait_seconds.observe(time.perf_counter() - t0)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.queue._lock.release()
