"""Playout: one reply on its way to the page's speaker.

Owns: holding a speculative reply's events until the turn is committed (then releasing them in
order), forwarding audio (a JSON header and its PCM frame, adjacent), the play clock (when the page
started and will finish playing, assuming it plays each chunk as it arrives; it stands still while
the page has playback paused), the page's own playback reports, and what the user heard of the
reply when it was cut off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from rvchat_common.protocol import page

SendEvent = Callable[[page.Event], Awaitable[None]]
SendAudio = Callable[[page.Audio, bytes], Awaitable[None]]

# After the last chunk's scheduled end, the page still needs a moment to drain its buffer.
PLAYOUT_TAIL_S = 0.15


def spoken_text(chunks: list[tuple[str, float]], played_ms: float) -> str:
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


class Playout:
    """The page-facing side of one reply."""

    def __init__(self, turn: int, send_event: SendEvent, send_audio: SendAudio,
                 on_first_audio: Callable[[float], Awaitable[None]],
                 on_chunk_sent: Callable[[], Awaitable[None]] | None = None) -> None:
        self.turn = turn
        self._send_event = send_event
        self._send_audio = send_audio
        self._on_first_audio = on_first_audio
        self._on_chunk_sent = on_chunk_sent
        self._held: list[tuple] | None = None
        self._lock = asyncio.Lock()  # a release and a new event must not interleave
        self.chunks: list[tuple[str, float]] = []  # (text, ms) of each audio chunk sent
        self.audio_ms = 0.0
        self.play_start: float | None = None
        self.play_end = 0.0
        self.page_done = False  # the page said it has played everything
        self.played_report: float | None = None
        self._report = asyncio.Event()
        self.paused_at: float | None = None  # the page paused playback (speech over the reply) at this time

    # -- holding (speculative replies) --
    def hold(self) -> None:
        self._held = []

    @property
    def holding(self) -> bool:
        return self._held is not None

    async def release(self) -> None:
        """Send everything held back, in order; from now on events go straight to the page."""
        async with self._lock:
            held, self._held = self._held or [], None
            for item in held:
                if item[0] == "event":
                    await self._send_event(item[1])
                else:
                    await self._forward(*item[1:])

    async def emit(self, event: page.Event) -> None:
        async with self._lock:
            if self._held is not None:
                self._held.append(("event", event))
            else:
                await self._send_event(event)

    async def audio(self, text: str, pcm: bytes, rate: int) -> None:
        async with self._lock:
            if self._held is not None:
                self._held.append(("audio", text, pcm, rate))
            else:
                await self._forward(text, pcm, rate)

    async def _forward(self, text: str, pcm: bytes, rate: int) -> None:
        if not pcm:
            return
        now = time.perf_counter()
        clock = self._clock(now)  # while paused, a chunk queues behind the paused audio
        ms = len(pcm) / 2 / rate * 1000
        first = self.play_start is None
        if first:
            self.play_start = self.play_end = clock
        self.play_end = max(self.play_end, clock) + ms / 1000
        self.chunks.append((text, ms))
        self.audio_ms += ms
        if first:
            await self._on_first_audio(now)
        header = page.Audio(turn=self.turn, index=len(self.chunks) - 1, text=text, sample_rate=rate,
                            bytes=len(pcm), duration_ms=round(ms, 1))
        await self._send_audio(header, pcm)
        if self._on_chunk_sent is not None:
            await self._on_chunk_sent()

    def sent_text(self) -> str:
        """The text of the audio sent so far (what the page is playing or has played)."""
        return " ".join(text.strip() for text, _ in self.chunks if text.strip())

    # -- the play clock --
    @property
    def started(self) -> bool:
        return self.play_start is not None

    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    def _clock(self, now: float) -> float:
        return now if self.paused_at is None else min(now, self.paused_at)

    def pause(self, now: float) -> None:
        """The page paused playback: the clock stands still (chunks sent meanwhile queue up)."""
        if self.paused_at is None:
            self.paused_at = now

    def resume(self, now: float) -> float:
        """The page resumed where it paused: what was left to play then plays from now. Seconds paused."""
        if self.paused_at is None:
            return 0.0
        paused_s = max(0.0, now - self.paused_at)
        if self.play_start is not None and self.play_end > self.paused_at:
            self.play_end += paused_s
        self.paused_at = None
        return paused_s

    def playing(self, now: float) -> bool:
        """Audio is (by the clock) still coming out of the page's speaker, or waits paused to come out."""
        return self.play_start is not None and self._clock(now) < self.play_end

    def drained_at(self) -> float:
        """When the page will have played everything sent so far."""
        return self.play_end + PLAYOUT_TAIL_S

    def estimated_played_ms(self, now: float) -> float:
        """Audio played so far, assuming the page started playing each chunk as it arrived."""
        if self.play_start is None:
            return 0.0
        now = self._clock(now)
        if now >= self.play_end:
            return self.audio_ms
        return max(0.0, self.audio_ms - (self.play_end - now) * 1000)

    # -- the page's reports --
    def report(self, played_ms: float | None, done: bool) -> None:
        if played_ms is not None:
            self.played_report = played_ms
            self._report.set()
        if done:
            self.page_done = True

    async def played_ms(self, at: float, wait_report_s: float) -> float:
        """Audio the user heard: the page's report (waited for up to ``wait_report_s``), else the clock."""
        if self.play_start is not None and wait_report_s > 0:
            self._report.clear()
            try:
                await asyncio.wait_for(self._report.wait(), wait_report_s)
            except TimeoutError:
                pass
        played = self.played_report if self.played_report is not None else self.estimated_played_ms(at)
        return min(played, self.audio_ms)

    def heard(self, played_ms: float, full_text: str, spoken: bool) -> str:
        """What of the reply's text the user heard after ``played_ms`` of its audio."""
        if self.chunks:
            if any(text for text, _ in self.chunks):
                return spoken_text(self.chunks, played_ms)
            words = full_text.split()
            return " ".join(words[: int(len(words) * played_ms / max(self.audio_ms, 1))])
        if spoken:
            return ""  # nothing was spoken yet
        return full_text.strip()  # a text reply: what was shown is what was "said"
