"""HTTP and WebSocket routes: thin, the orchestration lives in session.py."""

from __future__ import annotations

import json
import logging
import time

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse
from starlette.websockets import WebSocketState

from rvchat_common.errors import APIError, parse_json, ws_error

from .links import degraded_modes
from .schemas import ConversationCreate, MessageRequest
from .session import SAMPLE_RATE, Session, reply_once

log = logging.getLogger("rvchat.app.routes")
router = APIRouter()

MAX_TEXT_FRAME = 64 * 1024
MAX_AUDIO_FRAME = 16000 * 2 * 2  # 2 s of 16 kHz PCM16 in one frame is far beyond any real mic chunk


@router.get("/", include_in_schema=False)
async def index(request: Request) -> FileResponse:
    from .app import STATIC

    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/config")
async def page_config(request: Request) -> dict:
    """What the page needs: audio rates, turn-taking defaults, feature flags."""
    s = request.app.state.settings
    return {
        "input_sample_rate": SAMPLE_RATE,
        "frame_ms": 20,
        "turn_taking": {"threshold": s.vad_threshold, "min_silence_ms": s.vad_min_silence_ms,
                        "min_speech_ms": s.vad_min_speech_ms, "barge_in_threshold": s.barge_in_threshold},
        "limits": {"threshold": {"min": 0.05, "max": 0.95, "step": 0.01},
                   "min_silence_ms": {"min": 100, "max": 3000, "step": 10},
                   "min_speech_ms": {"min": 50, "max": 2000, "step": 10},
                   "text_chars": 4000},
        "features": {"cue_tones": s.cue_tones, "barge_in": True, "partials": s.stt_partials,
                     "text_chat": True},
        "ws_path": "/ws",
    }


@router.get("/api/status")
async def status(request: Request) -> dict:
    """Each service's health and readiness with its latency, checked now."""
    monitor = request.app.state.monitor
    services = await monitor.check()
    view = degraded_modes({name: s["ready"] for name, s in services.items()})
    db = await request.app.state.store.ping()
    return {"app": {"status": "ok" if db is None else "degraded", "database": db or "ok",
                    "sessions": len(request.app.state.sessions)},
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
    return await reply_once(store=app.state.store, settings=app.state.settings, factories=app.state.factories,
                            text=text, conversation_id=body.conversation_id, audio=body.audio)


@router.websocket("/ws")
async def voice_ws(ws: WebSocket) -> None:
    """The page's session: JSON events and PCM16 16 kHz mic frames up; events and reply PCM down."""
    await ws.accept()
    app = ws.app
    cid = ws.query_params.get("conversation_id") or None

    async def send(event: dict | bytes) -> None:
        if ws.client_state != WebSocketState.CONNECTED:
            raise RuntimeError("page gone")
        if isinstance(event, bytes):
            await ws.send_bytes(event)
        else:
            await ws.send_text(json.dumps(event, ensure_ascii=False))

    turn_latency = app.state.turn_latency
    session = Session(send=send, store=app.state.store, settings=app.state.settings,
                      factories=app.state.factories, conversation_id=cid,
                      observe=lambda stage, s: turn_latency.labels(stage).observe(s))
    app.state.sessions.add(session)
    try:
        await session.start()
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                break
            data, text = msg.get("bytes"), msg.get("text")
            if data is not None:
                if len(data) > MAX_AUDIO_FRAME:
                    await session.send({"type": "error", "error": {
                        "message": f"audio frame larger than {MAX_AUDIO_FRAME} bytes", "type": "invalid_request_error",
                        "code": "frame_too_large"}})
                    continue
                await session.on_audio(data)
            elif text is not None:
                if len(text) > MAX_TEXT_FRAME:
                    await session.send({"type": "error", "error": {
                        "message": "text frame too large", "type": "invalid_request_error", "code": "too_large"}})
                    continue
                try:
                    event = parse_json(text)
                except ValueError:
                    await session.send({"type": "error", "error": {
                        "message": "malformed JSON", "type": "invalid_request_error", "code": "invalid_json"}})
                    continue
                if not isinstance(event, dict):
                    await session.send({"type": "error", "error": {
                        "message": "events must be JSON objects with a type", "type": "invalid_request_error",
                        "code": "invalid_event"}})
                    continue
                await session.on_text_event(event)
    except WebSocketDisconnect:
        pass
    except Exception:
        log.exception("session failed")
        await ws_error(ws, "internal error in the session", "internal_error", close_code=1011)
    finally:
        app.state.sessions.discard(session)
        await session.close()
