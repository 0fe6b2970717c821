"""Wyoming, Home Assistant's speech protocol: the server loop, audio at the edge, ``info`` building.

STT and TTS each serve Wyoming on a port of their own (``STT_WYOMING_PORT``, ``TTS_WYOMING_PORT``)
from the same process as their HTTP API: the same model and the same inference queue, so a Home
Assistant request waits its turn with the HTTP and WebSocket ones. The per-service handlers are
``rvchat_stt.wyoming`` and ``rvchat_tts.wyoming``; this module is what they share.

The wire format (wyoming 1.x): a JSON header line ``{"type", "data"?, "data_length"?,
"payload_length"?, "version"}``, then ``data_length`` bytes of JSON merged into ``data``, then
``payload_length`` bytes of payload (PCM audio). Events are built and parsed with the ``wyoming``
package's types; the read loop is ours, because the package's (``wyoming.server``) reads whatever
a header declares (a header claiming a 4 GB payload is read into memory), ends a connection
without a word on a bad line, and never times out an idle client. Here every fault is answered
with an ``error`` event (``{"text", "code"}``, the codes our HTTP and WebSocket errors use):

============================================  =====================  ====================
fault                                         error code             connection
============================================  =====================  ====================
header line is not JSON, or its data isn't    invalid_json           stays open
header is not an object with a string type    invalid_event          stays open
a bad length (negative, not a number)         invalid_event          closed
header line over ``max_line_bytes``           line_too_long          closed
data or payload over its limit                too_large              closed
nothing received for ``idle_timeout_s``       idle_timeout           closed
more than ``max_connections`` at once         too_many_connections   closed
a handler refuses an event (WyomingError)     its code               stays open
a failure on our side                         internal_error         closed
============================================  =====================  ====================

A framing fault closes the connection because after it the stream cannot be trusted to be at
an event boundary. Unknown event types are ignored, as the protocol asks of servers (a client
may send ``select-program`` or newer events to an older server); ``ping`` is answered ``pong``.
Wyoming has no authentication: bind these ports to a network you trust (see the README).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Protocol

import numpy as np
from fastapi import FastAPI
from pydantic import BeforeValidator, Field
from wyoming.audio import AudioChunk
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Info, TtsProgram, TtsVoice
from wyoming.ping import Ping, Pong
from wyoming.version import __version__ as WYOMING_VERSION

from .audio import SAMPLE_RATE, Resampler, float_to_pcm16
from .errors import parse_json

log = logging.getLogger("rvchat.wyoming")

# Rates a client may send: the same range the HTTP raw-PCM upload accepts.
MIN_RATE, MAX_RATE = 4000, 192000
WIDTHS = (1, 2, 4)  # bytes per sample: unsigned 8-bit, signed 16-bit, signed 32-bit little-endian
MAX_CHANNELS = 8
# Samples per audio-chunk we send: what wyoming-piper sends (64 ms at 16 kHz, 46 ms at 22.05 kHz).
SAMPLES_PER_CHUNK = 1024


def _empty_is_none(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


# The type of the services' ``wyoming_port`` settings: ``STT_WYOMING_PORT=`` (empty, as compose
# passes an unset variable) means off, like leaving it out.
Port = Annotated[Annotated[int, Field(ge=1, le=65535)] | None, BeforeValidator(_empty_is_none)]


def _package_version() -> str:
    try:
        return version("realtime-voice-chat")
    except PackageNotFoundError:
        return "0"


class WyomingError(Exception):
    """Raised by a handler to refuse one event: sent as an ``error`` event, the connection stays open."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text

    def event(self) -> Event:
        return Error(text=self.text, code=self.code).event()


