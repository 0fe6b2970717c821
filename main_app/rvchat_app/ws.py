"""The page's WebSocket: the shared receive loop (framing, limits, typed page events) around a Session."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from rvchat_common.protocol import page
from rvchat_common.ws import EventSocket, Limits

from .session import Session

router = APIRouter()

# 2 s of 16 kHz PCM16 in one frame is far beyond any real mic chunk; page events are small.
PAGE_LIMITS = Limits(max_text_bytes=64 * 1024, max_binary_bytes=page.INPUT_SAMPLE_RATE * 2 * 2)


@router.websocket("/ws")
async def voice_ws(ws: WebSocket) -> None:
    """The page's session: JSON events and PCM16 16 kHz mic frames up; events and reply PCM down."""
    sock = EventSocket(ws, page.client_events, PAGE_LIMITS)
    await sock.accept()
    app = ws.app

    async def send(event: page.Event | bytes) -> None:
        if not sock.connected:
            raise RuntimeError("page gone")
        if isinstance(event, bytes):
            await ws.send_bytes(event)
        else:
            await sock.send(event)

    turn_latency = app.state.turn_latency
    session = Session(send=send, store=app.state.store, settings=app.state.settings,
                      factories=app.state.factories, conversation_id=ws.query_params.get("conversation_id") or None,
                      observe=lambda stage, s: turn_latency.labels(stage).observe(s))
    app.state.sessions.add(session)
    try:
        await session.start()
        await sock.run(session.on_event, session.on_audio)
    finally:
        app.state.sessions.discard(session)
        await session.close()
