"""WS /ws on the real service: LLM-style deltas in, sentence audio out in order, flush, cancel, bad events."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from .conftest import WAIT, pcm_to_float, rms, spoken_wer, transcribe

pytestmark = pytest.mark.models

REPLY = ("Sure, I can help with that right away. First, open the settings page. "
         "Then pick a voice you like and press save. That's all there is to it!")


@pytest.fixture(autouse=True)
def still_healthy(tts_service):
    yield
    assert tts_service.alive(), tts_service.log_tail()
    assert httpx.get(f"{tts_service.url}/healthz", timeout=10).status_code == 200


def tokens(text: str) -> list[str]:
    """Roughly how an LLM streams: words with their leading space, punctuation split off."""
    out = []
    for i, word in enumerate(text.split(" ")):
        lead = " " if i else ""
        if word[-1:] in ".,!?":
            out += [lead + word[:-1], word[-1]]
        else:
            out.append(lead + word)
    return out


async def recv(ws):
    msg = await asyncio.wait_for(ws.recv(), WAIT)
    return msg if isinstance(msg, bytes) else json.loads(msg)


async def collect_turn(ws) -> tuple[list[dict], list[bytes], dict]:
    """Audio events and their frames until ``done``; checks each event is followed by its frame."""
    events, frames = [], []
    while True:
        msg = await recv(ws)
        assert isinstance(msg, dict), "binary frame without an audio event"
        if msg["type"] == "done":
            return events, frames, msg
        assert msg["type"] == "audio", msg
        frame = await recv(ws)
        assert isinstance(frame, bytes) and len(frame) == msg["bytes"]
        events.append(msg)
        frames.append(frame)


async def test_deltas_in_sentence_audio_out_in_order(tts_service, whisper) -> None:
    async with connect(f"{tts_service.ws_url}/ws", open_timeout=WAIT) as ws:
        ready = await recv(ws)
        assert ready == {"type": "ready", "sample_rate": 22050, "voice": "en_US-joe-medium"}
        for tok in tokens(REPLY):
            await ws.send(json.dumps({"type": "text", "text": tok}))
        await ws.send(json.dumps({"type": "flush"}))
        events, frames, done = await collect_turn(ws)
    assert [e["index"] for e in events] == list(range(len(events)))
    # The first segment ends after TTS_FIRST_SEGMENT_MAX_WORDS (5) words, so the voice starts sooner.
    assert done["sentences"] == len(events) == 5
    assert [e["text"] for e in events] == [
        "Sure, I can help with", "that right away.", "First, open the settings page.",
        "Then pick a voice you like and press save.", "That's all there is to it!"]
    assert all(e["sample_rate"] == 22050 for e in events)
    audio = pcm_to_float(b"".join(frames))
    assert rms(audio) > 0.03
    assert spoken_wer(REPLY, transcribe(whisper, audio, 22050)) <= 0.2


async def test_first_chunk_is_short_and_audio_starts_before_flush(tts_service) -> None:
    async with connect(f"{tts_service.ws_url}/ws", open_timeout=WAIT) as ws:
        await recv(ws)
        text = "Well, the short answer is probably yes, but it depends on the details"
        for tok in tokens(text):
            await ws.send(json.dumps({"type": "text", "text": tok}))
        # No flush yet and no full stop: the first five words are already a segment, then the clause
        # before "but" (later segments are whole sentences or clauses).
        first = await recv(ws)
        assert first["type"] == "audio" and first["text"] == "Well, the short answer is"
        assert len(await recv(ws)) == first["bytes"]
        await ws.send(json.dumps({"type": "flush"}))
        events, _, done = await collect_turn(ws)
        assert [e["text"] for e in events] == ["probably yes, but it depends on the details"]
        assert done["sentences"] == 2


async def test_cancel_stops_output_and_the_connection_is_usable_after(tts_service) -> None:
    long_reply = " ".join(f"Here is a rather long sentence number {i} that takes a while to say."
                          for i in range(12))
    async with connect(f"{tts_service.ws_url}/ws", open_timeout=WAIT) as ws:
        await recv(ws)
        await ws.send(json.dumps({"type": "text", "text": long_reply}))
        await ws.send(json.dumps({"type": "flush"}))
        first = await recv(ws)
        assert first["type"] == "audio" and first["index"] == 0
        await ws.send(json.dumps({"type": "cancel"}))
        # Up to the `cancelled` reply, only whole audio events (each with its frame) may still arrive.
        late = 0
        while True:
            msg = await recv(ws)
            if isinstance(msg, dict) and msg["type"] == "cancelled":
                break
            if isinstance(msg, dict):
                assert msg["type"] == "audio"
                late += 1
        assert late <= 2, "cancel did not stop the queued sentences"
        # Next turn: its first message is its own audio (index 0), never a stale sentence.
        await ws.send(json.dumps({"type": "text", "text": "New turn here."}))
        await ws.send(json.dumps({"type": "flush"}))
        events, frames, done = await collect_turn(ws)
        assert [e["text"] for e in events] == ["New turn here."] and events[0]["index"] == 0
        assert done == {"type": "done", "sentences": 1}
        assert rms(pcm_to_float(frames[0])) > 0.03


async def test_cancel_with_nothing_pending_and_flush_with_no_text(tts_service) -> None:
    async with connect(f"{tts_service.ws_url}/ws", open_timeout=WAIT) as ws:
        await recv(ws)
        await ws.send(json.dumps({"type": "cancel"}))
        assert await recv(ws) == {"type": "cancelled"}
        await ws.send(json.dumps({"type": "flush"}))
        assert await recv(ws) == {"type": "done", "sentences": 0}
        await ws.send(json.dumps({"type": "text", "text": "🎉 **"}))  # nothing speakable
        await ws.send(json.dumps({"type": "flush"}))
        assert await recv(ws) == {"type": "done", "sentences": 0}


async def test_config_changes_voice_and_speed(tts_service) -> None:
    async with connect(f"{tts_service.ws_url}/ws", open_timeout=WAIT) as ws:
        await recv(ws)
        sizes = []
        for speed in (1.0, 2.0):
            await ws.send(json.dumps({"type": "config", "voice": "nova", "speed": speed}))
            assert await recv(ws) == {"type": "ready", "sample_rate": 22050, "voice": "en_US-joe-medium"}
            await ws.send(json.dumps({"type": "text", "text": "Speed makes this shorter or longer."}))
            await ws.send(json.dumps({"type": "flush"}))
            events, _, _ = await collect_turn(ws)
            sizes.append(events[0]["bytes"])
        assert 1.6 < sizes[0] / sizes[1] < 2.4


@pytest.mark.parametrize("bad, code", [
    ("not json at all", "invalid_json"),
    ("[" * 5000 + "]" * 5000, "invalid_json"),  # deeper than the parser's recursion limit
    ("[1, 2]", "invalid_event"),
    (json.dumps({"type": "dance"}), "unknown_event"),
    (json.dumps({"no": "type"}), "invalid_event"),
    (json.dumps({"type": "text", "text": 5}), "invalid_event"),
    (json.dumps({"type": "config", "speed": 99}), "invalid_event"),
    (json.dumps({"type": "config", "speed": "fast"}), "invalid_event"),
    ('{"type": "config", "speed": Infinity}', "invalid_event"),
    (json.dumps({"type": "config", "voice": ["x"]}), "invalid_event"),
    (b"\x00\x01binary", "unexpected_binary"),
    (json.dumps({"type": "text", "text": "x" * 30000}), "too_much_text"),
])
async def test_bad_events_get_an_error_event_and_the_connection_stays_open(tts_service, bad, code) -> None:
    async with connect(f"{tts_service.ws_url}/ws", open_timeout=WAIT, max_size=2**24) as ws:
        await recv(ws)
        await ws.send(bad)
        err = await recv(ws)
        assert err["type"] == "error" and err["error"]["code"] == code
        await ws.send(json.dumps({"type": "text", "text": "Still working fine."}))
        await ws.send(json.dumps({"type": "flush"}))
        events, _, done = await collect_turn(ws)
        assert done["sentences"] == 1 and events[0]["text"] == "Still working fine."


async def test_a_lone_surrogate_in_the_text_is_spoken_around(tts_service) -> None:
    async with connect(f"{tts_service.ws_url}/ws", open_timeout=WAIT) as ws:
        await recv(ws)
        await ws.send('{"type": "text", "text": "Odd \\ud800 text here."}')
        await ws.send(json.dumps({"type": "flush"}))
        events, _, done = await collect_turn(ws)
        assert done["sentences"] == 1 and events[0]["text"] == "Odd \ufffd text here."


async def test_disconnecting_mid_synthesis_leaves_the_service_healthy(tts_service) -> None:
    for _ in range(3):
        async with connect(f"{tts_service.ws_url}/ws", open_timeout=WAIT) as ws:
            await recv(ws)
            await ws.send(json.dumps({"type": "text", "text": "A sentence that will never be heard. " * 5}))
            await ws.send(json.dumps({"type": "flush"}))
    async with connect(f"{tts_service.ws_url}/ws", open_timeout=WAIT) as ws:
        await recv(ws)
        await ws.send(json.dumps({"type": "text", "text": "Back again."}))
        await ws.send(json.dumps({"type": "flush"}))
        events, frames, _ = await collect_turn(ws)
        assert events[0]["text"] == "Back again." and np.abs(pcm_to_float(frames[0])).max() > 0.1
