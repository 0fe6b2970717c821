"""One WebSocket client per pipeline stage, all of the same shape (after pipecat's services).

Each stream is opened once per browser session and reused across turns: a
connect costs a TCP + HTTP upgrade round trip and, on some services, a config
pass, which is latency no turn should pay. ``events()`` yields the server's events as
the typed models of ``rvchat_common.protocol`` (TTS audio arrives as a ``tts.Audio`` carrying its
PCM in ``pcm``) and raises :class:`ServiceClosed` when the connection ends or the service breaks
protocol, so the orchestrator sees a dead service as an event, never as a hang.

A service may run as several replicas (``APP_STT_URL=http://stt-1:3002,http://stt-2:3002``): a
:class:`Replicas` spreads new connections over them round-robin (so sessions spread) and skips a
replica that just failed; a session keeps the replica it got until its connection drops.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

import websockets
from pydantic import TypeAdapter
from websockets.asyncio.client import ClientConnection, connect

from rvchat_common.protocol import ErrorEvent, Event, ProtocolError, dump, llm, parse, stt, tts, vad

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

@dataclass(frozen=True)
class Closed:
    """Not on the wire: what a session's link delivers when a service's connection drops, so that
    whatever waited on the service ends instead of hanging."""

    reason: str
    type: ClassVar[str] = "closed"


class ServiceClosed(Exception):
    """The service's WebSocket is gone (refused, closed, or it broke protocol)."""

    def __init__(self, service: str, reason: str) -> None:
        super().__init__(f"{service}: {reason}")
        self.service = service
        self.reason = reason


class Replicas:
    """One service's base URLs (a comma-separated setting): where the next connection goes.

    Connections go round-robin, so the sessions of one main_app spread over the replicas; a replica
    that refused a connection is tried last for ``DOWN_S``, so a dead one costs one failed connect,
    not one per session. Shared by every session of the app.
    """

    DOWN_S = 10.0

    def __init__(self, urls: str | Sequence[str]) -> None:
        items = urls.split(",") if isinstance(urls, str) else list(urls)
        self.urls = [u.strip() for u in items if u.strip()]
        if not self.urls:
            raise ValueError("no service URL given")
        self._next = 0
        self._down_until: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.urls)

    def order(self) -> list[str]:
        """Every replica, in the order to try them for one new connection."""
        start = self._next
        self._next = (self._next + 1) % len(self.urls)
        rotated = self.urls[start:] + self.urls[:start]
        now = time.monotonic()
        up = [u for u in rotated if self._down_until.get(u, 0.0) <= now]
        return up + [u for u in rotated if u not in up]

    def failed(self, url: str) -> None:
        self._down_until[url] = time.monotonic() + self.DOWN_S

    def succeeded(self, url: str) -> None:
        self._down_until.pop(url, None)


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
    """A WebSocket to one service: connect (waits for ``ready``), send typed events, iterate events."""

    name = "service"
    expects_ready = True  # the service greets a new connection with a ``ready`` event
    server_events: ClassVar[TypeAdapter]
    # Calls that a new connection must be sent again if this one drops before the service answered
    # them (see links.Link: STT's utterance in progress); empty: nothing is replayed.
    journaled: ClassVar[tuple[str, ...]] = ()

    def __init__(self, base_url: str | Replicas, api_key: str | None = None) -> None:
        self.replicas = base_url if isinstance(base_url, Replicas) else Replicas(base_url)
        self.api_key = api_key
        self.base_url = self.replicas.urls[0]
        self.url = ws_url(self.base_url, "/ws", api_key)
        self.ws: ClientConnection | None = None
        self.ready: dict = {}

    def settles(self, event: Any) -> bool:
        """Whether ``event`` answers the oldest journaled request (it need not be replayed any more)."""
        return False

    async def connect(self) -> dict:
        """Connect to the first replica that takes the connection (see :class:`Replicas`); its ``ready``."""
        errors = []
        for base in self.replicas.order():
            self.base_url, self.url = base, ws_url(base, "/ws", self.api_key)
            try:
                ready = await self._connect_one()
            except ServiceClosed as exc:
                self.replicas.failed(base)
                errors.append(exc.reason)
                continue
            self.replicas.succeeded(base)
            return ready
        raise ServiceClosed(self.name, "; ".join(errors) if len(errors) > 1 else errors[0])

    async def _connect_one(self) -> dict:
        """Open the socket and wait for the service's ``ready``; returns its fields."""
        try:
            self.ws = await connect(self.url, open_timeout=OPEN_TIMEOUT_S, compression=None,
                                    max_size=16 * 1024 * 1024, ping_interval=20, ping_timeout=20,
                                    close_timeout=2, proxy=None)
        except (TimeoutError, OSError, websockets.exceptions.WebSocketException) as exc:
            self.ws = None
            raise ServiceClosed(self.name, f"cannot connect to {self.url}: {exc}") from None
        try:
            if not self.expects_ready:
                await self.on_connect()
                return self.ready
            ready = await asyncio.wait_for(self._next_event(), READY_TIMEOUT_S)
            if ready.type != "ready":
                raise ServiceClosed(self.name, f"expected a ready event, got {ready.type!r}")
            self.ready = ready.model_dump()
            await self.on_connect()
        except TimeoutError:
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

    async def send_event(self, event: Event) -> None:
        await self._send(dump(event))

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

    async def _next_event(self) -> Any:
        msg = await self._recv()
        if isinstance(msg, bytes):
            raise ServiceClosed(self.name, "unexpected binary frame")
        try:
            return parse(self.server_events, msg)
        except ProtocolError as exc:
            raise ServiceClosed(self.name, f"the service broke protocol: {exc.message}") from None

    async def events(self) -> AsyncIterator[Any]:
        """The service's events until the connection ends (then ServiceClosed)."""
        while True:
            yield await self._next_event()