class _Fatal(Exception):
    """A fault after which the connection is closed (the stream may be mid-event)."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


@dataclass(frozen=True)
class Limits:
    # A header line is ~100-300 bytes; HA's largest data (an ``info`` it never sends us) is a few kB.
    max_line_bytes: int = 64 * 1024
    max_data_bytes: int = 1024 * 1024
    # Home Assistant sends 1,024-sample chunks (2 kB); 4 MiB (131 s of 16 kHz PCM16) is the same
    # limit as one WebSocket frame on /ws.
    max_payload_bytes: int = 4 * 1024 * 1024
    idle_timeout_s: float = 300.0
    # A client that stops reading would block our writes for ever once the socket buffers fill.
    write_timeout_s: float = 30.0
    max_connections: int = 64


class Connection:
    """One client: writes events (one at a time: a header and its payload never interleave)."""

    def __init__(self, writer: asyncio.StreamWriter, limits: Limits) -> None:
        self.writer = writer
        self.limits = limits
        self._lock = asyncio.Lock()
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)

    @property
    def closing(self) -> bool:
        return self.writer.is_closing()

    async def send(self, event: Event) -> None:
        header: dict = {"type": event.type, "version": WYOMING_VERSION}
        data = json.dumps(event.data, ensure_ascii=False).encode() if event.data else b""
        if data:
            header["data_length"] = len(data)
        if event.payload:
            header["payload_length"] = len(event.payload)
        async with self._lock:
            self.writer.write(json.dumps(header, ensure_ascii=False).encode() + b"\n" + data
                              + (event.payload or b""))
            await asyncio.wait_for(self.writer.drain(), self.limits.write_timeout_s)

    async def send_all(self, events: Iterable[Event]) -> None:
        for event in events:
            await self.send(event)

    async def error(self, code: str, text: str) -> None:
        await self.send(Error(text=text, code=code).event())


class Handler(Protocol):
    """A service's side of one connection."""

    @property
    def busy(self) -> bool:
        """A request is in progress (audio still coming, or speech still being sent): a draining
        service waits for it."""

    async def on_event(self, event: Event) -> None:
        """Handle one event; raise WyomingError to refuse it (the connection stays open)."""

    async def close(self) -> None:
        """The connection is over: stop any work still running for it."""


HandlerFactory = Callable[[Connection], Handler]


async def _read_exactly(reader: asyncio.StreamReader, n: int, timeout: float) -> bytes:
    try:
        return await asyncio.wait_for(reader.readexactly(n), timeout)
    except TimeoutError:
        raise _Fatal("idle_timeout", f"the rest of an event did not arrive within {timeout:g} s") from None


