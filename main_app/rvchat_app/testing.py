"""In-process fakes of the four service streams (same methods as clients.py), for fast tests.

A :class:`FakeHub` makes factories and keeps every stream it made, so a test can
script the VAD, choose the transcript and the reply, take a service down, or
kill a connection mid-turn. Every event a fake emits is parsed through the service's own
protocol models (``rvchat_common.protocol``), exactly as the real client does, so a fake
cannot drift from the real service.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Callable

import numpy as np
from pydantic import TypeAdapter

from rvchat_common.protocol import ErrorEvent, Event, llm, parse, stt, tts, vad

from .clients import ServiceClosed

_CLOSE = object()
SPOKEN_BASE = 1000  # mic samples of this value and above are a ScriptedUser's words (see FakeHub.spoken)


class FakeStream:
    name = "fake"
    server_events: TypeAdapter

    def __init__(self, hub: FakeHub) -> None:
        self.hub = hub
        self.queue: asyncio.Queue = asyncio.Queue()
        self.sent: list[Any] = []
        self.ready: dict = {"type": "ready"}
        self.closed = False

    async def connect(self) -> dict:
        if self.name in self.hub.down:
            raise ServiceClosed(self.name, "connection refused (fake)")
        self.hub.streams.setdefault(self.name, []).append(self)
        return self.ready

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(_CLOSE)

    def kill(self) -> None:
        """The service dies: the connection drops."""
        self.queue.put_nowait(_CLOSE)

    def emit(self, event: dict | Event) -> None:
        """Send an event as the service would (validated against its protocol models)."""
        if isinstance(event, Event):
            pcm = getattr(event, "pcm", b"")
            event = {**event.model_dump(mode="json"), **({"pcm": pcm} if pcm else {})}
        self.queue.put_nowait(parse(self.server_events, event))

    def _check(self) -> None:
        if self.closed:
            raise ServiceClosed(self.name, "not connected")

    async def events(self):
        while True:
            event = await self.queue.get()
            if event is _CLOSE:
                self.closed = True
                raise ServiceClosed(self.name, "connection closed (fake)")
            yield event

    def calls(self, kind: str) -> list:
        return [s for s in self.sent if isinstance(s, dict) and s.get("type") == kind]


class FakeVad(FakeStream):
    name = "vad"
    server_events = vad.server_events

    def __init__(self, hub: FakeHub) -> None:
        super().__init__(hub)
        self.ready = {"type": "ready", "sample_rate": 16000}
        self.audio_bytes = 0

    async def audio(self, pcm: bytes) -> None:
        self._check()
        self.audio_bytes += len(pcm)

    async def configure(self, **config: Any) -> None:
        self._check()
        self.sent.append(vad.Config(**config).model_dump())


class FakeStt(FakeStream):
    name = "stt"
    server_events = stt.server_events

    def __init__(self, hub: FakeHub) -> None:
        super().__init__(hub)
        self.buffer = bytearray()
        self.utterances: list[bytes] = []  # the audio of each utterance, as sent before its end
        self.answers = True  # False: an end gets no final (a slow decode; the test emits it when it wants)

    async def audio(self, pcm: bytes) -> None:
        self._check()
        self.buffer.extend(pcm)

    async def end(self, speech: bool | None = None) -> None:
        """The final: the words a :class:`ScriptedUser` said in the audio sent, else the next transcript."""
        self._check()
        self.sent.append(stt.End(speech=speech).model_dump())
        self.utterances.append(bytes(self.buffer))
        self.buffer.clear()
        if not self.answers:
            return
        said = self.hub.said_in(self.utterances[-1])
        if said is not None:
            text = said
        else:
            text = self.hub.transcripts.pop(0) if self.hub.transcripts else self.hub.transcript
        self.emit(stt.Final(text=text, language="en", duration=len(self.utterances[-1]) / 32000,
                            processing_ms=1.0))


class FakeLlm(FakeStream):
    name = "llm"
    server_events = llm.server_events

    def __init__(self, hub: FakeHub) -> None:
        super().__init__(hub)
        self.task: asyncio.Task | None = None
        self.gen = 0
        self.running: str | None = None
        self.eou_asked: list[str] = []  # the texts of eou requests (not in sent: its last is the generate)
        self.prefilled: list[list[dict]] = []  # the messages of prefill requests

    async def generate(self, messages: list[dict], **options: Any) -> None:
        self._check()
        self.sent.append(llm.Generate(messages=messages, **{k: v for k, v in options.items() if v is not None})
                         .model_dump(exclude_none=True))
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        self.gen += 1
        gid = f"gen-{self.gen}"
        self.running = gid
        self.emit(llm.Start(id=gid, model="fake", provider=self.hub.provider))
        if self.hub.llm_error is not None:
            self.running = None
            self.emit(self.hub.llm_error.model_copy(update={"id": gid}))
            return
        request = self.sent[-1]
        choice = request.get("tool_choice")
        name = choice["function"]["name"] if isinstance(choice, dict) else None  # as the embedded model
        if choice == "auto" and request["messages"][-1]["role"] == "user":
            name = self.hub.auto_call  # a remote model's own decision
        if name is not None:
            call = llm.ToolCall(id=f"call_{gid}", function=llm.FunctionCall(
                name=name, arguments=self.hub.tool_arguments.get(name, "{}")))
            await asyncio.sleep(self.hub.token_delay)
            self.emit(llm.ToolCallEvent(id=gid, call=call))
            self.running = None
            self.emit(llm.Done(id=gid, message=llm.Message(role="assistant", content="", tool_calls=[call]),
                               model="fake", provider=self.hub.provider, finish_reason="tool_calls",
                               timings=llm.Timings(total_ms=1.0),
                               usage=llm.Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)))
            return
        text = self.hub.reply
        last = request["messages"][-1]
        if last["role"] == "tool":  # answer with the result, so a test sees it reached the model
            text = self.hub.tool_reply.format(result=last["content"])
        out = ""
        for i, word in enumerate(text.split(" ")):
            await asyncio.sleep(self.hub.token_delay)
            delta = word if i == 0 else " " + word
            out += delta
            self.emit(llm.Delta(id=gid, content=delta))
        self.running = None
        n = len(out.split())
        self.emit(llm.Done(id=gid, message=llm.Message(role="assistant", content=out), model="fake",
                           provider=self.hub.provider, finish_reason="stop", timings=llm.Timings(total_ms=1.0),
                           usage=llm.Usage(prompt_tokens=1, completion_tokens=n, total_tokens=n + 1)))

    async def eou(self, text: str) -> float | None:
        """The hub's end-of-utterance answer after its delay (None: the service cannot tell)."""
        self._check()
        self.eou_asked.append(text)
        await asyncio.sleep(self.hub.eou_delay)
        return self.hub.eou

    async def prefill(self, messages: list[dict], **options: Any) -> None:
        """Recorded in ``prefilled`` (not in sent: its last is the generate); nothing is answered."""
        self._check()
        self.prefilled.append(messages)

    async def cancel(self) -> None:
        self._check()
        self.sent.append(llm.Cancel().model_dump())
        if self.task and not self.task.done():
            self.task.cancel()
        # As the real service: a cancel with nothing running still gets a `cancelled`.
        self.emit(llm.Cancelled(id=self.running))
        self.running = None


