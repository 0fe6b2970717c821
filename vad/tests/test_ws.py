"""WS /ws on the real service process: turn events from real speech, isolation, hostile frames."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from rvchat_common.audio import float_to_pcm16, resample

from .conftest import SR, load

pytestmark = pytest.mark.models

WAIT = 15  # seconds: every receive is bounded


@pytest.fixture(autouse=True)
def still_healthy(vad_service):
    yield
    assert vad_service.alive(), vad_service.log_tail()
    assert httpx.get(f"{vad_service.url}/healthz", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def speech_in_silence(jfk) -> np.ndarray:
    pad = np.zeros(SR, dtype=np.float32)
    return np.concatenate([pad, jfk, pad])  # 13 s, speech from ~1.3 s to ~11.6 s


async def recv(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), WAIT))


async def stream(url: str, pcm: bytes, frame: int | list[int] = 640, config: dict | None = None,
                 pace: bool = False) -> list[dict]:
    """Send PCM in frames, then flush; return every event after the ready events, up to flushed."""
    async with connect(f"{url}/ws", open_timeout=WAIT) as ws:
        assert (await recv(ws))["type"] == "ready"
        if config:
            await ws.send(json.dumps({"type": "config", **config}))
            ready = await recv(ws)
            assert ready["type"] == "ready", ready
        events: list[dict] = []

        async def reader() -> None:
            while True:
                event = await recv(ws)
                events.append(event)
                if event["type"] == "flushed":
                    return

        task = asyncio.create_task(reader())
        sizes = frame if isinstance(frame, list) else [frame]
        i = k = 0
        while i < len(pcm):
            n = sizes[k % len(sizes)]
            await ws.send(pcm[i:i + n])
            i, k = i + n, k + 1
            if pace:
                await asyncio.sleep(0)  # let another client's frames interleave with ours
        await ws.send(json.dumps({"type": "flush"}))
        await asyncio.wait_for(task, WAIT)
        return events


def turns(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] in ("speech_start", "speech_end")]


def check_alternating(events: list[dict]) -> None:
    kinds = [e["type"] for e in turns(events)]
    assert kinds and kinds == ["speech_start", "speech_end"] * (len(kinds) // 2), kinds
    for start, end in zip(turns(events)[::2], turns(events)[1::2]):
        assert end["start"] == start["timestamp"] < end["timestamp"]
        assert end["duration"] == pytest.approx(end["timestamp"] - end["start"], abs=2e-3)


@pytest.mark.parametrize("frame", [640, 1024, 1234, [2, 640, 4000, 98, 1024, 30000]],
                         ids=["20ms", "32ms", "odd", "mixed"])
async def test_real_speech_gives_turns(vad_service, speech_in_silence, frame):
    pcm = float_to_pcm16(speech_in_silence)
    events = await stream(vad_service.ws_url, pcm, frame)
    check_alternating(events)
    t = turns(events)
    # JFK's four phrases (pauses ~1 s) are separate turns at the default 500 ms silence hold.
    assert len(t) == 8
    assert t[0]["timestamp"] == pytest.approx(1.32, abs=0.15)  # where speech began, not + hold
    # The same turns as Silero's offline timestamps with the same hold times.
    offline = httpx.post(f"{vad_service.url}/detect?min_silence_ms=500&sample_rate=16000",
                         content=pcm, headers={"Content-Type": "audio/pcm"}, timeout=WAIT).json()
    assert len(offline["segments"]) == len(t) // 2
    for seg, start, end in zip(offline["segments"], t[::2], t[1::2]):
        assert start["timestamp"] == pytest.approx(seg["start"], abs=0.1)
        assert end["timestamp"] == pytest.approx(seg["end"], abs=0.1)
    assert events[-1] == {"type": "flushed", "timestamp": 13.0}


async def test_a_soft_voice_after_a_loud_one_is_heard(vad_service):
    """Silero's state, carried on from a reader's voice, left it deaf to a whisper 3 s later: the whisper got
    no speech_start in 25 of 64 such streams. The stream's model is reset after 1.5 s of quiet."""
    reader, whisper = load("ljspeech_LJ001-0004.wav"), load("mfa_whisper.wav")
    gap = np.zeros(3 * SR, dtype=np.float32)
    pcm = float_to_pcm16(np.concatenate([np.zeros(SR // 2, dtype=np.float32), reader, gap, whisper, gap]))
    events = await stream(vad_service.ws_url, pcm, config={"min_speech_ms": 200, "min_silence_ms": 200})
    starts = [e["timestamp"] for e in turns(events) if e["type"] == "speech_start"]
    at = (SR // 2 + reader.size + gap.size) / SR
    assert starts[0] < at and any(s >= at - 0.1 for s in starts), (starts, at)


async def test_frame_size_does_not_change_events(vad_service, speech_in_silence):
    pcm = float_to_pcm16(speech_in_silence)
    a = await stream(vad_service.ws_url, pcm, 640)
    b = await stream(vad_service.ws_url, pcm, 1234)
    assert a == b


async def test_speech_end_sent_as_soon_as_silence_hold_passes(vad_service, speech_in_silence):
    # With probabilities on, the event order shows which chunk the speech_end followed.
    events = await stream(vad_service.ws_url, float_to_pcm16(speech_in_silence), 640,
                          config={"probabilities": True, "min_silence_ms": 500, "speech_pad_ms": 0})
    probs = [e for e in events if e["type"] == "probability"]
    assert len(probs) == int(13.0 * SR) // 512 + 1
    assert all(0 <= e["probability"] <= 1 for e in probs)
    for i, e in enumerate(events):
        if e["type"] != "speech_end":
            continue
        last_chunk_end = [x for x in events[:i] if x["type"] == "probability"][-1]["timestamp"] + 0.032
        silence = last_chunk_end - e["timestamp"]
        assert 0.5 - 1e-3 <= silence < 0.5 + 0.032


async def test_two_clients_do_not_disturb_each_other(vad_service, speech_in_silence):
    speech = float_to_pcm16(speech_in_silence)
    silence = float_to_pcm16(np.zeros_like(speech_in_silence))
    alone = await stream(vad_service.ws_url, speech, 640)
    together = await asyncio.gather(stream(vad_service.ws_url, speech, 640, pace=True),
                                    stream(vad_service.ws_url, silence, 640, pace=True))
    assert together[0] == alone
    assert together[1] == [{"type": "flushed", "timestamp": 13.0}]


@pytest.mark.parametrize("at", [0.6, 1.0, 6.0, 9.0])
async def test_short_burst_does_not_start_a_turn(vad_service, jfk, at):
    pad = np.zeros(SR, dtype=np.float32)

    def burst(ms: int) -> bytes:
        cut = jfk[int(at * SR): int(at * SR) + ms * SR // 1000]
        return float_to_pcm16(np.concatenate([pad, cut, pad]))

    cough = await stream(vad_service.ws_url, burst(100), 640)
    assert turns(cough) == []
    # Control: a longer cut from the same place is speech and does start a turn.
    word = await stream(vad_service.ws_url, burst(700), 640)
    assert turns(word)[0]["type"] == "speech_start"


@pytest.mark.parametrize("rate", [8000, 48000])
async def test_other_sample_rates(vad_service, speech_in_silence, rate):
    ref = turns(await stream(vad_service.ws_url, float_to_pcm16(speech_in_silence), 640))
    pcm = float_to_pcm16(resample(speech_in_silence, SR, rate))
    events = await stream(vad_service.ws_url, pcm, rate // 50 * 2, config={"sample_rate": rate})
    got = turns(events)
    assert [e["type"] for e in got] == [e["type"] for e in ref]
    for a, b in zip(got, ref):
        assert a["timestamp"] == pytest.approx(b["timestamp"], abs=0.1)
    assert events[-1]["timestamp"] == pytest.approx(13.0, abs=1e-3)


async def test_flush_closes_an_open_turn_and_reset_forgets_it(vad_service, jfk):
    speech = float_to_pcm16(jfk[: 2 * SR])  # mid-phrase at 2 s
    events = await stream(vad_service.ws_url, speech, 640)
    assert [e["type"] for e in events] == ["speech_start", "speech_end", "flushed"]
    assert events[1]["timestamp"] == pytest.approx(2.0, abs=1e-3)
    async with connect(f"{vad_service.ws_url}/ws", open_timeout=WAIT) as ws:
        await recv(ws)
        await ws.send(speech)
        assert (await recv(ws))["type"] == "speech_start"
        await ws.send(json.dumps({"type": "reset"}))
        await ws.send(float_to_pcm16(np.zeros(SR, dtype=np.float32)))
        await ws.send(json.dumps({"type": "flush"}))
        # No speech_end for the forgotten turn; the clock restarted at the reset.
        assert await recv(ws) == {"type": "flushed", "timestamp": 1.0}


BAD_TEXT = [
    ("{not json", "invalid_json"),
    ("[" * 5000 + "]" * 5000, "invalid_json"),  # deeper than the parser's recursion limit
    ("[1, 2]", "invalid_event"),
    ('{"type": 5}', "invalid_event"),
    ('{"no_type": true}', "invalid_event"),
    ('{"type": "dance"}', "unknown_event"),
    ('{"type": "\\ud800 hi"}', "unknown_event"),
    ('{"type": "config", "threshold": 2}', "invalid_event"),
    ('{"type": "config", "threshold": 0}', "invalid_event"),
    ('{"type": "config", "min_silence_ms": -1}', "invalid_event"),
    ('{"type": "config", "min_silence_ms": 1e400}', "invalid_event"),
    ('{"type": "config", "min_silence_ms": Infinity}', "invalid_event"),
    ('{"type": "config", "min_speech_ms": "long"}', "invalid_event"),
    ('{"type": "config", "sample_rate": 10}', "invalid_event"),
    ('{"type": "config", "sample_rate": 1e9}', "invalid_event"),
    ('{"type": "config", "silence": 300}', "invalid_event"),
]


async def test_bad_frames_get_error_events_and_connection_survives(vad_service, speech_in_silence):
    async with connect(f"{vad_service.ws_url}/ws", open_timeout=WAIT) as ws:
        ready = await recv(ws)
        await ws.send(b"\x01\x02\x03")
        err = await recv(ws)
        assert err["type"] == "error" and err["error"]["code"] == "odd_length_pcm"
        for text, code in BAD_TEXT:
            await ws.send(text)
            err = await recv(ws)
            assert err["type"] == "error" and err["error"]["code"] == code, (text, err)
            assert err["error"]["message"]
        # Rejected configs changed nothing.
        await ws.send(json.dumps({"type": "config"}))
        assert await recv(ws) == ready
        await ws.send(b"")  # empty frame: ignored
        await ws.send(float_to_pcm16(speech_in_silence))  # one 416 KB frame (worker-thread path)
        await ws.send(json.dumps({"type": "flush"}))
        events = []
        while not events or events[-1]["type"] != "flushed":
            events.append(await recv(ws))
        check_alternating(events)
        assert len(turns(events)) == 8


async def test_config_changes_hold_times(vad_service, speech_in_silence):
    pcm = float_to_pcm16(speech_in_silence)
    long_hold = await stream(vad_service.ws_url, pcm, 1024, config={"min_silence_ms": 2000})
    assert [e["type"] for e in turns(long_hold)] == ["speech_start", "speech_end"]
    strict = await stream(vad_service.ws_url, pcm, 1024, config={"min_speech_ms": 3000})
    assert len(turns(strict)) < 8
