"""One WebSocket client per pipeline stage, all of the same shape (after pipecat's services).

Each stream is opened once per browser session and reused across turns: a
connect costs a TCP + HTTP upgrade round trip and, on some services, a config
pass, which is latency no turn should pay. ``events()`` yields the server's JSON
events (TTS audio arrives as an ``audio`` event carrying its PCM in ``pcm``)
and raises :class:`ServiceClosed` when the connection ends, so the orchestrator
sees a dead service as an event, never as a hang.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator
from urllib.parse import quote

import websockets
from websockets.asyncio.client import ClientConnection, connect

from rvchat_common.errors import parse_json

log = logging.getLogger("rvchat.app.clients")

OPEN_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 10.0


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel a background task and wait until it has ended.

    Everything is swallowed, the caller's own cancellation included: this runs in ``finally``
    blocks of handlers being torn down, and the cleanup after it must still happen."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except BaseException:
        pass

class ServiceClosed(Exception):
    """The service's WebSocket is gone (refused, closed, or it broke protocol)."""

    def __init__(self, service: str, reason: str) -> None:
        super().__init__(f"{service}: {reason}")
        self.service = service
        self.reason = reason


def ws_url(base_url: str, path: str = "/ws", api_key: str | None = None) -> str:
    url = base_url.rstrip("/")
    if url.startswith("https://"):
        url = "wss://" + url[8:]
    elif url.startswith("http://"):
        url = "ws://" + url[7:]
    url += path
    if api_key:
        url += f"?api_key={quote(api_key)}"
    return url


class ServiceStream:
    """A WebSocket to one service: connect (waits for ``ready``), send, iterate events."""

    name = "service"
    expects_ready = True  # the service greets a new connection with a ``ready`` event

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        self.url = ws_url(base_url, "/ws", api_key)
        self.ws: ClientConnection | None = None
        self.ready: dict = {}

    @property
    def connected(self) -> bool:
        return self.ws is not None

    async def connect(self) -> dict:
        """Open the socket and wait for the service's ``ready``; returns that event."""
        try:
            self.ws = await connect(self.url, open_timeout=OPEN_TIMEOUT_S, compression=None,
                                    max_size=16 * 1024 * 1024, ping_interval=20, ping_timeout=20,
                                    close_timeout=2, proxy=None)
        except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as exc:
            self.ws = None
            raise ServiceClosed(self.name, f"cannot connect to {self.url}: {exc}") from None
        try:
            if not self.expects_ready:
                await self.on_connect()
                return self.ready
            self.ready = await asyncio.wait_for(self._next_json(), READY_TIMEOUT_S)
            if self.ready.get("type") != "ready":
                raise ServiceClosed(self.name, f"expected a ready event, got {self.ready.get('type')!r}")
            await self.on_connect()
        except asyncio.TimeoutError:
            await self.close()
            raise ServiceClosed(self.name, "no ready event from the service") from None
        except BaseException:
            await self.close()
            raise
        return self.ready

    async def on_connect(self) -> None:
        """Per-service set-up sent right after ``ready`` (configs)."""

    async def close(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(), 2)
            except Exception:
                pass

    async def send_json(self, event: dict) -> None:
        await self._send(json.dumps(event))

    async def send_bytes(self, data: bytes) -> None:
        await self._send(data)

    async def _send(self, data: str | bytes) -> None:
        if self.ws is None:
            raise ServiceClosed(self.name, "not connected")
        try:
            await self.ws.send(data)
        except websockets.exceptions.ConnectionClosed as exc:
            raise ServiceClosed(self.name, f"connection closed ({exc.rcvd.code if exc.rcvd else 'no code'})") \
                from None

    async def _recv(self) -> str | bytes:
        if self.ws is None:
            raise ServiceClosed(self.name, "not connected")
        try:
            return await self.ws.recv()
        except websockets.exceptions.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            raise ServiceClosed(self.name, f"connection closed (code {code})") from None

    async def _next_json(self) -> dict:
        msg = await self._recv()
        if isinstance(msg, bytes):
            raise ServiceClosed(self.name, "unexpected binary frame")
        try:
            event = parse_json(msg)
        except ValueError:
            raise ServiceClosed(self.name, "malformed JSON from the service") from None
        if not isinstance(event, dict):
            raise ServiceClosed(self.name, "event is not a JSON object")
        return event

    async def events(self) -> AsyncIterator[dict]:
        """The service's events until the connection ends (then ServiceClosed)."""
        while True:
            yield await self._next_json()


class VadStream(ServiceStream):
    """Silero VAD over the VAD service: PCM16 in, speech_start / speech_end out."""

    name = "vad"

    def __init__(self, base_url: str, api_key: str | None = None, **config: Any) -> None:
        super().__init__(base_url, api_key)
        self.config: dict[str, Any] = {"sample_rate": 16000, **config}

    async def on_connect(self) -> None:
        await self.send_json({"type": "config", **self.config})

    async def configure(self, **config: Any) -> None:
        self.config.update(config)
        await self.send_json({"type": "config", **self.config})

    async def audio(self, pcm: bytes) -> None:
        await self.send_bytes(pcm)

    async def reset(self) -> None:
        await self.send_json({"type": "reset"})


class SttStream(ServiceStream):
    """Streaming transcription: audio while the user speaks, ``end`` -> ``final``."""

    name = "stt"

    def __init__(self, base_url: str, api_key: str | None = None, **config: Any) -> None:
        super().__init__(base_url, api_key)
        self.config: dict[str, Any] = {"sample_rate": 16000, **config}

    async def on_connect(self) -> None:
        await self.send_json({"type": "config", **self.config})

    async def audio(self, pcm: bytes) -> None:
        await self.send_bytes(pcm)

    async def end(self) -> None:
        await self.send_json({"type": "end"})

    async def reset(self) -> None:
        await self.send_json({"type": "reset"})


class LlmStream(ServiceStream):
    """Token streaming: ``generate`` -> start, delta..., done | cancelled."""

    name = "llm"
    expects_ready = False  # the LLM protocol has no greeting: the socket is usable once open

    async def generate(self, messages: list[dict], **options: Any) -> None:
        body = {"type": "generate", "messages": messages}
        body.update({k: v for k, v in options.items() if v is not None})
        await self.send_json(body)

    async def cancel(self) -> None:
        await self.send_json({"type": "cancel"})


class TtsStream(ServiceStream):
    """Incremental synthesis: text deltas in, one PCM chunk per sentence out."""

    name = "tts"

    def __init__(self, base_url: str, api_key: str | None = None, **config: Any) -> None:
        super().__init__(base_url, api_key)
        self.config = {k: v for k, v in config.items() if v is not None}

    @property
    def sample_rate(self) -> int:
        return int(self.ready.get("sample_rate") or 22050)

    async def on_connect(self) -> None:
        if self.config:
            await self.send_json({"type": "config", **self.config})

    async def text(self, text: str) -> None:
        await self.send_json({"type": "text", "text": text})

    async def flush(self) -> None:
        await self.send_json({"type": "flush"})

    async def cancel(self) -> None:
        await self.send_json({"type": "cancel"})

    async def events(self) -> AsyncIterator[dict]:
        while True:
            event = await self._next_json()
            if event.get("type") == "audio":
                # The PCM follows its header as one binary frame.
                data = await self._recv()
                if not isinstance(data, bytes):
                    raise ServiceClosed(self.name, "audio header not followed by a binary frame")
                event["pcm"] = data
            yield event
