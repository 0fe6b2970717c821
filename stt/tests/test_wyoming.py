"""Wyoming speech to text against the real service as a process (tiny.en), with the ``wyoming``
client library as Home Assistant uses it: real recordings, streamed transcripts, bad input."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import numpy as np
import pytest
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Describe, Info

from rvchat_common.audio import float_to_pcm16, pcm16_to_float, resample
from rvchat_common.testing import (
    ServiceProcess,
    free_port,
    normalise,
    speech_sample,
    wer,
    wyoming_events,
    wyoming_hostile_events,
    wyoming_sweep,
    wyoming_transcribe,
)

from .conftest import MANIFEST, pcm16

pytestmark = pytest.mark.models

CLIPS = ["jfk_inaugural_1961.wav", "mfa_english_slow.wav", "ljspeech_LJ001-0004.wav",
         "librispeech_61-70968-0000.wav"]
# tiny.en's WER on these through /transcribe is 0.0 (stt/tests/test_service.py); the stream's greedy
# decoding may miss a word.
MAX_WER = 0.15
MAX_AUDIO_S = 20  # STT_MAX_AUDIO_SECONDS of the module's service: the longest clip here is 11 s


@pytest.fixture(scope="module")
def stt():
    proc = ServiceProcess("rvchat_stt", "STT_", {"STT_WYOMING_PORT": str(free_port()),
                                                 "STT_MAX_AUDIO_SECONDS": str(MAX_AUDIO_S)})
    proc.wyoming_port = int(proc.env["STT_WYOMING_PORT"])  # type: ignore[attr-defined]
    with proc:
        yield proc


def client(stt) -> AsyncTcpClient:
    return AsyncTcpClient("127.0.0.1", stt.wyoming_port)


async def test_describe_lists_the_model_and_streaming(stt):
    async with client(stt) as c:
        await c.write_event(Describe().event())
        info = Info.from_event((await wyoming_events(c, {"info"}))[-1])
    (program,) = info.asr
    assert program.name == "rvchat-stt" and program.installed and program.supports_transcript_streaming
    assert [(m.name, m.languages) for m in program.models] == [("tiny.en", ["en"])]
    assert info.tts == []


@pytest.mark.parametrize("name", CLIPS)
async def test_transcribes_a_recording(stt, name):
    result = await wyoming_transcribe(stt.wyoming_port, pcm16(name))
    assert "error" not in result, result
    assert result["language"] == "en"
    assert wer(MANIFEST[name]["text"], result["text"]) <= MAX_WER, result["text"]


async def test_audio_at_44k_stereo_is_converted_at_the_edge(stt):
    """Home Assistant sends 16 kHz mono, other satellites may not: 44.1 kHz stereo, 32-bit."""
    name = "mfa_english_slow.wav"
    mono = resample(pcm16_to_float(pcm16(name)), 16000, 44100)
    stereo = np.repeat(mono, 2)
    pcm32 = (np.clip(stereo, -1, 1).astype(np.float64) * (2 ** 31 - 1)).astype("<i4").tobytes()
    async with client(stt) as c:
        await c.write_event(Transcribe(language="en").event())
        await c.write_event(AudioStart(rate=44100, width=4, channels=2).event())
        step = 44100 * 8 // 10  # 100 ms
        for i in range(0, len(pcm32), step):
            await c.write_event(AudioChunk(rate=44100, width=4, channels=2, audio=pcm32[i:i + step]).event())
        await c.write_event(AudioStop().event())
        text = (await wyoming_events(c, {"transcript"}))[-1].data["text"]
    assert wer(MANIFEST[name]["text"], text) <= MAX_WER, text


async def test_speech_sent_in_real_time_streams_transcript_chunks_before_it_ends(stt):
    """As a satellite streams a microphone: chunks of 64 ms at the pace they are spoken. Chunks come
    while the audio still does, and add up to the start of the final transcript, but for a word the
    final decode may still revise (two partials heard "asked not", the whole clip "ask not")."""
    name = "jfk_inaugural_1961.wav"
    pcm = pcm16(name)
    events: list[tuple[float, Event]] = []
    async with client(stt) as c:

        async def read() -> None:
            while True:
                event = await asyncio.wait_for(c.read_event(), 60)
                assert event is not None
                events.append((time.monotonic(), event))
                if event.type in ("transcript-stop", "error"):
                    return

        reader = asyncio.create_task(read())
        await c.write_event(Transcribe(language="en").event())
        await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        step = 2048
        t0 = time.monotonic()
        for n, i in enumerate(range(0, len(pcm), step)):
            await c.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm[i:i + step]).event())
            await asyncio.sleep(max(0.0, t0 + (n + 1) * step / 2 / 16000 - time.monotonic()))
        stopped_at = time.monotonic()
        await c.write_event(AudioStop().event())
        await reader
    types = [e.type for _, e in events]
    assert types[0] == "transcript-start" and types[-2:] == ["transcript", "transcript-stop"], types
    chunks = [e.data["text"] for _, e in events if e.type == "transcript-chunk"]
    early = [e for at, e in events if e.type == "transcript-chunk" and at < stopped_at]
    assert early, f"no transcript chunk before the audio ended: {types}"
    final = Transcript.from_event(events[-2][1]).text
    assert wer(MANIFEST[name]["text"], final) <= MAX_WER, final
    joined, said = normalise("".join(chunks)), normalise(final)
    assert joined and sum(a != b for a, b in zip(joined, said)) <= 1, (chunks, final)


async def test_one_connection_carries_several_requests_and_silence_is_empty(stt):
    async with client(stt) as c:
        for audio in (pcm16("ljspeech_LJ001-0008.wav"), float_to_pcm16(np.zeros(32000, np.float32)),
                      pcm16("mfa_thoughts.wav")):
            await c.write_event(Transcribe().event())
            await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await c.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=audio).event())
            await c.write_event(AudioStop().event())
            events = await wyoming_events(c, {"transcript-stop"})
            assert [e.type for e in events][-2:] == ["transcript", "transcript-stop"], events
            texts = [e.data["text"] for e in events if e.type == "transcript"]
            assert len(texts) == 1
            if audio[:2] == b"\0\0" and not any(audio):
                assert texts[0] == ""  # never a hallucinated "Thank you."
            else:
                assert texts[0]


async def test_wyoming_and_http_requests_share_the_model(stt):
    """Three Wyoming and three HTTP transcriptions at once: all answered, each with its own text."""
    names = ["mfa_english_slow.wav", "ljspeech_LJ001-0004.wav", "librispeech_61-70968-0000.wav"]

    async def http(name: str) -> str:
        async with httpx.AsyncClient(timeout=120) as h:
            with open(speech_sample(name), "rb") as f:
                r = await h.post(stt.url + "/transcribe", files={"file": (name, f.read())})
        assert r.status_code == 200, r.text
        return r.json()["text"]

    async def wy(name: str) -> str:
        return (await wyoming_transcribe(stt.wyoming_port, pcm16(name)))["text"]

    results = await asyncio.gather(*[wy(n) for n in names], *[http(n) for n in names])
    for name, text in zip(names + names, results):
        assert wer(MANIFEST[name]["text"], text) <= MAX_WER, (name, text)


# --- bad input ---------------------------------------------------------------------------------
async def error_of(c: AsyncTcpClient, *events: Event) -> dict:
    for event in events:
        await c.write_event(event)
    last = (await wyoming_events(c, set()))[-1]
    assert last.type == "error", last
    return last.data


async def test_bad_requests_are_errors_and_the_connection_goes_on(stt):
    start = AudioStart(rate=16000, width=2, channels=1).event()
    async with client(stt) as c:
        err = await error_of(c, Transcribe(language="de").event())
        assert err["code"] == "unsupported_language" and "English-only" in err["text"]
        assert (await error_of(c, Transcribe(name="large-v3").event()))["code"] == "unknown_model"
        assert (await error_of(c, AudioStart(rate=16000, width=3, channels=1).event()))["code"] \
            == "unsupported_audio_format"
        assert (await error_of(c, AudioStart(rate=1, width=2, channels=1).event()))["code"] \
            == "unsupported_audio_format"
        assert (await error_of(c, AudioStop().event()))["code"] == "invalid_event"
        odd = AudioChunk(rate=16000, width=2, channels=1, audio=b"\0" * 1001).event()
        assert (await error_of(c, start, odd))["code"] == "invalid_audio"
        assert (await error_of(c, Event("transcribe", {"language": 5})))["code"] == "invalid_event"
        # Still serving on the same connection.
        await c.write_event(Transcribe().event())
        await c.write_event(start)
        await c.write_event(AudioChunk(rate=16000, width=2, channels=1,
                                       audio=pcm16("mfa_thoughts.wav")).event())
        await c.write_event(AudioStop().event())
        text = (await wyoming_events(c, {"transcript"}))[-1].data["text"]
        assert wer(MANIFEST["mfa_thoughts.wav"]["text"], text) <= MAX_WER, text


async def test_a_request_longer_than_the_audio_limit_is_dropped(stt):
    """Audio that never ends (no audio-stop) is cut off at STT_MAX_AUDIO_SECONDS, not transcribed
    for ever; the connection goes on."""
    pcm = pcm16("jfk_inaugural_1961.wav")  # 11 s, twice: over the module's 20 s
    async with client(stt) as c:
        await c.write_event(Transcribe().event())
        await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await c.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm).event())
        err = await error_of(c, AudioChunk(rate=16000, width=2, channels=1, audio=pcm).event())
        assert err["code"] == "audio_too_long"
        assert (await error_of(c, AudioStop().event()))["code"] == "invalid_event"  # it was dropped
        await c.write_event(Transcribe().event())
        await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await c.write_event(AudioChunk(rate=16000, width=2, channels=1,
                                       audio=pcm16("mfa_thoughts.wav")).event())
        await c.write_event(AudioStop().event())
        text = (await wyoming_events(c, {"transcript"}))[-1].data["text"]
        assert wer(MANIFEST["mfa_thoughts.wav"]["text"], text) <= MAX_WER, text


async def test_garbage_and_huge_chunks_leave_the_service_healthy(stt):
    reader, writer = await asyncio.open_connection("127.0.0.1", stt.wyoming_port)

    async def error() -> dict:
        header = json.loads(await asyncio.wait_for(reader.readline(), 10))
        assert header["type"] == "error", header
        return json.loads(await reader.readexactly(header["data_length"]))

    writer.write(b"\x00\xff garbage \xfe\n")
    assert (await error())["code"] == "invalid_json"
    writer.write(b'{"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1}, '
                 b'"payload_length": 4000000000}\n' + b"\0" * 65536)
    await writer.drain()
    assert (await error())["code"] == "too_large"
    assert await asyncio.wait_for(reader.read(), 10) == b""  # and the connection is closed
    writer.close()
    assert httpx.get(stt.url + "/readyz", timeout=10).status_code == 200
    result = await wyoming_transcribe(stt.wyoming_port, pcm16("mfa_english_slow.wav"))
    assert wer(MANIFEST["mfa_english_slow.wav"]["text"], result["text"]) <= MAX_WER
    assert stt.alive()


async def test_sigterm_waits_for_the_command_being_spoken():
    """A satellite is mid-command when the service is told to stop: the drain waits for its audio
    and transcript (the model is idle meanwhile), turns new clients away, then closes."""
    port = free_port()
    proc = ServiceProcess("rvchat_stt", "STT_", {"STT_WYOMING_PORT": str(port)}).start()
    name = "mfa_english_slow.wav"
    pcm = pcm16(name)
    try:
        async with AsyncTcpClient("127.0.0.1", port) as c:
            await c.write_event(Describe().event())  # the service has taken the connection
            await wyoming_events(c, {"info"})
            await c.write_event(Transcribe().event())
            await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            half = len(pcm) // 4 * 2
            await c.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm[:half]).event())
            proc.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            await asyncio.sleep(1.5)  # longer than the drain's quiet period: only our request holds it
            async with AsyncTcpClient("127.0.0.1", port) as late:
                assert (await wyoming_events(late, set()))[-1].data["code"] == "shutting_down"
            await c.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm[half:]).event())
            await c.write_event(AudioStop().event())
            text = (await wyoming_events(c, {"transcript"}))[-1].data["text"]
            assert wer(MANIFEST[name]["text"], text) <= MAX_WER, text
            assert (await wyoming_events(c, {"transcript-stop"}))[-1].type == "transcript-stop"
            assert await asyncio.wait_for(c.read_event(), 30) is None  # closed once drained
        assert await asyncio.to_thread(proc.proc.wait, 30) in (0, -signal.SIGTERM)  # type: ignore[union-attr]
    finally:
        proc.stop()


async def test_hostile_sweep_never_breaks_a_connection_or_the_service(stt):
    """Every STT event (and TTS's) with wrong, missing, huge and odd values: each answered or
    ignored, never an internal error, never a dropped connection."""
    events = wyoming_hostile_events(
        ["transcribe", "audio-start", "audio-chunk", "audio-stop", "describe", "synthesize"],
        ["language", "name", "rate", "width", "channels", "transcript_names", "timestamp"])
    errors = await wyoming_sweep(stt.wyoming_port, events)
    assert errors and all(isinstance(e.get("code"), str) and e.get("text") for e in errors)
    assert not [e for e in errors if e["code"] == "internal_error"], errors
    assert httpx.get(stt.url + "/readyz", timeout=10).status_code == 200
    result = await wyoming_transcribe(stt.wyoming_port, pcm16("mfa_english_slow.wav"))
    assert wer(MANIFEST["mfa_english_slow.wav"]["text"], result["text"]) <= MAX_WER
