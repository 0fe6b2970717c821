"""From request text to audio: validation, splitting, cleaning, synthesis off the event loop.

Shared by the HTTP routes and the WebSocket session so both follow the same
rules (limits, voice fallback, sentence splitting, busy handling). Text is read
in the language of the voice that speaks it (``normalize.clean_for_speech``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from rvchat_common.errors import APIError
from rvchat_common.inference import InferenceQueue
from rvchat_common.sentences import SentenceSplitter

from .engine import TtsEngine
from .normalize import clean_for_speech
from .settings import Settings
from .voices import Resolved

log = logging.getLogger("rvchat.tts")

# How long a sentence of an already-started stream may wait for a busy model before giving up.
_BUSY_WAIT_S = 120.0


def segment_priority(index: int) -> int:
    """The model queue's priority of a reply's ``index``-th segment (lower goes first).

    With several replies at once, one reply's first audio goes before another's later sentences:
    a later sentence is only needed once the audio before it has played, the first is the
    latency a user waits through.
    """
    return min(index, 2)


class Speech(str):
    """A segment as a voice of ``language`` reads it, remembering it as written.

    Callers clean text before they know for sure which voice will speak it (an HTTP request
    resolves its voice after the text is checked; a WebSocket may change voice while sentences
    wait). ``Speaker.synth`` gives a Speech read for another language its own reading.
    """

    source: str
    language: str | None

    def __new__(cls, source: str, language: str | None) -> Speech:
        spoken = super().__new__(cls, clean_for_speech(source, language))
        spoken.source = source
        spoken.language = language
        return spoken


@dataclass
class Segment:
    text: str    # as written (shown to users)
    speech: str  # what the voice reads (a Speech when it came from Speaker.segments)


class Speaker:
    """The TTS pipeline around one engine: one model, used by one request at a time."""

    def __init__(self, engine: TtsEngine, queue: InferenceQueue, settings: Settings, metrics: Any) -> None:
        self.engine = engine
        self.queue = queue
        self.settings = settings
        self.metrics = metrics
        self.first_audio = metrics.histogram(
            "tts_first_audio_seconds", "Time from request to the first audio being ready", ["endpoint"])

    # -- text --
    def check_text(self, text: str) -> None:
        if len(text) > self.settings.max_text_chars:
            raise APIError(413, f"text is {len(text)} characters; the limit is "
                           f"{self.settings.max_text_chars} (split it into several requests)",
                           "text_too_long", param="text")
        if not text.strip():
            raise APIError(400, "text is empty", "empty_text", param="text")

    def splitter(self, clause_first: bool) -> SentenceSplitter:
        s = self.settings
        return SentenceSplitter(first_clause_words=s.first_clause_words if clause_first else 0,
                                first_max_words=s.first_segment_max_words if clause_first else 0,
                                min_words=s.min_segment_words, max_chars=s.max_segment_chars)

    def language(self, voice: str | None) -> str | None:
        """The language a voice speaks, from its config (the default voice's for None)."""
        return self.engine.catalog.language(voice)

    def clean(self, raw: str, voice: str | None = None) -> Speech:
        """``raw`` as ``voice`` reads it ('' when nothing is speakable); the default voice when None."""
        return Speech(raw, self.language(voice))

    def segments(self, text: str, clause_first: bool = False, voice: str | None = None) -> list[Segment]:
        """Validated text as speakable segments for ``voice``; 400 when nothing speakable is left."""
        self.check_text(text)
        splitter = self.splitter(clause_first)
        raw = splitter.push(text) + splitter.flush()
        language = self.language(voice)
        out = [Segment(r, c) for r in raw if (c := Speech(r, language))]
        if not out:
            raise APIError(400, "text has nothing to say once markup, code and symbols are removed",
                           "empty_text", param="text")
        self.check_speech(sum(len(s.speech) for s in out))
        return out

    def check_speech(self, chars: int) -> None:
        """413 when text spelled out for speech is longer than ``max_speech_chars``: what bounds the
        audio (and the time) one request may take, since '1' * 5000 reads as 5000 words."""
        limit = self.settings.max_speech_chars
        if chars > limit:
            raise APIError(413, f"the text reads as {chars} characters once numbers and symbols are "
                           f"spelled out; the limit is {limit} (send less, or in several requests)",
                           "speech_too_long", param="text")

    # -- voices --
    def resolve(self, voice: str | None) -> Resolved:
        return self.engine.catalog.resolve(voice)

    async def prepare_voice(self, voice: str | None) -> tuple[str, bool]:
        """(voice name to use, whether the request named an unknown voice); loads it off the loop."""
        resolved = self.resolve(voice)
        name = resolved.voice
        if name != self.engine.catalog.default:
            name = await self.queue.run(self.engine.ensure_voice, name)
        return name, resolved.fallback

    def sample_rate(self, voice: str) -> int:
        return self.engine.sample_rate(voice)

    def for_voice(self, text: str, voice: str) -> str:
        """``text`` as ``voice`` reads it: a Speech cleaned for another language is read again.

        So a German voice never gets the English number words of text cleaned for the default
        voice, whichever way the text came in.
        """
        if isinstance(text, Speech):
            language = self.language(voice)
            if language != text.language:
                return Speech(text.source, language)
        return text

    # -- synthesis --
    async def synth(self, text: str, voice: str, speed: float, cancel: Any = None,
                    wait_when_busy: bool = False, priority: int = 0) -> bytes:
        """PCM16 for one clean segment, in the model's worker thread.

        ``wait_when_busy``: for a stream that has already started, a full queue means wait
        (bounded) rather than fail, since a status code can no longer be sent. ``priority``: the
        model queue's (``segment_priority``).
        """
        text = self.for_voice(text, voice)
        if not text:
            return b""  # nothing speakable in this voice's language
        deadline = time.monotonic() + _BUSY_WAIT_S
        while True:
            try:
                with self.metrics.time_inference("synthesize"):
                    return await self.queue.run(self.engine.synthesize, text, voice, speed, cancel,
                                                priority=priority)
            except APIError as exc:
                if not (wait_when_busy and exc.status == 503 and time.monotonic() < deadline):
                    raise
            await asyncio.sleep(0.05)

    async def stream(self, segments: list[Segment], voice: str, speed: float, endpoint: str,
                     cancel: Any) -> AsyncIterator[bytes]:
        """PCM16 per segment, the first one as soon as it is ready."""
        t0 = time.perf_counter()
        for i, seg in enumerate(segments):
            pcm = await self.synth(seg.speech, voice, speed, cancel, wait_when_busy=i > 0,
                                   priority=segment_priority(i))
            if i == 0:
                self.first_audio.labels(endpoint).observe(time.perf_counter() - t0)
            yield pcm
