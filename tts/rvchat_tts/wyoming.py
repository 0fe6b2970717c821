"""Wyoming text to speech for Home Assistant (``TTS_WYOMING_PORT``): the server loop, audio chunking
and ``info`` building are rvchat_common.wyoming's; the text goes through the same pipeline as HTTP
and /ws (speech.py: limits, sentence splitting, numbers and symbols read out, the model queue with
a reply's first sentence ahead of other replies' later ones).

One request:

    -> synthesize {text, voice?: {name? | language?}}
    <- audio-start {rate, width: 2, channels: 1}, audio-chunk ... , audio-stop

Streamed (wyoming >= 1.7; Home Assistant sends the text as its LLM writes it):

    -> synthesize-start {voice?}
    -> synthesize-chunk {text} ...
    <- audio-start, audio-chunk ..., audio-stop       once per sentence, as soon as it is complete
    -> synthesize {text}                               (the whole text again, for older servers: ignored)
    -> synthesize-stop
    <- the last sentences' audio, then synthesize-stopped

A voice is named as ``info`` lists it (or by an alias GET /voices lists), or chosen by language;
an unknown one is an ``error`` (HTTP falls back to the default voice, but Home Assistant picks
voices from our own list, so a miss here is a configuration mistake worth saying).
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI
from wyoming.audio import AudioStart, AudioStop
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from rvchat_common.app import is_ready
from rvchat_common.errors import APIError
from rvchat_common.wyoming import Connection, Model, WyomingError, audio_chunks, lifecycle, tts_info

from .engine import CancelToken
from .speech import Speaker, Speech, segment_priority

log = logging.getLogger("rvchat.tts.wyoming")

PROGRAM = "rvchat-tts"
PIPER = ("Piper (rhasspy / Open Home Foundation)", "https://github.com/OHF-Voice/piper1-gpl")


def info(app: FastAPI) -> Event:
    catalog = app.state.speaker.engine.catalog
    voices = []
    for v in catalog.listing():
        details = [v.get("language"), f"{v['sample_rate']} Hz" if v.get("sample_rate") else None,
                   "default" if v.get("default") else None]
        voices.append(Model(name=v["name"], languages=[v.get("language") or "en_US"],
                            description=f"{v['name']} ({', '.join(d for d in details if d)})"))
    return tts_info(PROGRAM, "Realtime Voice Chat text to speech (Piper)", voices, PIPER).event()


def _lang(code: str) -> str:
    return code.strip().lower().replace("-", "_")


def choose_voice(speaker: Speaker, voice: object) -> str:
    """The installed voice a request's ``voice`` ({name} or {language}) means; WyomingError if none."""
    if voice is None:
        voice = {}
    if not isinstance(voice, dict):
        raise WyomingError("invalid_event", "voice must be an object with a name or a language")
    catalog = speaker.engine.catalog
    name, language = voice.get("name"), voice.get("language")
    if name is not None:
        if not isinstance(name, str):
            raise WyomingError("invalid_event", "voice.name must be a string")
        resolved = catalog.resolve(name)
        if resolved.fallback:
            raise WyomingError("unknown_voice", f"no voice {name[:80]!r} here; describe lists the voices")
        return resolved.voice
    if language is not None:
        if not isinstance(language, str):
            raise WyomingError("invalid_event", "voice.language must be a string")
        want = _lang(language)
        names = [catalog.default] + [n for n in catalog.voices if n != catalog.default]
        langs = {n: _lang(catalog.language(n) or "") for n in names}
        # An exact match ("en_US"), else the same language in any region ("en" or "en_GB" -> "en_US").
        for match in (lambda lang: lang == want, lambda lang: lang.split("_")[0] == want.split("_")[0]):
            for n in names:
                if langs[n] and match(langs[n]):
                    return n
        raise WyomingError("unsupported_language", f"no voice speaks {language[:40]!r}; describe lists "
                           "the voices and their languages")
    return catalog.default


