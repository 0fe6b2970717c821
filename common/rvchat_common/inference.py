"""Run blocking model calls off the event loop, one at a time, with a bounded queue.

One model instance is shared by every request; a lock serialises calls into it
(CPU inference does not get faster by running two at once on 2 cores). When
more than ``max_queue`` callers are already waiting, new ones get 503 with
``Retry-After`` instead of piling up.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, TypeVar

from .errors import APIError

T = TypeVar("T")


class InferenceQueue:
    def __init__(self, max_queue: int = 8, retry_after_s: int = 1) -> None:
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self._lock = asyncio.Lock()
        self._waiting = 0
        # For callers on plain threads (e.g. a streaming generator's worker thread).
        self.thread_lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return self._waiting

    def _check_room(self) -> None:
        if self._waiting >= self.max_queue:
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
        try:
            await self.queue._lock.acquire()
        finally:
            self.queue._waiting -= 1
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.queue._lock.release()
