"""Replicas of a service behind main_app: connections spread over them, and a session whose replica
dies moves to another without losing what it had sent (fakes here; real processes at the end)."""

from __future__ import annotations

import asyncio
import json
import re
import signal

import httpx
import pytest
import websockets

from rvchat_app.clients import Replicas, SttStream
from rvchat_app.session import Session
from rvchat_app.settings import Settings
from rvchat_app.store import Store
from rvchat_app.testing import (FakeHub, FakeStt, ScriptedUser, app_env, events_of, load_pcm16, until,
                               voice_turn)
from rvchat_common.protocol import stt, vad
from rvchat_common.testing import ServiceProcess, free_port, speech_sample, wer


# --------------------------------------------------------------------------- Replicas
def test_connections_go_round_robin_and_a_failed_replica_is_tried_last():
    r = Replicas(" http://a:1 , http://b:2,")
    assert r.urls == ["http://a:1", "http://b:2"]
    assert [r.order()[0] for _ in range(4)] == ["http://a:1", "http://b:2", "http://a:1", "http://b:2"]
    r.failed("http://a:1")
    assert r.order() == ["http://b:2", "http://a:1"] and r.order() == ["http://b:2", "http://a:1"]
    r.succeeded("http://a:1")
    assert sorted([r.order()[0] for _ in range(2)]) == ["http://a:1", "http://b:2"]
    with pytest.raises(ValueError):
        Replicas(" , ")


async def test_a_stream_skips_a_dead_replica():
    dead = f"http://127.0.0.1:{free_port()}"
    stream = SttStream(Replicas([dead, dead]), None)
    with pytest.raises(Exception) as exc:
        await stream.connect()
    assert "cannot connect" in str(exc.value)
    assert stream.replicas.order()[0] == dead  # both failed: both still tried, in turn


# --------------------------------------------------------------------------- a session moves (fakes)
class JournaledStt(FakeStt):
    """The fake STT with the real client's journal contract."""

    journaled = SttStream.journaled
    settles = SttStream.settles


class Page:
    def __init__(self) -> None:
        self.events: list = []

    async def send(self, event) -> None:
        self.events.append(event if isinstance(event, bytes) else event.model_dump(mode="json"))

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if isinstance(e, dict) and e["type"] == kind]


async def start_session(store: Store, hub: FakeHub) -> tuple[Session, Page]:
    factories = hub.factories()
    factories["stt"] = lambda: JournaledStt(hub)
    page = Page()
    settings = Settings(db_path=":memory:", speculative_silence_ms=0)
    session = Session(send=page.send, store=store, settings=settings,
                      factories=factories)
    await session.start()
    for name in ("vad", "stt", "llm", "tts"):
        await asyncio.wait_for(session.links[name].up_event.wait(), 2)
    return session, page


async def test_stt_lost_mid_utterance_the_utterance_goes_to_the_next_replica(store):
    hub = FakeHub(transcript="What is the capital of France?")
    session, page = await start_session(store, hub)
    try:
        user = ScriptedUser(session, hub)
        first = hub.last("stt")
        await user._feed_until(0.4)
        hub.last("vad").emit(vad.SpeechStart(timestamp=0.4))
        await until(lambda: session.state == "user_speaking")
        await user._feed_until(0.8)
        sent_before = len(first.buffer)
        first.kill()  # the replica dies while the user is still talking
        await user._feed_until(1.2)
        hub.last("vad").emit(vad.SpeechEnd(timestamp=1.1, start=0.4, duration=0.7))
        await until(lambda: page.of("reply_end"), what="the reply")
        second = hub.last("stt")
        assert second is not first and len(hub.streams["stt"]) == 2
        # The new connection heard the whole utterance: what the dead one had, and the rest.
        assert len(second.utterances[0]) > sent_before > 0
        assert len(second.utterances[0]) == (15 + 40) * len(ScriptedUser.FRAME)  # pre-roll + 0.4-1.2 s
        assert page.of("transcript")[0]["text"] == hub.transcript
        assert not [e for e in page.of("error") if e.get("source") == "stt"]
        # The page was told, and that nothing was lost; the notice goes by itself.
        assert any("nothing was lost" in e["notice"] for e in page.of("services"))
        assert session.links["stt"].up
    finally:
        await session.close()


async def test_stt_lost_after_the_end_gets_its_final_from_the_next_replica(store):
    hub = FakeHub()
    session, page = await start_session(store, hub)
    try:
        first = hub.last("stt")

        async def end_without_answer(speech: bool | None = None) -> None:  # takes the end, dies before its final
            first.sent.append(stt.End(speech=speech).model_dump())
            first.kill()

        first.end = end_without_answer
        await ScriptedUser(session, hub).says(start=0.4, end=1.0)
        await until(lambda: page.of("reply_end"), what="the reply")
        assert hub.last("stt") is not first and page.of("transcript")[0]["text"] == hub.transcript
    finally:
        await session.close()