class FakeTts(FakeStream):
    """Speaks each complete sentence as soon as it is complete: ``ms_per_word`` of a quiet tone."""

    name = "tts"
    server_events = tts.server_events
    rate = 22050

    def __init__(self, hub: FakeHub) -> None:
        super().__init__(hub)
        self.ready = {"type": "ready", "sample_rate": self.rate, "voice": "fake"}
        self.pending = ""
        self.index = 0

    def _speak(self, sentence: str) -> None:
        n = int(self.rate * self.hub.ms_per_word / 1000) * max(1, len(sentence.split()))
        pcm = (b"\x10\x00" * n)
        self.emit(tts.Audio(index=self.index, text=sentence, sample_rate=self.rate, bytes=len(pcm), pcm=pcm))
        self.index += 1

    async def configure(self, **config: Any) -> None:
        self._check()
        self.sent.append(tts.Config(**config).model_dump())

    async def text(self, text: str) -> None:
        self._check()
        self.sent.append(tts.Text(text=text).model_dump())
        self.pending += text
        while True:
            m = re.search(r"[.!?]\s", self.pending)
            if not m:
                break
            sentence, self.pending = self.pending[:m.start() + 1].strip(), self.pending[m.end():]
            self._speak(sentence)

    async def flush(self) -> None:
        self._check()
        self.sent.append(tts.Flush().model_dump())
        if self.pending.strip():
            self._speak(self.pending.strip())
        self.pending = ""
        self.emit(tts.Done(sentences=self.index))

    async def cancel(self) -> None:
        self._check()
        self.sent.append(tts.Cancel().model_dump())
        self.pending = ""
        self.emit(tts.Cancelled())