class VadStream(ServiceStream):
    """Silero VAD over the VAD service: PCM16 in, speech_start / speech_end out."""

    name = "vad"
    server_events = vad.server_events

    def __init__(self, base_url: str, api_key: str | None = None, **config: Any) -> None:
        super().__init__(base_url, api_key)
        self.config: dict[str, Any] = {"sample_rate": 16000, **config}

    async def on_connect(self) -> None:
        await self.send_event(vad.Config(**self.config))

    async def configure(self, **config: Any) -> None:
        self.config.update(config)
        await self.send_event(vad.Config(**self.config))

    async def audio(self, pcm: bytes) -> None:
        await self.send_bytes(pcm)


class SttStream(ServiceStream):
    """Streaming transcription: audio while the user speaks, ``end`` -> ``final``."""

    name = "stt"
    server_events = stt.server_events
    # An utterance lives only in the STT replica that heard it: if that one dies before its final,
    # the audio (and the end) go again to the next one, so the user need not repeat themselves.
    journaled = ("audio", "end")

    def settles(self, event: Any) -> bool:
        return isinstance(event, stt.Final)

    def __init__(self, base_url: str, api_key: str | None = None, **config: Any) -> None:
        super().__init__(base_url, api_key)
        self.config: dict[str, Any] = {"sample_rate": 16000, **config}

    async def on_connect(self) -> None:
        await self.send_event(stt.Config(**self.config))

    async def audio(self, pcm: bytes) -> None:
        await self.send_bytes(pcm)

    async def end(self, speech: bool | None = None) -> None:
        """The utterance is over; ``speech``: our VAD heard speech in it (the STT decodes it even where its
        own speech gate would call it silence)."""
        await self.send_event(stt.End(speech=speech))


