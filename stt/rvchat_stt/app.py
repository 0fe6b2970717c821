"""The STT service app: ``create_app(settings, engine)``, so tests can inject a fake engine."""

from __future__ import annotations

from fastapi import FastAPI

from rvchat_common.app import build_app
from rvchat_common.inference import InferenceQueue

from .engine import SttEngine, WhisperEngine
from .routes import router
from .settings import Settings
from .ws import router as ws_router
from .wyoming import on_shutdown, on_startup


def create_app(settings: Settings | None = None, engine: SttEngine | None = None) -> FastAPI:
    """Build the app; tests may pass a fake ``engine`` (an :class:`SttEngine`; one that is also a
    ``SpeechScorer`` gets the stream's speech tracking and early finals)."""
    settings = settings or Settings()
    if engine is None:
        engine = WhisperEngine(settings)
    # Home Assistant's Wyoming protocol on STT_WYOMING_PORT (if set), on the same engine and queue.
    app = build_app(service="stt", settings=settings, engine=engine,
                    title="rvchat STT (faster-whisper)", on_startup=on_startup, on_shutdown=on_shutdown)
    app.state.queue = InferenceQueue(settings.max_queue)
    app.state.streams = 0
    app.include_router(router)
    app.include_router(ws_router)
    return app
