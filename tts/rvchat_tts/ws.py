"""WS /ws: text in (whole or token deltas), sentence audio out as soon as each sentence is complete.

Protocol: docs/protocols.md (TTS). Framing, JSON, limits and error events are the shared receive
loop's (rvchat_common.ws). Two tasks per connection: the receive loop (splits text, queues
segments, handles flush/cancel at once) and a worker (synthesises queued segments in order and
sends ``audio`` + PCM16). A cancel bumps the turn number and terminates the synthesis in flight;
the worker drops anything from an old turn, and sends that must not interleave with a cancel (an
``audio`` header and its frame, ``done``) hold the socket's send lock, so nothing of a cancelled
turn follows ``cancelled``. A turn's first segment waits for the model ahead of other
connections' later segments (``segment_priority``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from fastapi import APIRouter, WebSocket

from rvchat_common.app import is_ready
from rvchat_common.errors import WS_SERVER_ERROR, APIError
from rvchat_common.protocol import ProtocolError, tts
from rvchat_common.ws import EventSocket

from .speech import Speaker, segment_priority

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


class TtsSession:
    """One connection: text, flush, cancel and config in; sentence audio out."""

    def __init__(self, sock: EventSocket[tts.ClientEvent], speaker: Speaker) -> None:
        self.sock = sock
        self.speaker = speaker
        self.settings = speaker.settings
        self.voice = speaker.engine.catalog.default
        self.speed = 1.0
        self.splitter = speaker.splitter(clause_first=True)
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.turn = 0
        self.sent = 0  # audio events sent in the current turn
        self.queued_chars = 0
        self.cancel = speaker.engine.cancel_token()

    def ready(self) -> tts.Ready:
        return tts.Ready(sample_rate=self.speaker.sample_rate(self.voice), voice=self.voice)

    async def run(self) -> None:
        await self.sock.accept()
        await self.sock.send(self.ready())
        worker = asyncio.create_task(self._worker())
        try:
            await self.sock.run(self.on_event)
        finally:
            self.cancel.cancel()
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    async def on_event(self, event: tts.ClientEvent) -> None:
        if isinstance(event, tts.Text):
            self._text(event.text)
        elif isinstance(event, tts.Flush):
            for raw in self.splitter.flush():
                self._enqueue(raw)
            self.queue.put_nowait(_Item(self.turn, "done"))
        elif isinstance(event, tts.Cancel):
            await self._cancel()
        else:
            self._configure(event)
            await self.sock.send(self.ready())

    def _text(self, text: str) -> None:
        waiting = self.queued_chars + len(self.splitter.pending)
        if len(text) + waiting > self.settings.ws_max_pending_chars:
            raise ProtocolError("too_much_text", f"more than {self.settings.ws_max_pending_chars} "
                                "characters waiting to be spoken; this text was dropped "
                                "(send flush or cancel)", param="text")
        for raw in self.splitter.push(text):
            self._enqueue(raw)

    def _enqueue(self, raw: str) -> None:
        speech = self.speaker.clean(raw, self.voice)
        if speech and self.queued_chars + len(speech) > self.settings.max_speech_chars:
            raise ProtocolError("speech_too_long", f"more than {self.settings.max_speech_chars} characters "
                                "of speech waiting; this text was dropped (send flush or cancel)",
                                param="text")
        if speech:
            self.queued_chars += len(speech)
            self.queue.put_nowait(_Item(self.turn, "segment", raw, speech, self.voice, self.speed))

    def _configure(self, cfg: tts.Config) -> None:
        if cfg.speed is not None:
            self.speed = cfg.speed
        if "voice" in cfg.model_fields_set:
            self.voice = self.speaker.resolve(cfg.voice).voice  # null: the default voice

    async def _cancel(self) -> None:
        self.turn += 1  # first, so the worker drops whatever it is finishing
        self.cancel.cancel()
        self.cancel = self.speaker.engine.cancel_token()
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queued_chars = 0
        self.splitter.reset()
        async with self.sock.atomic() as tx:  # never between an audio event and its binary frame
            self.sent = 0
            await tx.send(tts.Cancelled())

    async def _worker(self) -> None:
        try:
            while True:
                await self._speak(await self.queue.get())
        except asyncio.CancelledError:
            raise
        except Exception:
            if self.sock.connected:  # our bug, not a client that left: say so rather than go quiet
                log.exception("TTS worker failed")
                await self.sock.close(WS_SERVER_ERROR, "internal_error", "internal error; closing")

    async def _speak(self, item: _Item) -> None:
        if item.turn != self.turn:
            return
        if item.kind == "done":
            async with self.sock.atomic() as tx:
                if item.turn == self.turn:
                    await tx.send(tts.Done(sentences=self.sent))
                    self.sent = 0
            return
        cancel = self.cancel
        try:
            pcm = await self.speaker.synth(item.speech, item.voice, item.speed, cancel, wait_when_busy=True,
                                           priority=segment_priority(self.sent))
        except APIError as exc:
            await self.sock.error(exc.code or "synthesis_failed", exc.message, status=exc.status)
            return
        except Exception as exc:
            if cancel.cancelled:
                return  # cancelled mid-sentence: nothing to send
            log.exception("synthesis failed on /ws")
            await self.sock.error("synthesis_failed", f"synthesis failed: {type(exc).__name__}", status=500)
            return
        finally:
            self.queued_chars = max(0, self.queued_chars - len(item.speech))
        async with self.sock.atomic() as tx:
            if item.turn != self.turn or not pcm:
                return
            await tx.send(tts.Audio(index=self.sent, text=item.text,
                                    sample_rate=self.speaker.sample_rate(item.voice), bytes=len(pcm)))
            await tx.send_bytes(pcm)
            self.sent += 1


@router.websocket("/ws")
async def speak_ws(ws: WebSocket) -> None:
    app = ws.app
    sock = EventSocket(ws, tts.client_events)
    if not is_ready(app):
        failed = app.state.load_state["load_error"]
        return await sock.refuse("model_loading", "model failed to load" if failed
                                 else "model is still loading; retry shortly")
    if app.state.ws_sessions >= app.state.settings.max_ws_sessions:
        return await sock.refuse("too_many_sessions", "too many TTS sessions; retry later")
    app.state.ws_sessions += 1
    try:
        await TtsSession(sock, app.state.speaker).run()
    finally:
        app.state.ws_sessions -= 1
