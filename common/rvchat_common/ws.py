"""One WebSocket receive loop for every service: framing, JSON, size limits, validation, error events.

A service's handler gets typed client events (and, if it takes audio, PCM16 frames) and sends typed
server events; everything a client can get wrong is answered here, the same way on every service:

============================================  =================  ====================
fault                                         error code         connection
============================================  =================  ====================
text frame is not JSON (or nested too deep)   invalid_json       stays open
not an object with a string ``type``, or      invalid_event      stays open
fails the event's model (range, type, extra)
a ``type`` the service does not know          unknown_event      stays open
binary frame where the service takes none     unexpected_binary  stays open
frame over the size limit                     frame_too_large    stays open
odd-length PCM16 frame (would misalign)       odd_length_pcm     stays open
nothing received for ``idle_timeout_s``       idle_timeout       closed, 1008
a failure on our side                         internal_error     closed, 1011
============================================  =================  ====================

A handler may raise :class:`ProtocolError` (its code, open or closed as it says) or ``APIError``
(its status and code; the connection stays open) to refuse one event.

Usage::

    sock = EventSocket(ws, vad.client_events)
    await sock.accept()
    await sock.send(vad.Ready(...))

    async def on_event(event: vad.ClientEvent) -> None:
        if isinstance(event, vad.Flush):
            ...

    await sock.run(on_event, on_pcm)
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Generic, TypeVar

from pydantic import TypeAdapter
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from .errors import WS_POLICY, WS_SERVER_ERROR, APIError
from .protocol.base import ErrorEvent, Event, ProtocolError, dump, parse

log = logging.getLogger("rvchat.ws")

# The server's own frame limit (uvicorn's ws_max_size, set by rvchat_common.streaming.serve): bigger
# frames are refused by the server (close 1009) before they reach a handler.
MAX_FRAME_BYTES = 4 * 1024 * 1024
# Control events are a few hundred bytes; TTS text is bounded by its pending-text limit (20k chars).
MAX_TEXT_BYTES = 1024 * 1024
WS_TRY_AGAIN_LATER = 1013

E = TypeVar("E")


@dataclass(frozen=True)
class Limits:
    max_text_bytes: int = MAX_TEXT_BYTES
    max_binary_bytes: int = MAX_FRAME_BYTES
    idle_timeout_s: float | None = None  # None: wait for the client for ever


class Sender:
    """Sends without taking the lock: only handed out by :meth:`EventSocket.atomic`, which holds it."""

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws

    async def send(self, event: Event) -> None:
        await self._ws.send_text(dump(event))

    async def send_bytes(self, data: bytes) -> None:
        await self._ws.send_bytes(data)


class EventSocket(Generic[E]):
    """An accepted WebSocket with typed sends and the shared receive loop.

    ``client_events`` is the service's client-event union (e.g. ``vad.client_events``). Sends are
    serialised by one lock, so events sent from background tasks never interleave with each other
    (a TTS ``audio`` header is always followed by its own binary frame).
    """

    def __init__(self, ws: WebSocket, client_events: TypeAdapter[E], limits: Limits = Limits()) -> None:
        self.ws = ws
        self.client_events = client_events
        self.limits = limits
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return (self.ws.client_state == WebSocketState.CONNECTED
                and self.ws.application_state == WebSocketState.CONNECTED)

    async def accept(self) -> None:
        if self.ws.client_state == WebSocketState.CONNECTING:
            await self.ws.accept()

    # --- sending -------------------------------------------------------------------------------
    @asynccontextmanager
    async def atomic(self) -> AsyncIterator[Sender]:
        """Hold the send lock for several sends, or for a state change that must not interleave
        with another task's send."""
        async with self._lock:
            yield Sender(self.ws)

    async def send(self, event: Event) -> None:
        async with self.atomic() as tx:
            await tx.send(event)

    async def send_audio(self, header: Event, pcm: bytes) -> None:
        """A JSON header and its binary frame, with nothing in between."""
        async with self.atomic() as tx:
            await tx.send(header)
            await tx.send_bytes(pcm)

    async def error(self, code: str | None, message: str, *, status: int = 400, param: str | None = None,
                    id: str | None = None) -> None:
        """An error event; the connection stays open."""
        await self.send(ErrorEvent.of(code, message, status=status, param=param, id=id))

    async def close(self, close_code: int, code: str, message: str) -> None:
        """An error event, then close. Quiet when the client has already gone."""
        status = 500 if close_code == WS_SERVER_ERROR else 400 if close_code == WS_POLICY else 503
        try:
            await self.accept()
            if self.connected:
                await self.send(ErrorEvent.of(code, message, status=status))
                await self.ws.close(code=close_code, reason=message[:120])
        except Exception:  # the client may be gone already; there is nobody left to tell
            pass

    async def refuse(self, code: str, message: str) -> None:
        """Turn a client away before the session starts (model loading, too many streams): 1013."""
        await self.close(WS_TRY_AGAIN_LATER, code, message)

    # --- receiving -----------------------------------------------------------------------------
    async def run(self, on_event: Callable[[E], Awaitable[None]],
                  on_pcm: Callable[[bytes], Awaitable[None]] | None = None) -> None:
        """Receive until the client leaves, the idle timeout passes or a handler fails.

        ``on_pcm`` gets each non-empty, even-length binary frame; without it binary frames are refused.
        """
        await self.accept()
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self.ws.receive(), self.limits.idle_timeout_s)
                except asyncio.TimeoutError:
                    await self.close(WS_POLICY, "idle_timeout",
                                     f"nothing received for {self.limits.idle_timeout_s:g} s; closing")
                    return
                if message["type"] == "websocket.disconnect":
                    return
                try:
                    await self._dispatch(message, on_event, on_pcm)
                except ProtocolError as exc:
                    if exc.close_code is not None:
                        await self.close(exc.close_code, exc.code, exc.message)
                        return
                    await self.send(exc.event())
                except APIError as exc:
                    await self.send(ErrorEvent.from_api_error(exc))
        except WebSocketDisconnect:
            return
        except Exception:
            if not self.connected:
                return  # a send to a client that has just gone: nothing went wrong on our side
            log.exception("WebSocket %s failed", self.ws.url.path)
            await self.close(WS_SERVER_ERROR, "internal_error", "internal error; closing")

    async def _dispatch(self, message: dict, on_event: Callable[[E], Awaitable[None]],
                        on_pcm: Callable[[bytes], Awaitable[None]] | None) -> None:
        data = message.get("bytes")
        if data is not None:
            if on_pcm is None:
                raise ProtocolError("unexpected_binary", "binary frames are not accepted here; "
                                    "send JSON text events")
            if len(data) > self.limits.max_binary_bytes:
                raise ProtocolError("frame_too_large", f"binary frame of {len(data)} bytes is over the "
                                    f"{self.limits.max_binary_bytes}-byte limit; frame dropped")
            if len(data) % 2:
                raise ProtocolError("odd_length_pcm", f"binary frame of {len(data)} bytes is not PCM16 "
                                    "(odd length); frame dropped, send whole 2-byte samples")
            if data:
                await on_pcm(data)
            return
        text = message.get("text") or ""
        if _utf8_length_over(text, self.limits.max_text_bytes):
            raise ProtocolError("frame_too_large", f"text frame is over the {self.limits.max_text_bytes}-"
                                "byte limit; event dropped")
        await on_event(parse(self.client_events, text))


def _utf8_length_over(text: str, limit: int) -> bool:
    # UTF-8 takes 1 to 4 bytes a character: only a frame in between needs encoding to be measured.
    if len(text) > limit:
        return True
    if len(text) * 4 <= limit:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit
