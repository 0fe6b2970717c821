"""main_app factory: the voice chat page, its WebSocket, the history API and service status."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from rvchat_common import build_app

from .clients import LlmStream, SttStream, TtsStream, VadStream
from .routes import router
from .settings import Settings
from .status import StatusMonitor
from .store import Store
from .ws import router as ws_router

log = logging.getLogger("rvchat.app")
STATIC = Path(__file__).parent / "static"


def default_factories(settings: Settings) -> dict:
    key = settings.services_api_key
    return {
        "vad": lambda: VadStream(settings.vad_url, key),
        "stt": lambda: SttStream(settings.stt_url, key, language=settings.stt_language,
                                 partials=settings.stt_partials),
        "llm": lambda: LlmStream(settings.llm_url, key),
        "tts": lambda: TtsStream(settings.tts_url, key, voice=settings.tts_voice),
    }


def create_app(settings: Settings | None = None, factories: dict | None = None,
               store: Store | None = None) -> FastAPI:
    settings = settings or Settings()
    store = store or Store(settings.db_path)
    monitor = StatusMonitor(settings)

    async def startup(app: FastAPI) -> None:
        await store.open()
        monitor.start()

    async def shutdown(app: FastAPI) -> None:
        await monitor.stop()
        for session in list(app.state.sessions):
            await session.close()
        await store.close()

    app = build_app(service="app", settings=settings, ready_check=store.ping, on_startup=startup,
                    on_shutdown=shutdown, title="Realtime Voice Chat")
    app.state.store = store
    app.state.monitor = monitor
    app.state.factories = factories or default_factories(settings)
    app.state.sessions = set()
    app.state.turn_latency = app.state.metrics.histogram(
        "voice_turn_latency_seconds",
        "Per-turn latency by stage (endpoint, stt, llm_first_token, tts_first_audio, total: speech end "
        "to first reply audio sent)", ["stage"],
        buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2, 3, 5, 10))
    app.include_router(router)
    app.include_router(ws_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
