"""One reply: its phase, its timings, and the one LLM -> TTS stream behind it.

Owns: :class:`Reply` (a phase from speculative to committed to done / failed / interrupted,
the stage timings of the turn, the text so far, the playout) and :class:`ReplyStream`, the single
place where LLM deltas are forwarded to TTS and TTS audio to whoever plays it. The voice session
and ``POST /api/message`` both reply through ``ReplyStream``: only their sinks differ (the page's
playout, or a buffer that becomes one WAV).
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from rvchat_common.protocol import ErrorBody, ErrorEvent, llm, tts
from rvchat_common.sentences import SentenceCounter

from .clients import Closed, ServiceClosed, ServiceStream, cancel_and_wait
from .links import LABELS
from .playout import Playout

DEFAULT_TTS_RATE = 22050


class Phase(enum.Enum):
    SPECULATIVE = "speculative"  # started on a short pause; nothing reaches the page yet
    COMMITTED = "committed"      # the turn really ended: the reply streams to the page
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # barge-in, a new message, or a dropped speculation


ENDED = (Phase.DONE, Phase.FAILED, Phase.INTERRUPTED)


class ReplyFailed(Exception):
    """A stage failed for good during a reply: ``source`` is llm or tts.

    ``error`` is the service's own error when it sent one: a request it refused as the client's
    fault (``invalid_request_error``, e.g. a model name the Ollama host does not have) is a 4xx for
    whoever asked for the reply, not a failure of main_app's upstream.
    """

    def __init__(self, source: str, message: str, timeout: bool = False,
                 error: ErrorBody | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.message = message
        self.timeout = timeout
        self.error = error


class Upstream(Protocol):
    """What a reply needs of a service connection (a session's Link, or a one-off stream)."""

    name: str
    ready: dict
    idle: asyncio.Event

    async def call(self, method: str, *args: Any, **kwargs: Any) -> bool: ...


class ReplySink(Protocol):
    """Where a reply's text and audio go."""

    async def on_text(self, delta: str) -> None: ...

    async def on_audio(self, text: str, pcm: bytes, rate: int) -> None: ...

    async def on_tts_lost(self, why: str) -> None:
        """TTS failed mid-reply; the reply continues as text."""


class ReplyStream:
    """One generation piped into speech: LLM deltas -> TTS text, TTS audio -> the sink.

    Events of the two services arrive through :meth:`put`. Events of an earlier, cancelled
    generation can still arrive on a reused connection: only this generation's are kept.
    """

    def __init__(self, llm: Upstream, tts: Upstream | None, sink: ReplySink, *, voice: bool,
                 max_sentences: int, timeout_s: float, timings: dict[str, float] | None = None) -> None:
        self.llm, self.tts, self.sink = llm, tts, sink
        self.voice = voice and tts is not None
        self.max_sentences = max_sentences
        self.timeout_s = timeout_s
        self.t = timings if timings is not None else {}
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.text = ""
        self.llm_id: str | None = None  # the generation's id, from the LLM's start event
        self.llm_done = False
        self.usage: llm.Usage | None = None  # the LLM's token counts, once it is done
        self.tts_used = False
        self.tts_done = False
        self.capped = False  # the reply reached max_sentences and the LLM was stopped
        self.provider: str | None = None  # the LLM's provider (local, ollama, openai), from its start event
        self.tool_calls: list[llm.ToolCall] = []  # the calls the latest generation ended with
        self.round_text = ""  # the latest generation's text (a model may speak before it calls a tool)
        self.tool_running: str | None = None  # the tool called now (tools.answer_calls), for the interruption
        # Counts complete sentences for the cap: "Dr." or the "3." of a still-arriving "3.14" are no ends.
        self._sentences = SentenceCounter()

    def put(self, service: str, event: Any) -> None:
        self.queue.put_nowait((service, event))

    async def start(self, messages: list[dict], **options: Any) -> bool:
        """Ask the LLM for the reply; False when its connection is gone.

        Called again after a tool's result (tools.answer_calls): the reply goes on in the same stream,
        and TTS, done with what came before the call, takes the new text as a new request."""
        self.llm_done, self.llm_id, self.tool_calls, self.round_text = False, None, [], ""
        if self.tts_done and self.voice:
            self.tts_used = self.tts_done = False
        self.llm.idle.clear()
        ok = await self.llm.call("generate", messages, **options)
        if not ok:
            self.llm.idle.set()
        return ok

    async def speak(self, text: str) -> None:
        """A fixed sentence (a reminder that is due) through the same path, without the LLM."""
        self.llm_done = True
        await self._say(text)
        await self._flush_tts()

    async def cancel(self) -> list[str]:
        """Stop the upstream work in flight; the services whose work was cancelled."""
        cancelled = []
        if not self.llm_done and await self.llm.call("cancel"):
            cancelled.append("llm")
        if self.tts_used and not self.tts_done and self.tts is not None and await self.tts.call("cancel"):
            cancelled.append("tts")
        if self.tool_running:  # its task is cancelled by the caller (a webhook's request with it)
            cancelled.append("tool")
        return cancelled

    async def run(self) -> str:
        """Pump events until the LLM is done and TTS has spoken it all; the reply's text.

        Raises :class:`ReplyFailed` when the LLM fails, or a service does not answer in time.
        """
        while not (self.llm_done and (not self.tts_used or self.tts_done)):
            try:
                name, event = await asyncio.wait_for(self.queue.get(), self.timeout_s)
            except TimeoutError:
                waiting = "llm" if not self.llm_done else "tts"
                if waiting == "llm":
                    await self.llm.call("cancel")
                if self.tts is not None and self.tts_used:
                    await self.tts.call("cancel")
                raise ReplyFailed(waiting, f"the {LABELS[waiting]} did not answer in {self.timeout_s:.0f} s",
                                  timeout=True) from None
            if name == "llm":
                await self._on_llm(event)
            elif name == "tts":
                await self._on_tts(event)
        return self.text

    def _ours(self, event: llm.ServerEvent | Closed) -> bool:
        if isinstance(event, Closed) or (isinstance(event, ErrorEvent) and not event.id):
            return True  # the connection, or a bad request: whatever generation it was, it is ours now
        gen_id = event.id
        if self.llm_id is None or (gen_id and self.llm_id != "?" and gen_id != self.llm_id):
            return False
        # A `cancel` that raced the end of an earlier generation gets a stray id-less `cancelled`.
        return not (isinstance(event, llm.Cancelled) and not gen_id and not self.capped)

    async def _on_llm(self, event: llm.ServerEvent | Closed) -> None:
        if isinstance(event, llm.Start):
            self.llm_id = event.id or "?"
            self.provider = event.provider
            return
        if not self._ours(event):
            return
        if isinstance(event, llm.Delta):
            delta = event.content
            if not delta:
                return
            self.t.setdefault("first_token", time.perf_counter())
            if self.capped:
                return
            delta = self._cap(delta)
            if delta:
                await self._say(delta)
            if self.capped:  # enough for a spoken answer: stop the model rather than speak a monologue
                await self.llm.call("cancel")
        elif isinstance(event, llm.ToolCallEvent):
            if all(c.id != event.call.id for c in self.tool_calls):
                self.tool_calls.append(event.call)
        elif isinstance(event, llm.Done):
            self.llm_done = True
            self.usage = event.usage
            if event.message.tool_calls:  # the whole list, as the model wrote it
                self.tool_calls = list(event.message.tool_calls)
            final = event.message.content
            if final.strip() and not self.round_text.strip():
                await self._say(final)  # a provider that answered without streaming
            await self._flush_tts()
        elif isinstance(event, llm.Cancelled):
            self.llm_done = True
            await self._flush_tts()
        elif isinstance(event, (ErrorEvent, Closed)):
            msg = event.error.message if isinstance(event, ErrorEvent) else event.reason
            if self.tts_used and self.tts is not None and not self.tts_done:
                await self.tts.call("cancel")
            raise ReplyFailed("llm", f"the language model failed: {msg}",
                              error=event.error if isinstance(event, ErrorEvent) else None)

    def _cap(self, delta: str) -> str:
        """The part of ``delta`` within the sentence cap; at the cap the LLM is stopped."""
        if not self.max_sentences:
            return delta
        before = self._sentences.count
        if self._sentences.push(delta) < self.max_sentences:
            return delta
        # Keep the delta up to the end of the last sentence that fits.
        self.capped = True
        last = self._sentences.completed[self.max_sentences - before - 1].rstrip()
        whole = self.text + delta
        at = whole.rfind(last[-12:])
        cut = at + len(last[-12:]) - len(self.text) if at >= 0 else len(delta)
        return delta[:max(0, cut)]

    async def _say(self, delta: str) -> None:
        self.text += delta
        self.round_text += delta
        await self.sink.on_text(delta)
        if self.voice and self.tts is not None:
            if not self.tts_used:
                self.tts.idle.clear()
                self.tts_used = True
            if not await self.tts.call("text", delta):
                await self._tts_lost("connection lost")

    async def _flush_tts(self) -> None:
        if self.tts_used and self.tts is not None and not self.tts_done:
            if not await self.tts.call("flush"):
                await self._tts_lost("connection lost")

    async def _on_tts(self, event: tts.ServerEvent | Closed) -> None:
        if isinstance(event, tts.Audio):
            await self.sink.on_audio(event.text, event.pcm, event.sample_rate or DEFAULT_TTS_RATE)
        elif isinstance(event, (tts.Done, tts.Cancelled)):
            self.tts_done = True
        elif isinstance(event, (ErrorEvent, Closed)):
            msg = event.error.message if isinstance(event, ErrorEvent) else event.reason
            await self._tts_lost(str(msg))

    async def _tts_lost(self, why: str) -> None:
        if self.tts_done:
            return
        self.tts_done = True
        self.voice = False
        await self.sink.on_tts_lost(why)


@dataclass(eq=False)
class Reply:
    """One assistant reply to one user turn."""

    id: int
    user_text: str
    source: str  # "voice" or "text"
    voice: bool  # the reply is spoken (TTS up and voice output on)
    user_message_id: int | None
    playout: Playout
    t: dict[str, float] = field(default_factory=dict)  # stage -> perf_counter time
    phase: Phase = Phase.COMMITTED
    stream: ReplyStream | None = None
    message_id: int | None = None
    task: asyncio.Task | None = None
    cancelled: list[str] = field(default_factory=list)  # upstream work cancelled by an interruption
    committed: asyncio.Event = field(default_factory=asyncio.Event)
    commit_at: float = 0.0  # a speculative reply: when the turn-end silence will have passed
    suspended: bool = False  # a speculative reply held back while the user (or a noise) sounds again
    save_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # the reply's row is written in order
    saved_at: float = 0.0
    say: str | None = None  # a fixed text to speak instead of asking the LLM (a reminder that is due)

    @property
    def ended(self) -> bool:
        return self.phase in ENDED

    @property
    def text(self) -> str:
        return self.stream.text if self.stream is not None else ""

    @property
    def spoken(self) -> bool:
        """TTS was used for this reply."""
        return self.stream is not None and self.stream.tts_used

    def latency(self) -> dict[str, float]:
        """Stage latencies in ms (only the stages this turn went through)."""
        t = self.t
        out: dict[str, float] = {}

        def span(name: str, a: str, b: str) -> None:
            if a in t and b in t:
                out[name] = round((t[b] - t[a]) * 1000, 1)

        span("endpoint_ms", "speech_end", "vad_end")  # silence the VAD waited for
        span("commit_ms", "speech_end", "commit")  # a speculative reply reached the page from here
        span("stt_ms", "vad_end", "transcript")
        span("llm_first_token_ms", "transcript", "first_token")
        span("tts_first_audio_ms", "first_token", "first_audio")
        span("transcript_ms", "speech_end", "transcript")
        span("first_token_ms", "speech_end", "first_token")
        span("total_ms", "speech_end", "first_audio")
        if "speech_end" not in t:
            span("total_ms", "transcript", "first_audio")
        return out


class DirectUpstream:
    """A one-off service stream as an :class:`Upstream` (for ``POST /api/message``)."""

    def __init__(self, stream: ServiceStream) -> None:
        self.stream = stream
        self.name = stream.name
        self.idle = asyncio.Event()
        self._reader: asyncio.Task | None = None

    @property
    def ready(self) -> dict:
        return self.stream.ready

    async def call(self, method: str, *args: Any, **kwargs: Any) -> bool:
        try:
            await getattr(self.stream, method)(*args, **kwargs)
            return True
        except ServiceClosed:
            return False

    def feed(self, reply: ReplyStream) -> None:
        """Deliver this stream's events to ``reply`` (a closed connection arrives as ``Closed``)."""

        async def read() -> None:
            try:
                async for event in self.stream.events():
                    reply.put(self.name, event)
            except ServiceClosed as exc:
                reply.put(self.name, Closed(exc.reason))

        self._reader = asyncio.create_task(read(), name=f"reply-{self.name}")

    async def close(self) -> None:
        await cancel_and_wait(self._reader)
        await self.stream.close()
