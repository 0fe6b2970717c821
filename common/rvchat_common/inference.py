"""Run blocking model calls off the event loop, a few at a time, with a bounded priority queue.

One model instance is shared by every request; a slot serialises calls into it
(CPU inference does not get faster by running two at once on 2 cores). A service that holds
several instances (the embedded LLM: ``LLM_INSTANCES``) gives the queue as many ``workers``.
When more than ``max_queue`` callers are already waiting, new ones get 503 with
``Retry-After`` instead of piling up.

Waiting jobs are served by ``priority`` (lower first), then in arrival order. With several
conversations at once, the job someone is waiting for right now goes first: a final transcript
before another stream's speculative decode, a reply's first sentence before another reply's
later ones (the services choose the numbers; 0 is the default and the most urgent). A job
already running is never interrupted.

The queue keeps its own metrics (depth, the jobs running, time spent waiting, refusals); the app
skeleton exports them on ``/metrics`` of whichever service holds the queue
(``rvchat_common.app.build_app``), so each service's queue is visible without extra wiring.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
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
    def __init__(self, max_queue: int = 8, retry_after_s: int = 1, workers: int = 1) -> None:
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.workers = workers
        self._running = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # a heap: (priority, arrival, future)
        self._arrivals = itertools.count()
        # For callers on plain threads (e.g. a streaming generator's worker thread) of a one-worker queue.
        self.thread_lock = threading.Lock()
        # Not registered anywhere: collect() hands them to the app's registry at scrape time.
        self.wait_seconds = Histogram("inference_queue_wait_seconds", "Time a model job waited for the model",
                                      buckets=_WAIT_BUCKETS, registry=None)
        self.rejected = Counter("inference_queue_rejected", "Model jobs refused with 503 (queue full)",
                                registry=None)

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, fut in self._waiters if not fut.done())

    @property
    def running(self) -> int:
        return self._running

    @property
    def busy(self) -> bool:
        """A job holds the model or waits for it (a draining service waits for this to clear)."""
        return self._running > 0 or self.waiting > 0

    def waiting_before(self, priority: int) -> int:
        """Jobs waiting that would go before a new job of ``priority``."""
        return sum(1 for p, _, fut in self._waiters if p <= priority and not fut.done())

    def collect(self) -> Iterable[Metric]:
        """Prometheus metrics: depth (jobs waiting), the jobs running, the limit, waits and refusals."""
        depth = GaugeMetricFamily("inference_queue_depth", "Model jobs waiting for the model")
        depth.add_metric([], self.waiting)
        running = GaugeMetricFamily("inference_queue_running", "Jobs holding the model (at most its workers)")
        running.add_metric([], self._running)
        limit = GaugeMetricFamily("inference_queue_limit", "Jobs allowed to wait (more get 503)")
        limit.add_metric([], self.max_queue)
        yield from (depth, running, limit)
        yield from self.wait_seconds.collect()
        yield from self.rejected.collect()

    def _check_room(self) -> None:
        if self.waiting >= self.max_queue:
            self.rejected.inc()
            raise APIError(
                503, "server is busy: too many requests queued for the model; retry shortly",
                "queue_full", headers={"Retry-After": str(self.retry_after_s)},
            )

    async def run(self, fn: Callable[..., T], *args: Any, priority: int = 0, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a thread once a worker is free (``priority``: lower goes first)."""
        async with self.slot(priority):
            return await asyncio.to_thread(self._call, fn, args, kwargs)

    def _call(self, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
        if self.workers > 1:
            return fn(*args, **kwargs)
        with self.thread_lock:
            return fn(*args, **kwargs)

    def slot(self, priority: int = 0) -> "_Slot":
        """Async context manager holding a worker for a longer, multi-call job.

        Raises 503 at once when the queue is full.
        """
        self._check_room()
        return _Slot(self, priority)

    # --- the slots: a priority semaphore of ``workers`` ------------------------------------
    async def _acquire(self, priority: int) -> None:
        if self._running < self.workers and not self.waiting:
            self._running += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._arrivals), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # granted as we were cancelled: pass the worker on
            raise
        finally:
            self._prune()

    def _release(self) -> None:
        self._running -= 1
        while self._waiters and self._running < self.workers:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                self._running += 1  # counted for the waiter, which resumes holding it
                fut.set_result(None)

    def _prune(self) -> None:
        if any(fut.done() for _, _, fut in self._waiters):
            self._waiters = [w for w in self._waiters if not w[2].done()]
            heapq.heapify(self._waiters)


class _Slot:
    def __init__(self, queue: InferenceQueue, priority: int) -> None:
        self.queue = queue
        self.priority = priority

    async def __aenter__(self) -> "_Slot":
        t0 = time.perf_counter()
        await self.queue._acquire(self.priority)
        self.queue.wait_seconds.observe(time.perf_counter() - t0)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.queue._release()


class ComputeGate:
    """The cores for jobs that run on threads and can pause between steps (token by token).

    At most ``permits`` holders compute at once. A holder calls :meth:`step` between steps with
    its current priority key (lower goes first; e.g. ``(phase, arrival)``): when a waiter has a
    better key, the holder lets it in and waits its own turn again. A new reply's first sentence
    thus overtakes another reply's later tokens within a token, while each keeps its own model
    state. Keys are compared as tuples; equal keys keep arrival order.
    """

    def __init__(self, permits: int = 1) -> None:
        self.permits = permits
        self._cond = threading.Condition()
        self._busy = 0
        self._waiters: list[tuple[Any, int]] = []  # a heap of (key, ticket)
        self._tickets = itertools.count()
        self.yields = 0  # times a holder let a more urgent job in (for tests and logs)

    def acquire(self, key: Any, stop: threading.Event | None = None) -> bool:
        """Wait for a permit; False (without one) when ``stop`` is set first."""
        with self._cond:
            if self._busy < self.permits and not self._waiters:
                self._busy += 1
                return True
            entry = (key, next(self._tickets))
            heapq.heappush(self._waiters, entry)
            try:
                while not (self._busy < self.permits and self._waiters[0] == entry):
                    if stop is not None and stop.is_set():
                        return False
                    self._cond.wait(0.05 if stop is not None else None)
                heapq.heappop(self._waiters)
                self._busy += 1
                return True
            finally:
                if entry in self._waiters:  # gave up waiting
                    self._waiters.remove(entry)
                    heapq.heapify(self._waiters)
                    self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def step(self, key: Any, stop: threading.Event | None = None) -> bool:
        """Between two steps of a holder: let a more urgent waiter in first. False when ``stop``
        was set while waiting (the permit is then not held)."""
        waiters = self._waiters
        if not waiters or not waiters[0][0] < key:  # the common case, read without the lock
            return True
        self.yields += 1
        self.release()
        return self.acquire(key, stop)

    def waiting(self) -> int:
        return len(self._waiters)
