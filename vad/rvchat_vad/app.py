"""The VAD service app: ``create_app(settings, engine)``, so tests can inject a fake engine."""

from __future__ import annotations

from fastapi import FastAPI

from rvchat_common.app import build_app
from rvchat_common.inference import InferenceQueue

from .engine import SileroEngine, VadEngine
from .routes import router
from .settings import Settings
from .ws import router as ws_router

_FRAME_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)


def create_app(settings: Settings | None = None, engine: VadEngine | None = None) -> FastAPI:
    settings = settings or Settings()
    if engine is None:
        engine = SileroEngine(settings.model_path, settings.onnx_threads)
    app = build_app(service="vad", settings=settings, engine=engine, title="rvchat VAD",
                    version="1.0.0")
    app.state.queue = InferenceQueue(settings.max_queue)
    app.state.streams = 0
    app.state.frame_seconds = app.state.metrics.histogram(
        "vad_stream_frame_seconds", "Time to process one /ws binary frame", buckets=_FRAME_BUCKETS)
    app.include_router(router)
    app.include_router(ws_router)
    return app
