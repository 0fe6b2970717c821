"""A page without headphones, for tests and benches: the reply it plays comes back into its mic.

:class:`Room` is the acoustic path from the page's speaker to its mic: a delay (50-250 ms), an
attenuation (-6 to -20 dB) and a short synthetic room impulse response (a direct path, a few early
reflections, an exponentially decaying diffuse tail). :class:`LoopbackPage` is a WebSocket client of
main_app's ``/ws`` that behaves like the page: it plays the reply audio it receives on a speaker
clock (chunks back to back, 30 ms after arrival as the page's player does), stops on
``stop_playback`` and reports what it played, and sends 20 ms mic frames at real time that hold
the room's echo of what it played, a low noise floor, and optionally a real recording of a user
talking at a chosen moment.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import numpy as np
from rvchat_common.audio import float_to_pcm16, pcm16_to_float, resample

RATE = 16000
FRAME = 320  # 20 ms mic frames, as the page's worklet sends
PLAYER_LEAD_S = 0.03  # static/player.js LEAD_S


@dataclass
class Room:
    """Speaker-to-mic path: ``delay_ms`` then the impulse response, scaled to ``gain_db``."""

    delay_ms: float = 120.0
    gain_db: float = -10.0
    rt60_ms: float = 250.0
    seed: int = 0
    ir: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        n = int(RATE * min(self.rt60_ms, 400) / 1000)
        t = np.arange(n) / RATE
        tail = rng.standard_normal(n) * 10 ** (-3 * t / (self.rt60_ms / 1000))  # -60 dB at RT60
        ir = 0.3 * tail / np.sqrt(RATE * 0.01)
        ir[0] = 1.0  # direct path
        for ms, g in ((3.1, -0.6), (7.3, 0.45), (11.9, -0.3)):  # early reflections (walls, desk)
            ir[int(ms * RATE / 1000)] += g
        # gain_db is the level of the echo against what the speaker played.
        self.ir = ir / np.sqrt((ir ** 2).sum()) * 10 ** (self.gain_db / 20)

    @property
    def delay(self) -> int:
        return round(self.delay_ms * RATE / 1000)

    def echo(self, played: np.ndarray) -> np.ndarray:
        """What the mic hears of ``played``, from the sample it starts playing on: delay + ir longer."""
        n = played.size + self.ir.size - 1
        size = 1 << (n - 1).bit_length()
        out = np.fft.irfft(np.fft.rfft(played, size) * np.fft.rfft(self.ir, size), size)[:n]
        return np.concatenate([np.zeros(self.delay), out]).astype(np.float32)


class Speaker:
    """The page's player on a 16 kHz sample clock (chunks back to back, cut off by a stop), and what
    the mic hears of it through ``room`` on the same clock."""

    def __init__(self, room: Room | None) -> None:
        self.room = room
        self.audio = np.zeros(0, np.float32)  # what plays at each sample of the clock
        self.heard = np.zeros(0, np.float32)  # its echo at the mic
        self.turn_of: list[tuple[int, int, int]] = []  # (start, end, turn)
        self.end = 0

    @staticmethod
    def _fit(a: np.ndarray, n: int) -> np.ndarray:
        return a if a.size >= n else np.concatenate([a, np.zeros(n - a.size + RATE, np.float32)])

    def _add_echo(self, pcm: np.ndarray, start: int, sign: float) -> None:
        if self.room is None or pcm.size == 0:
            return
        echo = self.room.echo(pcm)
        self.heard = self._fit(self.heard, start + echo.size)
        self.heard[start:start + echo.size] += sign * echo

    def play(self, pcm: np.ndarray, at: int, turn: int) -> tuple[int, int]:
        start = max(at, self.end)
        end = start + pcm.size
        self.audio = self._fit(self.audio, end)
        self.audio[start:end] = pcm
        self._add_echo(pcm, start, 1.0)
        self.end = end
        self.turn_of.append((start, end, turn))
        return start, end

    def stop(self, at: int) -> list[tuple[np.ndarray, int]]:
        """Silence everything from sample ``at`` on (what already played still rings in the room);
        what was left to play, by turn."""
        rest = []
        if self.end > at:
            for s, e, t in self.turn_of:
                if e > at:
                    rest.append((self.audio[max(s, at):e].copy(), t))
            self._add_echo(self.audio[at:self.end].copy(), at, -1.0)
            self.audio[at:self.end] = 0.0
            self.end = at
            self.turn_of = [(s, min(e, at), t) for s, e, t in self.turn_of if s < at]
        return rest

    def played_ms(self, turn: int, now: int) -> float:
        return sum(max(0, min(e, now) - s) for s, e, t in self.turn_of if t == turn) / RATE * 1000

    def echo(self, start: int, end: int) -> np.ndarray:
        """The echo at mic samples [start, end)."""
        out = np.zeros(end - start, np.float32)
        b = min(end, self.heard.size)
        if b > start:
            out[:b - start] = self.heard[start:b]
        return out


class LoopbackPage:
    """A ``/ws`` client whose mic hears its own speaker through a :class:`Room`.

    Use it as: ``page = LoopbackPage(ws, room)``, ``page.start()``, then ``await page.say(text)``
    (a typed message the assistant answers out loud) or ``page.talk(pcm, at_s)`` (a recording
    mixed into the mic from mic-clock second ``at_s``), ``await page.wait_for(...)``, ``await page.close()``.
    Everything that arrives is in ``events`` (with ``_t``, seconds on the mic clock), and reply
    chunks' play spans on the speaker clock in ``spans``.
    """

    def __init__(self, ws, room: Room | None, noise_dbfs: float = -70.0, seed: int = 0) -> None:
        self.ws = ws
        self.speaker = Speaker(room)
        self.events: list[dict] = []
        self.noise = 10 ** (noise_dbfs / 20)
        self.rng = np.random.default_rng(seed)
        self.user = np.zeros(0, np.float32)  # recordings mixed into the mic, on the mic clock
        self.sent = 0  # mic samples sent
        self.t0 = 0.0
        self._tasks: list[asyncio.Task] = []
        self._changed = asyncio.Event()
        self.paused: list[tuple[np.ndarray, int]] | None = None  # playback paused: what waits to play

    @classmethod
    async def open(cls, ws_url: str, room: Room | None, **kwargs) -> LoopbackPage:
        """Connect to main_app's ``/ws``, wait for its four services, start the mic and the speaker."""
        import websockets

        ws = await websockets.connect(f"{ws_url}/ws", max_size=None)
        page = cls(ws, room, **kwargs)
        page.start()
        hello = await page.wait_for(lambda e: e["type"] == "hello", 10)
        services, seen = hello["services"], 0
        while not all(s["up"] for s in services["services"].values()):
            services = await page.wait_for(lambda e: e["type"] == "services", 30, since=seen)
            seen = page.events.index(services) + 1
        return page

    async def ask(self, text: str, timeout: float = 90.0) -> dict:
        """Type ``text`` and wait for the reply's first audio; that ``audio`` event (its ``turn``)."""
        n = len(self.events)
        await self.say(text)
        mine = await self.wait_for(lambda e: e["type"] == "transcript" and e.get("source") == "text"
                                   and e["text"] == text, timeout, since=n)
        return await self.wait_for(lambda e: e["type"] == "audio" and e["turn"] == mine["turn"], timeout, since=n)

    async def until_played(self, turn: int, timeout: float = 120.0) -> None:
        """Wait until the reply ``turn`` has ended and the speaker has played (and the room rung out) all of it."""
        deadline = time.perf_counter() + timeout
        ends = ("reply_end", "interrupted")
        await self.wait_for(lambda e: e["type"] in ends and e.get("turn") == turn, timeout)
        while (self.paused is not None or self.now_sample() < self.speaker.end + RATE // 2) \
                and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)

    # -- clock
    def now_sample(self) -> int:
        return int((time.perf_counter() - self.t0) * RATE)

    def now_s(self) -> float:
        return time.perf_counter() - self.t0

    # -- control
    def start(self) -> None:
        self.t0 = time.perf_counter()
        self._tasks = [asyncio.create_task(self._mic()), asyncio.create_task(self._reader())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def say(self, text: str) -> None:
        await self.ws.send(json.dumps({"type": "text", "text": text}))

    def talk(self, pcm16: bytes, at_s: float) -> None:
        """Mix a recording (16 kHz PCM16) into the mic from mic-clock second ``at_s`` on."""
        x = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0
        start = int(at_s * RATE)
        if start + x.size > self.user.size:
            self.user = np.concatenate([self.user, np.zeros(start + x.size - self.user.size, np.float32)])
        self.user[start:start + x.size] += x

    async def wait_for(self, predicate, timeout: float = 60.0, since: int = 0) -> dict:
        """The first event from ``events[since]`` on (already received or to come) for which
        ``predicate(event)`` holds."""
        deadline = time.perf_counter() + timeout
        seen = since
        while True:
            for ev in self.events[seen:]:
                if predicate(ev):
                    return ev
            seen = len(self.events)
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError("no such event")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass

    def of(self, kind: str, turn: int | None = None) -> list[dict]:
        return [e for e in self.events if e["type"] == kind and (turn is None or e.get("turn") == turn)]

    # -- the mic: echo + user + noise, 20 ms frames at real time
    async def _mic(self) -> None:
        while True:
            start, end = self.sent, self.sent + FRAME
            frame = self.rng.standard_normal(FRAME).astype(np.float32) * self.noise
            frame += self.speaker.echo(start, end)
            if start < self.user.size:
                user = self.user[start:end]
                frame[:user.size] += user
            pcm = float_to_pcm16(frame)
            await self.ws.send(pcm)
            self.sent = end
            delay = self.t0 + end / RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)

    # -- the speaker: reply audio, stops, playback reports
    def _to16k(self, pcm16: bytes, rate: int) -> np.ndarray:
        x = pcm16_to_float(pcm16)
        return x if rate == RATE else resample(x, rate, RATE)

    async def _reader(self) -> None:
        header = None
        async for msg in self.ws:
            now = self.now_sample()
            if isinstance(msg, bytes):
                if header is not None:
                    pcm = self._to16k(msg, header["sample_rate"])
                    if self.paused is not None:
                        self.paused.append((pcm, header["turn"]))
                    else:
                        self.speaker.play(pcm, now + int(PLAYER_LEAD_S * RATE), header["turn"])
                    header = None
                continue
            ev = json.loads(msg)
            ev["_t"] = now / RATE
            self.events.append(ev)
            self._changed.set()
            if ev["type"] == "audio":
                header = ev
            elif ev["type"] in ("stop_playback", "pause_playback"):
                played = self.speaker.played_ms(ev["turn"], now)
                rest = self.speaker.stop(now)
                if ev["type"] == "pause_playback":
                    self.paused = (self.paused or []) + rest
                else:
                    self.paused = None
                await self.ws.send(json.dumps({"type": "playback", "turn": ev["turn"], "played_ms": round(played)}))
            elif ev["type"] == "resume_playback":
                for pcm, turn in self.paused or []:
                    self.speaker.play(pcm, now + int(PLAYER_LEAD_S * RATE), turn)
                self.paused = None
            elif ev["type"] == "reply_end" and ev.get("turn") is not None:
                self._spawn_done(ev["turn"])

    def _spawn_done(self, turn: int) -> None:
        async def done() -> None:
            ends = [e for s, e, t in self.speaker.turn_of if t == turn]
            if ends:
                await asyncio.sleep(max(0.0, max(ends) / RATE - self.now_s()))
            played = self.speaker.played_ms(turn, self.now_sample())
            await self.ws.send(json.dumps({"type": "playback", "turn": turn, "played_ms": round(played),
                                           "done": True}))
        self._tasks.append(asyncio.create_task(done()))


