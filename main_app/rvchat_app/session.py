"""The per-browser-session orchestrator: a turn state machine over the four service streams.

    mic PCM ──► VAD ──speech_start──► (pre-roll + live audio) ──► STT
                  └──speech_end────► STT end ──final──► LLM ──deltas──► TTS ──PCM──► page
                                                          └──deltas──► page (text)

States: ``listening`` → ``user_speaking`` → ``thinking`` → ``speaking`` → ``listening``.
Speech that starts while the assistant is thinking or speaking is a barge-in:
playback stops in the page, the LLM and TTS work is cancelled upstream, and only
what the user actually heard is kept in the history (marked interrupted).

The service streams come from injectable factories, so the logic runs against
fakes in unit tests and against the real services in integration tests.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from .clients import ServiceClosed, ServiceStream, cancel_and_wait
from .settings import Settings
from .store import Store

log = logging.getLogger("rvchat.app.session")

SAMPLE_RATE = 16000
BYTES_PER_MS = SAMPLE_RATE * 2 / 1000
SERVICES = ("vad", "stt", "llm", "tts")
LABELS = {"vad": "voice activity detection (VAD)", "stt": "speech recognition (STT)",
          "llm": "language model (LLM)", "tts": "speech synthesis (TTS)"}

Send = Callable[[dict | bytes], Awaitable[None]]
StreamFactory = Callable[[], ServiceStream]
Observe = Callable[[str, float], None]
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")


def spoken_text(chunks: list[tuple[str, float]], played_ms: float, full_text: str = "") -> str:
    """What the user heard of a reply: whole chunks played, then the words of the current one.

    ``chunks`` are (sentence text, duration ms) in playing order. Words of the
    partly played sentence are counted in proportion to the time played.
    """
    heard: list[str] = []
    t = 0.0
    for text, ms in chunks:
        if played_ms >= t + ms - 5:  # a few ms of slack: the last samples of a chunk count as heard
            heard.append(text.strip())
            t += ms
            continue
        if ms > 0 and played_ms > t:
            words = text.split()
            n = int(len(words) * (played_ms - t) / ms)
            if n:
                heard.append(" ".join(words[:n]))
        break
    return " ".join(h for h in heard if h).strip()


def is_meaningful(text: str) -> bool:
    """False for transcripts that are empty or only punctuation/noise markers."""
    stripped = re.sub(r"\[[^\]]*\]|\([^)]*\)", " ", text)
    return bool(re.search(r"\w", stripped))


@dataclass
class Turn:
    id: int
    user_text: str
    source: str  # "voice" or "text"
    voice: bool  # the reply is spoken (TTS up and voice output on)
    t: dict[str, float] = field(default_factory=dict)  # stage -> perf_counter time
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    text: str = ""
    chunks: list[tuple[str, float]] = field(default_factory=list)
    audio_ms: float = 0.0
    play_start: float | None = None
    play_end: float = 0.0
    llm_done: bool = False
    tts_done: bool = False
    tts_used: bool = False
    finished: bool = False
    interrupted: bool = False
    played_report: float | None = None
    report_event: asyncio.Event = field(default_factory=asyncio.Event)
    message_id: int | None = None
    user_message_id: int | None = None
    task: asyncio.Task | None = None
    cancelled: list[str] = field(default_factory=list)
    held: list | None = None  # speculative turn: page events held back until the turn is committed
    committed: asyncio.Event = field(default_factory=asyncio.Event)
    emit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    llm_id: str | None = None  # the generation's id, from the LLM's start event
    capped: bool = False  # the reply reached max_reply_sentences and the LLM was stopped  # upstream work cancelled by an interruption

    def estimated_played_ms(self, now: float) -> float:
        """Audio played so far, assuming the page started playing each chunk as it arrived."""
        if self.play_start is None:
            return 0.0
        if now >= self.play_end:
            return self.audio_ms
        return max(0.0, self.audio_ms - (self.play_end - now) * 1000)

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


class Link:
    """A session's connection to one service; reconnected with backoff whenever it drops."""

    def __init__(self, name: str, factory: StreamFactory,
                 on_event: Callable[[str, dict], Awaitable[None]],
                 on_status: Callable[["Link"], Awaitable[None]]) -> None:
        self.name = name
        self.factory = factory
        self.on_event = on_event
        self.on_status = on_status
        self.stream: ServiceStream | None = None
        self.up = False
        self.reason = "connecting"
        self.ready: dict = {}
        # Busy from a request (generate / text) until its terminal event (done / cancelled / error).
        self.idle = asyncio.Event()
        self.idle.set()
        self.up_event = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"link-{self.name}")

    async def _run(self) -> None:
        delay = 0.25
        while not self._closing:
            stream = self.factory()
            try:
                self.ready = await stream.connect()
            except ServiceClosed as exc:
                await self._set_down(exc.reason)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except asyncio.CancelledError:
                await stream.close()
                raise
            except Exception as exc:  # a service that breaks protocol is a down service, not a crash
                log.exception("%s: connect failed", self.name)
                await self._set_down(f"connect failed: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.25
            self.stream, self.up, self.reason = stream, True, ""
            self.idle.set()
            self.up_event.set()
            log.info("%s connected", self.name)
            await self.on_status(self)
            reason = "connection closed"
            try:
                async for event in stream.events():
                    await self.on_event(self.name, event)
            except ServiceClosed as exc:
                reason = exc.reason
            except asyncio.CancelledError:
                await stream.close()
                raise
            except Exception as exc:
                log.exception("%s: event handling failed", self.name)
                reason = f"protocol error: {exc}"
            self.stream = None
            await stream.close()
            await self._set_down(reason)
            self.idle.set()
            # Whatever turn was waiting on this service must end now, not hang.
            await self.on_event(self.name, {"type": "_closed", "reason": reason})

    async def _set_down(self, reason: str) -> None:
        changed = self.up or self.reason != reason
        self.up, self.reason = False, reason
        self.up_event.clear()
        if changed:
            log.warning("%s down: %s", self.name, reason)
            await self.on_status(self)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> bool:
        """Call a stream method; False (and the link goes down) when the service is unreachable."""
        stream = self.stream
        if stream is None or not self.up:
            return False
        try:
            await getattr(stream, method)(*args, **kwargs)
            return True
        except ServiceClosed:
            await stream.close()  # ends the reader loop, which reconnects
            return False

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def restart(self, timeout: float = 5.0) -> bool:
        """Drop the connection (e.g. a request that never ended) and wait for a fresh one."""
        stream = self.stream
        if stream is not None:
            self.up_event.clear()
            await stream.close()
        try:
            await asyncio.wait_for(self.up_event.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        self._closing = True
        await cancel_and_wait(self._task)
        if self.stream is not None:
            await self.stream.close()


class Session:
    """One browser tab: its mic stream, its service connections and its conversation."""

    def __init__(self, *, send: Send, store: Store, settings: Settings,
                 factories: dict[str, StreamFactory], observe: Observe | None = None,
                 conversation_id: str | None = None) -> None:
        self._send_raw = send
        self.store = store
        self.settings = settings
        self.observe = observe or (lambda stage, seconds: None)
        self.conversation_id = conversation_id
        self.links = {name: Link(name, factories[name], self._on_service_event, self._on_link_status)
                      for name in SERVICES if name in factories}
        self.state = "listening"
        self.voice_out = True
        self.vad_config = {"threshold": settings.vad_threshold, "min_silence_ms": settings.vad_min_silence_ms,
                           "min_speech_ms": settings.vad_min_speech_ms}
        self._vad_threshold_now = settings.vad_threshold
        # Mic stream bookkeeping: sample counter, a short ring buffer (pre-roll) and
        # arrival times, to map VAD stream timestamps back to wall-clock time.
        self.samples_in = 0
        self.vad_offset = 0
        self._ring: collections.deque[tuple[int, bytes]] = collections.deque()
        self._arrivals: collections.deque[tuple[int, float]] = collections.deque()
        self.user_speaking = False
        self._stt_pending: dict[str, float] | None = None  # timings of the utterance awaiting its final
        self._carry_text = ""  # an utterance the user continued before the reply was heard
        self._carry_message_id: int | None = None
        self.turn: Turn | None = None
        self._stopped_turn: Turn | None = None
        self._turn_ids = 0
        self._tasks: set[asyncio.Task] = set()
        self._send_lock = asyncio.Lock()
        self._stt_lock = asyncio.Lock()
        self._loud_chunks = 0
        self._resumed_unconfirmed = False
        self._ctx_start: dict[str, int | None] = {}  # conversation -> first message id in the LLM window
        self._closed = False
        self._listen_timer: asyncio.Task | None = None

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        if self.conversation_id and not await self.store.exists(self.conversation_id):
            await self.send({"type": "notice", "message": "that conversation no longer exists; starting a new one"})
            self.conversation_id = None
        for link in self.links.values():
            link.start()
        await self.send(self.hello())
        if self.conversation_id:
            await self._send_conversation()

    def hello(self) -> dict:
        return {"type": "hello", "conversation_id": self.conversation_id, "state": self.state,
                "input_sample_rate": SAMPLE_RATE, "config": {**self.vad_config, "voice_out": self.voice_out},
                "services": self.services_view()}

    async def close(self) -> None:
        self._closed = True
        if self.turn and not self.turn.finished:
            await self._interrupt(reason="session closed", notify=False)
        for task in list(self._tasks):
            task.cancel()
        if self._listen_timer:
            self._listen_timer.cancel()
        await asyncio.gather(*(link.close() for link in self.links.values()), return_exceptions=True)

    def _spawn(self, coro: Awaitable, name: str = "") -> asyncio.Task:
        task = asyncio.create_task(coro, name=name or None)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session task failed", exc_info=task.exception())

    async def send(self, event: dict | bytes) -> None:
        if self._closed:
            return
        async with self._send_lock:  # a JSON audio header and its binary frame must stay adjacent
            try:
                await self._send_raw(event)
            except Exception:
                self._closed = True

    async def _send_audio(self, header: dict, pcm: bytes) -> None:
        if self._closed:
            return
        async with self._send_lock:
            try:
                await self._send_raw(header)
                await self._send_raw(pcm)
            except Exception:
                self._closed = True

    async def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            await self.send({"type": "state", "state": state})
            want = self.settings.barge_in_threshold if state == "speaking" else self.vad_config["threshold"]
            want = max(want, self.vad_config["threshold"])
            if want != self._vad_threshold_now and "vad" in self.links:
                self._vad_threshold_now = want
                await self.links["vad"].call("configure", threshold=want)

    # ----------------------------------------------------------------- services
    def services_view(self) -> dict:
        services = {name: {"up": link.up, "reason": link.reason, "label": LABELS[name]}
                    for name, link in self.links.items()}
        up = {name: link.up for name, link in self.links.items()}
        modes = {
            "voice_in": up.get("vad", False) and up.get("stt", False) and up.get("llm", False),
            "voice_out": up.get("tts", False),
            "chat": up.get("llm", False),
        }
        # A link still making its first connection is not reported as down.
        down = [LABELS[n] for n, ok in up.items() if not ok and self.links[n].reason != "connecting"]
        if not down:
            notice = ""
        elif not modes["chat"] and LABELS["llm"] in down:
            notice = f"The {LABELS['llm']} is unavailable: no replies can be made until it is back."
        elif not modes["voice_in"] and not modes["voice_out"]:
            notice = f"{', '.join(down)} unavailable: typed chat works, with text replies only."
        elif not modes["voice_in"]:
            notice = f"{', '.join(down)} unavailable: type your messages (replies are still spoken)."
        else:
            notice = f"{', '.join(down)} unavailable: replies come as text only."
        return {"services": services, "modes": modes, "notice": notice}

    async def _on_link_status(self, link: Link) -> None:
        if link.name == "vad" and link.up:
            # A fresh VAD stream counts time from zero again.
            self.vad_offset = self.samples_in
            self._vad_threshold_now = self.vad_config["threshold"]
            await link.call("configure", **self._vad_wire_config())
        if link.name == "tts" and link.up:
            await self.send({"type": "audio_format", "sample_rate": int(link.ready.get("sample_rate") or 22050)})
        if link.name in ("vad", "stt") and not link.up and self.user_speaking:
            self.user_speaking = False
            await self._set_state("listening")
        await self.send({"type": "services", **self.services_view()})

    @property
    def _speculative_ms(self) -> int:
        """Silence after which the reply is started speculatively (0: off)."""
        spec = self.settings.speculative_silence_ms
        return spec if 0 < spec < self.vad_config["min_silence_ms"] else 0

    def _vad_wire_config(self) -> dict:
        spec = self._speculative_ms
        return {"sample_rate": SAMPLE_RATE, "threshold": self._vad_threshold_now,
                "min_silence_ms": spec or self.vad_config["min_silence_ms"],
                "probabilities": bool(spec),
                "min_speech_ms": self.vad_config["min_speech_ms"],
                "speech_pad_ms": self.settings.vad_speech_pad_ms}

    async def _on_service_event(self, name: str, event: dict) -> None:
        kind = event.get("type")
        if name == "vad":
            await self._on_vad(event)
        elif name == "stt":
            await self._on_stt(event)
        else:
            if kind in ("done", "cancelled", "error", "_closed"):
                self.links[name].idle.set()
            turn = self.turn
            if turn is not None and not turn.finished and not turn.interrupted:
                turn.queue.put_nowait((name, event))
            elif kind == "error":
                log.info("%s error outside a turn: %s", name, event.get("error"))

    # ----------------------------------------------------------------- mic input
    async def on_audio(self, pcm: bytes) -> None:
        if len(pcm) % 2:
            pcm = pcm[:-1]
        if not pcm:
            return
        now = time.perf_counter()
        start = self.samples_in
        self.samples_in += len(pcm) // 2
        self._ring.append((start, pcm))
        self._arrivals.append((self.samples_in, now))
        keep_from = self.samples_in - 2 * SAMPLE_RATE
        while self._ring and self._ring[0][0] + len(self._ring[0][1]) // 2 < keep_from:
            self._ring.popleft()
        while len(self._arrivals) > 1 and self._arrivals[0][0] < self.samples_in - 10 * SAMPLE_RATE:
            self._arrivals.popleft()
        vad = self.links.get("vad")
        if vad is not None and vad.up:
            await vad.call("audio", pcm)
        if self.user_speaking:
            async with self._stt_lock:
                stt = self.links.get("stt")
                if self.user_speaking and stt is not None and stt.up:
                    await stt.call("audio", pcm)

    def _sample_time(self, sample: int) -> float | None:
        """Wall-clock (perf_counter) time at which a given mic sample arrived."""
        for end, t in self._arrivals:
            if end >= sample:
                return t - (end - sample) / SAMPLE_RATE
        return None

    def _audio_since(self, sample: int) -> bytes:
        parts = []
        for start, pcm in self._ring:
            end = start + len(pcm) // 2
            if end <= sample:
                continue
            skip = max(0, sample - start)
            parts.append(pcm[skip * 2:])
        return b"".join(parts)

    async def _on_vad(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "speech_start":
            await self._speech_start(float(event.get("timestamp") or 0.0))
        elif kind == "speech_end":
            await self._speech_end(float(event.get("timestamp") or 0.0))
        elif kind == "probability":
            await self._on_probability(float(event.get("probability") or 0.0))
        elif kind == "_closed":
            if self.user_speaking:
                self.user_speaking = False
                await self._set_state("listening")
        elif kind == "error":
            await self.send({"type": "error", "source": "vad", "error": event.get("error")})

    async def _on_probability(self, p: float) -> None:
        turn = self.turn
        if turn is None or turn.held is None or turn.interrupted:
            self._loud_chunks = 0
            return
        self._loud_chunks = self._loud_chunks + 1 if p >= self.vad_config["threshold"] else 0
        if self._loud_chunks >= 2:  # 64 ms of speech: the user was only pausing
            self._loud_chunks = 0
            await self._abort_speculation(turn, resumed=True)

    async def _abort_speculation(self, turn: Turn, resumed: bool) -> None:
        """Drop a reply started on a short pause that turned out not to end the turn; nothing reached the page."""
        if self.turn is turn:
            self.turn = None
        turn.interrupted = turn.finished = True
        if turn.task is not None and turn.task is not asyncio.current_task():
            turn.task.cancel()
        llm, tts = self.links.get("llm"), self.links.get("tts")
        if not turn.llm_done and llm is not None:
            await llm.call("cancel")
        if turn.tts_used and not turn.tts_done and tts is not None:
            await tts.call("cancel")
        # What the user says next is the rest of this utterance.
        self._carry_text, self._carry_message_id = turn.user_text, turn.user_message_id
        log.info("turn %s: speculative reply dropped (user resumed speaking)", turn.id)
        if resumed and not self.user_speaking:
            stt = self.links.get("stt")
            async with self._stt_lock:
                self.user_speaking = True
                self._resumed_unconfirmed = True
                if stt is not None and stt.up:
                    back = int((self.settings.preroll_ms + 100) * SAMPLE_RATE / 1000)
                    preroll = self._audio_since(max(0, self.samples_in - back))
                    if preroll:
                        await stt.call("audio", preroll)
            await self._set_state("user_speaking")
            self._spawn(self._resume_fallback(), "resume-fallback")

    async def _resume_fallback(self) -> None:
        """If the VAD never confirms the resumed speech (a blip, not words), end the utterance after all."""
        await asyncio.sleep((self.vad_config["min_speech_ms"] + 400) / 1000)
        if self._resumed_unconfirmed and self.user_speaking:
            self._resumed_unconfirmed = False
            await self._speech_end(None)

    async def _speech_start(self, ts: float) -> None:
        if self.user_speaking:
            self._resumed_unconfirmed = False
            return
        turn = self.turn
        if turn is not None and not turn.finished or self.state in ("thinking", "speaking"):
            await self._interrupt(reason="barge-in")
        stt = self.links.get("stt")
        async with self._stt_lock:
            # Pre-roll and the switch to live forwarding happen under one lock, so no mic frame
            # reaches STT twice or out of order.
            self.user_speaking = True
            if stt is not None and stt.up:
                start_sample = (self.vad_offset + int(ts * SAMPLE_RATE)
                                - int(self.settings.preroll_ms * SAMPLE_RATE / 1000))
                preroll = self._audio_since(max(0, start_sample))
                if preroll:
                    await stt.call("audio", preroll)
        await self._set_state("user_speaking")
        await self.send({"type": "speech_start", "timestamp": ts})
        if stt is None or not stt.up:
            await self.send({"type": "error", "source": "stt",
                             "error": {"message": "speech heard, but speech recognition is unavailable: "
                                       "please type", "type": "service_unavailable", "code": "stt_down"}})

    async def _speech_end(self, ts: float | None) -> None:
        if not self.user_speaking:
            return
        async with self._stt_lock:
            self.user_speaking = False
        self._resumed_unconfirmed = False
        now = time.perf_counter()
        wait = (self._speculative_ms or self.vad_config["min_silence_ms"]) / 1000
        t_end = self._sample_time(self.vad_offset + int(ts * SAMPLE_RATE)) if ts is not None else None
        if t_end is None or t_end > now:
            t_end = now - wait
        await self.send({"type": "speech_end", "timestamp": ts})
        stt = self.links.get("stt")
        if stt is None or not await stt.call("end"):
            await self._set_state("listening")
            return
        self._stt_pending = {"speech_end": t_end, "vad_end": now}
        if self._speculative_ms and ts is not None:
            # Start the reply now, but let it reach the page only once the full turn-end silence has passed.
            self._stt_pending["commit_at"] = t_end + self.vad_config["min_silence_ms"] / 1000
        await self._set_state("thinking")
        self._spawn(self._stt_watchdog(self._stt_pending), "stt-watchdog")

    async def _stt_watchdog(self, pending: dict) -> None:
        await asyncio.sleep(self.settings.turn_timeout_s)
        if self._stt_pending is pending:
            self._stt_pending = None
            await self.send({"type": "error", "source": "stt", "error": {
                "message": "speech recognition did not answer in time", "type": "timeout_error",
                "code": "stt_timeout"}})
            if self.state == "thinking" and self.turn is None:
                await self._set_state("listening")

    async def _on_stt(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "partial":
            await self.send({"type": "partial", "text": event.get("text", "")})
        elif kind == "final":
            pending, self._stt_pending = self._stt_pending, None
            if pending is None:
                return
            pending["transcript"] = time.perf_counter()
            text = (event.get("text") or "").strip()
            if self._carry_text and is_meaningful(text):
                text = f"{self._carry_text} {text}"
            elif self._carry_text:
                text = self._carry_text
            if not is_meaningful(text):
                await self.send({"type": "no_speech"})
                if self.state == "thinking" and self.turn is None:
                    await self._set_state("listening" if not self.user_speaking else "user_speaking")
                return
            if self.user_speaking:
                # The user went on talking: hold this part and answer the whole utterance.
                self._carry_text = text
                await self.send({"type": "partial", "text": text})
                return
            commit_at = pending.pop("commit_at", None)
            await self._start_turn(text, source="voice", timings=pending, commit_at=commit_at)
        elif kind in ("error", "_closed"):
            if self._stt_pending is not None:
                self._stt_pending = None
                msg = event.get("error", {}).get("message") if kind == "error" else event.get("reason")
                await self.send({"type": "error", "source": "stt", "error": {
                    "message": f"speech recognition failed: {msg}", "type": "upstream_error",
                    "code": "stt_failed"}})
                if self.turn is None:
                    await self._set_state("user_speaking" if self.user_speaking else "listening")

    # ----------------------------------------------------------------- page events
    async def on_text_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "text":
            text = event.get("text")
            if not isinstance(text, str) or not text.strip():
                return await self._event_error("text must be a non-empty string", "invalid_text")
            if len(text) > 4000:
                return await self._event_error("text is longer than 4000 characters", "text_too_long")
            if self.turn is not None and not self.turn.finished or self.state == "speaking":
                await self._interrupt(reason="new message")
            self._carry_text, self._carry_message_id = "", None
            voice = event.get("voice")
            await self._start_turn(text.strip(), source="text", timings={"transcript": time.perf_counter()},
                                   voice=self.voice_out if voice is None else bool(voice))
        elif kind == "config":
            await self._configure(event)
        elif kind == "playback":
            self._on_playback(event)
        elif kind == "interrupt":
            await self._interrupt(reason="stopped by the user")
        elif kind == "new_conversation":
            await self._interrupt(reason="new conversation")
            self.conversation_id = None
            self._carry_text, self._carry_message_id = "", None
            await self.send({"type": "conversation", "id": None, "title": "", "messages": []})
        elif kind == "open_conversation":
            cid = event.get("id")
            if not isinstance(cid, str) or not await self.store.exists(cid):
                return await self._event_error("no such conversation", "not_found")
            await self._interrupt(reason="conversation switched")
            self.conversation_id = cid
            self._carry_text, self._carry_message_id = "", None
            await self._send_conversation()
        elif kind == "ping":
            await self.send({"type": "pong", "t": event.get("t")})
        else:
            await self._event_error(f"unknown event type {kind!r}", "unknown_event")

    async def _event_error(self, message: str, code: str) -> None:
        await self.send({"type": "error", "error": {"message": message, "type": "invalid_request_error",
                                                    "code": code}})

    async def _send_conversation(self) -> None:
        conv = await self.store.get_conversation(self.conversation_id) if self.conversation_id else None
        if conv is None:
            return
        await self.send({"type": "conversation", "id": conv["id"], "title": conv["title"],
                         "messages": conv["messages"]})

    async def _configure(self, event: dict) -> None:
        limits = {"threshold": (0.05, 0.95, float), "min_silence_ms": (100, 3000, int),
                  "min_speech_ms": (50, 2000, int)}
        changed = {}
        for key, (lo, hi, cast) in limits.items():
            if key in event and event[key] is not None:
                try:
                    value = cast(event[key])
                except (TypeError, ValueError):
                    return await self._event_error(f"{key} must be a number", "invalid_config")
                if not lo <= value <= hi:
                    return await self._event_error(f"{key} must be between {lo} and {hi}", "invalid_config")
                changed[key] = value
        if "voice_out" in event:
            self.voice_out = bool(event["voice_out"])
        self.vad_config.update(changed)
        if changed and "vad" in self.links:
            self._vad_threshold_now = self.vad_config["threshold"] if self.state != "speaking" else max(
                self.settings.barge_in_threshold, self.vad_config["threshold"])
            await self.links["vad"].call("configure", **self._vad_wire_config())
        await self.send({"type": "config", **self.vad_config, "voice_out": self.voice_out})

    def _on_playback(self, event: dict) -> None:
        turn = self.turn
        if turn is None or event.get("turn") not in (None, turn.id):
            # The report that answers a stop_playback arrives after the turn was interrupted.
            turn = self._stopped_turn
            if turn is None or event.get("turn") != turn.id:
                return
        played = event.get("played_ms")
        if isinstance(played, (int, float)) and played >= 0:
            turn.played_report = float(played)
            turn.report_event.set()
        if event.get("done") and turn.finished and self.state == "speaking" and not self.user_speaking:
            self._spawn(self._set_state("listening"))

    # ----------------------------------------------------------------- replies
    async def _ensure_conversation(self, first_text: str) -> str:
        if self.conversation_id is None or not await self.store.exists(self.conversation_id):
            conv = await self.store.create_conversation()
            self.conversation_id = conv["id"]
            await self.send({"type": "conversation_created", "id": conv["id"]})
        return self.conversation_id

    async def _start_turn(self, text: str, *, source: str, timings: dict[str, float],
                          voice: bool | None = None, commit_at: float | None = None) -> None:
        cid = await self._ensure_conversation(text)
        if self._carry_message_id is not None:
            await self.store.update_message(self._carry_message_id, content=text)
            user_mid = self._carry_message_id
        else:
            user_mid = (await self.store.add_message(cid, "user", text, source=source))["id"]
        self._carry_text, self._carry_message_id = "", None
        self._turn_ids += 1
        tts = self.links.get("tts")
        want_voice = self.voice_out if voice is None else voice
        turn = Turn(id=self._turn_ids, user_text=text, source=source,
                    voice=bool(want_voice and tts is not None and tts.up), t=dict(timings),
                    user_message_id=user_mid)
        self.turn = turn
        delay = (commit_at - time.perf_counter()) if commit_at is not None else 0.0
        if delay > 0:
            turn.held = []
            self._spawn(self._commit_after(turn, delay), f"commit-{turn.id}")
        else:
            turn.committed.set()
        await self._emit(turn, {"type": "transcript", "turn": turn.id, "text": text, "source": source,
                                "message_id": user_mid})
        await self._set_state("thinking")
        turn.task = self._spawn(self._run_turn(turn), f"turn-{turn.id}")

    async def _context(self) -> list[dict]:
        """The conversation as the LLM sees it: a window that only moves forward in jumps.

        A window sliding by one exchange per turn changes the prompt's beginning every
        turn, so the LLM re-evaluates all of it (about 0.5-1 s on 2 cores). Kept fixed,
        the previous prompt is a prefix of the new one and the LLM's KV cache reuses it:
        only the new user message is evaluated. When the window holds more than
        ``history_messages``, it jumps to the last exchange.
        """
        recent = await self.store.messages(self.conversation_id, last=self.settings.history_messages + 8)
        recent = [m for m in recent if m["role"] in ("user", "assistant") and m["content"]]
        start = self._ctx_start.get(self.conversation_id)
        window = [m for m in recent if start is not None and m["id"] >= start]
        if start is None or not window or len(window) > self.settings.history_messages:
            window = recent[-3:]  # the last exchange and the new message
            self._ctx_start[self.conversation_id] = window[0]["id"] if window else None
        return [{"role": m["role"], "content": m["content"]} for m in window]

    async def _emit(self, turn: Turn, event: dict) -> None:
        """Send a turn's event to the page, or hold it while the turn is still speculative."""
        async with turn.emit_lock:
            if turn.held is not None:
                turn.held.append(("event", event))
            else:
                await self.send(event)

    async def _commit_after(self, turn: Turn, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.turn is not turn or turn.interrupted:
            return
        async with turn.emit_lock:
            held, turn.held = turn.held or [], None
            turn.t["commit"] = time.perf_counter()
            for item in held:
                if item[0] == "event":
                    await self.send(item[1])
                else:
                    await self._forward_audio(turn, *item[1:])
        turn.committed.set()

    async def _run_turn(self, turn: Turn) -> None:
        llm = self.links.get("llm")
        tts = self.links.get("tts")
        try:
            if llm is not None and not llm.up and llm.reason == "connecting":
                # A message typed the moment the page opened: give the fresh link a moment.
                try:
                    await asyncio.wait_for(llm.up_event.wait(), 3.0)
                except asyncio.TimeoutError:
                    pass
            if llm is None or not llm.up:
                await self._fail_turn(turn, "llm", "the language model service is unavailable: no reply "
                                      "can be made until it is back")
                return
            if not llm.idle.is_set() and not await llm.wait_idle(2.0):
                await llm.restart()
            messages = await self._context()
            if turn.voice and tts is not None and not tts.idle.is_set() and not await tts.wait_idle(2.0):
                await tts.restart()
            llm.idle.clear()
            ok = await llm.call("generate", messages, system=self.settings.system_prompt,
                                max_tokens=self.settings.max_tokens, temperature=self.settings.temperature,
                                model=self.settings.llm_model)
            if not ok:
                llm.idle.set()
                await self._fail_turn(turn, "llm", "the language model service connection was lost")
                return
            await self._emit(turn, {"type": "reply_start", "turn": turn.id, "voice": turn.voice})
            await self._pump(turn, llm, tts)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("turn %s failed", turn.id)
            await self._fail_turn(turn, "app", f"the turn failed: {exc}")

    async def _pump(self, turn: Turn, llm: Link, tts: Link | None) -> None:
        timeout = self.settings.turn_timeout_s
        while not (turn.llm_done and (not turn.tts_used or turn.tts_done)):
            try:
                name, event = await asyncio.wait_for(turn.queue.get(), timeout)
            except asyncio.TimeoutError:
                waiting = "llm" if not turn.llm_done else "tts"
                if waiting == "llm":
                    await llm.call("cancel")
                if tts is not None and turn.tts_used:
                    await tts.call("cancel")
                await self._fail_turn(turn, waiting, f"the {LABELS[waiting]} did not answer in {timeout:.0f} s")
                return
            kind = event.get("type")
            if name == "llm":
                # Events of an earlier (cancelled) generation can still arrive: keep only this one's.
                if kind == "start":
                    turn.llm_id = event.get("id") or "?"
                    continue
                gen_id = event.get("id")
                if kind != "_closed" and not (kind == "error" and not gen_id):
                    if turn.llm_id is None or (gen_id and turn.llm_id != "?" and gen_id != turn.llm_id):
                        continue
                    if kind == "cancelled" and not gen_id and not turn.capped:
                        continue
                if kind == "delta":
                    delta = event.get("content") or ""
                    if not delta:
                        continue
                    if "first_token" not in turn.t:
                        turn.t["first_token"] = time.perf_counter()
                    if turn.capped:
                        continue
                    turn.text += delta
                    await self._emit(turn, {"type": "reply_delta", "turn": turn.id, "text": delta})
                    limit = self.settings.max_reply_sentences
                    if limit and len(_SENTENCE_END.findall(turn.text)) >= limit:
                        # Enough for a spoken answer: stop the model rather than speak a monologue.
                        turn.capped = True
                        await llm.call("cancel")
                    if turn.voice and tts is not None:
                        if not turn.tts_used:
                            tts.idle.clear()
                            turn.tts_used = True
                        if not await tts.call("text", delta):
                            await self._tts_lost(turn, "connection lost")
                elif kind == "done":
                    turn.llm_done = True
                    final = (event.get("message") or {}).get("content")
                    if isinstance(final, str) and final.strip() and not turn.text.strip():
                        turn.text = final
                        await self._emit(turn, {"type": "reply_delta", "turn": turn.id, "text": final})
                        if turn.voice and tts is not None:
                            turn.tts_used = True
                            tts.idle.clear()
                            await tts.call("text", final)
                    if turn.tts_used and tts is not None and not turn.tts_done:
                        if not await tts.call("flush"):
                            await self._tts_lost(turn, "connection lost")
                elif kind == "cancelled":
                    turn.llm_done = True
                    if turn.tts_used and tts is not None and not turn.tts_done:
                        if not await tts.call("flush"):
                            await self._tts_lost(turn, "connection lost")
                elif kind in ("error", "_closed"):
                    msg = (event.get("error") or {}).get("message") if kind == "error" else event.get("reason")
                    if turn.tts_used and tts is not None and not turn.tts_done:
                        await tts.call("cancel")
                    await self._fail_turn(turn, "llm", f"the language model failed: {msg}")
                    return
            elif name == "tts":
                if kind == "audio":
                    pcm = event.get("pcm") or b""
                    rate = int(event.get("sample_rate") or (tts.ready.get("sample_rate") if tts else 22050) or 22050)
                    async with turn.emit_lock:
                        if turn.held is not None:
                            turn.held.append(("audio", event, pcm, rate))
                        else:
                            await self._forward_audio(turn, event, pcm, rate)
                elif kind == "done":
                    turn.tts_done = True
                elif kind == "cancelled":
                    turn.tts_done = True
                elif kind in ("error", "_closed"):
                    msg = (event.get("error") or {}).get("message") if kind == "error" else event.get("reason")
                    await self._tts_lost(turn, msg)
        await self._finish_turn(turn)

    async def _tts_lost(self, turn: Turn, why: Any) -> None:
        if turn.tts_done:
            return
        turn.tts_done = True
        turn.voice = False
        await self._emit(turn, {"type": "error", "source": "tts", "turn": turn.id, "error": {
            "message": f"speech synthesis failed ({why}): the reply continues as text",
            "type": "upstream_error", "code": "tts_failed"}})

    async def _forward_audio(self, turn: Turn, event: dict, pcm: bytes, rate: int) -> None:
        if not pcm:
            return
        now = time.perf_counter()
        ms = len(pcm) / 2 / rate * 1000
        if "first_audio" not in turn.t:
            turn.t["first_audio"] = now
            turn.play_start = now
            turn.play_end = now
            await self._set_state("speaking")
        turn.play_end = max(turn.play_end, now) + ms / 1000
        turn.chunks.append((str(event.get("text") or ""), ms))
        turn.audio_ms += ms
        header = {"type": "audio", "turn": turn.id, "index": len(turn.chunks) - 1, "text": event.get("text", ""),
                  "sample_rate": rate, "bytes": len(pcm), "duration_ms": round(ms, 1)}
        await self._send_audio(header, pcm)

    async def _fail_turn(self, turn: Turn, source: str, message: str) -> None:
        if turn.finished:
            return
        await turn.committed.wait()  # a speculative turn fails visibly only once it is really the turn
        if turn.finished:
            return
        turn.finished = True
        await self.send({"type": "error", "source": source, "turn": turn.id, "error": {
            "message": message, "type": "upstream_error", "code": f"{source}_failed"}})
        if turn.text.strip():
            msg = await self.store.add_message(self.conversation_id, "assistant", turn.text.strip(),
                                               interrupted=True, source="voice" if turn.voice else "text",
                                               meta={"error": message})
            turn.message_id = msg["id"]
        await self.send({"type": "reply_end", "turn": turn.id, "text": turn.text, "error": True,
                         "interrupted": False})
        if self.turn is turn:
            self.turn = None
        await self._set_state("user_speaking" if self.user_speaking else "listening")

    async def _finish_turn(self, turn: Turn) -> None:
        await turn.committed.wait()
        turn.finished = True
        latency = turn.latency()
        for stage, ms in latency.items():
            self.observe(stage, ms / 1000)
        text = turn.text.strip()
        if text:
            msg = await self.store.add_message(self.conversation_id, "assistant", text,
                                               source="voice" if turn.tts_used else "text",
                                               meta={"latency": latency} if latency else None)
            turn.message_id = msg["id"]
        if turn.chunks:
            await self.send({"type": "audio_end", "turn": turn.id, "chunks": len(turn.chunks),
                             "audio_ms": round(turn.audio_ms, 1)})
        if latency:
            await self.send({"type": "latency", "turn": turn.id, **latency})
        await self.send({"type": "reply_end", "turn": turn.id, "text": text, "message_id": turn.message_id,
                         "interrupted": False, "latency": latency})
        if turn.chunks and not self.user_speaking:
            # Speaking until the page has played the queued audio (or says it has).
            delay = max(0.0, turn.play_end - time.perf_counter()) + 0.15
            if self._listen_timer:
                self._listen_timer.cancel()
            self._listen_timer = self._spawn(self._listen_after(turn, delay), "listen-timer")
        elif not turn.chunks:
            if self.turn is turn:
                self.turn = None
            await self._set_state("user_speaking" if self.user_speaking else "listening")

    async def _listen_after(self, turn: Turn, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.turn is turn and not self.user_speaking:
            self.turn = None
            await self._set_state("listening")

    async def _interrupt(self, reason: str, notify: bool = True) -> None:
        """Barge-in: stop playback now, cancel upstream work, keep only what was heard."""
        turn = self.turn
        if turn is None:
            return
        if turn.held is not None and not turn.finished:
            await self._abort_speculation(turn, resumed=False)
            return
        now = time.perf_counter()
        still_playing = turn.play_start is not None and now < turn.play_end
        if turn.finished and not still_playing:
            self.turn = None
            return
        self.turn = None
        self._stopped_turn = turn
        turn.interrupted = True
        if self._listen_timer:
            self._listen_timer.cancel()
            self._listen_timer = None
        if notify:
            await self.send({"type": "stop_playback", "turn": turn.id, "reason": reason})
        if not turn.finished:
            turn.finished = True
            if turn.task is not None and turn.task is not asyncio.current_task():
                turn.task.cancel()
            llm, tts = self.links.get("llm"), self.links.get("tts")
            if not turn.llm_done and llm is not None and await llm.call("cancel"):
                turn.cancelled.append("llm")
            if turn.tts_used and not turn.tts_done and tts is not None and await tts.call("cancel"):
                turn.cancelled.append("tts")
        if notify:
            self._spawn(self._record_interrupted(turn, now, reason, notify), f"interrupt-{turn.id}")
        else:  # the page is gone: record what it had heard (by the clock) before the session ends
            await self._record_interrupted(turn, now, reason, notify)

    async def _record_interrupted(self, turn: Turn, at: float, reason: str, notify: bool) -> None:
        if turn.play_start is not None and notify:
            # The page answers stop_playback with the audio it really played.
            turn.report_event.clear()
            try:
                await asyncio.wait_for(turn.report_event.wait(), 0.4)
            except asyncio.TimeoutError:
                pass
        estimated = turn.estimated_played_ms(at)
        played = turn.played_report if turn.played_report is not None else estimated
        played = min(played, turn.audio_ms)
        if turn.chunks:
            if any(text for text, _ in turn.chunks):
                heard = spoken_text(turn.chunks, played)
            else:
                words = turn.text.split()
                heard = " ".join(words[: int(len(words) * played / max(turn.audio_ms, 1))])
        elif turn.voice:
            heard = ""  # nothing was spoken yet
        else:
            heard = turn.text.strip()  # a text reply: what was shown is what was "said"
        meta = {"full_text": turn.text.strip(), "played_ms": round(played, 1), "reason": reason,
                "cancelled": turn.cancelled}
        if turn.message_id is not None:
            await self.store.update_message(turn.message_id, content=heard, interrupted=True, meta=meta)
        elif heard:
            msg = await self.store.add_message(self.conversation_id, "assistant", heard, interrupted=True,
                                               source="voice" if turn.tts_used else "text", meta=meta)
            turn.message_id = msg["id"]
        if not heard and reason == "barge-in" and turn.source == "voice":
            # Nothing of the reply was heard: the user was only pausing. Merge what they say next
            # into the same message, so the model answers the whole utterance.
            self._carry_text = turn.user_text
            self._carry_message_id = turn.user_message_id
        if notify:
            await self.send({"type": "interrupted", "turn": turn.id, "spoken_text": heard,
                             "full_text": turn.text.strip(), "cancelled": turn.cancelled,
                             "played_ms": round(played, 1), "message_id": turn.message_id, "reason": reason})
        log.info("turn %s interrupted (%s) after %.0f ms of audio", turn.id, reason, played)


async def reply_once(*, store: Store, settings: Settings, factories: dict[str, StreamFactory],
                     text: str, conversation_id: str | None, audio: bool) -> dict:
    """A whole reply to one typed message (for ``POST /api/message``): text, and optionally WAV audio.

    Uses fresh LLM/TTS connections; the LLM deltas are piped into TTS as they
    arrive, exactly as in a voice session.
    """
    from rvchat_common.errors import APIError

    if conversation_id is None:
        conversation_id = (await store.create_conversation())["id"]
    elif not await store.exists(conversation_id):
        raise APIError(404, f"no conversation {conversation_id!r}", "not_found", param="conversation_id")
    user = await store.add_message(conversation_id, "user", text, source="api")
    history = await store.messages(conversation_id, last=settings.history_messages)
    messages = [{"role": m["role"], "content": m["content"]} for m in history
                if m["role"] in ("user", "assistant") and m["content"]]
    llm = factories["llm"]()
    tts = factories["tts"]() if audio else None
    try:
        try:
            await llm.connect()
        except ServiceClosed as exc:
            raise APIError(503, f"the language model service is unavailable: {exc.reason}", "llm_unavailable")
        if tts is not None:
            try:
                await tts.connect()
            except ServiceClosed as exc:
                raise APIError(503, f"the speech synthesis service is unavailable: {exc.reason}",
                               "tts_unavailable")
        pcm = bytearray()
        rate = int(tts.ready.get("sample_rate") or 22050) if tts is not None else 0

        async def collect_audio() -> None:
            nonlocal rate
            assert tts is not None
            async for ev in tts.events():
                if ev.get("type") == "audio":
                    pcm.extend(ev.get("pcm") or b"")
                    rate = int(ev.get("sample_rate") or rate)
                elif ev.get("type") in ("done", "cancelled"):
                    return
                elif ev.get("type") == "error":
                    raise APIError(502, f"speech synthesis failed: {(ev.get('error') or {}).get('message')}",
                                   "tts_failed")

        async def generate() -> str:
            reply = ""
            await llm.generate(messages, system=settings.system_prompt, max_tokens=settings.max_tokens,
                               temperature=settings.temperature, model=settings.llm_model)
            async for ev in llm.events():
                kind = ev.get("type")
                if kind == "delta":
                    reply += ev.get("content") or ""
                    if tts is not None and ev.get("content"):
                        await tts.text(ev["content"])
                elif kind == "done":
                    final = (ev.get("message") or {}).get("content")
                    if not reply.strip() and isinstance(final, str):
                        reply = final
                        if tts is not None:
                            await tts.text(final)
                    if tts is not None:
                        await tts.flush()
                    return reply
                elif kind == "error":
                    raise APIError(502, f"the language model failed: {(ev.get('error') or {}).get('message')}",
                                   "llm_failed")
            return reply

        try:
            t0 = time.perf_counter()
            jobs = [asyncio.create_task(generate())]
            if tts is not None:
                jobs.append(asyncio.create_task(collect_audio()))
            try:
                done = await asyncio.wait_for(asyncio.gather(*jobs), settings.turn_timeout_s * 2)
            finally:
                for job in jobs:
                    job.cancel()
            reply = done[0].strip()
        except ServiceClosed as exc:
            raise APIError(502, f"the {LABELS[exc.service]} connection was lost: {exc.reason}",
                           f"{exc.service}_failed")
        except asyncio.TimeoutError:
            raise APIError(504, "the reply took too long", "timeout")
    finally:
        await llm.close()
        if tts is not None:
            await tts.close()
    msg = await store.add_message(conversation_id, "assistant", reply, source="api")
    out: dict[str, Any] = {"conversation_id": conversation_id, "text": reply, "message_id": msg["id"],
                           "user_message_id": user["id"], "elapsed_ms": round((time.perf_counter() - t0) * 1000)}
    if audio:
        from rvchat_common.audio import base64_audio

        out["audio"] = base64_audio(bytes(pcm), rate or 22050)
    return out
