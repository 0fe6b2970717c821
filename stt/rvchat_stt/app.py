"""The STT app: the shared skeleton plus the transcription routes."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from rvchat_common.app import build_app
from rvchat_common.inference import InferenceQueue

from .settings import Settings


def create_app(settings: Settings | None = None, engine: Any | None = None) -> FastAPI:
    """Build the app; tests may pass a fake ``engine``.

    A fake needs ``load``, ``check_language``, ``transcribe`` and ``transcribe_stream`` (and
    ``speech_probs``/``VAD_WINDOW`` for the stream's early final).
    """
    settings = settings or Settings()
    if engine is None:
        from .engine import WhisperEngine

        engine = WhisperEngine(settings)
    app = build_app(service="stt", settings=settings, engine=engine,
                    title="rvchat STT (faster-whisper)")
    app.state.queue = InferenceQueue(settings.max_queue)
    from .routes import router

    app.include_router(router)
    return app
