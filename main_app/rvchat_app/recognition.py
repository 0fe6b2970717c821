"""User turn detection: mic audio -> VAD + STT + endpointing -> hooks.

Owns: the mic stream's bookkeeping (sample count, a short pre-roll ring buffer, arrival times that
map VAD stream time back to wall-clock time), the turn-taking settings the page may change (VAD
threshold, turn-end silence, minimum speech) and the threshold in force (raised while the assistant
speaks), whether the user is speaking, the utterance waiting for its final transcript, and the
words carried over from an utterance the user continued, and the self-hearing guard (``echo.py``:
the VAD and STT hear the mic with the reply's echo taken out). It knows nothing about
replies beyond the audio the page plays (the guard's reference): it tells
the session through :class:`TurnHooks` when speech starts (the barge-in point), when speech ends,
when the turn ends with a transcript (possibly early: a speculative start with a commit time), and
when the user resumed during a speculative reply.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
from dataclasses import dataclass
from typing import Protocol

from rvchat_common.audio import pcm16_to_float, resample
from rvchat_common.protocol import ErrorEvent, page, stt, vad

from .clients import Closed, ServiceClosed
from .echo import EchoGuard
from .endpointing import Holds
from .links import Link, Links
from .settings import Settings

log = logging.getLogger("rvchat.app.recognition")

SAMPLE_RATE = page.INPUT_SAMPLE_RATE
RESUME_CHUNKS = 2  # VAD chunks (32 ms each) above threshold that mean the user was only pausing
BOUNDED_PREROLL_MS = 300  # more pre-roll while the echo guard only bounds the reply's echo (EchoGuard.bounding)
REDECODE_MAX_S = 20  # an utterance continued within this long is sent to STT again whole (the mic audio kept)


def is_meaningful(text: str) -> bool:
    """False for transcripts that are empty or only punctuation/noise markers."""
    stripped = re.sub(r"\[[^\]]*\]|\([^)]*\)", " ", text)
    return bool(re.search(r"\w", stripped))


@dataclass
class _Part:
    """Words of an utterance and the heard sample at which the audio they were decoded from begins."""
    start: int
    text: str


@dataclass
class _Pending:
    """An utterance (part) whose final transcript is awaited: its timings, where its audio begins, and whether
    that is the start of the utterance it continues (its audio sent again: the final replaces those words)."""
    timings: dict[str, float]
    start: int
    again: bool = False


class TurnHooks(Protocol):
    async def on_start_of_speech(self) -> None:
        """Speech began (before the user counts as speaking): the barge-in point."""

    async def on_end_of_turn(self, text: str, timings: dict[str, float], commit_at: float | None,
                             replaces: int | None, continues: bool = False) -> None:
        """The user's turn ended with ``text``. With ``commit_at`` the end is speculative: the
        reply may start now but must reach the page only at that time. ``replaces`` is the stored
        message of an earlier part of this utterance. ``continues``: the audio of the last turn's words was
        decoded again with this speech (see :meth:`unheard_turn`), so ``text`` begins with them."""

    def unheard_turn(self) -> str | None:
        """The last turn's words, if the user has heard nothing of its reply yet (speech now may be the rest of
        that utterance), else None."""

    def speculating(self) -> bool:
        """A speculative reply is in progress (speech now means the user was only pausing)."""

    async def on_turn_end_hold(self, commit_at: float) -> None:
        """The speculative reply of the last end of turn may reach the page at ``commit_at`` (decided after
        it started: the LLM's end-of-utterance probability)."""

    async def on_user_resumed(self) -> None:
        """Speech during a speculative reply: drop it (and carry its words over)."""

    async def on_user_state(self) -> None:
        """Whether the user speaks, or waits for a transcript, changed."""

    async def notify(self, event: page.Event) -> None:
        """An event for the page (speech_start, speech_end, partial, no_speech, errors)."""

    async def on_partial(self, text: str) -> None:
        """The user's words so far in this turn (a partial transcript): the reply to them may be prepared."""


class TurnDetector:
    def __init__(self, settings: Settings, links: Links, hooks: TurnHooks) -> None:
        self.settings = settings
        self.links = links
        self.hooks = hooks
        self.config = {"threshold": settings.vad_threshold, "min_silence_ms": settings.vad_min_silence_ms,
                       "min_speech_ms": settings.vad_min_speech_ms}
        self._agent_speaking = False
        self._threshold_now = settings.vad_threshold
        # The heard stream's bookkeeping (what the VAD and STT hear: the mic, or with the guard the mic with the
        # reply's echo taken out, 16 ms late): sample counter, a short ring buffer of what STT hears (pre-roll),
        # and the mic's arrival times, to map VAD stream timestamps back to wall-clock time.
        self.samples_in = 0  # heard samples
        self.vad_offset = 0  # the heard sample at which the VAD stream's time 0 is
        self.echo = EchoGuard(max_delay_ms=settings.echo_max_delay_ms, margin_db=settings.echo_margin_db,
                              stt_margin_db=settings.echo_stt_margin_db) if settings.echo_guard else None
        self._mic_in = 0  # mic samples
        self._ring: collections.deque[tuple[int, bytes]] = collections.deque()
        self._arrivals: collections.deque[tuple[int, float]] = collections.deque()
        self.user_speaking = False
        self._resumed_unconfirmed = False
        self._loud_chunks = 0
        # Each utterance part awaiting its final, oldest first: the user may stop, go on and stop again
        # before STT has answered the first end (one final per end, in order).
        self._pending: collections.deque[_Pending] = collections.deque()
        # An utterance the user continued before its reply was heard, by the audio each part was decoded from.
        # Speech that continues it is sent to STT again from the utterance's first sample, and that final
        # replaces the parts it covers: a part decoded alone is misheard more (a short tail gets words that
        # were not said, and "What is the capital." "Of France?" reads as two sentences).
        self._carry: list[_Part] = []
        self._carry_message_id: int | None = None
        self._sending_from = 0  # the heard sample at which the audio of the STT utterance being sent begins
        self._sending_again = False  # and whether it is an earlier utterance's audio sent again
        self._turn_from: int | None = None  # where the audio of the last turn's words begins
        self._turn_text = ""  # and the words
        self._stt_lock = asyncio.Lock()
        self._decisions = 0  # ends of turn so far: an end-of-utterance answer counts for the latest only
        self._tasks: set[asyncio.Task] = set()

    # ----------------------------------------------------------------- settings
    @property
    def decisions(self) -> int:
        """Ends of turn decided so far (each final transcript with words counts once)."""
        return self._decisions

    @property
    def awaiting_final(self) -> bool:
        return bool(self._pending)

    @property
    def speculative_ms(self) -> int:
        """Silence after which the reply is started speculatively (0: off)."""
        spec = self.settings.speculative_silence_ms
        return spec if 0 < spec < self.config["min_silence_ms"] else 0

    def holds(self) -> Holds:
        """The turn-end silences by what was said; the page's turn-end silence is the unsure case."""
        s = self.settings
        return Holds(complete_ms=s.turn_end_complete_ms, unsure_ms=self.config["min_silence_ms"],
                     incomplete_ms=s.turn_end_incomplete_ms, midsentence_ms=s.turn_end_midsentence_ms,
                     midsentence_below=s.turn_end_eou_midsentence)

    def _wanted_threshold(self) -> float:
        base = self.config["threshold"]
        return max(self.settings.barge_in_threshold, base) if self._agent_speaking else base

    def wire_config(self) -> dict:
        spec = self.speculative_ms
        return {"sample_rate": SAMPLE_RATE, "threshold": self._threshold_now,
                "min_silence_ms": spec or self.config["min_silence_ms"],
                "probabilities": bool(spec),
                "min_speech_ms": self.config["min_speech_ms"],
                "speech_pad_ms": self.settings.vad_speech_pad_ms}

    async def configure(self, changed: dict) -> None:
        """Apply the page's turn-taking settings (already validated) and send them to the VAD."""
        self.config.update(changed)
        if changed and "vad" in self.links:
            self._threshold_now = self._wanted_threshold()
            await self.links["vad"].call("configure", **self.wire_config())

    async def set_agent_speaking(self, speaking: bool) -> None:
        """While the assistant speaks the threshold rises, so leftover echo does not barge in."""
        self._agent_speaking = speaking
        want = self._wanted_threshold()
        if want != self._threshold_now and "vad" in self.links:
            self._threshold_now = want
            await self.links["vad"].call("configure", threshold=want)

    # ----------------------------------------------------------------- carried words
    def carry_over(self, text: str, message_id: int | None) -> None:
        """What the user says next continues this utterance (its reply was dropped unheard): ``text`` is
        the last turn's."""
        # -1: the audio of these words is not known (the session joined words of an earlier turn to them).
        start = self._turn_from if self._turn_from is not None and text == self._turn_text else -1
        self._carry, self._carry_message_id = [_Part(start, text)], message_id

    def clear_carry(self) -> None:
        self._carry, self._carry_message_id = [], None

    @property
    def _carry_text(self) -> str:
        return " ".join(p.text for p in self._carry)

    def _continues_from(self) -> int | None:
        """Where the utterance that speech now continues begins, if its audio is still kept (else None:
        the new part is decoded alone and its words joined to the utterance's)."""
        starts = [p.start for p in self._pending] + [p.start for p in self._carry]
        if not starts and self._turn_from is not None and self.hooks.unheard_turn() == self._turn_text:
            starts = [self._turn_from]  # the reply to it is paused unheard: the user may be going on
        if not starts:
            return None
        start = min(starts)
        kept = self._ring[0][0] if self._ring else self.samples_in
        if start < kept or self.samples_in - start > REDECODE_MAX_S * SAMPLE_RATE:
            return None
        return start

    # ----------------------------------------------------------------- links
    async def on_link_status(self, link: Link) -> None:
        if link.name == "vad" and link.up:
            # A fresh VAD stream counts time from zero again.
            self.vad_offset = self.samples_in
            self._threshold_now = self._wanted_threshold()
            await link.call("configure", **self.wire_config())
        if link.name in ("vad", "stt") and not link.up and self.user_speaking:
            self.user_speaking = False
            await self.hooks.on_user_state()

    # ----------------------------------------------------------------- mic input
    async def on_audio(self, pcm: bytes) -> None:
        if len(pcm) % 2:
            pcm = pcm[:-1]
        if not pcm:
            return
        now = time.perf_counter()
        self._mic_in += len(pcm) // 2
        self._arrivals.append((self._mic_in, now))
        while len(self._arrivals) > 1 and self._arrivals[0][0] < self._mic_in - 10 * SAMPLE_RATE:
            self._arrivals.popleft()
        for_vad, heard = self.echo.listen(pcm, now) if self.echo is not None else (pcm, pcm)
        start = self.samples_in
        self.samples_in += len(heard) // 2
        if heard:
            self._ring.append((start, heard))
        # Two seconds for the pre-roll, and the current utterance for a continuation to send again whole.
        anchors = [self._sending_from] + ([self._turn_from] if self._turn_from is not None else [])
        keep_from = max(min([self.samples_in - 2 * SAMPLE_RATE, *anchors]),
                        self.samples_in - REDECODE_MAX_S * SAMPLE_RATE)
        while self._ring and self._ring[0][0] + len(self._ring[0][1]) // 2 < keep_from:
            self._ring.popleft()
        vad = self.links.get("vad")
        if for_vad and vad is not None and vad.up:
            await vad.call("audio", for_vad)
        if self.user_speaking and heard:
            async with self._stt_lock:
                stt = self.links.get("stt")
                if self.user_speaking and stt is not None and stt.up:
                    await stt.call("audio", heard)

    # ----------------------------------------------------------------- the reply's audio (echo reference)
    def on_reply_audio(self, pcm: bytes, rate: int, sent_at: float) -> None:
        """Reply audio sent to the page at ``sent_at`` (perf_counter), to play after what it has queued."""
        if self.echo is not None and pcm:
            self.echo.far(resample(pcm16_to_float(pcm), rate, SAMPLE_RATE), sent_at)

    def on_playback(self, kind: str, at: float) -> None:
        """The page was told at ``at`` to stop, pause or resume playing the reply."""
        if self.echo is not None:
            {"stop_playback": self.echo.stop, "pause_playback": self.echo.pause,
             "resume_playback": self.echo.resume}[kind](at)

    def _sample_time(self, sample: int) -> float | None:
        """Wall-clock (perf_counter) time at which the mic audio of a given heard sample arrived."""
        sample -= self.echo.latency if self.echo is not None else 0
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

    async def _send_preroll(self, from_sample: int) -> None:
        """Start STT's utterance with the audio since ``from_sample``, or since the start of the utterance this
        speech continues."""
        again = self._continues_from()
        self._sending_from = again if again is not None else max(0, from_sample)
        self._sending_again = again is not None
        stt = self.links.get("stt")
        if stt is not None and stt.up:
            preroll = self._audio_since(self._sending_from)
            if preroll:
                if again is not None:
                    log.debug("speech continues the utterance: its %.1f s go to STT again",
                              len(preroll) / 2 / SAMPLE_RATE)
                await stt.call("audio", preroll)

    # ----------------------------------------------------------------- VAD
    async def on_vad(self, event: vad.ServerEvent | Closed) -> None:
        if isinstance(event, vad.SpeechStart):
            await self._speech_start(event.timestamp)
        elif isinstance(event, vad.SpeechEnd):
            await self._speech_end(event.timestamp)
        elif isinstance(event, vad.Probability):
            await self._on_probability(event.probability)
        elif isinstance(event, Closed):
            if self.user_speaking:
                self.user_speaking = False
                await self.hooks.on_user_state()
        elif isinstance(event, ErrorEvent):
            await self.hooks.notify(page.SessionError(error=event.error, source="vad"))

    async def _on_probability(self, p: float) -> None:
        if not self.hooks.speculating():
            self._loud_chunks = 0
            return
        self._loud_chunks = self._loud_chunks + 1 if p >= self.config["threshold"] else 0
        if self._loud_chunks >= RESUME_CHUNKS:  # 64 ms of speech: the user was only pausing
            self._loud_chunks = 0
            await self.hooks.on_user_resumed()
            await self._resume()

    async def _resume(self) -> None:
        """The user speaks again before the VAD confirms it: listen from a little before now."""
        if self.user_speaking:
            return
        async with self._stt_lock:
            self.user_speaking = True
            self._resumed_unconfirmed = True
            back = int((self.settings.preroll_ms + 100) * SAMPLE_RATE / 1000)
            await self._send_preroll(self.samples_in - back)
        await self.hooks.on_user_state()
        self._spawn(self._resume_fallback())

    async def _resume_fallback(self) -> None:
        """If the VAD never confirms the resumed speech (a blip, not words), end the utterance after all."""
        await asyncio.sleep((self.config["min_speech_ms"] + 400) / 1000)
        if self._resumed_unconfirmed and self.user_speaking:
            self._resumed_unconfirmed = False
            await self._speech_end(None)

    async def _speech_start(self, ts: float) -> None:
        if self.user_speaking:
            self._resumed_unconfirmed = False
            return
        await self.hooks.on_start_of_speech()
        stt = self.links.get("stt")
        async with self._stt_lock:
            # Pre-roll and the switch to live forwarding happen under one lock, so no mic frame
            # reaches STT twice or out of order.
            self.user_speaking = True
            preroll_ms = self.settings.preroll_ms
            if self.echo is not None and self.echo.bounding:
                # The VAD may have heard the onset late (a clean-clone run: 0.35 s, and STT heard "I have a
                # thousand" as "there were 1000"); STT hears the mic here, so reaching further back costs nothing
                # with headphones.
                preroll_ms += BOUNDED_PREROLL_MS
            await self._send_preroll(self.vad_offset + int(ts * SAMPLE_RATE) - int(preroll_ms * SAMPLE_RATE / 1000))
        await self.hooks.on_user_state()
        await self.hooks.notify(page.SpeechStarted(timestamp=ts))
        if stt is None or not stt.up:
            await self.hooks.notify(page.SessionError.upstream(
                "stt", "speech heard, but speech recognition is unavailable: please type", "stt_down",
                type="service_unavailable"))

    async def _speech_end(self, ts: float | None) -> None:
        if not self.user_speaking:
            return
        async with self._stt_lock:
            self.user_speaking = False
        self._resumed_unconfirmed = False
        now = time.perf_counter()
        wait = (self.speculative_ms or self.config["min_silence_ms"]) / 1000
        t_end = self._sample_time(self.vad_offset + int(ts * SAMPLE_RATE)) if ts is not None else None
        if t_end is None or t_end > now:
            t_end = now - wait
        await self.hooks.notify(page.SpeechEnded(timestamp=ts))
        stt = self.links.get("stt")
        # Our VAD heard this speech (speech_start after min_speech_ms): the STT must not drop it as silence.
        if stt is None or not await stt.call("end", speech=True):
            await self.hooks.on_user_state()
            return
        timings = {"speech_end": t_end, "vad_end": now}
        if self.speculative_ms and ts is not None:
            # Start the reply now, but let it reach the page only once the turn-end silence for what was
            # said has passed (decided when the transcript is in).
            timings["speculative"] = 1.0
        pending = _Pending(timings, self._sending_from, self._sending_again)
        self._pending.append(pending)
        await self.hooks.on_user_state()
        self._spawn(self._stt_watchdog(pending))

    async def _stt_watchdog(self, pending: _Pending) -> None:
        await asyncio.sleep(self.settings.turn_timeout_s)
        if any(p is pending for p in self._pending):
            self._pending.clear()  # STT is stuck: no final of these will come in order
            await self.hooks.notify(page.SessionError.upstream(
                "stt", "speech recognition did not answer in time", "stt_timeout", type="timeout_error"))
            await self.hooks.on_user_state()

    # ----------------------------------------------------------------- STT
    async def on_stt(self, event: stt.ServerEvent | Closed) -> None:
        if isinstance(event, stt.Partial):
            await self.hooks.notify(page.Partial(text=event.text))
            words = self._joined(event.text.strip())
            if is_meaningful(words):
                await self.hooks.on_partial(words)
        elif isinstance(event, stt.Final):
            if not self._pending:
                return
            pending = self._pending.popleft()
            timings = pending.timings
            timings["transcript"] = time.perf_counter()
            heard = event.text.strip()
            if is_meaningful(heard):
                # The parts this final's audio covers are replaced by it.
                self._carry = self._uncovered(pending.start, pending.again) + [_Part(pending.start, heard)]
            text = self._carry_text
            if not is_meaningful(text):
                await self.hooks.notify(page.NoSpeech())
                await self.hooks.on_user_state()
                return
            if self.user_speaking or self._pending:
                # The user went on talking (and may have stopped again: that part's final is still to come):
                # hold this part and answer the whole utterance.
                await self.hooks.notify(page.Partial(text=text))
                return
            # The last turn's words decoded again with this speech: the session's paused reply to them is
            # answered by this turn (or resumed if nothing was added).
            continues = pending.again and pending.start == self._turn_from and not self._carry[:-1]
            self._turn_from, self._turn_text = min(p.start for p in self._carry), text
            commit_at, eou = None, None
            if timings.pop("speculative", None):
                holds = self.holds()
                eou = self._ask_eou(text)
                # Asking the LLM: the reply is prepared meanwhile and held for the longest silence until the
                # answer (or the timeout) says which (see _decide_hold).
                commit_at = timings["speech_end"] + (holds.longest_ms if eou is not None
                                                     else holds.for_text(text)) / 1000
            replaces = self._carry_message_id
            self.clear_carry()
            await self.hooks.on_end_of_turn(text, timings, commit_at, replaces, continues=continues)
            self._decisions += 1
            if eou is not None:
                self._spawn(self._decide_hold(eou, text, timings["speech_end"], self._decisions))
        elif isinstance(event, (ErrorEvent, Closed)):
            if self._pending:
                self._pending.clear()
                msg = event.error.message if isinstance(event, ErrorEvent) else event.reason
                await self.hooks.notify(page.SessionError.upstream(
                    "stt", f"speech recognition failed: {msg}", "stt_failed"))
                await self.hooks.on_user_state()

    def _uncovered(self, start: int, again: bool) -> list[_Part]:
        """The carried parts that audio from heard sample ``start`` does not cover (``again``: it is the start of
        the utterance they continue; else it covers none of them)."""
        return [p for p in self._carry if p.start < start] if again else list(self._carry)

    def _joined(self, text: str) -> str:
        """The utterance's words with ``text``, a partial of the STT utterance being sent."""
        parts = self._uncovered(self._sending_from, self._sending_again)
        return " ".join([p.text for p in parts] + ([text] if text else []))

    # ----------------------------------------------------------------- end of turn from the words
    def _ask_eou(self, text: str) -> asyncio.Task[float | None] | None:
        """Ask the LLM service how likely ``text`` is finished (None: not asked, the words rule decides)."""
        llm = self.links.get("llm")
        ask = getattr(llm.stream, "eou", None) if llm is not None and llm.up else None
        if not self.settings.turn_end_eou or ask is None:
            return None

        async def asked() -> float | None:
            try:
                return await asyncio.wait_for(ask(text), self.settings.turn_end_eou_timeout_ms / 1000)
            except (TimeoutError, ServiceClosed):
                return None

        return asyncio.create_task(asked())

    async def _decide_hold(self, eou: asyncio.Task[float | None], text: str, speech_end: float,
                           decision: int) -> None:
        try:
            p = await eou
        finally:
            eou.cancel()
        if decision != self._decisions:  # a newer transcript decides (the user went on)
            return
        hold = self.holds().for_turn(text, p, self.settings.turn_end_eou_threshold)
        log.info("turn end: end-of-utterance %s -> hold %d ms", "unknown" if p is None else f"{p:.2f}", hold)
        await self.hooks.on_turn_end_hold(speech_end + hold / 1000)

    # ----------------------------------------------------------------- tasks
    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
