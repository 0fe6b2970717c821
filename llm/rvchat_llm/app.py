"""The LLM service app: ``create_app(settings, engine)``, so tests can inject an engine (over a fake
provider)."""

from __future__ import annotations

from fastapi import FastAPI

from rvchat_common.app import build_app

from .engine import ChatEngine, LLMEngine
from .routes import router
from .settings import Settings
from .ws import router as ws_router


def create_app(settings: Settings | None = None, engine: ChatEngine | None = None) -> FastAPI:
    settings = settings or Settings()
    engine = engine or LLMEngine(settings)

    async def on_startup(_: FastAPI) -> None:
        await engine.start()

    async def on_shutdown(_: FastAPI) -> None:
        await engine.close()

    app = build_app(service="llm", settings=settings, engine=engine, ready_check=engine.ready,
                    title="rvchat llm", on_startup=on_startup, on_shutdown=on_shutdown)
    app.include_router(router)
    app.include_router(ws_router)
    return app
