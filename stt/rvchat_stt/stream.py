"""The ``/ws`` streaming session (protocol in docs/protocols.md).

PCM16 arrives in binary frames and is buffered. While it arrives, a partial
transcript of the whole buffer is produced at a bounded rate: at most one
partial in flight, a new one only after ``partial_interval_s`` of new audio,
none while other requests wait for the model. ``end`` (or ``flush``) drops a
partial that has not reached the model yet and transcribes the buffer at once,
so partials never delay the final by more than one decode already running.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect

from rvchat_common.audio import SAMPLE_RATE, pcm16_to_float, resample
from rvchat_common.errors import APIError, ws_error, ws_event_error
from rvchat_common.inference import InferenceQueue

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
        self.buffer = bytearray()
        self.utterance = 0  # bumped on end/reset: stale partials are then dropped
        self.last_partial_bytes = 0
        self.partial_task: asyncio.Task | None = None
        self.partial_started = False
        self._send_lock = asyncio.Lock()

    # --- helpers -------------------------------------------------------------
    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * 2

    @property
    def buffered_seconds(self) -> float:
        return len(self.buffer) / self.bytes_per_second

    def _audio(self) -> np.ndarray:
        data = bytes(self.buffer[: len(self.buffer) - len(self.buffer) % 2])
        return resample(pcm16_to_float(data), self.sample_rate, SAMPLE_RATE)

    async def send(self, event: dict) -> None:
        async with self._send_lock:
            await self.ws.send_json(event)

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
                    if not await self.on_text(message["text"]):
                        return
        except WebSocketDisconnect:
            return
        finally:
            self._cancel_partial()

    async def on_text(self, raw: str) -> bool:
        """Handle a JSON event; False ends the session."""
        try:
            event = json.loads(raw)
        except ValueError:
            await ws_event_error(self.ws, "text frames must be JSON objects", "invalid_json")
            return True
        if not isinstance(event, dict):
            await ws_event_error(self.ws, "text frames must be JSON objects", "invalid_json")
            return True
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
        return True

    async def on_config(self, event: dict) -> None:
        problems = []
        rate = event.get("sample_rate", self.sample_rate)
        if not isinstance(rate, int) or isinstance(rate, bool) or not 8000 <= rate <= 48000:
            problems.append("sample_rate must be an integer between 8000 and 48000")
        elif rate != self.sample_rate and self.buffer:
            problems.append("sample_rate cannot change in the middle of an utterance; send end or reset first")
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
        self.sample_rate, self.language, self.prompt, self.partials = rate, language, prompt, partials
        await self.send({"type": "ready", "sample_rate": self.sample_rate, "language": self.language,
                         "model": self.engine.model_name})

    async def on_audio(self, data: bytes) -> None:
        if not data:
            return
        limit = int(self.settings.stream_max_seconds * self.bytes_per_second)
        room = limit - len(self.buffer)
        self.buffer.extend(data[:room])
        if len(self.buffer) >= limit:
            # Whisper reads 30 s windows; rather than grow without bound, close the utterance here.
            log.info("stream buffer reached %.0f s: sending an automatic final", self.settings.stream_max_seconds)
            await self.finalise(auto=True)
            rest = data[room:]
            if rest:
                await self.on_audio(rest)
            return
        self._maybe_partial()

    # --- partials ------------------------------------------------------------
    def _maybe_partial(self) -> None:
        if not self.partials or (self.partial_task and not self.partial_task.done()):
            return
        new = (len(self.buffer) - self.last_partial_bytes) / self.bytes_per_second
        if self.buffered_seconds < self.settings.partial_min_audio_s or new < self.settings.partial_interval_s:
            return
        if self.queue.waiting > 0:
            return  # others are waiting for the model: a partial is not worth delaying them
        self.last_partial_bytes = len(self.buffer)
        self.partial_started = False
        self.partial_task = asyncio.create_task(self._partial(self.utterance, self._audio()))

    async def _partial(self, utterance: int, audio: np.ndarray) -> None:
        def work() -> Any:
            self.partial_started = True
            return self.engine.transcribe_stream(audio, self.language, self.prompt)

        try:
            result = await self.queue.run(work)
        except APIError:
            return  # queue full: skip this partial
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("partial transcription failed")
            return
        if utterance == self.utterance:
            try:
                await self.send({"type": "partial", "text": result.text,
                                 "audio_seconds": round(audio.size / SAMPLE_RATE, 3)})
            except Exception:  # the client has gone; the receive loop will notice
                pass

    def _cancel_partial(self) -> None:
        task = self.partial_task
        # A partial already inside the model cannot be interrupted; its result is dropped instead.
        if task and not task.done() and not self.partial_started:
            task.cancel()
        self.partial_task = None

    def _new_utterance(self) -> None:
        self._cancel_partial()
        self.utterance += 1
        self.buffer = bytearray()
        self.last_partial_bytes = 0

    # --- final ---------------------------------------------------------------
    async def finalise(self, auto: bool = False) -> None:
        t0 = time.perf_counter()
        audio = self._audio() if len(self.buffer) >= 2 else np.zeros(0, dtype=np.float32)
        self._new_utterance()
        if audio.size == 0:
            await self.send({"type": "final", "text": "", "language": self.language or "en",
                             "duration": 0.0, "segments": [], "processing_ms": 0.0})
            return
        try:
            result = await self.queue.run(self.engine.transcribe_stream, audio, self.language, self.prompt)
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
        event = {
            "type": "final", "text": result.text, "language": result.language,
            "duration": result.duration,
            "segments": [{"start": s.start, "end": s.end, "text": s.text.strip()} for s in result.segments],
            "processing_ms": round(elapsed, 1),
        }
        if auto:
            event["auto"] = True
        await self.send(event)
