"""HTTP API on the real service process with the real Piper voice: audio checked by ear (whisper)."""

from __future__ import annotations

import base64
import concurrent.futures
import re
import struct
import threading

import httpx
import numpy as np
import pytest

from .conftest import WAIT, decode_any, pcm_to_float, read_wav, rms, spoken_wer, transcribe, words_per_second

pytestmark = pytest.mark.models

# Measured on this voice with whisper tiny.en (noise 0): mean WER 0.02, worst sentence 0.14
# ("Buy milk" heard as "Bye milk"). Bounds leave room for a different CPU's float rounding.
MAX_MEAN_WER = 0.12
MAX_SENTENCE_WER = 0.34
ROUND_TRIP = [
    "Hello, how can I help you today?",
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back at 10:30 tomorrow morning.",
    "It costs $5 and comes with a 10% discount.",
    "In the 1990s there were 42 people living here.",
    "**Remember** to bring your _umbrella_ if it rains.",
    "- Buy milk\n- Walk the dog\n- Call my mother",
    "Dr. Smith said the results were 3.5 times better.",
    "Turn left at the next light and park behind the blue building.",
    "Visit [our website](https://example.com/page) for more details 😀.",
]


@pytest.fixture(autouse=True)
def still_healthy(tts_service):
    yield
    assert tts_service.alive(), tts_service.log_tail()
    assert httpx.get(f"{tts_service.url}/healthz", timeout=10).status_code == 200


def post(svc, path: str, **kw) -> httpx.Response:
    return httpx.post(f"{svc.url}{path}", timeout=WAIT * 2, **kw)


def test_readme_curl_example_returns_a_wav_of_speech(tts_service) -> None:
    # The README's curl, byte for byte: en_female maps to an installed voice.
    r = post(tts_service, "/synthesize", headers={"Content-Type": "application/json"},
             content='{"text": "Hello, how can I help you today?", "voice": "en_female", '
                     '"return_format": "wav"}')
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    assert r.headers["x-voice"] == "en_US-joe-medium" and "x-voice-fallback" not in r.headers
    audio, rate = read_wav(r.content)
    assert rate == 22050 == int(r.headers["x-sample-rate"])
    seconds = audio.size / rate
    assert abs(seconds - float(r.headers["x-audio-duration"])) < 0.01
    assert rms(audio) > 0.03  # clearly audible, not silence
    assert 1.5 < words_per_second("Hello, how can I help you today?", seconds) < 5.0


def test_round_trip_through_whisper_gives_the_words_back(tts_service, whisper) -> None:
    errors = []
    # The service speaks the next sentence while this process transcribes the one before (two cores).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        spoken = [pool.submit(post, tts_service, "/synthesize", json={"text": t, "return_format": "wav"})
                  for t in ROUND_TRIP]
        for text, future in zip(ROUND_TRIP, spoken):
            r = future.result()
            assert r.status_code == 200, r.text
            audio, rate = read_wav(r.content)
            heard = transcribe(whisper, audio, rate)
            errors.append((spoken_wer(text, heard), text, heard))
    worst = max(errors)
    mean = sum(e[0] for e in errors) / len(errors)
    assert mean <= MAX_MEAN_WER, errors
    assert worst[0] <= MAX_SENTENCE_WER, worst
    # Markup, emoji and URLs are not read out.
    heard_all = " ".join(e[2] for e in errors).lower()
    for junk in ("asterisk", "star", "underscore", "https", "bracket", "dash", "emoji", "smiling"):
        assert junk not in heard_all, heard_all


