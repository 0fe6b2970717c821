"""``WS /v1/realtime``: OpenAI's Realtime API in front of the page's own Session (docs/realtime.md).

A translator, nothing more: Realtime client events become page events and mic audio for a
:class:`Session`, exactly as the page drives it, and the Session's page events become Realtime server
events. So a Realtime client gets the same turn-taking (VAD, endpointing, speculative replies),
barge-in and history as the page; only what has no page equivalent is done here:

- audio at the edge: 24 kHz PCM16 base64 in, resampled to the 16 kHz the session takes; the reply's
  TTS audio resampled to 24 kHz out (one continuous resampler per direction, so no clicks at chunk
  edges);
- push to talk (``turn_detection: null``): the buffer is kept here and transcribed on
  ``input_audio_buffer.commit`` by a one-off STT stream; ``response.create`` then answers the history;
- conversation items: user and assistant messages are written to the history as they come;
- ``conversation.item.truncate``: the played position goes to the session as the page's playback
  report would, and the stored assistant message is cut to the words heard by then.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import APIRouter, WebSocket
from rvchat_common.audio import Resampler, float_to_pcm16, pcm16_to_float
from rvchat_common.errors import APIError, parse_json
from rvchat_common.protocol import ErrorEvent, ProtocolError, page, parse, stt
from rvchat_common.protocol import realtime as rt
from rvchat_common.ws import MAX_FRAME_BYTES, WS_TRY_AGAIN_LATER, EventSocket, Limits
from starlette.websockets import WebSocketDisconnect

from .clients import ServiceClosed
from .recognition import is_meaningful
from .reply import Phase
from .session import Session

log = logging.getLogger("rvchat.app.realtime")
router = APIRouter()

MIC_RATE = page.INPUT_SAMPLE_RATE
# One append may carry up to the server's frame limit (4 MiB of JSON: ~65 s of 24 kHz audio).
LIMITS = Limits(max_text_bytes=MAX_FRAME_BYTES, max_binary_bytes=0)
MAX_BUFFER_S = 120  # a push-to-talk buffer: two minutes (STT's stream limit is of that order)
MIN_COMMIT_MS = 100  # OpenAI's own minimum for a commit
DELTA_S = 0.5  # audio deltas of at most half a second (a sentence's audio is one TTS chunk)
LINKS_WAIT_S = 5.0  # session.created waits this long for the four service links
INTERRUPTED_WAIT_S = 2.0


def _ms(samples: int, rate: int) -> int:
    return int(round(samples * 1000 / rate))


@dataclass
class _Response:
    """One response: the Realtime objects, and the session's reply behind it once it has one."""

    model: rt.Response
    voice: bool
    turn: int | None = None
    reply: Any = None  # the session's Reply
    item: rt.MessageItem | None = None
    text: str = ""
    audio_samples: int = 0  # 24 kHz samples sent
    resampler: Resampler | None = None
    error: dict | None = None
    done: bool = False
    restore: dict = field(default_factory=dict)  # per-response settings to put back after it


@dataclass
class _Item:
    role: str
    message_id: int | None = None
    response: _Response | None = None  # an assistant item: its response


class RealtimeSocket(EventSocket):
    """The shared receive loop, with Realtime's error shape and the beta dialect at the edge."""

    def __init__(self, ws: WebSocket, dialect: rt.Dialect) -> None:
        super().__init__(ws, rt.client_events, LIMITS)
        self.dialect = dialect

    async def send(self, event: Any) -> None:
        if isinstance(event, ErrorEvent):  # from the shared loop (a frame it refused)
            event = rt.Error.of(
                event.error.code or "invalid_event", event.error.message, param=event.error.param
            )
        data = self.dialect.out(event)
        if data is None:
            return
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: sent escaped
            text = json.dumps(data, separators=(",", ":"))
        async with self.atomic():
            await self.ws.send_text(text)

    async def _dispatch(self, message: dict, on_event: Any, on_pcm: Any) -> None:
        if message.get("bytes") is not None:
            raise ProtocolError(
                "unexpected_binary",
                "binary frames are not part of the Realtime API: send "
                "audio as input_audio_buffer.append events (base64 PCM16, 24 kHz)",
            )
        text = message.get("text") or ""
        if len(text) > self.limits.max_text_bytes:
            raise ProtocolError(
                "frame_too_large",
                f"text frame is over the {self.limits.max_text_bytes}-byte limit; event dropped",
            )
        try:
            data = parse_json(text)
        except (ValueError, UnicodeDecodeError):
            raise ProtocolError("invalid_json", "text frame is not valid JSON") from None
        event_id = data.get("event_id") if isinstance(data, dict) else None
        event_id = event_id if isinstance(event_id, str) else None
        try:
            event = parse(rt.client_events, self.dialect.incoming(data))
            await on_event(event)
        except ProtocolError as exc:
            if exc.close_code is not None:
                raise
            await self.send(rt.Error.of(exc.code, exc.message, param=exc.param, event_id=event_id))
        except APIError as exc:
            await self.send(
                rt.Error.of(
                    exc.code or "invalid_request",
                    exc.message,
                    param=exc.param,
                    event_id=event_id,
                    type="server_error" if exc.status >= 500 else "invalid_request_error",
                )
            )