class TtsWyoming:
    """One Wyoming connection to the TTS service."""

    def __init__(self, app: FastAPI, conn: Connection) -> None:
        self.app = app
        self.conn = conn
        self.speaker: Speaker = app.state.speaker
        self.settings = self.speaker.settings
        self.cancel: CancelToken = self.speaker.engine.cancel_token()
        # The streamed request in progress (synthesize-start .. synthesize-stop), if any.
        self.streaming = False
        self.voice = ""
        self.splitter = self.speaker.splitter(clause_first=True)
        self.queue: asyncio.Queue[Speech | None] = asyncio.Queue()
        self.queued_chars = 0
        self.sent = 0  # sentences sent in this request
        self.worker: asyncio.Task[None] | None = None
        self.speaking = False  # a synthesize request is being answered

    async def on_event(self, event: Event) -> None:
        if Describe.is_type(event.type):
            await self.conn.send(info(self.app))
        elif SynthesizeStart.is_type(event.type):
            await self._stream_start(event)
        elif SynthesizeChunk.is_type(event.type):
            self._stream_text(event)
        elif SynthesizeStop.is_type(event.type):
            await self._stream_stop()
        elif Synthesize.is_type(event.type) and not self.streaming:
            # (in a stream it repeats the text already streamed: ignored)
            self.speaking = True
            try:
                await self._synthesize(event)
            finally:
                self.speaking = False

    @property
    def busy(self) -> bool:
        return self.streaming or self.speaking

    async def close(self) -> None:
        self.cancel.cancel()  # stops the ONNX run in flight
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)

    # --- checks shared by both kinds of request --------------------------------------------------
    def _ready(self) -> None:
        if not is_ready(self.app):
            failed = self.app.state.load_state["load_error"]
            raise WyomingError("model_loading", "the voice failed to load" if failed
                               else "the voice is still loading; retry shortly")

    @staticmethod
    def _text(event: Event) -> str:
        text = event.data.get("text")
        if not isinstance(text, str):
            raise WyomingError("invalid_event", f"{event.type} needs a string text")
        fmt = event.data.get("text_format")
        if fmt not in (None, "text"):
            raise WyomingError("unsupported_text_format", f"text_format {str(fmt)[:20]!r} is not supported; "
                               "send plain text")
        return text

    async def _voice(self, event: Event) -> str:
        voice = choose_voice(self.speaker, event.data.get("voice"))
        try:
            name, _ = await self.speaker.prepare_voice(voice)
        except APIError as exc:
            raise WyomingError(exc.code or "voice_unavailable", exc.message) from None
        return name

    async def _say(self, speech: str, voice: str, index: int, first_waits: bool) -> bytes:
        """PCM16 for one segment (the first of a request fails at once on a full queue, later ones
        wait, as on HTTP: once audio has started there is no clean way to refuse)."""
        return await self.speaker.synth(speech, voice, 1.0, self.cancel,
                                        wait_when_busy=index > 0 or first_waits,
                                        priority=segment_priority(index))

    async def _send_audio(self, pcm: bytes, rate: int) -> None:
        await self.conn.send_all(audio_chunks(pcm, rate))

    # --- one request ------------------------------------------------------------------------------
    async def _synthesize(self, event: Event) -> None:
        self._ready()
        text = self._text(event)
        chosen = choose_voice(self.speaker, event.data.get("voice"))
        try:
            segments = self.speaker.segments(text, clause_first=True, voice=chosen)
        except APIError as exc:
            raise WyomingError(exc.code or "invalid_text", exc.message) from None
        voice = await self._voice(event)
        rate = self.speaker.sample_rate(voice)
        self.cancel = self.speaker.engine.cancel_token()
        started = False
        for i, seg in enumerate(segments):
            try:
                pcm = await self._say(seg.speech, voice, i, first_waits=False)
            except APIError as exc:
                if started:
                    await self.conn.send(AudioStop().event())
                raise WyomingError(exc.code or "synthesis_failed", exc.message) from None
            if not started:
                await self.conn.send(AudioStart(rate=rate, width=2, channels=1).event())
                started = True
            await self._send_audio(pcm, rate)
        await self.conn.send(AudioStop().event())
        log.info("wyoming synthesize: %d segments with %s", len(segments), voice)

    # --- a streamed request -----------------------------------------------------------------------
    async def _stream_start(self, event: Event) -> None:
        self._ready()
        if self.streaming:
            raise WyomingError("invalid_event",
                               "synthesize-start inside a stream; send synthesize-stop first")
        fmt = event.data.get("text_format")
        if fmt not in (None, "text"):
            raise WyomingError("unsupported_text_format", f"text_format {str(fmt)[:20]!r} is not supported; "
                               "send plain text")
        self.voice = await self._voice(event)
        self.streaming = True
        self.splitter = self.speaker.splitter(clause_first=True)
        self.queue = asyncio.Queue()
        self.queued_chars = 0
        self.sent = 0
        self.cancel = self.speaker.engine.cancel_token()
        self.worker = asyncio.create_task(self._speak_queue(self.queue, self.voice))

    def _stream_text(self, event: Event) -> None:
        if not self.streaming:
            raise WyomingError("invalid_event",
                               "synthesize-chunk outside a stream; send synthesize-start first")
        text = self._text(event)
        limit = self.settings.ws_max_pending_chars
        if len(text) + self.queued_chars + len(self.splitter.pending) > limit:
            raise WyomingError("too_much_text", f"more than {limit} characters waiting to be spoken; this "
                               "text was dropped")
        for raw in self.splitter.push(text):
            self._enqueue(raw)

    def _enqueue(self, raw: str) -> None:
        speech = self.speaker.clean(raw, self.voice)
        if not speech:
            return
        limit = self.settings.max_speech_chars
        if self.queued_chars + len(speech) > limit:
            raise WyomingError("speech_too_long", f"more than {limit} characters of speech waiting; this "
                               "text was dropped")
        self.queued_chars += len(speech)
        self.queue.put_nowait(speech)

    async def _stream_stop(self) -> None:
        if not self.streaming:
            raise WyomingError("invalid_event", "synthesize-stop outside a stream")
        for raw in self.splitter.flush():
            self._enqueue(raw)
        self.queue.put_nowait(None)
        worker, self.worker = self.worker, None
        try:
            if worker is not None:
                await worker
        finally:
            self.streaming = False
        await self.conn.send(SynthesizeStopped().event())
        log.info("wyoming stream: %d sentences with %s", self.sent, self.voice)

    async def _speak_queue(self, queue: asyncio.Queue[Speech | None], voice: str) -> None:
        """Speak the stream's sentences in order, each as audio-start .. audio-stop, until None."""
        rate = self.speaker.sample_rate(voice)
        while (speech := await queue.get()) is not None:
            try:
                pcm = await self._say(speech, voice, self.sent, first_waits=True)
            except APIError as exc:
                await self.conn.error(exc.code or "synthesis_failed", exc.message)
                continue
            finally:
                self.queued_chars = max(0, self.queued_chars - len(speech))
            if not pcm:
                continue
            await self.conn.send(AudioStart(rate=rate, width=2, channels=1).event())
            await self._send_audio(pcm, rate)
            await self.conn.send(AudioStop().event())
            self.sent += 1


on_startup, on_shutdown = lifecycle("tts", TtsWyoming)
