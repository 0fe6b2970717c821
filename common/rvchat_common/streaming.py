"""Server-Sent Events and the service runner."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_event(data: Any, event: str | None = None) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n"


def sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    """Stream already-formatted SSE strings (see :func:`sse_event`)."""
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


def serve(create_app: Callable[[Any], FastAPI], settings: Any) -> None:
    """Run a service with uvicorn (used by each service's ``__main__``)."""
    import uvicorn

    from .ws import MAX_FRAME_BYTES

    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # build_app already configured structured logging
        ws_max_size=MAX_FRAME_BYTES,
        timeout_graceful_shutdown=5,
    )
