"""``create_app``: the shared skeleton plus the LLM routes."""

from __future__ import annotations

from fastapi import FastAPI

from rvchat_common.app import build_app

from .engine import LLMEngine
from .routes import router
from .settings import Settings


def create_app(settings: Settings | None = None, engine: LLMEngine | None = None) -> FastAPI:
    settings = settings or Settings()
    engine = engine or LLMEngine(settings)

    async def on_startup(_: FastAPI) -> None:
        await engine.start()

    async def on_shutdown(_: FastAPI) -> None:
        await engine.close()

    app = build_app(service="llm", settings=settings, engine=engine, ready_check=engine.ready,
                    title="rvchat llm", on_startup=on_startup, on_shutdown=on_shutdown)
    app.include_router(router)
    return app
