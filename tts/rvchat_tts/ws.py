"""WS /ws: text in (whole or token deltas), sentence audio out as soon as each sentence is complete.

Protocol: docs/protocols.md (TTS). Two tasks per connection: the receive loop
(splits text, queues segments, handles flush/cancel at once) and a worker
(synthesises queued segments in order and sends ``audio`` + PCM16). A cancel
bumps the turn number and terminates the synthesis in flight; the worker drops
anything from an old turn, and a send lock keeps each ``audio`` event and its
binary frame together, so nothing of a cancelled turn follows ``cancelled``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from rvchat_common.errors import APIError, parse_json, ws_error, ws_event_error

from .schemas import MAX_SPEED, MIN_SPEED
from .speech import Speaker

log = logging.getLogger("rvchat.tts")
router = APIRouter()


@dataclass
class _Item:
    turn: int
    kind: str  # "segment" or "done"
    text: str = ""
    speech: str = ""
    voice: str = ""
    speed: float = 1.0


class TTSSession:
    def __init__(self, ws: WebSocket, speaker: Speaker) -> None:
        self.ws = ws
        self.speaker = speaker
        self.settings = speaker.settings
        self.voice = speaker.engine.catalog.default
        self.speed = 1.0
        self.splitter = speaker.splitter(clause_first=True)
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.turn = 0
        self.sent = 0  # audio events sent in the current turn
        self.queued_chars = 0
        self.send_lock = asyncio.Lock()
        self.cancel = speaker.engine.cancel_token()

    async def _send_ready(self) -> None:
        async with self.send_lock:
            await self.ws.send_json({"type": "ready", "sample_rate": self.speaker.sample_rate(self.voice),
                                     "voice": self.voice})

    async def run(self) -> None:
        await self._send_ready()
        worker = asyncio.create_task(self._worker())
        try:
            while True:
                msg = await self.ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                if msg.get("bytes") is not None:
                    await self._event_error("binary frames are not accepted; send JSON text events",
                                            "unexpected_binary")
                    continue
                try:
                    event = parse_json(msg.get("text") or "")
                except ValueError:
                    await self._event_error("malformed JSON", "invalid_json")
                    continue
                if not isinstance(event, dict):
                    await self._event_error("events must be JSON objects with a 'type'", "invalid_event")
                    continue
                await self._handle(event)
        finally:
            self.cancel.cancel()
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    async def _event_error(self, message: str, code: str) -> None:
        async with self.send_lock:
            await ws_event_error(self.ws, message, code)

    async def _handle(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "text":
            text = event.get("text")
            if not isinstance(text, str):
                return await self._event_error("'text' must be a string", "invalid_text")
            waiting = self.queued_chars + len(self.splitter.pending)
            if len(text) + waiting > self.settings.ws_max_pending_chars:
                return await self._event_error(
                    f"more than {self.settings.ws_max_pending_chars} characters waiting to be spoken; "
                    "this text was dropped (send flush or cancel)", "too_much_text")
            for raw in self.splitter.push(text):
                self._enqueue(raw)
        elif kind in ("flush", "end"):
            for raw in self.splitter.flush():
                self._enqueue(raw)
            self.queue.put_nowait(_Item(self.turn, "done"))
        elif kind in ("cancel", "reset"):
            await self._cancel()
        elif kind == "config":
            await self._config(event)
        else:
            await self._event_error(f"unknown event type {kind!r} (expected text, flush, cancel, config)",
                                    "unknown_event")

    def _enqueue(self, raw: str) -> None:
        speech = self.speaker.clean(raw)
        if speech:
            self.queued_chars += len(speech)
            self.queue.put_nowait(_Item(self.turn, "segment", raw, speech, self.voice, self.speed))

    async def _cancel(self) -> None:
        self.turn += 1  # first, so the worker drops whatever it is finishing
        self.cancel.cancel()
        self.cancel = self.speaker.engine.cancel_token()
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queued_chars = 0
        self.splitter.reset()
        async with self.send_lock:  # never between an audio event and its binary frame
            self.sent = 0
            await self.ws.send_json({"type": "cancelled"})

    async def _config(self, event: dict) -> None:
        if "speed" in event and event["speed"] is not None:
            speed = event["speed"]
            if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not math.isfinite(speed) \
                    or not MIN_SPEED <= speed <= MAX_SPEED:
                return await self._event_error(f"speed must be a number from {MIN_SPEED} to {MAX_SPEED}",
                                               "invalid_speed")
            self.speed = float(speed)
        if "voice" in event:
            voice = event["voice"]
            if voice is not None and not isinstance(voice, str):
                return await self._event_error("'voice' must be a string", "invalid_voice")
            resolved = self.speaker.resolve(voice)
            self.voice = resolved.voice
        await self._send_ready()

    async def _worker(self) -> None:
        while True:
            item = await self.queue.get()
            if item.turn != self.turn:
                continue
            if item.kind == "done":
                async with self.send_lock:
                    if item.turn == self.turn:
                        await self.ws.send_json({"type": "done", "sentences": self.sent})
                        self.sent = 0
                continue
            cancel = self.cancel
            try:
                pcm = await self.speaker.synth(item.speech, item.voice, item.speed, cancel,
                                               wait_when_busy=True)
            except APIError as exc:
                await self._event_error(exc.message, exc.code or "synthesis_failed")
                continue
            except Exception as exc:
                if cancel.cancelled:
                    continue  # cancelled mid-sentence: nothing to send
                log.exception("synthesis failed on /ws")
                await self._event_error(f"synthesis failed: {type(exc).__name__}", "synthesis_failed")
                continue
            finally:
                self.queued_chars = max(0, self.queued_chars - len(item.speech))
            async with self.send_lock:
                if item.turn != self.turn or not pcm:
                    continue
                await self.ws.send_json({"type": "audio", "index": self.sent, "text": item.text,
                                         "sample_rate": self.speaker.sample_rate(item.voice),
                                         "bytes": len(pcm)})
                await self.ws.send_bytes(pcm)
                self.sent += 1


@router.websocket("/ws")
async def tts_ws(ws: WebSocket) -> None:
    app = ws.app
    await ws.accept()
    state = app.state.load_state
    if not state["loaded"]:
        reason = "model failed to load" if state["load_error"] else "model is still loading; retry shortly"
        return await ws_error(ws, reason, "model_loading", close_code=1013)
    if app.state.ws_sessions >= app.state.settings.max_ws_sessions:
        return await ws_error(ws, "too many TTS sessions; retry later", "too_many_sessions", close_code=1013)
    app.state.ws_sessions += 1
    try:
        await TTSSession(ws, app.state.speaker).run()
    except WebSocketDisconnect:
        pass
    except Exception as exc:  # a send to a closed socket, or our bug: close cleanly, stay up
        if not isinstance(exc, (RuntimeError, ConnectionError)):
            log.exception("/ws session failed")
        await ws_error(ws, "internal error", "internal_error", close_code=1011)
    finally:
        app.state.ws_sessions -= 1
