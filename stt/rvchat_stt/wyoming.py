"""Wyoming speech to text for Home Assistant (``STT_WYOMING_PORT``): the server loop, audio
conversion and ``info`` building are rvchat_common.wyoming's; this module maps the protocol onto
the WebSocket stream's session (ws.py), so a Wyoming request is decoded exactly as a /ws utterance:
the same model queue and priorities, partial decodes while audio comes in real time, the early
final when the speaker has stopped, an automatic final every ``stream_max_seconds``.

    -> transcribe {name?, language?, transcript_names?, transcript_terms?}   (optional)
    -> audio-start {rate, width, channels}
    -> audio-chunk {rate, width, channels} + PCM                             (any number)
    <- transcript-start, transcript-chunk {text} ...                         (while audio comes)
    -> audio-stop
    <- transcript-chunk {text}? , transcript {text, language}, transcript-stop

Chunks are appended to each other (``"".join`` of them is the transcript, up to case and
punctuation), so only words two successive partial decodes agree on are sent: a partial's last
word is often revised by the next decode ("four" -> "forty"), and a chunk cannot be taken back.
If the final decode still differs from what was sent, no more chunks are sent and ``transcript``
(the text every client reads) has it right.

Names and terms Home Assistant sends to bias recognition become Whisper's prompt. Audio of any
rate, width and channel count is converted to 16 kHz mono at the edge. A connection may carry any
number of requests, one after another.
"""

from __future__ import annotations

import asyncio
import logging
import re

import numpy as np
from fastapi import FastAPI
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event
from wyoming.info import Describe

from rvchat_common.app import is_ready
from rvchat_common.audio import SAMPLE_RATE, float_to_pcm16
from rvchat_common.errors import APIError
from rvchat_common.protocol import ProtocolError, stt
from rvchat_common.wyoming import AudioInput, Connection, Model, WyomingError, asr_info, lifecycle

from .ws import SttSession

log = logging.getLogger("rvchat.stt.wyoming")

PROGRAM = "rvchat-stt"
WHISPER = ("OpenAI Whisper via SYSTRAN faster-whisper", "https://github.com/SYSTRAN/faster-whisper")
MAX_PROMPT_CHARS = 1000  # Whisper keeps the last 223 prompt tokens; ~1,000 characters cover them


def info(app: FastAPI) -> Event:
    engine = app.state.engine
    languages = list(getattr(engine, "languages", None) or ["en"])
    model = Model(name=engine.model_name, languages=languages,
                  description=f"faster-whisper {engine.model_name}")
    return asr_info(PROGRAM, "Realtime Voice Chat speech to text (faster-whisper)", [model], WHISPER).event()


