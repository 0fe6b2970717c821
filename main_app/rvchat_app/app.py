"""main_app factory: the voice chat page, its WebSocket, the history API and service status."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from prometheus_client import Counter, Gauge

from rvchat_common import build_app
from rvchat_common.errors import APIError
from rvchat_common.observability import Metrics
from rvchat_common.protocol import page
from rvchat_common.streaming import Drain

from .clients import LlmStream, Replicas, SttStream, TtsStream, VadStream
from .realtime import router as realtime_router
from .routes import router
from .settings import Settings
from .status import StatusMonitor, probe
from .store import Store
from .tools import Toolbox
from .ws import router as ws_router

log = logging.getLogger("rvchat.app")
STATIC = Path(__file__).parent / "static"


def default_factories(settings: Settings) -> dict:
    """Stream factories over each service's replicas (``APP_STT_URL=http://stt-1:3002,http://stt-2:3002``):
    one :class:`Replicas` per service, shared by every session, spreads new connections over them."""
    key = settings.services_api_key
    vad, stt, llm, tts = (Replicas(settings.vad_url), Replicas(settings.stt_url), Replicas(settings.llm_url),
                          Replicas(settings.tts_url))
    return {
        "vad": lambda: VadStream(vad, key),
        "stt": lambda: SttStream(stt, key, language=settings.stt_language, partials=settings.stt_partials),
        "llm": lambda: LlmStream(llm, key),
        "tts": lambda: TtsStream(tts, key, voice=settings.tts_voice),
    }


class ReplicaStatusMonitor(StatusMonitor):
    """The services' status where one may have several replicas: each replica is probed, and the
    service counts as ready while one of them is (``replicas`` lists them all)."""

    async def check(self) -> dict[str, dict]:
        client = self._client or httpx.AsyncClient(headers=self._headers())
        urls = {name: Replicas(url).urls for name, url in self.settings.service_urls().items()}
        flat = [(name, url) for name, group in urls.items() for url in group]
        try:
            results = await asyncio.gather(*(probe(client, url) for _, url in flat))
        finally:
            if client is not self._client:
                await client.aclose()
        out: dict[str, dict] = {}
        for name, group in urls.items():
            found = [r for (n, _), r in zip(flat, results) if n == name]
            if len(found) == 1:
                out[name] = found[0]
                continue
            # Shown as the service's own: a ready replica, else a live one, else the first.
            best = sorted(found, key=lambda r: (not r["ready"], not r["healthy"]))[0]
            out[name] = {**best, "url": ",".join(group), "replicas": found,
                         "ready_replicas": sum(1 for r in found if r["ready"])}
        self.last, self.checked_at = out, time.time()
        return out


class Capacity:
    """Conversations in progress at once (voice sessions and ``POST /api/message`` replies) against
    ``APP_MAX_SESSIONS``: past it, new ones are turned away at once rather than everyone getting slow.

    ``sessions`` is ``app.state.sessions``; a check and the add that follows it happen with no
    ``await`` in between, so two sessions arriving together cannot both take the last place.
    """

    def __init__(self, limit: int, retry_after_s: int, metrics: Metrics, drain: Drain) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.drain = drain
        self.sessions: set = set()
        self.api_replies = 0
        reg = metrics.registry
        Gauge("voice_sessions_active", "Voice sessions (page WebSockets) open", registry=reg) \
            .set_function(lambda: len(self.sessions))
        Gauge("api_replies_active", "POST /api/message replies in progress", registry=reg) \
            .set_function(lambda: self.api_replies)
        Gauge("conversations_limit", "APP_MAX_SESSIONS (0: no limit)", registry=reg).set(limit)
        self.refused = Counter("conversations_refused", "Voice sessions and API replies turned away",
                               ["kind", "reason"], registry=reg)

    @property
    def active(self) -> int:
        return len(self.sessions) + self.api_replies

    def full(self) -> bool:
        return self.limit > 0 and self.active >= self.limit

    def busy_message(self) -> str:
        return (f"The server is busy ({self.limit} conversations at once): try again in "
                f"{self.retry_after_s} seconds.")

    @contextmanager
    def api_reply(self) -> Iterator[None]:
        """Hold a place for one API reply; 503 with Retry-After when there is none (or when draining)."""
        if self.drain.draining:
            self.refused.labels("api", "restarting").inc()
            raise APIError(503, "this server is restarting; retry (another replica will answer)",
                           "restarting", headers={"Retry-After": "1"})
        if self.full():
            self.refused.labels("api", "busy").inc()
            raise APIError(503, self.busy_message(), "server_busy",
                           headers={"Retry-After": str(self.retry_after_s)})
        self.api_replies += 1
        try:
            yield
        finally:
            self.api_replies -= 1

    def mid_turn(self) -> str | None:
        """For the drain: sessions whose user is speaking or whose reply is not yet heard to the end."""
        busy = sum(1 for s in self.sessions if s.state != "listening")
        return f"{busy} voice session(s) mid-turn" if busy else None

    async def say_goodbye(self) -> None:
        """Drained: tell each page why its socket is about to close (it reconnects by itself)."""
        for session in list(self.sessions):
            await session.send(page.Notice(message="This server is restarting: reconnecting you to another "
                                           "one. Your conversation is kept."))


def create_app(settings: Settings | None = None, factories: dict | None = None,
               store: Store | None = None) -> FastAPI:
    settings = settings or Settings()
    store = store or Store(settings.database_url or settings.db_path, synchronous=settings.db_synchronous,
                           pool_size=settings.db_pool_size)
    monitor = ReplicaStatusMonitor(settings)
    toolbox = Toolbox.from_settings(settings)

    async def startup(app: FastAPI) -> None:
        await store.open()
        monitor.start()

    async def shutdown(app: FastAPI) -> None:
        await monitor.stop()
        for session in list(app.state.sessions):
            await session.close()
        await toolbox.close()  # pending reminders are lost with the process
        await store.close()

    app = build_app(service="app", settings=settings, ready_check=store.ping, on_startup=startup,
                    on_shutdown=shutdown, title="Realtime Voice Chat")
    app.state.store = store
    app.state.monitor = monitor
    app.state.toolbox = toolbox
    app.state.factories = factories or default_factories(settings)
    app.state.capacity = Capacity(settings.max_sessions, settings.busy_retry_s, app.state.metrics,
                                  app.state.drain)
    app.state.sessions = app.state.capacity.sessions
    app.state.drain.add_check(app.state.capacity.mid_turn)
    app.state.drain.on_drained(app.state.capacity.say_goodbye)
    app.state.drain.refuse_websockets = False  # ws.py turns pages away itself, with a message
    app.state.turn_latency = app.state.metrics.histogram(
        "voice_turn_latency_seconds",
        "Per-turn latency by stage (endpoint, stt, llm_first_token, tts_first_audio, total: speech end "
        "to first reply audio sent)", ["stage"],
        buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2, 3, 5, 10))
    app.include_router(router)
    app.include_router(ws_router)
    app.include_router(realtime_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
