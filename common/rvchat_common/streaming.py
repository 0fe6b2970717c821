"""Server-Sent Events, and the service runner with its graceful drain.

Graceful shutdown (Kubernetes sends SIGTERM, then SIGKILL after ``terminationGracePeriodSeconds``):
uvicorn on its own closes every WebSocket at once with 1012, which cuts a reply mid-sentence. The
runner turns the first SIGTERM into a drain instead: ``/readyz`` answers 503 (no new traffic is
routed here), the app refuses new sessions, and the process keeps serving what it has until nothing
is busy (no HTTP request in flight, the model queue empty, and the app's own checks clear: main_app's
sessions have finished their replies) or ``drain_timeout_s`` has passed; only then does uvicorn
shut down. A second SIGTERM, or Ctrl-C, stops at once as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from types import FrameType
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Services without a ``drain_timeout_s`` setting: long enough for an STT decode or a TTS reply.
DEFAULT_DRAIN_TIMEOUT_S = 20.0
# Work comes in bursts (a TTS reply is one job per sentence, gaps between): idle means idle this long.
DRAIN_QUIET_S = 1.0

log = logging.getLogger("rvchat.drain")


def sse_event(data: Any, event: str | None = None) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n"


def sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    """Stream already-formatted SSE strings (see :func:`sse_event`)."""
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


BusyCheck = Callable[[], str | None]
"""Returns what is still busy (e.g. '2 replies playing'), or None when there is nothing to wait for."""


class Drain:
    """Whether the service is draining, and what it still has to finish (``app.state.drain``)."""

    def __init__(self) -> None:
        self.draining = False
        self.http_in_flight = 0
        # New WebSockets are refused while draining (the client's next try finds another replica);
        # an app that turns clients away itself, with a message, sets this to False.
        self.refuse_websockets = True
        self._checks: list[BusyCheck] = []
        # Counts of open client connections (the HTTP server's keep-alive and WebSockets, a Wyoming
        # server's). With none open, no client is between two jobs of a burst: the drain need not wait
        # for quiet.
        self._connections: list[Callable[[], int]] = []
        self._on_drained: list[Callable[[], Awaitable[None]]] = []

    def add_check(self, check: BusyCheck) -> None:
        self._checks.append(check)

    def on_drained(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` once the drain is over, just before the sockets close (to say goodbye)."""
        self._on_drained.append(hook)

    async def drained(self) -> None:
        for hook in self._on_drained:
            try:
                await hook()
            except Exception:
                log.exception("drain hook failed")

    def busy(self) -> list[str]:
        out = [f"{self.http_in_flight} HTTP request(s) in flight"] if self.http_in_flight else []
        for check in self._checks:
            try:
                reason = check()
            except Exception as exc:  # a broken check must not keep the pod alive for ever
                reason = None
                log.warning("drain check failed: %s", exc)
            if reason:
                out.append(reason)
        return out

    def count_connections(self, count: Callable[[], int]) -> None:
        self._connections.append(count)

    def _unconnected(self) -> bool:
        try:
            return bool(self._connections) and sum(count() for count in self._connections) == 0
        except Exception as exc:  # an unknown count: wait for quiet, as without one
            log.warning("connection count failed: %s", exc)
            return False

    async def wait_idle(self, timeout: float, quiet: float = DRAIN_QUIET_S, poll: float = 0.1) -> bool:
        """Wait until nothing has been busy for ``quiet`` seconds, or nothing is busy and no client is
        connected (a process stopped idle exits at once); False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        idle_since: float | None = None
        while True:
            now = time.monotonic()
            busy = self.busy()
            if busy:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            if idle_since is not None and (now - idle_since >= quiet or self._unconnected()):
                return True
            if now >= deadline:
                log.warning("drain timed out after %.0f s; still busy: %s", timeout, "; ".join(busy) or "-")
                return False
            await asyncio.sleep(poll)


class DrainMiddleware:
    """Counts HTTP requests in flight (health and metrics probes aside) for :class:`Drain`, and
    refuses new WebSockets while draining (403 at the handshake: the client tries another replica)."""

    PROBES = frozenset({"/healthz", "/readyz", "/metrics"})

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and self.drain.draining and self.drain.refuse_websockets:
            await send({"type": "websocket.close", "code": 1013, "reason": "shutting down"})
            return
        if scope["type"] != "http" or scope["path"] in self.PROBES:
            return await self.app(scope, receive, send)
        self.drain.http_in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.http_in_flight -= 1


def _uvicorn_server_class() -> type:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn, with the first SIGTERM starting a drain instead of closing every socket at once."""

        def __init__(self, config: uvicorn.Config, drain: Drain, timeout: float) -> None:
            super().__init__(config)
            self.drain = drain
            self.drain_timeout = timeout
            self._loop: asyncio.AbstractEventLoop | None = None
            self._drain_task: asyncio.Task | None = None

        async def serve(self, sockets: Any = None) -> None:
            self._loop = asyncio.get_running_loop()
            self.drain.count_connections(lambda: len(self.server_state.connections))
            await super().serve(sockets)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if (sig == signal.SIGTERM and self.drain_timeout > 0 and self._loop is not None
                    and self.started and not self.should_exit and not self.drain.draining):
                self.drain.draining = True
                self._captured_signals.append(sig)  # uvicorn re-raises it once shut down, as it would
                self._loop.call_soon_threadsafe(self._start_drain)
                return
            super().handle_exit(sig, frame)

        def _start_drain(self) -> None:
            self._drain_task = asyncio.ensure_future(self._drain())

        async def _drain(self) -> None:
            log.info("SIGTERM: draining (at most %.0f s): no new sessions, finishing what is in flight",
                     self.drain_timeout)
            t0 = time.monotonic()
            if await self.drain.wait_idle(self.drain_timeout):
                log.info("drained in %.1f s; shutting down", time.monotonic() - t0)
            await self.drain.drained()
            self.should_exit = True

    return DrainingServer


def serve(create_app: Callable[[Any], FastAPI], settings: Any) -> None:
    """Run a service with uvicorn (used by each service's ``__main__``), draining on SIGTERM."""
    import uvicorn

    from .ws import MAX_FRAME_BYTES

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # build_app already configured structured logging
        ws_max_size=MAX_FRAME_BYTES,
        timeout_graceful_shutdown=5,
    )
    drain = getattr(app.state, "drain", None) or Drain()
    timeout = float(getattr(settings, "drain_timeout_s", DEFAULT_DRAIN_TIMEOUT_S))
    _uvicorn_server_class()(config, drain, timeout).run()
