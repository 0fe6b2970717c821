"""WS /ws: turn detection on a live PCM16 stream (docs/protocols.md, VAD).

One :class:`~.turns.TurnStream` per connection over the engine's shared model session, so two
clients never disturb each other's state. Framing, JSON, limits and error events are the shared
receive loop's (rvchat_common.ws); this module maps events to the stream and back.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, WebSocket
from prometheus_client import Histogram

from rvchat_common.app import is_ready
from rvchat_common.protocol import vad
from rvchat_common.ws import EventSocket

from .engine import VadEngine
from .settings import Settings
from .turns import TurnConfig, TurnStream

router = APIRouter()

# A frame that needs at most this many 32 ms model calls (~0.2 ms each) runs on the event loop:
# a thread hop costs about as much as the call, and turn-taking latency is the point of /ws.
# Bigger frames (a client pushing seconds at once) go to a worker thread.
INLINE_CHUNKS = 4


class VadSession:
    """One connection: config, PCM16 frames, flush and reset in; turn events out."""

    def __init__(self, sock: EventSocket[vad.ClientEvent], engine: VadEngine, settings: Settings,
                 frame_seconds: Histogram) -> None:
        self.sock = sock
        self.frame_seconds = frame_seconds
        self.stream = TurnStream(
            engine.new_stream(),
            TurnConfig(settings.threshold, settings.min_speech_ms, settings.stream_min_silence_ms,
                       settings.speech_pad_ms, settings.stream_reset_silence_ms),
        )

    def ready(self) -> vad.Ready:
        cfg = self.stream.config
        return vad.Ready(sample_rate=self.stream.sample_rate, threshold=cfg.threshold,
                         min_speech_ms=cfg.min_speech_ms, min_silence_ms=cfg.min_silence_ms,
                         speech_pad_ms=cfg.speech_pad_ms, probabilities=self.stream.probabilities)

    async def run(self) -> None:
        await self.sock.accept()
        await self.sock.send(self.ready())
        await self.sock.run(self.on_event, self.on_pcm)

    async def on_event(self, event: vad.ClientEvent) -> None:
        if isinstance(event, vad.Config):
            self.configure(event)
            await self.sock.send(self.ready())
        elif isinstance(event, vad.Flush):
            for out in self.stream.flush():
                await self.sock.send(out)
        else:
            self.stream.reset()

    def configure(self, cfg: vad.Config) -> None:
        for name in ("threshold", "min_speech_ms", "min_silence_ms", "speech_pad_ms"):
            value = getattr(cfg, name)
            if value is not None:
                setattr(self.stream.config, name, value)
        if cfg.probabilities is not None:
            self.stream.probabilities = cfg.probabilities
        if cfg.sample_rate is not None and cfg.sample_rate != self.stream.sample_rate:
            self.stream.set_sample_rate(cfg.sample_rate)

    async def on_pcm(self, data: bytes) -> None:
        t0 = time.perf_counter()
        if self.stream.pending_chunks(len(data)) <= INLINE_CHUNKS:
            events = self.stream.feed(data)
        else:
            events = await asyncio.to_thread(self.stream.feed, data)
        self.frame_seconds.observe(time.perf_counter() - t0)
        for event in events:
            await self.sock.send(event)


@router.websocket("/ws")
async def turn_ws(ws: WebSocket) -> None:
    """Turn detection on a live PCM16 stream (see docs/protocols.md, VAD)."""
    app = ws.app
    sock = EventSocket(ws, vad.client_events)
    if not is_ready(app):
        return await sock.refuse("model_loading", "model is still loading; retry shortly")
    if app.state.streams >= app.state.settings.max_streams:
        return await sock.refuse("too_many_streams", "too many concurrent streams; retry shortly")
    app.state.streams += 1
    try:
        await VadSession(sock, app.state.engine, app.state.settings, app.state.frame_seconds).run()
    finally:
        app.state.streams -= 1
