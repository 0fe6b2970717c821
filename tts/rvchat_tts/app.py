"""The TTS service app: ``create_app(settings, engine)``, so tests can inject a fake engine."""

from __future__ import annotations

from fastapi import FastAPI

from rvchat_common.app import build_app
from rvchat_common.inference import InferenceQueue

from .engine import PiperEngine, TtsEngine
from .routes import router
from .settings import Settings
from .speech import Speaker
from .voices import VoiceCatalog
from .ws import router as ws_router
from .wyoming import on_shutdown, on_startup


def create_app(settings: Settings | None = None, engine: TtsEngine | None = None) -> FastAPI:
    settings = settings or Settings()
    if engine is None:
        catalog = VoiceCatalog(settings.voice, settings.voices_dir, settings.voice_aliases,
                               settings.allow_voice_paths)
        engine = PiperEngine(catalog, cache_size=settings.voice_cache_size,
                             onnx_threads=settings.onnx_threads, noise_scale=settings.noise_scale,
                             noise_w=settings.noise_w, sentence_silence_ms=settings.sentence_silence_ms)
    # Home Assistant's Wyoming protocol on TTS_WYOMING_PORT (if set), on the same voices and queue.
    app = build_app(service="tts", settings=settings, engine=engine, title="rvchat TTS", version="1.0.0",
                    on_startup=on_startup, on_shutdown=on_shutdown)
    app.state.queue = InferenceQueue(settings.max_queue)
    app.state.speaker = Speaker(engine, app.state.queue, settings, app.state.metrics)
    app.state.ws_sessions = 0
    app.include_router(router)
    app.include_router(ws_router)
    return app