class LlmStream(ServiceStream):
    """Token streaming: ``generate`` -> start, delta..., done | cancelled; ``eou`` -> the probability that
    the user's words are finished, and ``prefill`` (the prompt of the reply to come), answered beside the
    generation (their answers never reach ``events()``'s reader, which is the reply's)."""

    name = "llm"
    expects_ready = False  # the LLM protocol has no greeting: the socket is usable once open
    server_events = llm.server_events
    EOU_PREFIX = "eou-"  # the ids of eou requests (generation ids are the service's hex)
    PREFILL_PREFIX = "prefill-"

    def __init__(self, base_url: str | Replicas, api_key: str | None = None) -> None:
        super().__init__(base_url, api_key)
        self._eou: dict[str, asyncio.Future[float | None]] = {}
        self._eou_ids = itertools.count(1)

    async def eou(self, text: str) -> float | None:
        """P(the user's message is finished after ``text``); None when the service cannot tell (no model,
        an error). The caller bounds the wait; a late answer is dropped."""
        rid = f"{self.EOU_PREFIX}{next(self._eou_ids)}"
        future: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
        self._eou[rid] = future
        try:
            await self.send_event(llm.Eou(id=rid, text=text))
            return await future
        finally:
            self._eou.pop(rid, None)

    async def prefill(self, messages: list[dict], **options: Any) -> None:
        """Have the LLM evaluate the prompt of the reply to come (the user's words so far) ahead of its
        ``generate``; its answer (``prefilled``) is not waited for."""
        options.setdefault("trim", True)
        await self.send_event(llm.Prefill(id=f"{self.PREFILL_PREFIX}{next(self._eou_ids)}", messages=messages,
                                          **{k: v for k, v in options.items() if v is not None}))

    async def events(self) -> AsyncIterator[Any]:
        while True:
            event = await self._next_event()
            if isinstance(event, llm.Prefilled) or (
                    isinstance(event, ErrorEvent) and (event.id or "").startswith(self.PREFILL_PREFIX)):
                continue  # a prefill's answer: nobody waits for it
            if isinstance(event, (llm.EouResult, ErrorEvent)) and (event.id or "").startswith(self.EOU_PREFIX):
                future = self._eou.get(event.id or "")
                if future is not None and not future.done():
                    future.set_result(event.probability if isinstance(event, llm.EouResult) else None)
                    if isinstance(event, ErrorEvent):
                        log.info("llm: no end-of-utterance probability: %s", event.error.message)
                continue
            yield event

    async def generate(self, messages: list[dict], **options: Any) -> None:
        # The user's own words may be more tokens than the LLM's context holds (4,000 characters of
        # rare characters are): cut to fit rather than fail the turn (a 502 from POST /api/message).
        options.setdefault("trim", True)
        await self.send_event(llm.Generate(messages=messages, **{k: v for k, v in options.items() if v is not None}))

    async def cancel(self) -> None:
        await self.send_event(llm.Cancel())


class TtsStream(ServiceStream):
    """Incremental synthesis: text deltas in, one PCM chunk per sentence out."""

    name = "tts"
    server_events = tts.server_events

    def __init__(self, base_url: str, api_key: str | None = None, **config: Any) -> None:
        super().__init__(base_url, api_key)
        self.config = {k: v for k, v in config.items() if v is not None}

    async def on_connect(self) -> None:
        if self.config:
            await self.send_event(tts.Config(**self.config))

    async def configure(self, **config: Any) -> None:
        """Voice or speed for what is said from now on (kept for the next connection too)."""
        self.config.update({k: v for k, v in config.items() if v is not None})
        await self.send_event(tts.Config(**config))

    async def text(self, text: str) -> None:
        await self.send_event(tts.Text(text=text))

    async def flush(self) -> None:
        await self.send_event(tts.Flush())

    async def cancel(self) -> None:
        await self.send_event(tts.Cancel())

    async def events(self) -> AsyncIterator[Any]:
        while True:
            event = await self._next_event()
            if isinstance(event, tts.Audio):
                # The PCM follows its header as one binary frame.
                data = await self._recv()
                if not isinstance(data, bytes):
                    raise ServiceClosed(self.name, "audio header not followed by a binary frame")
                event.pcm = data
            yield event