def through_room(reply: np.ndarray, room: Room, *, lead_s: float = 1.0, tail_s: float = 1.5,
                 user: np.ndarray | None = None, user_at_s: float = 0.0, noise_dbfs: float = -70.0,
                 seed: int = 0) -> tuple[np.ndarray, int]:
    """Offline: the mic signal of a page that plays ``reply`` (16 kHz float) from ``lead_s`` on through
    ``room``, with ``user`` (a recording) talking from ``user_at_s``. Returns the mic and the sample at
    which the reply starts playing (on main_app's play clock: the echo comes ``room.delay_ms`` later)."""
    start = int(lead_s * RATE)
    n = start + reply.size + int(tail_s * RATE)
    mic = np.random.default_rng(seed).standard_normal(n) * 10 ** (noise_dbfs / 20)
    echo = room.echo(reply.astype(np.float64))[: n - start]
    mic[start:start + echo.size] += echo
    if user is not None:
        at = int(user_at_s * RATE)
        mic[at:at + user.size] += user[: max(0, n - at)]
    return mic.astype(np.float32), start


def talked_over(reply: np.ndarray, room: Room, user: np.ndarray, onset_s: float, into_s: float, *,
                lead_s: float = 1.0, pause_after_s: float = 0.3, preroll_s: float = 0.3):
    """Offline: ``user`` (a recording whose speech starts ``onset_s`` in) talks ``into_s`` s into ``reply``, which
    stops playing ``pause_after_s`` after their onset, as a barge-in pauses it. Returns the mic, the part of the
    reply that played, the sample it starts playing at, and the span STT hears: from ``preroll_s`` before the
    onset to the end of the recording."""
    played = reply[: int((into_s + pause_after_s) * RATE)]
    mic, start = through_room(played, room, lead_s=lead_s, user=user, user_at_s=lead_s + into_s - onset_s,
                              tail_s=user.size / RATE + 1)
    span = slice(int((lead_s + into_s - preroll_s) * RATE), int((lead_s + into_s - onset_s) * RATE) + user.size)
    return mic, played, start, span


def guarded(mic: np.ndarray, reply: np.ndarray, reply_start: int, guard, *, stt: bool = False) -> np.ndarray:
    """Offline: feed ``mic`` through an :class:`~rvchat_app.echo.EchoGuard` in 20 ms frames arriving at
    real time, with ``reply`` sent as its reference when the mic starts; the residual the VAD hears (with
    ``stt``, the one STT hears), realigned with the mic (the guard's latency taken off)."""
    pcm = float_to_pcm16(mic)
    out = []
    for i in range(len(pcm) // (2 * FRAME)):
        out.append(guard.listen(pcm[i * 2 * FRAME:(i + 1) * 2 * FRAME], (i + 1) * FRAME / RATE)[int(stt)])
        if i == 0:
            guard.far(reply.astype(np.float32), reply_start / RATE - PLAYER_LEAD_S)  # sent just before
    res = np.frombuffer(b"".join(out), dtype="<i2").astype(np.float32) / 32768.0
    res = res[guard.latency:]
    return np.concatenate([res, np.zeros(mic.size - res.size, np.float32)])