def refuse(code: str, message: str, param: str | None = None) -> ProtocolError:
    return ProtocolError(code, message, param=param)


class RealtimeConnection:
    """One Realtime client: its session config, items and responses, in front of one Session."""

    def __init__(self, sock: RealtimeSocket, app: Any) -> None:
        self.sock = sock
        self.app = app
        base = app.state.settings
        # A copy per connection: session.update changes instructions, preroll and max tokens for it alone.
        self.settings = base.model_copy()
        # A Realtime client stops its playback at speech_started (interrupt_response): the reply cannot be
        # paused and resumed after an "mm-hm" as the page's is, so speech over it is a barge-in at once.
        self.settings.backchannels = False
        self.config = rt.SessionConfig(
            # The model the client named (the stack's own models answer whatever it is).
            model=(sock.ws.query_params.get("model") or "gpt-realtime")[:200],
            instructions=base.system_prompt or "",
            audio=rt.AudioConfig(
                input=rt.AudioInput(
                    turn_detection=rt.ServerVad(
                        threshold=base.vad_threshold,
                        silence_duration_ms=base.vad_min_silence_ms,
                        prefix_padding_ms=base.preroll_ms,
                    )
                ),
                output=rt.AudioOutput(voice=base.tts_voice or "alloy"),
            ),
            max_output_tokens=base.max_tokens,
        )
        self._voice_set = False  # the client chose a voice or speed (else the TTS service's defaults)
        self._factories = {**app.state.factories, "tts": self._tts_stream}
        turn_latency = app.state.turn_latency
        self.session = Session(
            send=self._from_session,
            store=app.state.store,
            settings=self.settings,
            factories=self._factories,
            observe=lambda stage, s: turn_latency.labels(stage).observe(s),
        )
        self._mic = Resampler(rt.SAMPLE_RATE, MIC_RATE)
        self._samples_in = 0  # 24 kHz samples appended since the start (audio_start_ms / audio_end_ms)
        self._buffer = bytearray()  # push to talk: 16 kHz PCM16 since the last commit or clear
        self._speech_item: tuple[str, int] | None = None  # (item id, start ms) of the speech being heard
        self._awaiting: list[tuple[str, int]] = []  # voice items committed, transcript not in yet
        self._items: dict[str, _Item] = {}
        self._last_item: str | None = None
        self._chain: asyncio.Future | None = None  # items written to the history in the order they came
        self._resp: _Response | None = None
        self._by_turn: dict[int, _Response] = {}
        self._audio_header: page.Audio | None = None
        self._interrupted: dict[int, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self._audio_out = False  # some audio was sent (the voice is fixed from then on)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.session.start()
        # Audio sent before the VAD and STT links are up would not be heard: say "created" once they are.
        deadline = time.monotonic() + LINKS_WAIT_S
        for link in self.session.links.by_name.values():
            await link.wait_up(max(0.0, deadline - time.monotonic()))
        await self.sock.send(rt.SessionCreated(session=self.config))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.session.close()

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("realtime task failed", exc_info=task.exception())

    def _tts_stream(self) -> Any:
        stream = self.app.state.factories["tts"]()
        if self._voice_set and isinstance(getattr(stream, "config", None), dict):
            out = self.config.audio.output  # a reconnected TTS link speaks as the client asked too
            stream.config.update(voice=out.voice, speed=float(out.speed))
        return stream

    @property
    def manual(self) -> bool:
        return self.config.audio.input.turn_detection is None

    async def emit(self, *events: rt.ServerEvent) -> None:
        for event in events:
            await self.sock.send(event)

    def _add_item(self, item_id: str, info: _Item) -> str | None:
        """Record an item at the end of the conversation; the id of the one before it."""
        previous, self._last_item = self._last_item, item_id
        self._items[item_id] = info
        return previous

    # ------------------------------------------------------------------ client events
    async def on_event(self, event: Any) -> None:
        handler = {
            rt.SessionUpdate: self._session_update,
            rt.InputAudioBufferAppend: self._append,
            rt.InputAudioBufferCommit: self._commit,
            rt.InputAudioBufferClear: self._clear,
            rt.ConversationItemCreate: self._item_create,
            rt.ConversationItemTruncate: self._truncate,
            rt.ResponseCreate: self._response_create,
            rt.ResponseCancel: self._response_cancel,
        }[type(event)]
        await handler(event)

    async def _session_update(self, event: rt.SessionUpdate) -> None:
        body = event.session
        cfg = self.config.model_copy(deep=True)
        fields = body.model_fields_set
        if "instructions" in fields:
            cfg.instructions = body.instructions or ""
        if "output_modalities" in fields and body.output_modalities is not None:
            cfg.output_modalities = body.output_modalities
        if "max_output_tokens" in fields and body.max_output_tokens is not None:
            cfg.max_output_tokens = body.max_output_tokens
        if "model" in fields and body.model:
            cfg.model = body.model
        for name in ("tools", "tool_choice"):
            if name in fields and getattr(body, name) is not None:
                setattr(cfg, name, getattr(body, name))
        audio = body.audio
        if audio is not None and audio.input is not None:
            inp = audio.input
            for name in ("format", "turn_detection", "transcription", "noise_reduction"):
                if name in inp.model_fields_set and (getattr(inp, name) is not None or name != "format"):
                    setattr(cfg.audio.input, name, getattr(inp, name))
        voice_changed = False
        if audio is not None and audio.output is not None:
            out = audio.output
            if out.format is not None:
                cfg.audio.output.format = out.format
            if out.speed is not None:
                cfg.audio.output.speed = out.speed
            if out.voice is not None and out.voice != cfg.audio.output.voice:
                if self._audio_out:
                    raise refuse(
                        "cannot_update_voice",
                        "the voice cannot change once the assistant has spoken in this session",
                        "session.audio.output.voice",
                    )
                cfg.audio.output.voice = out.voice
                voice_changed = True
        await self._apply(
            cfg,
            voice_changed,
            speed_changed=audio is not None and audio.output is not None and audio.output.speed is not None,
        )
        await self.emit(rt.SessionUpdated(session=self.config))

    async def _apply(self, cfg: rt.SessionConfig, voice_changed: bool, speed_changed: bool) -> None:
        s = self.settings
        s.system_prompt = cfg.instructions or self.app.state.settings.system_prompt
        s.max_tokens = (
            self.app.state.settings.max_tokens
            if cfg.max_output_tokens == "inf"
            else int(cfg.max_output_tokens)
        )
        self.session.voice_out = "audio" in cfg.output_modalities
        vad = cfg.audio.input.turn_detection
        was_manual = self.manual
        self.config = cfg
        if vad is not None:
            s.preroll_ms = vad.prefix_padding_ms
            await self.session.detector.configure(
                {"threshold": vad.threshold, "min_silence_ms": vad.silence_duration_ms}
            )
            if was_manual:
                self._buffer.clear()
        if voice_changed or speed_changed:
            out = cfg.audio.output
            self._voice_set = True
            link = self.session.links.get("tts")
            if link is not None and link.up:
                await link.call("configure", voice=out.voice, speed=float(out.speed))

    async def _append(self, event: rt.InputAudioBufferAppend) -> None:
        pcm24 = base64.b64decode(event.audio)
        if not pcm24:
            return
        self._samples_in += len(pcm24) // 2
        pcm16 = float_to_pcm16(self._mic(pcm16_to_float(pcm24)))
        if not pcm16:
            return
        if not self.manual:
            await self.session.on_audio(pcm16)
            return
        if len(self._buffer) + len(pcm16) > MAX_BUFFER_S * MIC_RATE * 2:
            raise refuse(
                "input_audio_buffer_full",
                f"the input audio buffer holds at most {MAX_BUFFER_S} s: commit or clear it",
                "audio",
            )
        self._buffer.extend(pcm16)

    async def _commit(self, event: rt.InputAudioBufferCommit) -> None:
        if not self.manual:
            raise refuse(
                "commit_with_server_vad",
                "with server_vad turn detection the server commits the audio "
                "at each turn's end; set turn_detection to null to commit yourself",
            )
        ms = _ms(len(self._buffer) // 2, MIC_RATE)
        if ms < MIN_COMMIT_MS:
            raise refuse(
                "input_audio_buffer_commit_empty",
                f"buffer too small: expected at least "
                f"{MIN_COMMIT_MS} ms of audio, but the buffer only has {ms} ms",
            )
        pcm, self._buffer = bytes(self._buffer), bytearray()
        item = rt.MessageItem(
            role="user", content=[rt.ContentPart(type="input_audio", transcript=None)], status="completed"
        )
        previous = self._add_item(item.id, _Item("user"))
        await self.emit(
            rt.BufferCommitted(item_id=item.id, previous_item_id=previous),
            rt.ItemAdded(item=item, previous_item_id=previous),
        )
        self._queue_item(self._transcribed(item, previous, pcm))

    async def _clear(self, event: rt.InputAudioBufferClear) -> None:
        self._buffer.clear()
        await self.emit(rt.BufferCleared())

    async def _item_create(self, event: rt.ConversationItemCreate) -> None:
        item = event.item
        if item.id in self._items:
            raise refuse("item_already_exists", f"an item with id {item.id!r} already exists", "item.id")
        if event.previous_item_id not in (None, self._last_item):
            raise refuse(
                "invalid_previous_item",
                "items are added at the end of the conversation: "
                "previous_item_id must be the last item's id (or absent)",
                "previous_item_id",
            )
        if isinstance(item, rt.FunctionCallOutputItem):
            # Kept with the connection; tool calls themselves are not made by this server yet.
            previous = self._add_item(item.id, _Item("tool"))
            await self.emit(
                rt.ItemAdded(item=item, previous_item_id=previous),
                rt.ItemDone(item=item, previous_item_id=previous),
            )
            return
        if item.role == "system":
            raise refuse(
                "system_message_unsupported",
                "system messages are not kept in the history: set the instructions with session.update",
                "item.role",
            )
        audio = [p for p in item.content if p.type == "input_audio"]
        echo = item.model_copy(
            update={"content": [p.model_copy(update={"audio": None}) for p in item.content]}
        )
        previous = self._add_item(item.id, _Item(item.role))
        await self.emit(rt.ItemAdded(item=echo, previous_item_id=previous))
        if audio:
            pcm24 = b"".join(base64.b64decode(p.audio or "") for p in audio)
            pcm16 = float_to_pcm16(Resampler(rt.SAMPLE_RATE, MIC_RATE)(pcm16_to_float(pcm24)))
            self._queue_item(self._transcribed(echo, previous, pcm16, text_parts=True))
            return
        text = "\n".join((p.text or "").strip() for p in item.content)
        self._queue_item(self._store_text(echo, previous, text))

    def _queue_item(self, coro: Any) -> None:
        """Run ``coro`` after the items before it are in the history (a transcription takes a while)."""
        before = self._chain

        async def run() -> None:
            if before is not None:
                await asyncio.shield(before)
            await coro

        self._chain = self._spawn(run())

    async def _store_text(self, item: rt.MessageItem, previous: str | None, text: str) -> None:
        history = self.session.history
        if item.role == "user":
            mid = await history.add_user(text, "text")
        else:
            mid = await history.add_assistant(text, source="text")
        self._items[item.id].message_id = mid
        await self.emit(rt.ItemDone(item=item, previous_item_id=previous))

    async def _transcribed(
        self, item: rt.MessageItem, previous: str | None, pcm: bytes, text_parts: bool = False
    ) -> None:
        """Transcribe a committed buffer (or an audio item) and write the user's message."""
        try:
            text = (await asyncio.wait_for(self._transcribe(pcm), self.settings.turn_timeout_s)).strip()
        except (ServiceClosed, TimeoutError, RuntimeError) as exc:
            await self.emit(
                rt.TranscriptionFailed(
                    item_id=item.id,
                    error=rt.RealtimeErrorBody(
                        type="server_error", code="stt_failed", message=f"speech recognition failed: {exc}"
                    ),
                )
            )
            return
        await self.emit(
            rt.TranscriptionCompleted(
                item_id=item.id,
                transcript=text,
                usage=rt.DurationUsage(seconds=round(len(pcm) / 2 / MIC_RATE, 3)),
            )
        )
        parts = [
            p.model_copy(update={"transcript": text}) if p.type == "input_audio" else p for p in item.content
        ]
        item = item.model_copy(update={"content": parts})
        words = " ".join([(p.text or "") for p in parts if p.type == "input_text"] + [text]).strip()
        if is_meaningful(words):
            self._items[item.id].message_id = await self.session.history.add_user(words, "voice")
        await self.emit(rt.ItemDone(item=item, previous_item_id=previous))

    async def _transcribe(self, pcm: bytes) -> str:
        stream = self.app.state.factories["stt"]()
        try:
            await stream.connect()
            for i in range(0, len(pcm), MIC_RATE * 2):  # one-second frames
                await stream.audio(pcm[i : i + MIC_RATE * 2])
            await stream.end()
            async for event in stream.events():
                if isinstance(event, stt.Final):
                    return event.text
                if isinstance(event, ErrorEvent):
                    raise RuntimeError(event.error.message)
        finally:
            await stream.close()
        raise RuntimeError("no transcript")

    async def _truncate(self, event: rt.ConversationItemTruncate) -> None:
        info = self._items.get(event.item_id)
        if info is None:
            raise refuse("item_not_found", f"no item {event.item_id!r} in this conversation", "item_id")
        resp = info.response
        if info.role != "assistant" or resp is None or not resp.voice:
            raise refuse("invalid_item", "only an assistant message with audio can be truncated", "item_id")
        if event.content_index != 0:
            raise refuse(
                "invalid_content_index",
                "an assistant message has one content part (index 0)",
                "content_index",
            )
        sent_ms = _ms(resp.audio_samples, rt.SAMPLE_RATE)
        if event.audio_end_ms > sent_ms:
            raise refuse(
                "invalid_audio_end_ms",
                f"audio_end_ms ({event.audio_end_ms}) is longer than the item's audio ({sent_ms} ms)",
                "audio_end_ms",
            )
        reply = resp.reply
        session = self.session
        waiter = None
        if (
            session.reply is reply
            and reply.phase is not Phase.INTERRUPTED
            and (not reply.ended or reply.playout.playing(time.perf_counter()))
        ):
            # The client stopped playing it: the reply is over (and cancelled upstream if still running).
            waiter = self._interrupted.setdefault(reply.id, asyncio.get_running_loop().create_future())
            await session.on_event(page.Interrupt())
        # The played position is the page's playback report: the interruption waiting for it takes it.
        await session.on_event(page.Playback(turn=reply.id, played_ms=float(event.audio_end_ms)))
        if waiter is not None:
            try:
                await asyncio.wait_for(asyncio.shield(waiter), INTERRUPTED_WAIT_S)
            except TimeoutError:
                pass
        heard = reply.playout.heard(float(event.audio_end_ms), reply.text, reply.voice)
        meta = {
            "full_text": reply.text.strip(),
            "played_ms": float(event.audio_end_ms),
            "reason": "truncated",
        }
        async with reply.save_lock:
            if reply.message_id is not None:
                await session.history.mark_interrupted(reply.message_id, heard, meta)
            elif heard:
                reply.message_id = await session.history.add_assistant(
                    heard, interrupted=True, source="voice", meta=meta
                )
        info.message_id = reply.message_id
        await self.emit(
            rt.ItemTruncated(item_id=event.item_id, content_index=0, audio_end_ms=event.audio_end_ms)
        )

    async def _response_create(self, event: rt.ResponseCreate) -> None:
        if self._resp is not None and not self._resp.done:
            raise refuse(
                "conversation_already_has_active_response",
                f"a response is in progress: cancel it ({self._resp.model.id}) or wait for its response.done",
            )
        params = event.response or rt.ResponseParams()
        modalities = params.output_modalities or self.config.output_modalities
        voice = "audio" in modalities
        out = params.audio.output if params.audio and params.audio.output else None
        if out is not None and out.voice is not None and out.voice != self.config.audio.output.voice:
            raise refuse(
                "per_response_voice_unsupported",
                "a response speaks with the session's voice: change it with session.update",
                "response.audio.output.voice",
            )
        resp = self._new_response(voice, metadata=params.metadata)
        s = self.settings
        if params.instructions is not None:
            resp.restore["system_prompt"] = s.system_prompt
            s.system_prompt = params.instructions or self.app.state.settings.system_prompt
        if params.max_output_tokens is not None:
            resp.restore["max_tokens"] = s.max_tokens
            s.max_tokens = (
                s.max_tokens if params.max_output_tokens == "inf" else int(params.max_output_tokens)
            )
        await self._announce(resp)
        self._spawn(self._respond_after_items(resp))

    async def _respond_after_items(self, resp: _Response) -> None:
        if self._chain is not None:
            await asyncio.shield(self._chain)
        if resp.done:
            return  # cancelled while the items were still being written
        await self.session.respond(voice=resp.voice)
        reply = self.session.reply
        if reply is not None and resp.turn is None and reply.id not in self._by_turn:
            self._bind(resp, reply.id, reply)

    async def _response_cancel(self, event: rt.ResponseCancel) -> None:
        resp = self._resp
        if resp is None or resp.done or (event.response_id and event.response_id != resp.model.id):
            raise refuse(
                "response_cancel_not_active",
                "there is no response in progress to cancel",
                "response_id" if event.response_id else None,
            )
        if resp.turn is None:
            await self._finish(resp, "cancelled", reason="client_cancelled")
            return
        await self.session.on_event(page.Interrupt())
        if not resp.done:  # the reply had ended already: nothing upstream to stop
            await self._finish(resp, "cancelled", reason="client_cancelled")

    # ------------------------------------------------------------------ responses
    def _new_response(self, voice: bool, metadata: dict | None = None) -> _Response:
        out = self.config.audio.output
        model = rt.Response(
            output_modalities=["audio" if voice else "text"],
            metadata=metadata,
            conversation_id=self.session.conversation_id,
            max_output_tokens=self.config.max_output_tokens,
            audio=rt.ResponseAudio(output=rt.ResponseAudioOutput(format=out.format, voice=out.voice)),
        )
        resp = _Response(model=model, voice=voice)
        self._resp = resp
        return resp

    async def _announce(self, resp: _Response) -> None:
        capacity = self.app.state.capacity
        limit = capacity.limit or 0
        await self.emit(
            rt.ResponseCreated(response=resp.model),
            rt.RateLimitsUpdated(
                rate_limits=[
                    rt.RateLimit(
                        name="requests",
                        limit=limit,
                        remaining=max(0, limit - capacity.active),
                        reset_seconds=0,
                    ),
                    rt.RateLimit(
                        name="tokens",
                        limit=self.settings.max_tokens,
                        remaining=self.settings.max_tokens,
                        reset_seconds=0,
                    ),
                ]
            ),
        )

    def _bind(self, resp: _Response, turn: int, reply: Any) -> None:
        resp.turn, resp.reply = turn, reply
        self._by_turn[turn] = resp
        for old in [t for t in self._by_turn if t <= turn - 8]:
            del self._by_turn[old]

    async def _response_for(self, turn: int, voice: bool) -> _Response:
        """The response a reply of the session belongs to: the one asked for, or a new one (server VAD)."""
        resp = self._by_turn.get(turn)
        if resp is not None:
            return resp
        reply = (
            self.session.reply if self.session.reply is not None and self.session.reply.id == turn else None
        )
        resp = self._resp
        if resp is None or resp.done or resp.turn is not None:
            resp = self._new_response(voice)
            await self._announce(resp)
        self._bind(resp, turn, reply)
        return resp

    async def _start_item(self, resp: _Response, voice: bool) -> None:
        if resp.item is not None:
            return
        resp.voice = voice
        resp.model.output_modalities = ["audio" if voice else "text"]
        item = rt.MessageItem(role="assistant", status="in_progress", content=[])
        resp.item = item
        previous = self._add_item(item.id, _Item("assistant", response=resp))
        part = rt.Part(type="audio", transcript="") if voice else rt.Part(type="text", text="")
        ids = {"response_id": resp.model.id, "item_id": item.id}
        await self.emit(
            rt.OutputItemAdded(response_id=resp.model.id, item=item),
            rt.ItemAdded(item=item, previous_item_id=previous),
            rt.ContentPartAdded(**ids, part=part),
        )

    async def _finish(
        self, resp: _Response, status: str, *, reason: str | None = None, error: dict | None = None
    ) -> None:
        if resp.done:
            return
        resp.done = True
        for name, value in resp.restore.items():
            setattr(self.settings, name, value)
        item = resp.item
        if item is not None:
            ids = {"response_id": resp.model.id, "item_id": item.id}
            if resp.voice and resp.resampler is not None and status == "completed":
                await self._send_audio(resp, resp.resampler.flush())
            if resp.voice:
                part = rt.Part(type="audio", transcript=resp.text)
                content = rt.ContentPart(type="output_audio", transcript=resp.text)
                await self.emit(rt.AudioDone(**ids), rt.AudioTranscriptDone(**ids, transcript=resp.text))
            else:
                part = rt.Part(type="text", text=resp.text)
                content = rt.ContentPart(type="output_text", text=resp.text)
                await self.emit(rt.TextDone(**ids, text=resp.text))
            item.content = [content]
            item.status = "completed" if status == "completed" else "incomplete"
            await self.emit(
                rt.ContentPartDone(**ids, part=part),
                rt.OutputItemDone(response_id=resp.model.id, item=item),
                rt.ItemDone(item=item, previous_item_id=None),
            )
            resp.model.output = [item]
        resp.model.status = status
        resp.model.conversation_id = self.session.conversation_id
        if status != "completed":
            resp.model.status_details = rt.StatusDetails(type=status, reason=reason, error=error)
        else:
            resp.model.status_details = rt.StatusDetails(type="completed")
        usage = getattr(getattr(resp.reply, "stream", None), "usage", None)
        if usage is not None:
            resp.model.usage = rt.Usage(
                input_tokens=usage.prompt_tokens,
                output_tokens=usage.completion_tokens,
                total_tokens=usage.total_tokens,
                input_token_details={"text_tokens": usage.prompt_tokens},
                output_token_details={"text_tokens": usage.completion_tokens},
            )
        await self.emit(rt.ResponseDone(response=resp.model))

    async def _send_audio(self, resp: _Response, audio: np.ndarray) -> None:
        if resp.item is None or audio.size == 0:
            return
        pcm = float_to_pcm16(audio)
        step = int(rt.SAMPLE_RATE * DELTA_S) * 2
        ids = {"response_id": resp.model.id, "item_id": resp.item.id}
        for i in range(0, len(pcm), step):
            chunk = pcm[i : i + step]
            resp.audio_samples += len(chunk) // 2
            await self.emit(rt.AudioDelta(**ids, delta=base64.b64encode(chunk).decode("ascii")))
        self._audio_out = True

    # ------------------------------------------------------------------ the session's page events
    async def _from_session(self, event: page.Event | bytes) -> None:
        if not self.sock.connected:
            raise RuntimeError("client gone")
        try:
            await self._translate(event)
        except Exception:
            if not self.sock.connected:
                raise
            log.exception("realtime: translating %s failed", getattr(event, "type", "audio"))

    async def _translate(self, event: page.Event | bytes) -> None:
        if isinstance(event, bytes):
            header, self._audio_header = self._audio_header, None
            resp = self._by_turn.get(header.turn) if header is not None else None
            if resp is None or resp.done or not resp.voice:
                return
            await self._start_item(resp, True)
            if resp.resampler is None:
                resp.resampler = Resampler(header.sample_rate, rt.SAMPLE_RATE)
            await self._send_audio(resp, resp.resampler(pcm16_to_float(event)))
            return
        if isinstance(event, page.Audio):
            self._audio_header = event
        elif isinstance(event, page.SpeechStarted):
            offset_s = self.session.detector.vad_offset / MIC_RATE
            start = max(0, int((offset_s + event.timestamp) * 1000) - self.settings.preroll_ms)
            item_id = rt.new_id("item")
            self._speech_item = (item_id, start)
            await self.emit(rt.SpeechStarted(audio_start_ms=start, item_id=item_id))
        elif isinstance(event, page.SpeechEnded):
            await self._speech_ended(event)
        elif isinstance(event, page.Transcript):
            await self._transcript(event)
        elif isinstance(event, page.NoSpeech):
            awaiting, self._awaiting = self._awaiting, []
            for item_id, _ in awaiting:
                await self.emit(
                    rt.TranscriptionCompleted(
                        item_id=item_id, transcript="", usage=rt.DurationUsage(seconds=0.0)
                    ),
                    rt.ItemDeleted(item_id=item_id),
                )
                self._items.pop(item_id, None)
        elif isinstance(event, page.ReplyStart):
            resp = await self._response_for(event.turn, event.voice)
            await self._start_item(resp, event.voice)
        elif isinstance(event, page.ReplyDelta):
            resp = self._by_turn.get(event.turn)
            if resp is None or resp.done:
                return
            await self._start_item(resp, resp.voice)
            resp.text += event.text
            ids = {"response_id": resp.model.id, "item_id": resp.item.id}
            await self.emit(
                rt.AudioTranscriptDelta(**ids, delta=event.text)
                if resp.voice
                else rt.TextDelta(**ids, delta=event.text)
            )
        elif isinstance(event, page.ReplyEnd):
            resp = self._by_turn.get(event.turn) or await self._response_for(event.turn, False)
            if event.error:
                await self._finish(
                    resp,
                    "failed",
                    error=resp.error
                    or {"type": "server_error", "code": "reply_failed", "message": "the reply failed"},
                )
            else:
                resp.text = event.text or resp.text
                await self._finish(resp, "completed")
        elif isinstance(event, page.StopPlayback):
            resp = self._by_turn.get(event.turn)
            if resp is not None and not resp.done:
                await self._finish(
                    resp,
                    "cancelled",
                    reason="turn_detected" if event.reason == "barge-in" else "client_cancelled",
                )
        elif isinstance(event, page.Interrupted):
            waiter = self._interrupted.pop(event.turn, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(event.spoken_text)
        elif isinstance(event, page.SessionError):
            await self._session_error(event)

    async def _speech_ended(self, event: page.SpeechEnded) -> None:
        speech, self._speech_item = self._speech_item, None
        item_id, start = speech or (rt.new_id("item"), 0)
        if event.timestamp is not None:
            end = int((self.session.detector.vad_offset / MIC_RATE + event.timestamp) * 1000)
        else:
            end = _ms(self._samples_in, rt.SAMPLE_RATE)
        item = rt.MessageItem(role="user", content=[rt.ContentPart(type="input_audio", transcript=None)])
        previous = self._add_item(item_id, _Item("user"))
        item.id = item_id
        self._awaiting.append((item_id, max(0, end - start)))
        await self.emit(
            rt.SpeechStopped(audio_end_ms=end, item_id=item_id),
            rt.BufferCommitted(item_id=item_id, previous_item_id=previous),
            rt.ItemAdded(item=item, previous_item_id=previous),
        )

    async def _transcript(self, event: page.Transcript) -> None:
        if event.source != "voice":
            return
        awaiting, self._awaiting = self._awaiting, []
        if not awaiting:  # no speech_stopped seen for it (cannot happen with the VAD; kept safe)
            item_id = rt.new_id("item")
            previous = self._add_item(item_id, _Item("user"))
            await self.emit(
                rt.ItemAdded(
                    item=rt.MessageItem(
                        id=item_id, role="user", content=[rt.ContentPart(type="input_audio")]
                    ),
                    previous_item_id=previous,
                )
            )
            awaiting = [(item_id, 0)]
        # Words the user went on with after a pause are one utterance: the earlier items merge into the last.
        for item_id, _ in awaiting[:-1]:
            self._items.pop(item_id, None)
            await self.emit(rt.ItemDeleted(item_id=item_id))
        item_id, ms = awaiting[-1]
        info = self._items.setdefault(item_id, _Item("user"))
        info.message_id = event.message_id
        item = rt.MessageItem(
            id=item_id, role="user", content=[rt.ContentPart(type="input_audio", transcript=event.text)]
        )
        await self.emit(
            rt.TranscriptionCompleted(
                item_id=item_id, transcript=event.text, usage=rt.DurationUsage(seconds=round(ms / 1000, 3))
            ),
            rt.ItemDone(item=item),
        )

    async def _session_error(self, event: page.SessionError) -> None:
        body = {"type": event.error.type, "code": event.error.code, "message": event.error.message}
        resp = self._by_turn.get(event.turn) if event.turn is not None else None
        if resp is None and event.turn is not None and self._resp is not None and self._resp.turn is None:
            resp = self._resp  # a reply that failed before it started: the response asked for
        if resp is not None and not resp.done:
            resp.error = body
            return
        await self.emit(
            rt.Error.of(
                event.error.code or "session_error",
                event.error.message,
                type=event.error.type or "server_error",
            )
        )


@router.websocket("/v1/realtime")
async def realtime_ws(ws: WebSocket) -> None:
    """OpenAI's Realtime API: the openai client's ``client.realtime.connect()`` (or ``beta``) drives the
    same voice session as the page."""
    app = ws.app
    sock = RealtimeSocket(ws, rt.Dialect.of(ws.headers))
    capacity = app.state.capacity
    if app.state.drain.draining or capacity.full():
        reason = "restarting" if app.state.drain.draining else "busy"
        capacity.refused.labels("realtime", reason).inc()
        message = (
            "this server is restarting: connect again (another replica will answer)"
            if reason == "restarting"
            else capacity.busy_message()
        )
        await sock.accept()
        try:
            await sock.send(
                rt.Error.of("server_busy" if reason == "busy" else "restarting", message, type="server_error")
            )
            await ws.close(code=WS_TRY_AGAIN_LATER, reason=message[:120])
        except (WebSocketDisconnect, RuntimeError):
            pass
        return
    conn = RealtimeConnection(sock, app)
    app.state.sessions.add(conn.session)
    try:
        await sock.accept()
        await conn.start()
        await sock.run(conn.on_event)
    finally:
        app.state.sessions.discard(conn.session)
        await conn.close()