def _length(header: dict, key: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Fatal("invalid_event", f"{key} must be a non-negative integer")
    if value > limit:
        raise _Fatal("too_large", f"{key} {value} is over the limit of {limit} bytes")
    return value


async def read_event(reader: asyncio.StreamReader, limits: Limits) -> Event | None:
    """The next event; None at end of stream. Raises WyomingError (stay open) or _Fatal (close)."""
    try:
        line = await asyncio.wait_for(reader.readuntil(b"\n"), limits.idle_timeout_s)
    except TimeoutError:
        raise _Fatal("idle_timeout", f"nothing received for {limits.idle_timeout_s:g} s") from None
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            log.info("wyoming client left mid-line")
        return None
    except asyncio.LimitOverrunError:
        raise _Fatal("line_too_long", f"header line is over {limits.max_line_bytes} bytes") from None
    if not line.strip():
        return await read_event(reader, limits)  # blank lines between events are harmless
    try:
        header = parse_json(line)
    except (ValueError, UnicodeDecodeError):
        raise WyomingError("invalid_json", "header line is not valid JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str) or not header["type"]:
        raise WyomingError("invalid_event", 'header must be a JSON object with a string "type"')
    data_length = _length(header, "data_length", limits.max_data_bytes)
    payload_length = _length(header, "payload_length", limits.max_payload_bytes)
    data = header.get("data")
    data = data if isinstance(data, dict) else {}
    extra = await _read_exactly(reader, data_length, limits.idle_timeout_s) if data_length else b""
    payload = await _read_exactly(reader, payload_length, limits.idle_timeout_s) if payload_length else None
    if extra:
        try:
            more = parse_json(extra)
        except (ValueError, UnicodeDecodeError):
            raise WyomingError("invalid_json", f"the data of {header['type'][:40]!r} is not valid JSON") \
                from None
        if not isinstance(more, dict):
            raise WyomingError("invalid_json", f"the data of {header['type'][:40]!r} is not a JSON object")
        data = {**data, **more}
    return Event(type=header["type"], data=data, payload=payload)


class WyomingServer:
    """A Wyoming TCP server inside a service's event loop (started and stopped with its app)."""

    def __init__(self, service: str, host: str, port: int, factory: HandlerFactory,
                 limits: Limits | None = None, refusing: Callable[[], str | None] = lambda: None) -> None:
        self.service = service
        self.host = host
        self.port = port
        self.factory = factory
        self.limits = limits or Limits()
        self.refusing = refusing  # a reason to turn new clients away (draining), or None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._handlers: set[Handler] = set()

    @property
    def connections(self) -> int:
        return len(self._tasks)

    def busy(self) -> str | None:
        """What a draining service still waits for here (requests in progress), or None."""
        n = sum(1 for h in self._handlers if getattr(h, "busy", False))
        return f"{n} Wyoming request(s) in progress" if n else None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._accept, self.host, self.port,
                                                      limit=self.limits.max_line_bytes)
        except OSError as exc:  # the service does not start half-configured: say which port and why
            log.error("%s: cannot serve Wyoming on %s:%s: %s", self.service, self.host, self.port, exc)
            raise
        bound = self._server.sockets[0].getsockname() if self._server.sockets else (self.host, self.port)
        self.port = bound[1]
        log.info("%s: Wyoming listening on %s:%s", self.service, self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and end every connection (their handlers' work is cancelled)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Connection(writer, self.limits)
        try:
            reason = self.refusing()
            if reason is None and len(self._tasks) > self.limits.max_connections:
                reason = f"too many Wyoming connections (limit {self.limits.max_connections}); retry later"
                code = "too_many_connections"
            else:
                code = "shutting_down"
            if reason is not None:
                with contextlib.suppress(Exception):
                    await conn.error(code, reason)
                return
            await self._serve(reader, conn)
        except asyncio.CancelledError:
            pass  # the server is stopping
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, conn: Connection) -> None:
        log.info("%s: Wyoming client %s connected", self.service, conn.peer)
        handler = self.factory(conn)
        self._handlers.add(handler)
        try:
            while True:
                try:
                    event = await read_event(reader, self.limits)
                    if event is None:
                        break
                    if Ping.is_type(event.type):
                        await conn.send(Pong(text=event.data.get("text")).event())
                        continue
                    await handler.on_event(event)
                except WyomingError as exc:
                    log.info("wyoming %s from %s: %s", exc.code, conn.peer, exc.text)
                    await conn.send(exc.event())
                except _Fatal as exc:
                    log.info("wyoming %s from %s: %s; closing", exc.code, conn.peer, exc.text)
                    with contextlib.suppress(Exception):
                        await conn.error(exc.code, exc.text)
                    break
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            log.info("%s: Wyoming client %s gone", self.service, conn.peer)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: Wyoming handler failed", self.service)
            with contextlib.suppress(Exception):
                await conn.error("internal_error", "internal error; closing")
        finally:
            self._handlers.discard(handler)
            await handler.close()
            log.info("%s: Wyoming client %s disconnected", self.service, conn.peer)


# --- audio at the edge ----------------------------------------------------------------------------
def check_format(rate: object, width: object, channels: object) -> tuple[int, int, int]:
    """The audio format an audio-start or audio-chunk states, checked; WyomingError when unusable."""
    ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (rate, width, channels))
    if not ok or not MIN_RATE <= rate <= MAX_RATE:  # type: ignore[operator]
        raise WyomingError("unsupported_audio_format", f"rate must be an integer from {MIN_RATE} to "
                           f"{MAX_RATE} Hz, got {rate!r}")
    if width not in WIDTHS:
        raise WyomingError("unsupported_audio_format", f"width must be 1, 2 or 4 bytes, got {width!r}")
    if not 1 <= channels <= MAX_CHANNELS:  # type: ignore[operator]
        raise WyomingError("unsupported_audio_format",
                           f"channels must be 1 to {MAX_CHANNELS}, got {channels!r}")
    return rate, width, channels  # type: ignore[return-value]


def pcm_to_mono(audio: bytes, width: int, channels: int) -> np.ndarray:
    """Interleaved little-endian PCM of any supported width as mono float32 in [-1, 1]."""
    frame = width * channels
    if len(audio) % frame:
        raise WyomingError("invalid_audio", f"audio is {len(audio)} bytes, not a whole number of "
                           f"{frame}-byte frames ({width} bytes x {channels} channels)")
    if width == 1:
        x = (np.frombuffer(audio, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768.0
    else:
        x = (np.frombuffer(audio, dtype="<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return x


class AudioInput:
    """Wyoming audio in, as 16 kHz mono float32: any supported rate, width and channel count,
    converted chunk by chunk through the shared (continuous) resampler."""

    def __init__(self, rate: int, width: int, channels: int, dst_rate: int = SAMPLE_RATE) -> None:
        self.dst_rate = dst_rate
        self.format = check_format(rate, width, channels)
        self._resampler = Resampler(rate, dst_rate)

    def __call__(self, chunk: Event) -> np.ndarray:
        data = chunk.data
        fmt = check_format(data.get("rate", self.format[0]), data.get("width", self.format[1]),
                           data.get("channels", self.format[2]))
        parts = []
        if fmt[0] != self.format[0]:
            # A new rate mid-stream: finish the old filter, start one for the new rate.
            parts.append(self._resampler.flush())
            self._resampler = Resampler(fmt[0], self.dst_rate)
        self.format = fmt
        parts.append(self._resampler(pcm_to_mono(chunk.payload or b"", fmt[1], fmt[2])))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def flush(self) -> np.ndarray:
        return self._resampler.flush()


def audio_chunks(pcm16: bytes, rate: int, samples_per_chunk: int = SAMPLES_PER_CHUNK) -> list[Event]:
    """Mono PCM16 as audio-chunk events of ``samples_per_chunk``."""
    step = samples_per_chunk * 2
    return [AudioChunk(rate=rate, width=2, channels=1, audio=pcm16[i:i + step]).event()
            for i in range(0, len(pcm16), step)]


def float_chunks(audio: np.ndarray, rate: int) -> list[Event]:
    return audio_chunks(float_to_pcm16(audio), rate)


# --- info ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Model:
    """An STT model or a TTS voice as ``info`` lists it."""

    name: str
    languages: list[str]
    description: str | None = None


PROGRAM_BY = "Realtime Voice Chat"


def asr_info(program: str, description: str, models: list[Model], attribution: tuple[str, str],
             streaming: bool = True) -> Info:
    """``info`` for an STT service: one program (this service) with its models; ``attribution`` is
    (who made the models, where they come from): Wyoming requires one on every artifact."""
    by = Attribution(name=attribution[0], url=attribution[1])
    return Info(asr=[AsrProgram(
        name=program, attribution=Attribution(name=PROGRAM_BY, url=attribution[1]), installed=True,
        description=description, version=_package_version(), supports_transcript_streaming=streaming,
        models=[AsrModel(name=m.name, attribution=by, installed=True, description=m.description or m.name,
                         version=None, languages=m.languages) for m in models])])


def tts_info(program: str, description: str, voices: list[Model], attribution: tuple[str, str],
             streaming: bool = True) -> Info:
    """``info`` for a TTS service: one program (this service) with its voices (see ``asr_info``)."""
    by = Attribution(name=attribution[0], url=attribution[1])
    return Info(tts=[TtsProgram(
        name=program, attribution=Attribution(name=PROGRAM_BY, url=attribution[1]), installed=True,
        description=description, version=_package_version(), supports_synthesize_streaming=streaming,
        voices=[TtsVoice(name=v.name, attribution=by, installed=True, description=v.description or v.name,
                         version=None, languages=v.languages) for v in voices])])


# --- starting with the app ----------------------------------------------------------------------
def lifecycle(service: str, handler: Callable[[FastAPI, Connection], Handler],
              ) -> tuple[Callable[[FastAPI], Awaitable[None]], Callable[[FastAPI], Awaitable[None]]]:
    """``on_startup`` / ``on_shutdown`` hooks for ``build_app`` that serve Wyoming on the settings'
    ``wyoming_port`` (None: not at all) and ``host``, beside HTTP in the same event loop, with
    ``handler(app, connection)`` per client; ``app.state.wyoming`` holds the server.

    While the service drains (SIGTERM) new Wyoming clients get a ``shutting_down`` error, and the
    drain waits for the requests in progress (``Handler.busy``) as for HTTP ones.
    """

    async def start(app: FastAPI) -> None:
        app.state.wyoming = None
        settings = app.state.settings
        if settings.wyoming_port is None:
            return
        server = WyomingServer(service, settings.host, settings.wyoming_port,
                               lambda conn: handler(app, conn),
                               refusing=lambda: "the service is shutting down; retry shortly"
                               if app.state.drain.draining else None)
        await server.start()
        app.state.wyoming = server
        # A satellite's audio arrives over seconds with the model idle: the drain waits for its
        # transcript (and for a stream's last sentence), not only for the model queue.
        app.state.drain.add_check(server.busy)
        app.state.drain.count_connections(lambda: server.connections)
        if settings.api_key:
            log.warning("%s: Wyoming has no authentication: the API key does not guard port %s; bind it "
                        "to a trusted network only", service, server.port)

    async def stop(app: FastAPI) -> None:
        server = getattr(app.state, "wyoming", None)
        if server is not None:
            await server.stop()

    return start, stop