def test_base64_and_pcm_formats_carry_the_same_audio(tts_service) -> None:
    body = {"text": "Formats should agree.", "voice": "default"}
    b64 = post(tts_service, "/synthesize", json={**body, "return_format": "base64"})
    pcm = post(tts_service, "/synthesize", json={**body, "return_format": "pcm"})
    assert b64.status_code == pcm.status_code == 200
    payload = b64.json()
    assert payload["format"] == "wav" and payload["sample_rate"] == 22050
    wav_audio, _ = read_wav(base64.b64decode(payload["audio"]))
    assert pcm.headers["content-type"] == "audio/pcm" and pcm.headers["x-sample-rate"] == "22050"
    assert len(pcm.content) % 2 == 0
    # Synthesis is deterministic in tests (noise 0): the same text gives the same samples.
    assert np.array_equal(pcm_to_float(pcm.content), wav_audio)
    assert abs(payload["duration"] - wav_audio.size / 22050) < 0.01


def test_speed_changes_duration(tts_service) -> None:
    text = "This sentence is spoken at several different speeds."
    lengths = {}
    for speed in (0.5, 1.0, 2.0):
        r = post(tts_service, "/synthesize", json={"text": text, "return_format": "pcm", "speed": speed})
        assert r.status_code == 200, r.text
        lengths[speed] = len(r.content)
    assert 1.6 < lengths[0.5] / lengths[1.0] < 2.4
    assert 1.6 < lengths[1.0] / lengths[2.0] < 2.4


def test_unknown_voice_uses_the_default_and_says_so(tts_service) -> None:
    r = post(tts_service, "/synthesize", json={"text": "Who is speaking?", "voice": "no-such-voice-xyz"})
    assert r.status_code == 200
    assert r.headers["x-voice"] == "en_US-joe-medium" and r.headers["x-voice-fallback"] == "true"
    assert rms(read_wav(r.content)[0]) > 0.03


def test_voices_lists_installed_voices_and_aliases(tts_service) -> None:
    r = httpx.get(f"{tts_service.url}/voices", timeout=WAIT)
    assert r.status_code == 200
    data = r.json()
    assert data["default"] == "en_US-joe-medium"
    assert [v["name"] for v in data["voices"]] == ["en_US-joe-medium"]
    assert data["voices"][0]["sample_rate"] == 22050
    for alias in ("en_female", "en_male", "default", "alloy", "echo", "fable", "onyx", "nova", "shimmer"):
        assert data["aliases"][alias] == "en_US-joe-medium"


def _metric(svc, name: str) -> float:
    text = httpx.get(f"{svc.url}/metrics", timeout=WAIT).text
    m = re.search(rf'^{re.escape(name)} ([0-9.e+]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


SYNTH_COUNT = 'model_inference_seconds_count{operation="synthesize"}'
LONG_TEXT = " ".join(f"This is sentence number {i}, which is spoken in its own turn." for i in range(1, 11))


@pytest.mark.parametrize("fmt", ["wav", "pcm"])
def test_streamed_synthesis_sends_the_first_sentence_before_synthesising_the_rest(tts_service, fmt) -> None:
    before = _metric(tts_service, SYNTH_COUNT)
    body = {"text": LONG_TEXT, "return_format": fmt, "stream": True}
    received = bytearray()
    with httpx.stream("POST", f"{tts_service.url}/synthesize", json=body, timeout=WAIT * 2) as r:
        assert r.status_code == 200
        assert r.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.headers
        chunks = r.iter_raw()
        received += next(chunks)
        # The first audio is here; count the sentences the server has synthesised so far.
        done_at_first_chunk = _metric(tts_service, SYNTH_COUNT) - before
        for chunk in chunks:
            received += chunk
    done_at_end = _metric(tts_service, SYNTH_COUNT) - before
    # The first clause of ten sentences is cut short for speed; later ones are whole sentences.
    assert done_at_end >= 10
    assert done_at_first_chunk < done_at_end / 2, (done_at_first_chunk, done_at_end)
    if fmt == "wav":
        assert received[:4] == b"RIFF" and received[36:40] == b"data"
        assert struct.unpack("<I", received[40:44])[0] == 0xFFFFFFFF - 36  # length unknown while streaming
        audio, rate = decode_any(bytes(received))
    else:
        audio, rate = pcm_to_float(bytes(received)), 22050
    assert rate == 22050 and rms(audio) > 0.03
    assert 1.5 < words_per_second(LONG_TEXT, audio.size / rate) < 5.0


def test_client_leaving_mid_stream_does_not_hurt_the_service(tts_service) -> None:
    with httpx.stream("POST", f"{tts_service.url}/synthesize", timeout=WAIT,
                      json={"text": LONG_TEXT, "return_format": "pcm", "stream": True}) as r:
        assert r.status_code == 200
        next(r.iter_raw())
    # The next request is served normally.
    r = post(tts_service, "/synthesize", json={"text": "Still here.", "return_format": "pcm"})
    assert r.status_code == 200 and len(r.content) > 10000


def test_concurrent_requests_are_all_served(tts_service) -> None:
    results: list[int] = []

    def one(i: int) -> None:
        r = post(tts_service, "/synthesize",
                 json={"text": f"Request number {i} is here.", "return_format": "pcm"})
        results.append(r.status_code if r.status_code != 200 or len(r.content) > 10000 else -1)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 2)
    assert results == [200] * 4


