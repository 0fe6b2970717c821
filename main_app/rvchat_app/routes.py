"""HTTP routes: the page, its config, service status, the history API and typed chat (thin: replies are
made by session.py / reply.py)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from rvchat_common.errors import APIError
from rvchat_common.protocol import page

from .backchannel import parse_words
from .links import degraded_modes
from .schemas import ConversationCreate, MessageRequest
from .session import reply_once

log = logging.getLogger("rvchat.app.routes")
router = APIRouter()



@router.get("/", include_in_schema=False)
async def index(request: Request) -> FileResponse:
    from .app import STATIC

    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/config")
async def page_config(request: Request) -> dict:
    """What the page needs: audio rates, turn-taking defaults, feature flags."""
    s = request.app.state.settings
    return {
        "input_sample_rate": page.INPUT_SAMPLE_RATE,
        "turn_taking": {"threshold": s.vad_threshold, "min_silence_ms": s.vad_min_silence_ms,
                        "min_speech_ms": s.vad_min_speech_ms, "backchannels": s.backchannels,
                        "backchannel_words": parse_words(s.backchannel_words),
                        "resume_window_ms": s.resume_window_ms},
        "limits": {**page.config_limits(), "text_chars": page.TEXT_MAX_CHARS},
        "features": {"cue_tones": s.cue_tones},
    }


@router.get("/api/status")
async def status(request: Request) -> dict:
    """Each service's health and readiness with its latency, checked now."""
    monitor = request.app.state.monitor
    services = await monitor.check()
    view = degraded_modes({name: s["ready"] for name, s in services.items()})
    db = await request.app.state.store.ping()
    capacity = request.app.state.capacity
    return {"app": {"status": "ok" if db is None else "degraded", "database": db or "ok",
                    "sessions": len(request.app.state.sessions), "api_replies": capacity.api_replies,
                    "max_sessions": capacity.limit},
            "services": services, "modes": view["modes"], "notice": view["notice"],
            "checked_at": monitor.checked_at}


@router.get("/api/conversations")
async def list_conversations(request: Request, limit: int = 100) -> dict:
    if not 1 <= limit <= 1000:
        raise APIError(400, "limit must be between 1 and 1000", "invalid_limit", param="limit")
    return {"conversations": await request.app.state.store.list_conversations(limit)}


@router.post("/api/conversations", status_code=201)
async def create_conversation(request: Request, body: ConversationCreate | None = None) -> dict:
    return await request.app.state.store.create_conversation((body.title if body else "").strip())


@router.get("/api/conversations/{cid}")
async def get_conversation(request: Request, cid: str) -> dict:
    conv = await request.app.state.store.get_conversation(cid)
    if conv is None:
        raise APIError(404, f"no conversation {cid!r}", "not_found")
    return conv


@router.delete("/api/conversations/{cid}")
async def delete_conversation(request: Request, cid: str) -> dict:
    if not await request.app.state.store.delete_conversation(cid):
        raise APIError(404, f"no conversation {cid!r}", "not_found")
    return {"id": cid, "deleted": True}


@router.post("/api/message")
async def post_message(request: Request, body: MessageRequest) -> dict:
    """Text in, reply text out (and base64 WAV of the whole reply with ``audio: true``)."""
    text = body.text.strip()
    if not text:
        raise APIError(400, "text must not be blank", "invalid_text", param="text")
    app = request.app
    with app.state.capacity.api_reply():  # 503 + Retry-After past APP_MAX_SESSIONS
        return await reply_once(store=app.state.store, settings=app.state.settings,
                                factories=app.state.factories, text=text,
                                conversation_id=body.conversation_id, audio=body.audio,
                                toolbox=app.state.toolbox)