async def test_a_tts_replica_lost_mid_reply_is_said_and_the_next_reply_speaks_again(store):
    hub = FakeHub(reply="First sentence here. Second sentence is longer than that. Third.", token_delay=0.05)
    session, page = await start_session(store, hub)
    try:
        await session.on_text_event({"type": "text", "text": "tell me"})
        await until(lambda: page.of("audio"), what="first audio")
        hub.last("tts").kill()
        end = (await until(lambda: page.of("reply_end"), what="the reply end"))[0]
        assert end["text"] == hub.reply  # the text went on
        errors = [e for e in page.of("error") if e.get("source") == "tts"]
        assert errors and "continues as text" in errors[0]["error"]["message"]
        await until(lambda: session.links["tts"].up, what="TTS back on another replica")
        before = len(page.of("audio"))
        await session.on_text_event({"type": "text", "text": "again"})
        await until(lambda: len(page.of("reply_end")) == 2, what="the second reply")
        assert len(page.of("audio")) > before
    finally:
        await session.close()


# --------------------------------------------------------------------------- real processes
CLIP = "librispeech_61-70968-0000.wav"  # 4.9 s of continuous speech
REFERENCE = "HE BEGAN A CONFUSED COMPLAINT AGAINST THE WIZARD WHO HAD VANISHED BEHIND THE CURTAIN ON THE LEFT"


def ws_opened(proc: ServiceProcess) -> int:
    """WebSocket sessions a service has accepted so far (its own /metrics)."""
    text = httpx.get(f"{proc.url}/metrics", timeout=5).text
    # Summed over the path label (a service has one WebSocket route).
    counts = re.findall(r'^websocket_sessions_total\{[^}]*\} ([0-9.]+)$', text, re.M)
    return int(sum(float(v) for v in counts))


@pytest.fixture(scope="module")
def replicated(vad_service, llm_service, tmp_path_factory):
    """Two STT and two TTS processes behind one main_app (comma-separated URLs)."""
    stts = [ServiceProcess("rvchat_stt", "STT_") for _ in range(2)]
    ttss = [ServiceProcess("rvchat_tts", "TTS_") for _ in range(2)]
    procs = stts + ttss
    try:
        for p in procs:
            p.start(wait_ready=False)
        for p in procs:
            p.wait("/readyz", 180)
        env = app_env({"vad": vad_service, "llm": llm_service, "stt": stts[0], "tts": ttss[0]},
                      tmp_path_factory.mktemp("replicas") / "rvchat.sqlite3",
                      APP_STT_URL=",".join(p.url for p in stts), APP_TTS_URL=",".join(p.url for p in ttss))
        with ServiceProcess("rvchat_app", "APP_", env) as app:
            yield {"app": app, "stt": stts, "tts": ttss}
    finally:
        for p in procs:
            p.stop()


async def open_session(app: ServiceProcess):
    ws = await websockets.connect(f"{app.ws_url}/ws", max_size=None)
    hello = json.loads(await ws.recv())
    services = hello["services"]
    while not all(s["up"] for s in services["services"].values()):
        ev = json.loads(await asyncio.wait_for(ws.recv(), 20))
        if ev["type"] == "services":
            services = ev
    return ws


def notices(result: dict) -> list[str]:
    return [e["notice"] for e in events_of(result, "services") if e["notice"]]


@pytest.mark.models
async def test_sessions_spread_over_replicas_and_survive_one_being_stopped(replicated):
    app, stts, ttss = replicated["app"], replicated["stt"], replicated["tts"]
    pcm = load_pcm16(speech_sample(CLIP))

    # Two sessions: one on each STT replica and one on each TTS replica.
    before = [ws_opened(p) for p in stts + ttss]
    first = await open_session(app)
    mid = [ws_opened(p) for p in stts + ttss]
    second = await open_session(app)
    after = [ws_opened(p) for p in stts + ttss]
    try:
        assert [b - a for a, b in zip(before, after)] == [1, 1, 1, 1], "sessions did not spread"
        stt_of_first = stts[0] if mid[0] > before[0] else stts[1]
        tts_of_first = ttss[0] if mid[2] > before[2] else ttss[1]
        status = httpx.get(f"{app.url}/api/status", timeout=10).json()
        assert status["services"]["stt"]["ready_replicas"] == 2
        assert len(status["services"]["tts"]["replicas"]) == 2

        # The first session's STT replica is killed while the user is mid-sentence.
        async def kill_soon() -> None:
            await asyncio.sleep(2.0)
            stt_of_first.proc.send_signal(signal.SIGKILL)

        killer = asyncio.create_task(kill_soon())
        result = await voice_turn(first, pcm, pad_s=1.0, timeout=90)
        await killer
        assert not stt_of_first.alive()
        transcript = events_of(result, "transcript")
        assert transcript and wer(REFERENCE, transcript[0]["text"]) <= 0.25, transcript
        assert not [e for e in events_of(result, "error")], events_of(result, "error")
        assert any("nothing was lost" in n for n in notices(result)), notices(result)
        assert len(result["audio"]) > 22050  # the reply was spoken

        # Its TTS replica is stopped between turns: the next reply is spoken by the other one.
        tts_of_first.stop()
        result = await voice_turn(first, pcm, pad_s=1.0, timeout=90)
        assert events_of(result, "transcript") and not events_of(result, "error")
        assert len(result["audio"]) > 22050

        # The other session never noticed anything but its own replicas going on.
        result = await voice_turn(second, pcm, pad_s=1.0, timeout=90)
        assert events_of(result, "reply_end") and len(result["audio"]) > 22050
        status = httpx.get(f"{app.url}/api/status", timeout=10).json()
        assert status["services"]["stt"]["ready"] and status["services"]["stt"]["ready_replicas"] == 1
    finally:
        await first.close()
        await second.close()