def test_long_text_is_spoken_in_full_not_truncated(tts_service, whisper) -> None:
    text = " ".join(["The lighthouse keeper climbed the stairs."] * 6 + ["Finally the storm was over."])
    r = post(tts_service, "/synthesize", json={"text": text, "return_format": "wav"})
    assert r.status_code == 200
    audio, rate = read_wav(r.content)
    assert 1.5 < words_per_second(text, audio.size / rate) < 5.0
    tail = transcribe(whisper, audio[-3 * rate:], rate).lower()
    assert "storm" in tail and "over" in tail, tail  # the last sentence is there


LONG = "a " * 2501  # 5002 characters: over the 5000 limit


@pytest.mark.parametrize("path, body, status", [
    ("/synthesize", {"text": ""}, 400),
    ("/synthesize", {"text": "   \n\t "}, 400),
    ("/synthesize", {"text": "🎉🎉🎉 ***"}, 400),  # nothing speakable after cleaning
    ("/synthesize", {"text": "```\nprint(1)\n```"}, 400),
    ("/synthesize", {"text": LONG}, 413),
    ("/synthesize", {"text": 42}, 422),
    ("/synthesize", {"text": ["a"]}, 422),
    ("/synthesize", {}, 422),
    ("/synthesize", {"text": "hi there", "return_format": "ogg"}, 422),
    ("/synthesize", {"text": "hi there", "speed": 0}, 422),
    ("/synthesize", {"text": "hi there", "speed": 10}, 422),
    ("/synthesize", {"text": "hi there", "speed": "fast"}, 422),
    ("/synthesize", {"text": "hi there", "voice": 7}, 422),
    ("/synthesize", {"text": "hi there", "stream": "maybe"}, 422),
    ("/synthesize", [1, 2], 400),
    ("/v1/audio/speech", {"model": "tts-1", "input": "", "voice": "alloy"}, 400),
    ("/v1/audio/speech", {"model": "tts-1", "input": LONG, "voice": "alloy"}, 413),
    ("/v1/audio/speech", {"model": "tts-1", "input": "hi there", "response_format": "ogg"}, 422),
    ("/v1/audio/speech", {"model": "tts-1", "input": "hi there", "speed": 4.5}, 422),
    ("/v1/audio/speech", {"model": "tts-1", "voice": "alloy"}, 422),
])
def test_bad_requests_get_a_clear_4xx(tts_service, path, body, status) -> None:
    r = post(tts_service, path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe\x00", b"null", b'"text"', b"[" * 5000 + b"]" * 5000])
def test_malformed_bodies_are_400(tts_service, raw) -> None:
    r = post(tts_service, "/synthesize", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_json"


def test_oversized_body_is_413(tts_service) -> None:
    r = post(tts_service, "/synthesize", content=b'{"text": "' + b"a" * (26 * 1024 * 1024) + b'"}',
             headers={"Content-Type": "application/json"})
    assert r.status_code == 413
