"""WS /ws: the streaming transcription session (protocol in docs/protocols.md, STT).

Framing, JSON, limits, the idle timeout and error events are the shared receive loop's
(rvchat_common.ws); the utterance's buffer and speech tracking are in utterance.py. This module
runs the decodes: at most one at a time, never while other requests wait for the model, and only
when there is speech they have not covered yet:

- a ``partial`` after every ``partial_interval_s`` of new audio;
- an early final: once the tail has been silent for ``early_final_silence_s`` (the user stopped
  talking; the orchestrator's VAD will send ``end`` a few hundred ms later), the buffer is decoded
  speculatively. When ``end`` comes and no speech arrived after that snapshot, its result *is* the
  final, sent at once or as soon as the decode in flight finishes.

Otherwise ``end`` decodes the buffer at once; a partial that has not reached the model yet is
dropped, so partials never delay the final by more than one decode already running.

With several streams on one model, a final goes before another stream's speculative decode, and
that before a partial (the model queue's priorities): a final is what a user is waiting for now.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
from fastapi import APIRouter, WebSocket

from rvchat_common.app import is_ready
from rvchat_common.audio import SAMPLE_RATE
from rvchat_common.errors import APIError
from rvchat_common.inference import InferenceQueue
from rvchat_common.observability import Metrics
from rvchat_common.protocol import ProtocolError, stt
from rvchat_common.ws import EventSocket, Limits

from .engine import SpeechScorer, SttEngine
from .schemas import Transcript
from .settings import Settings
from .utterance import Utterance

log = logging.getLogger("rvchat.stt.ws")
router = APIRouter()

# Model queue priorities (lower first): the turn's transcript, then the early final that is
# probably about to be one, then partials, which only fill the screen.
FINAL, EARLY_FINAL, PARTIAL = 0, 1, 2


class SttSession:
    """One connection: audio and control events in, partials and finals out."""

    def __init__(self, sock: EventSocket[stt.ClientEvent], engine: SttEngine, queue: InferenceQueue,
                 settings: Settings, metrics: Metrics) -> None:
        self.sock = sock
        self.engine = engine
        self.queue = queue
        self.settings = settings
        self.metrics = metrics
        self.scorer = engine if isinstance(engine, SpeechScorer) else None
        self.sample_rate = SAMPLE_RATE
        self.language: str | None = engine.check_language(None)
        self.prompt: str | None = None
        self.partials = True
        self.generation = 0  # bumped on end/reset/config: results of older decodes are then stale
        self.partial_task: asyncio.Task[Transcript | None] | None = None
        self.partial_started = False
        self.task_upto = 0  # 16 kHz samples covered by the decode in partial_task
        self.utt = self._utterance()

    def _utterance(self) -> Utterance:
        return Utterance(self.sample_rate, self.settings, self.scorer)

    def ready(self) -> stt.Ready:
        return stt.Ready(sample_rate=self.sample_rate, language=self.language, model=self.engine.model_name)

    async def run(self) -> None:
        await self.sock.accept()
        await self.sock.send(self.ready())
        try:
            await self.sock.run(self.on_event, self.on_pcm)
        finally:
            self._cancel_partial()

    async def on_event(self, event: stt.ClientEvent) -> None:
        if isinstance(event, stt.Config):
            await self.configure(event)
        elif isinstance(event, stt.End):
            await self.finalise(heard=bool(event.speech))
        else:
            self._new_utterance()
            await self.sock.send(stt.ResetAck())

    async def configure(self, cfg: stt.Config) -> None:
        rate = self.sample_rate if cfg.sample_rate is None else cfg.sample_rate
        if rate != self.sample_rate and self.utt.buffer:
            raise ProtocolError("invalid_event", "sample_rate cannot change in the middle of an utterance; "
                                "send end or reset first", param="sample_rate")
        language, prompt = self.language, self.prompt
        if "language" in cfg.model_fields_set:
            try:
                language = self.engine.check_language(cfg.language)
            except ValueError as exc:
                raise ProtocolError("unsupported_language", str(exc), param="language") from None
        if "prompt" in cfg.model_fields_set:
            prompt = cfg.prompt
        if (language, prompt) != (self.language, self.prompt):
            # Decodes made with the old language/prompt must not become this utterance's final.
            self._cancel_partial()
            self.generation += 1
            self.utt.result, self.utt.result_upto = None, 0
        if rate != self.sample_rate:
            self.sample_rate = rate
            self.utt = self._utterance()
        self.language, self.prompt = language, prompt
        if cfg.partials is not None:
            self.partials = cfg.partials
        await self.sock.send(self.ready())

    async def on_pcm(self, data: bytes) -> None:
        rest = self.utt.add(data)
        if self.utt.full:
            # Whisper reads 30 s windows; rather than grow without bound, close the utterance here.
            log.info("stream buffer reached %.0f s: sending an automatic final",
                     self.settings.stream_max_seconds)
            await self.finalise(auto=True)
            if rest:
                await self.on_pcm(rest)
            return
        self._maybe_decode()

    # --- partials and early finals ----------------------------------------------------------
    def _maybe_decode(self) -> None:
        if self.partial_task and not self.partial_task.done():
            return
        utt = self.utt
        if utt.samples < self.settings.partial_min_audio_s * SAMPLE_RATE or not utt.new_speech():
            return
        interval_due = utt.partial_due(self.partials)
        if not (interval_due or utt.early_final_due()):
            return
        if self.queue.waiting > 0:
            return  # others are waiting for the model: a partial is not worth delaying them
        if interval_due:
            utt.last_partial_at = utt.samples
        audio = utt.audio()
        self.task_upto = audio.size
        self.partial_started = False
        priority = PARTIAL if interval_due else EARLY_FINAL
        self.partial_task = asyncio.create_task(self._partial(self.generation, utt, audio, priority))

    async def _partial(self, generation: int, utt: Utterance, audio: np.ndarray,
                       priority: int) -> Transcript | None:
        def work() -> Transcript:
            self.partial_started = True
            return self.engine.transcribe_stream(audio, self.language, self.prompt)

        try:
            result = await self.queue.run(work, priority=priority)
        except APIError:
            return None  # queue full: skip this partial
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("partial transcription failed")
            return None
        if generation != self.generation:
            return result
        utt.result, utt.result_upto = result, audio.size
        if self.partials:
            try:
                await self.sock.send(stt.Partial(text=result.text,
                                                 audio_seconds=round(audio.size / SAMPLE_RATE, 3)))
            except Exception:  # the client has gone; the receive loop will notice
                pass
        return result

    def _cancel_partial(self) -> None:
        task = self.partial_task
        # A partial already inside the model cannot be interrupted; its result is dropped instead.
        if task and not task.done() and not self.partial_started:
            task.cancel()
        self.partial_task = None

    def _new_utterance(self) -> None:
        self._cancel_partial()
        self.generation += 1
        self.utt = self._utterance()

    # --- final ------------------------------------------------------------------------------
    async def _early_result(self) -> Transcript | None:
        """A decode of this utterance after which no speech arrived: it can serve as the final."""
        utt = self.utt
        if utt.result is not None and utt.covers_speech(utt.result_upto):
            return utt.result
        task = self.partial_task
        # One still queued behind other streams' work is dropped: the final goes ahead of them.
        if task is not None and self.partial_started and not task.cancelled() \
                and utt.covers_speech(self.task_upto):
            self.partial_task = None  # keep it from being cancelled: its result is the final
            try:
                return await task
            except Exception:
                return None
        return None

    async def finalise(self, auto: bool = False, heard: bool = False) -> None:
        """Transcribe the utterance and send ``final``; the next audio starts a new utterance.

        ``heard``: the client's VAD heard speech (``end`` with ``speech``), so the speech gate's count of
        windows does not get to call it silence: on a falsetto, Silero here found 3 of the 4 windows the
        gate wants where the VAD service's heard 0.64 s of speech, and the user's words were lost. Audio
        in which this stream's tracker heard nothing at all still gets no decode, and a decode still goes
        through the hallucination filter.

        A failed decode propagates: the receive loop answers ``internal_error`` and closes with 1011;
        a full model queue (APIError 503) is an error event and the connection stays open.
        """
        t0 = time.perf_counter()
        utt = self.utt
        utt.finish_scoring()
        audio = utt.audio()
        early = None if utt.no_speech or audio.size == 0 else await self._early_result()
        if early is not None and heard and not early.segments:
            early = None  # an early decode the gate silenced: decode again without the gate
        self._new_utterance()
        duration = round(audio.size / SAMPLE_RATE, 3)
        if audio.size == 0 or utt.no_speech:
            # VAD heard nothing: no decode at all, and never a hallucinated "Thank you."
            await self.sock.send(stt.Final(text="", language=self.language or "en", duration=duration,
                                           processing_ms=round((time.perf_counter() - t0) * 1000, 1)))
            return
        result = early
        if result is None:
            result = await self.queue.run(self.engine.transcribe_stream, audio, self.language, self.prompt,
                                          not heard, priority=FINAL)
        elapsed = (time.perf_counter() - t0) * 1000
        self.metrics.inference.labels("stream_final").observe(elapsed / 1000)
        log.debug("final in %.0f ms (%s)", elapsed, "early" if early is not None else "decoded")
        await self.sock.send(stt.Final(
            text=result.text, language=result.language, duration=duration,
            segments=[stt.FinalSegment(start=s.start, end=s.end, text=s.text.strip())
                      for s in result.segments],
            processing_ms=round(elapsed, 1), auto=True if auto else None))


@router.websocket("/ws")
async def transcribe_ws(ws: WebSocket) -> None:
    """Streaming transcription: PCM16 frames in, ``partial`` and ``final`` events out."""
    app = ws.app
    settings: Settings = app.state.settings
    sock = EventSocket(ws, stt.client_events, Limits(idle_timeout_s=settings.stream_idle_timeout_s))
    if not is_ready(app):
        return await sock.refuse("model_loading", "model is still loading; retry shortly")
    if app.state.streams >= settings.max_streams:
        return await sock.refuse("too_many_streams", "too many concurrent streams; retry shortly")
    app.state.streams += 1
    try:
        await SttSession(sock, app.state.engine, app.state.queue, settings, app.state.metrics).run()
    finally:
        app.state.streams -= 1
