"""The page's WebSocket: the shared receive loop (framing, limits, typed page events) around a Session."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from rvchat_common.protocol import page
from rvchat_common.ws import WS_TRY_AGAIN_LATER, EventSocket, Limits

from .session import Session

router = APIRouter()

# 2 s of 16 kHz PCM16 in one frame is far beyond any real mic chunk; page events are small.
PAGE_LIMITS = Limits(max_text_bytes=64 * 1024, max_binary_bytes=page.INPUT_SAMPLE_RATE * 2 * 2)
RESTART_HOLD_S = 1.0  # a draining server's refusal: the page's retry then finds another replica


@router.websocket("/ws")
async def voice_ws(ws: WebSocket) -> None:
    """The page's session: JSON events and PCM16 16 kHz mic frames up; events and reply PCM down."""
    sock = EventSocket(ws, page.client_events, PAGE_LIMITS)
    app = ws.app
    capacity = app.state.capacity
    if app.state.drain.draining:
        capacity.refused.labels("voice", "restarting").inc()
        return await turn_away(sock, "restarting", "This server is restarting: reconnecting to another one.",
                               RESTART_HOLD_S)
    if capacity.full():
        capacity.refused.labels("voice", "busy").inc()
        return await turn_away(sock, "server_busy", capacity.busy_message(), capacity.retry_after_s)

    async def send(event: page.Event | bytes) -> None:
        if not sock.connected:
            raise RuntimeError("page gone")
        if isinstance(event, bytes):
            await ws.send_bytes(event)
        else:
            await sock.send(event)

    turn_latency = app.state.turn_latency
    session = Session(send=send, store=app.state.store, settings=app.state.settings,
                      factories=app.state.factories, toolbox=app.state.toolbox,
                      conversation_id=ws.query_params.get("conversation_id") or None,
                      observe=lambda stage, s: turn_latency.labels(stage).observe(s))
    # Counted from here, with no await since the capacity check: two pages cannot take the last place.
    app.state.sessions.add(session)
    try:
        await sock.accept()
        await session.start()
        await sock.run(session.on_event, session.on_audio)
    finally:
        app.state.sessions.discard(session)
        await session.close()


async def turn_away(sock: EventSocket, code: str, message: str, hold_s: float) -> None:
    """Refuse a page: an error event it shows, then close 1013 (try again later).

    The page reconnects as soon as its socket closes; holding the refused socket open for the
    Retry-After time (reading and dropping whatever comes) makes it retry at that pace, not every
    half second. The page leaving earlier ends the wait.
    """
    await sock.accept()
    try:
        await sock.send(page.SessionError.of(code, message, status=503))
        await asyncio.wait_for(_until_gone(sock), hold_s)
    except (TimeoutError, WebSocketDisconnect, RuntimeError):
        pass
    if sock.connected:
        try:
            await sock.ws.close(code=WS_TRY_AGAIN_LATER, reason=message[:120])
        except RuntimeError:  # the page left while we closed
            pass


async def _until_gone(sock: EventSocket) -> None:
    while (await sock.ws.receive())["type"] != "websocket.disconnect":
        pass
