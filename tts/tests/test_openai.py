"""The official openai client against /v1/audio/speech on the real service."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import openai
import pytest

from .conftest import WAIT, decode_any, pcm_to_float, rms, spoken_wer, transcribe, words_per_second

pytestmark = pytest.mark.models

TEXT = "Good morning. The weather today is sunny, with a light breeze from the west."


@pytest.fixture(scope="module")
def client(tts_service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tts_service.url}/v1", api_key="not-needed", timeout=WAIT * 2,
                         max_retries=0)


@pytest.fixture(autouse=True)
def still_healthy(tts_service):
    yield
    assert tts_service.alive(), tts_service.log_tail()
    assert httpx.get(f"{tts_service.url}/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize("fmt, content_type, rate", [
    ("wav", "audio/wav", 22050), ("mp3", "audio/mpeg", 22050), ("opus", "audio/opus", 48000),
    ("flac", "audio/flac", 22050), ("aac", "audio/aac", 22050),
])
def test_streaming_response_decodes_for_every_format(client, fmt, content_type, rate) -> None:
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=TEXT, response_format=fmt) as response:
        assert response.headers["content-type"] == content_type
        chunks = list(response.iter_bytes())
    audio, got_rate = decode_any(b"".join(chunks))
    assert got_rate == rate
    assert rms(audio) > 0.02
    assert 1.5 < words_per_second(TEXT, audio.size / rate) < 5.0


def test_pcm_is_24khz_s16le_as_openai_documents(client, whisper) -> None:
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="nova", input=TEXT, response_format="pcm") as response:
        assert response.headers["x-sample-rate"] == "24000"
        data = response.read()
    audio = pcm_to_float(data)
    assert rms(audio) > 0.03
    assert 1.5 < words_per_second(TEXT, audio.size / 24000) < 5.0
    # Read at 24 kHz it is the right speech (at a wrong rate whisper would hear nonsense).
    assert spoken_wer(TEXT, transcribe(whisper, audio, 24000)) <= 0.25


def test_mp3_round_trip_is_intelligible(client, whisper) -> None:
    response = client.audio.speech.create(model="tts-1-hd", voice="onyx", input=TEXT, response_format="mp3",
                                          speed=1.0, instructions="Speak cheerfully.")  # ignored by Piper
    audio, rate = decode_any(response.content)
    assert spoken_wer(TEXT, transcribe(whisper, audio, rate)) <= 0.25


def test_sse_stream_format_sends_base64_deltas_then_done(tts_service) -> None:
    with httpx.stream("POST", f"{tts_service.url}/v1/audio/speech", timeout=WAIT * 2, json={
            "model": "tts-1", "input": TEXT, "voice": "alloy", "response_format": "pcm",
            "stream_format": "sse"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) >= 2 and events[-1]["type"] == "speech.audio.done"
    audio = pcm_to_float(b"".join(base64.b64decode(e["audio"]) for e in deltas))
    assert rms(audio) > 0.03


def test_openai_errors_use_openai_shape(client) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.speech.create(model="tts-1", voice="alloy", input="   ")
    assert err.value.status_code == 400
    with pytest.raises(openai.UnprocessableEntityError):
        client.audio.speech.create(model="tts-1", voice="alloy", input="hello", speed=9.0)


def test_unknown_openai_voice_still_speaks(client) -> None:
    response = client.audio.speech.create(model="tts-1", voice="some-future-voice", input="Hello there.",
                                          response_format="wav")
    assert response.response.headers["x-voice-fallback"] == "true"
    audio, _ = decode_any(response.content)
    assert np.abs(audio).max() > 0.1
