"""The ``/ws`` streaming session (protocol in docs/protocols.md).

PCM16 arrives in binary frames and is buffered; Silero VAD scores each new
32 ms window as it arrives (cheap, and outside the Whisper lock), so the
session always knows where the speech in the buffer ends.

Decodes of the whole buffer run at most one at a time, never while other
requests wait for the model, and only when there is speech they have not
covered yet:

- a ``partial`` after every ``partial_interval_s`` of new audio;
- an early final: once the tail has been silent for ``early_final_silence_s``
  (the user stopped talking; the orchestrator's VAD will send ``end`` a few
  hundred ms later), the buffer is decoded speculatively. When ``end`` comes
  and no speech arrived after that snapshot, its result *is* the final, sent
  at once or as soon as the decode in flight finishes.

Otherwise ``end`` decodes the buffer at once; a partial that has not reached
the model yet is dropped, so partials never delay the final by more than one
decode already running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect

from rvchat_common.audio import SAMPLE_RATE, pcm16_to_float, resample
from rvchat_common.errors import APIError, parse_json, ws_error, ws_event_error
from rvchat_common.inference import InferenceQueue

from . import guard
from .settings import Settings

log = logging.getLogger("rvchat.stt.ws")

class StreamSession:
    def __init__(self, ws: WebSocket, engine: Any, queue: InferenceQueue, settings: Settings,
                 metrics: Any = None) -> None:
        self.ws = ws
        self.engine = engine
        self.queue = queue
        self.settings = settings
        self.metrics = metrics
        self.sample_rate = SAMPLE_RATE
        self.language: str | None = engine.check_language(None)
        self.prompt: str | None = None
        self.partials = True
        self.utterance = 0  # bumped on end/reset/config: results of older decodes are then stale
        self.partial_task: asyncio.Task | None = None
        self.partial_started = False
        self._send_lock = asyncio.Lock()
        self._vad = hasattr(engine, "speech_probs")
        self._clear()

    def _clear(self) -> None:
        self.buffer = bytearray()
        self.vad_src_pos = 0  # bytes of the buffer already scored by VAD
        self.vad_pending = np.zeros(0, dtype=np.float32)  # 16 kHz audio not yet a whole window
        self.vad_samples = 0  # 16 kHz samples scored
        self.speech_end = 0  # 16 kHz sample where the last speech window ends (0: none yet)
        self.last_partial_at = 0  # 16 kHz samples at the last interval partial
        self.task_upto = 0  # 16 kHz samples covered by the decode in partial_task
        self.result: Any = None  # latest finished decode of this utterance ...
        self.result_upto = 0  # ... and how much audio it covered
        self.first_audio_at: float | None = None  # wall clock of the utterance's first frame

    # --- helpers -------------------------------------------------------------
    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * 2

    @property
    def buffered_samples(self) -> int:
        """Buffer length in 16 kHz samples."""
        return int(len(self.buffer) // 2 * SAMPLE_RATE / self.sample_rate)

    def _audio(self) -> np.ndarray:
        data = bytes(self.buffer[: len(self.buffer) - len(self.buffer) % 2])
        return resample(pcm16_to_float(data), self.sample_rate, SAMPLE_RATE)

    async def send(self, event: dict) -> None:
        async with self._send_lock:
            await self.ws.send_json(event)

    def _update_vad(self, flush: bool = False) -> None:
        """Score the audio that arrived since the last call, 32 ms window by window."""
        if not self._vad:
            return
        end = len(self.buffer) - len(self.buffer) % 2
        if end > self.vad_src_pos:
            chunk = pcm16_to_float(bytes(self.buffer[self.vad_src_pos:end]))
            self.vad_src_pos = end
            # Per-chunk resampling is a little rough at chunk edges: fine for VAD, never used to decode.
            chunk = resample(chunk, self.sample_rate, SAMPLE_RATE)
            self.vad_pending = np.concatenate([self.vad_pending, chunk])
        win = self.engine.VAD_WINDOW
        n = self.vad_pending.size if flush else self.vad_pending.size // win * win
        if n == 0:
            return
        probs = self.engine.speech_probs(self.vad_pending[:n])
        self.vad_pending = self.vad_pending[n:]
        # A low bar: whatever might be speech keeps the utterance open (no early final before it).
        voiced = np.flatnonzero(probs >= guard.SPAN_THRESHOLD)
        if voiced.size:
            self.speech_end = self.vad_samples + int(voiced[-1] + 1) * win
        self.vad_samples += n

    # --- main loop -----------------------------------------------------------
    async def run(self) -> None:
        await self.ws.accept()
        await self.send({"type": "ready", "sample_rate": self.sample_rate, "language": self.language,
                         "model": self.engine.model_name})
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self.ws.receive(),
                                                     timeout=self.settings.stream_idle_timeout_s)
                except asyncio.TimeoutError:
                    await ws_error(self.ws, "no data for too long; closing", "idle_timeout")
                    return
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("bytes") is not None:
                    await self.on_audio(message["bytes"])
                elif message.get("text") is not None:
                    await self.on_text(message["text"])
        except WebSocketDisconnect:
            return
        finally:
            self._cancel_partial()

    async def on_text(self, raw: str) -> None:
        try:
            event = parse_json(raw)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            await ws_event_error(self.ws, "text frames must be JSON objects", "invalid_json")
            return
        kind = event.get("type")
        if kind == "config":
            await self.on_config(event)
        elif kind in ("end", "flush"):
            await self.finalise()
        elif kind == "reset":
            self._new_utterance()
            await self.send({"type": "reset"})
        else:
            await ws_event_error(self.ws, f"unknown event type {kind!r} (expected config, end, flush "
                                          "or reset)", "unknown_event")

    async def on_config(self, event: dict) -> None:
        problems = []
        rate = event.get("sample_rate", self.sample_rate)
        if not isinstance(rate, int) or isinstance(rate, bool) or not 8000 <= rate <= 48000:
            problems.append("sample_rate must be an integer between 8000 and 48000")
        elif rate != self.sample_rate and self.buffer:
            problems.append("sample_rate cannot change in the middle of an utterance; "
                            "send end or reset first")
        language = self.language
        if "language" in event:
            try:
                lang = event["language"]
                if lang is not None and not isinstance(lang, str):
                    raise ValueError("language must be a string or null")
                language = self.engine.check_language(lang)
            except ValueError as exc:
                problems.append(str(exc))
        prompt = event.get("prompt", self.prompt)
        if prompt is not None and not isinstance(prompt, str):
            problems.append("prompt must be a string or null")
        partials = event.get("partials", self.partials)
        if not isinstance(partials, bool):
            problems.append("partials must be true or false")
        if problems:
            await ws_event_error(self.ws, "; ".join(problems), "invalid_config")
            return
        if (language, prompt) != (self.language, self.prompt):
            # Decodes made with the old language/prompt must not become this utterance's final.
            self._cancel_partial()
            self.utterance += 1
            self.result, self.result_upto = None, 0
        self.sample_rate, self.language, self.prompt, self.partials = rate, language, prompt, partials
        await self.send({"type": "ready", "sample_rate": self.sample_rate, "language": self.language,
                         "model": self.engine.model_name})

    async def on_audio(self, data: bytes) -> None:
        if not data:
            return
        limit = int(self.settings.stream_max_seconds * self.bytes_per_second)
        room = limit - len(self.buffer)
        if self.first_audio_at is None:
            self.first_audio_at = time.monotonic()
        self.buffer.extend(data[:room])
        self._update_vad()
        if len(self.buffer) >= limit:
            # Whisper reads 30 s windows; rather than grow without bound, close the utterance here.
            log.info("stream buffer reached %.0f s: sending an automatic final",
                     self.settings.stream_max_seconds)
            await self.finalise(auto=True)
            rest = data[room:]
            if rest:
                await self.on_audio(rest)
            return
        self._maybe_decode()

    # --- partials and early finals ----------------------------------------------
    def _maybe_decode(self) -> None:
        if self.partial_task and not self.partial_task.done():
            return
        total = self.buffered_samples
        if total < self.settings.partial_min_audio_s * SAMPLE_RATE:
            return
        # Nothing to gain from decoding unless speech arrived that no decode has covered yet.
        new_speech = self.speech_end > self.result_upto if self._vad else True
        if not new_speech:
            return
        interval = self.settings.partial_interval_s * SAMPLE_RATE
        interval_due = self.partials and total - self.last_partial_at >= interval
        if interval_due and self.first_audio_at is not None:
            # Audio arriving much faster than real time (a file, not a microphone): a partial would be
            # stale at once and only hold up the final.
            ahead = total / SAMPLE_RATE - (time.monotonic() - self.first_audio_at)
            interval_due = ahead < 1.0
        tail_silent = self._vad and self.speech_end > 0 and (
            self.vad_samples - self.speech_end >= self.settings.early_final_silence_s * SAMPLE_RATE)
        early_due = self.settings.early_final and tail_silent
        if not (interval_due or early_due):
            return
        if self.queue.waiting > 0:
            return  # others are waiting for the model: a partial is not worth delaying them
        if interval_due:
            self.last_partial_at = total
        audio = self._audio()
        self.task_upto = audio.size
        self.partial_started = False
        self.partial_task = asyncio.create_task(self._partial(self.utterance, audio))

    async def _partial(self, utterance: int, audio: np.ndarray) -> Any:
        def work() -> Any:
            self.partial_started = True
            return self.engine.transcribe_stream(audio, self.language, self.prompt)

        try:
            result = await self.queue.run(work)
        except APIError:
            return None  # queue full: skip this partial
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("partial transcription failed")
            return None
        if utterance != self.utterance:
            return result
        self.result, self.result_upto = result, audio.size
        if self.partials:
            try:
                await self.send({"type": "partial", "text": result.text,
                                 "audio_seconds": round(audio.size / SAMPLE_RATE, 3)})
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
        self.utterance += 1
        self._clear()

    # --- final ---------------------------------------------------------------
    async def _early_result(self) -> Any:
        """A decode of this utterance after which no speech arrived: it can serve as the final."""
        if not (self._vad and self.settings.early_final):
            return None
        if self.result is not None and self.result_upto >= self.speech_end:
            return self.result
        task = self.partial_task
        if task is not None and not task.cancelled() and self.task_upto >= self.speech_end:
            self.partial_task = None  # keep it from being cancelled: its result is the final
            try:
                return await task
            except Exception:
                return None
        return None

    async def finalise(self, auto: bool = False) -> None:
        t0 = time.perf_counter()
        self._update_vad(flush=True)
        audio = self._audio() if len(self.buffer) >= 2 else np.zeros(0, dtype=np.float32)
        no_speech = self._vad and self.speech_end == 0
        early = None if no_speech or audio.size == 0 else await self._early_result()
        self._new_utterance()
        if audio.size == 0 or no_speech:
            # VAD heard nothing: no decode at all, and never a hallucinated "Thank you."
            await self.send({"type": "final", "text": "", "language": self.language or "en",
                             "duration": round(audio.size / SAMPLE_RATE, 3), "segments": [],
                             "processing_ms": round((time.perf_counter() - t0) * 1000, 1)})
            return
        result = early
        if result is None:
            try:
                result = await self.queue.run(self.engine.transcribe_stream, audio, self.language,
                                              self.prompt)
            except APIError as exc:
                await ws_event_error(self.ws, exc.message, exc.code)
                return
            except Exception:
                log.exception("final transcription failed")
                await ws_error(self.ws, "transcription failed", "internal_error", close_code=1011)
                raise WebSocketDisconnect(1011)
        elapsed = (time.perf_counter() - t0) * 1000
        if self.metrics is not None:
            self.metrics.inference.labels("stream_final").observe(elapsed / 1000)
        log.debug("final in %.0f ms (%s)", elapsed, "early" if early is not None else "decoded")
        event = {
            "type": "final", "text": result.text, "language": result.language,
            "duration": round(audio.size / SAMPLE_RATE, 3),
            "segments": [{"start": s.start, "end": s.end, "text": s.text.strip()} for s in result.segments],
            "processing_ms": round(elapsed, 1),
        }
        if auto:
            event["auto"] = True
        await self.send(event)