def _norm(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def agreed_words(a: str, b: str) -> list[str]:
    """The words at the start of ``b`` that ``a`` has too (case and punctuation aside), as ``b``
    writes them; a sentence end on ``b``'s last word is dropped (a partial ends where the audio
    did, and Whisper ends it like a sentence)."""
    words = []
    for x, y in zip(a.split(), b.split()):
        if _norm(x) != _norm(y):
            break
        words.append(y)
    if words and len(words) == len(b.split()):
        words[-1] = words[-1].rstrip(".?!") or words[-1]
    return words


class _Transcripts:
    """Stands in for the session's WebSocket: turns its partials and finals into Wyoming events."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        # A partial decode finishing as the final is sent: one extends the chunks at a time, in order.
        self.lock = asyncio.Lock()
        self.reset()

    def reset(self) -> None:
        self.started = False
        self.sent: list[str] = []  # the words the chunks sent so far add up to
        self.finals: list[str] = []  # automatic finals of this request (every stream_max_seconds)
        self.last_partial = ""
        self.final: stt.Final | None = None

    def _words(self, text: str) -> list[str]:
        return [w for t in self.finals for w in t.split()] + text.split()

    async def _start(self) -> None:
        if not self.started:
            self.started = True
            await self.conn.send(TranscriptStart().event())

    async def _extend(self, words: list[str]) -> None:
        """Send the words of ``words`` past those already sent, if it begins with them."""
        n = len(self.sent)
        if len(words) <= n or [_norm(w) for w in words[:n]] != [_norm(w) for w in self.sent]:
            return
        new = words[n:]
        self.sent = self.sent + new
        await self._start()
        await self.conn.send(TranscriptChunk(text=(" " if n else "") + " ".join(new)).event())

    async def send(self, event: object) -> None:
        if isinstance(event, stt.Partial):
            stable = agreed_words(self.last_partial, event.text)
            self.last_partial = event.text
            if stable:
                async with self.lock:
                    await self._extend(self._words(" ".join(stable)))
        elif isinstance(event, stt.Final):
            if event.auto:
                if event.text.strip():
                    self.finals.append(event.text.strip())
                self.last_partial = ""
            else:
                self.final = event

    async def finish(self, final: stt.Final) -> None:
        words = self._words(final.text)
        async with self.lock:
            await self._start()
            await self._extend(words)
            await self.conn.send(Transcript(text=" ".join(words), language=final.language).event())
            await self.conn.send(TranscriptStop().event())

    # What SttSession may call on its socket besides send.
    async def error(self, code: str, message: str, **_: object) -> None:
        await self.conn.error(code, message)


class SttWyoming:
    """One Wyoming connection to the STT service."""

    def __init__(self, app: FastAPI, conn: Connection) -> None:
        self.app = app
        self.conn = conn
        self.out = _Transcripts(conn)
        self.language: str | None = None
        self.prompt: str | None = None
        self.session: SttSession | None = None
        self.audio: AudioInput | None = None
        self.samples = 0

    async def on_event(self, event: Event) -> None:
        if Describe.is_type(event.type):
            await self.conn.send(info(self.app))
        elif Transcribe.is_type(event.type):
            self._transcribe(event)
        elif AudioStart.is_type(event.type):
            self._audio_start(event)
        elif AudioChunk.is_type(event.type):
            await self._audio_chunk(event)
        elif AudioStop.is_type(event.type):
            await self._audio_stop()

    @property
    def busy(self) -> bool:
        return self.session is not None

    async def close(self) -> None:
        self._drop()

    # --- the request ------------------------------------------------------------------------------
    def _transcribe(self, event: Event) -> None:
        data = event.data
        self._drop()  # a new request: whatever audio came before it is not part of it
        name = data.get("name")
        if name is not None and name not in (self.app.state.engine.model_name, PROGRAM):
            raise WyomingError("unknown_model", f"no model {str(name)[:80]!r} here; describe lists "
                               f"{self.app.state.engine.model_name!r}")
        language = data.get("language")
        if language is not None and not isinstance(language, str):
            raise WyomingError("invalid_event", "language must be a string")
        try:
            self.language = self.app.state.engine.check_language(language)
        except ValueError as exc:
            raise WyomingError("unsupported_language", str(exc)) from None
        bias = []
        for key in ("transcript_names", "transcript_terms"):
            items = data.get(key)
            if items is not None and not (isinstance(items, list) and all(isinstance(t, str) for t in items)):
                raise WyomingError("invalid_event", f"{key} must be a list of strings")
            bias += [t for t in items or [] if t.strip()]
        self.prompt = ", ".join(t.strip() for t in bias)[:MAX_PROMPT_CHARS] or None

    def _session(self) -> SttSession:
        if not is_ready(self.app):
            failed = self.app.state.load_state["load_error"]
            raise WyomingError("model_loading", "the model failed to load" if failed
                               else "the model is still loading; retry shortly")
        state = self.app.state
        session = SttSession(self.out, state.engine, state.queue, state.settings, state.metrics)  # type: ignore[arg-type]
        session.language, session.prompt = self.language, self.prompt
        return session

    def _audio_start(self, event: Event) -> None:
        data = event.data
        self._drop()
        self.audio = AudioInput(data.get("rate"), data.get("width"), data.get("channels"))
        self.session = self._session()
        self.samples = 0  # 16 kHz samples of this request

    async def _audio_chunk(self, event: Event) -> None:
        if self.session is None or self.audio is None:
            # audio-start is required by the protocol, but the chunk states its format too.
            self._audio_start(event)
        assert self.session is not None and self.audio is not None
        await self._feed(self.audio(event))

    async def _feed(self, audio: np.ndarray) -> None:
        if not audio.size:
            return
        assert self.session is not None
        self.samples += audio.size
        limit = self.app.state.settings.max_audio_seconds
        if self.samples > limit * SAMPLE_RATE:
            # The stream closes an utterance every stream_max_seconds, so memory stays bounded, but a
            # client that never sends audio-stop would have its transcript grow for ever.
            self._drop()
            raise WyomingError("audio_too_long", f"more than {limit:g} s of audio in one request "
                               "(STT_MAX_AUDIO_SECONDS); this request was dropped")
        await self.session.on_pcm(float_to_pcm16(audio))

    async def _audio_stop(self) -> None:
        if self.session is None or self.audio is None:
            raise WyomingError("invalid_event", "audio-stop without audio-start")
        session = self.session
        await self._feed(self.audio.flush())
        try:
            await session.finalise()
        except APIError as exc:  # the model queue is full
            self._drop()
            raise WyomingError(exc.code or "busy", exc.message) from None
        except ProtocolError as exc:
            self._drop()
            raise WyomingError(exc.code, str(exc)) from None
        final = self.out.final
        self.session, self.audio = None, None
        if final is None:  # finalise always sends one; this is a bug if it happens
            raise RuntimeError("the session sent no final")
        log.info("wyoming transcript: %d chars, %.2f s of audio", len(final.text), final.duration)
        await self.out.finish(final)
        self.out.reset()

    def _drop(self) -> None:
        """Forget the request in progress (its partial decodes are cancelled or ignored)."""
        if self.session is not None:
            self.session._new_utterance()
        self.session, self.audio = None, None
        self.out.reset()


on_startup, on_shutdown = lifecycle("stt", SttWyoming)