class FakeHub:
    def __init__(self, transcript: str = "What is the capital of France?",
                 reply: str = "The capital of France is Paris. It is a lovely city.",
                 token_delay: float = 0.002, ms_per_word: float = 200.0) -> None:
        self.transcript = transcript
        self.transcripts: list[str] = []
        self.reply = reply
        self.token_delay = token_delay
        self.ms_per_word = ms_per_word
        self.down: set[str] = set()
        self.llm_error: ErrorEvent | None = None  # the LLM answers every generation with this error
        # Tool calls: a generation whose tool_choice names a function calls it with these arguments (JSON
        # text by name, else {}); the generation after a result says tool_reply with the result in it.
        self.tool_arguments: dict[str, str] = {}
        self.tool_reply = "Here it is: {result}."
        self.provider = "fake"  # what the LLM's start event names ("ollama": main_app offers tools on auto)
        self.auto_call: str | None = None  # with tool_choice auto, call this tool (a remote model deciding)
        # End of utterance: what the LLM answers an eou request, after eou_delay s (None: it cannot tell).
        self.eou: float | None = None
        self.eou_delay = 0.0
        self.streams: dict[str, list[FakeStream]] = {}
        # Words a ScriptedUser said, by the sample value of their audio (None: the next transcript, taken when
        # STT first hears them, so that the same audio sent again is heard the same).
        self.spoken: dict[int, str | None] = {}

    def speech_sample(self, text: str | None) -> int:
        """The sample value of the audio in which ``text`` is said (the fake STT reads the words back)."""
        value = SPOKEN_BASE + len(self.spoken)
        self.spoken[value] = text
        return value

    def said_in(self, pcm16: bytes) -> str | None:
        """The words said in this audio, in order (None: none of it is a ScriptedUser's speech)."""
        samples = np.frombuffer(pcm16[: len(pcm16) // 2 * 2], dtype="<i2")
        values = [v for v in dict.fromkeys(samples[samples >= SPOKEN_BASE].tolist()) if v in self.spoken]
        for v in values:
            if self.spoken[v] is None:
                self.spoken[v] = self.transcripts.pop(0) if self.transcripts else self.transcript
        words = [self.spoken[v] for v in values]
        return " ".join(w for w in words if w) if words else None

    def factories(self) -> dict:
        kinds = {"vad": FakeVad, "stt": FakeStt, "llm": FakeLlm, "tts": FakeTts}
        return {name: (lambda cls=cls: cls(self)) for name, cls in kinds.items()}

    def last(self, name: str) -> Any:
        return self.streams[name][-1]


async def until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    """Wait for a condition instead of sleeping a fixed time before asserting it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.005)
    return value


class ScriptedUser:
    """A turn-taking timeline for a session over fakes, in stream seconds::

        user = ScriptedUser(session, hub)
        await user.says(start=0.4, end=1.0, text="What is the capital of France?")
        await user.resumes(at=1.2)          # the VAD's probabilities rise again (a speculative reply is dropped)

    Mic frames are fed up to each point of the timeline, and the fake VAD reports speech where
    the script puts it, so the session sees what a real VAD would tell it.
    """

    FRAME_S = 0.02
    FRAME = b"\x01\x00" * 320  # 20 ms of 16 kHz PCM16

    def __init__(self, session: Any, hub: "FakeHub") -> None:
        self.session = session
        self.hub = hub
        self.t = 0.0

    async def _feed_until(self, t: float, speech: tuple[float, float, int] | None = None) -> None:
        while self.t + self.FRAME_S / 2 < t:
            frame = self.FRAME
            if speech is not None and speech[0] <= self.t + self.FRAME_S / 2 < speech[1]:
                frame = int(speech[2]).to_bytes(2, "little") * (len(self.FRAME) // 2)
            await self.session.on_audio(frame)
            self.t += self.FRAME_S

    async def says(self, start: float, end: float, text: str | None = None, tail: float = 0.1) -> None:
        """Speech from ``start`` to ``end``; the VAD reports its end after ``tail`` s of silence.

        The audio says ``text`` (without it, the hub's next transcript): the fake STT's final is the words
        of the audio it was sent (all of it when an utterance's audio is sent again whole)."""
        speech = (start, end, self.hub.speech_sample(text))
        fake_vad = self.hub.last("vad")
        await self._feed_until(start)
        fake_vad.emit(vad.SpeechStart(timestamp=start))
        await until(lambda: self.session.state == "user_speaking", what="the session to hear speech")
        await self._feed_until(end + tail, speech)
        fake_vad.emit(vad.SpeechEnd(timestamp=end, start=start, duration=round(end - start, 3)))

    async def resumes(self, at: float, chunks: int = 2) -> None:
        """Speech probabilities above the threshold again at ``at`` (before the VAD confirms speech)."""
        await self._feed_until(at)
        fake_vad = self.hub.last("vad")
        for i in range(chunks):
            fake_vad.emit(vad.Probability(timestamp=round(at + i * 0.032, 3), probability=0.9))


# --------------------------------------------------------------------------- real-time client
def speech_end_seconds(pcm16: bytes, sample_rate: int = 16000) -> float:
    """Where speech ends in a clip: the end of the last 20 ms frame well above the noise floor."""
    import numpy as np

    audio = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0
    hop = sample_rate // 50
    n = audio.size // hop
    if n == 0:
        return 0.0
    rms = np.sqrt(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    db = 20 * np.log10(rms)
    threshold = max(db.max() - 35.0, np.percentile(db, 10) + 10.0)
    loud = np.nonzero(db > threshold)[0]
    return float((loud[-1] + 1) * hop / sample_rate) if loud.size else 0.0


def speech_start_seconds(pcm16: bytes, sample_rate: int = 16000) -> float:
    """Where speech starts in a clip: the start of the first 20 ms frame well above the noise floor."""
    import numpy as np

    audio = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0
    hop = sample_rate // 50
    n = audio.size // hop
    if n == 0:
        return 0.0
    db = 20 * np.log10(np.sqrt(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12))
    loud = np.nonzero(db > max(db.max() - 35.0, np.percentile(db, 10) + 10.0))[0]
    return float(loud[0] * hop / sample_rate) if loud.size else 0.0


def load_pcm16(path) -> bytes:
    """A WAV file as 16 kHz mono PCM16."""
    from rvchat_common.audio import decode_audio, float_to_pcm16

    with open(path, "rb") as f:
        return float_to_pcm16(decode_audio(f.read()))


async def voice_turn(ws, pcm16: bytes, *, pad_s: float = 1.0, frame_ms: int = 20, realtime: bool = True,
                     timeout: float = 60.0, until: str = "reply_end", extra_silence_s: float = 30.0) -> dict:
    """Stream one utterance into main_app's /ws like a mic would, and collect what comes back.

    ``ws`` is an open ``websockets`` client connection (after its ``hello``). The
    clip is sent in ``frame_ms`` frames paced at real time, then silence (the mic
    keeps running) until the ``until`` event arrives. Returns the events, the
    reply audio, and the time from the end of speech to the first reply audio.
    """
    import json
    import time

    step = 16000 * frame_ms // 1000 * 2
    speech_end = speech_end_seconds(pcm16)
    silence = b"\x00\x00" * (16000 * frame_ms // 1000)
    frames = [pcm16[i:i + step] for i in range(0, len(pcm16), step)]
    frames += [silence] * int(pad_s * 1000 / frame_ms)
    max_frames = len(frames) + int(extra_silence_s * 1000 / frame_ms)
    out: dict = {"events": [], "audio": bytearray(), "first_audio_at": None, "speech_end_s": speech_end,
                 "order": []}
    done = asyncio.Event()
    mine: set = set()
    t0 = time.perf_counter()
    out["speech_end_at"] = t0 + speech_end

    async def reader() -> None:
        pending = None
        async for msg in ws:
            now = time.perf_counter()
            if isinstance(msg, bytes):
                if pending is not None:
                    if out["first_audio_at"] is None:
                        out["first_audio_at"] = now
                    out["audio"].extend(msg)
                    out["order"].append("audio")
                    pending = None
                continue
            ev = json.loads(msg)
            ev["_t"] = now - t0
            out["events"].append(ev)
            if ev["type"] == "audio":
                pending = ev
            else:
                out["order"].append(ev["type"])
            if ev["type"] == "transcript":
                mine.add(ev.get("turn"))
            # A reply_end of an earlier turn (still finishing when this call began) is not ours.
            ours = until == "interrupted" or ev.get("turn") is None or ev.get("turn") in mine
            if ours and (ev["type"] == until or (ev["type"] == "error" and ev.get("turn"))):
                done.set()
                return

    task = asyncio.create_task(reader())
    i = 0
    try:
        for i in range(max_frames):
            if done.is_set():
                break
            await ws.send(frames[i] if i < len(frames) else silence)
            if realtime:
                delay = t0 + (i + 1) * frame_ms / 1000 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
        await asyncio.wait_for(done.wait(), timeout)
        # Like a real mic, the rest of the clip is still spoken after the event came.
        for j in range(i + 1, len(frames)):
            await ws.send(frames[j])
            if realtime:
                delay = t0 + (j + 1) * frame_ms / 1000 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
    finally:
        task.cancel()
    if out["first_audio_at"] is not None:
        out["latency_s"] = out["first_audio_at"] - out["speech_end_at"]
    return out


def events_of(result: dict, kind: str) -> list[dict]:
    return [e for e in result["events"] if e["type"] == kind]


def app_env(services: dict, db_path, **extra: str) -> dict:
    """Environment for a main_app process wired to running services ({name: ServiceProcess})."""
    env = {f"APP_{name.upper()}_URL": svc.url for name, svc in services.items()}
    env["APP_DB_PATH"] = str(db_path)
    env.update(extra)
    return env

