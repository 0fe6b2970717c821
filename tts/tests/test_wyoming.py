"""Wyoming text to speech against the real service as a process (Piper), with the ``wyoming`` client
library as Home Assistant uses it. The audio is checked by transcribing it back through the STT
service's own Wyoming port (faster-whisper tiny.en)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess

import httpx
import pytest
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from rvchat_common.testing import (
    ServiceProcess,
    free_port,
    normalise,
    wyoming_events,
    wyoming_hostile_events,
    wyoming_sweep,
    wyoming_transcribe,
)

from .conftest import spoken_wer

pytestmark = pytest.mark.models

VOICE = "en_US-joe-medium"
SENTENCE = "Please turn on the lights in the kitchen."
STORY = ("The weather today is sunny and warm. Tomorrow it will rain in the afternoon, "
         "so take an umbrella. On Sunday the sun comes back.")


def _with_wyoming(module: str, prefix: str, **env: str) -> ServiceProcess:
    port = free_port()
    proc = ServiceProcess(module, prefix, {f"{prefix}WYOMING_PORT": str(port), **env})
    proc.wyoming_port = port  # type: ignore[attr-defined]
    return proc


@pytest.fixture(scope="module")
def tts():
    # The hostile sweep's 20,000-character chunk is within the stream's limit (ws_max_pending_chars) and is
    # spoken up to the speech limit: at the default 8,000 characters that was 46 s of synthesis, the suite's
    # longest test. 600 still lets every other test here speak in full.
    with _with_wyoming("rvchat_tts", "TTS_", TTS_MAX_SPEECH_CHARS="600") as proc:
        yield proc


@pytest.fixture(scope="module")
def stt():
    with _with_wyoming("rvchat_stt", "STT_") as proc:
        yield proc


def client(proc) -> AsyncTcpClient:
    return AsyncTcpClient("127.0.0.1", proc.wyoming_port)


def audio_of(events: list[Event]) -> tuple[bytes, int]:
    """The PCM of a response's chunks, checking each sentence's start/stop framing and format."""
    starts = [e for e in events if e.type == "audio-start"]
    assert starts, [(e.type, e.data) for e in events]
    rate = starts[0].data["rate"]
    for e in starts:
        assert (e.data["rate"], e.data["width"], e.data["channels"]) == (rate, 2, 1)
    chunks = [e for e in events if e.type == "audio-chunk"]
    assert all((e.data["rate"], e.data["width"], e.data["channels"]) == (rate, 2, 1) for e in chunks)
    return b"".join(e.payload or b"" for e in chunks), rate


async def heard(stt, pcm: bytes, rate: int) -> str:
    result = await wyoming_transcribe(stt.wyoming_port, pcm, rate)
    assert "error" not in result, result
    return result["text"]


async def test_describe_lists_the_voices_and_streaming(tts):
    async with client(tts) as c:
        await c.write_event(Describe().event())
        info = Info.from_event((await wyoming_events(c, {"info"}))[-1])
    (program,) = info.tts
    assert program.name == "rvchat-tts" and program.supports_synthesize_streaming
    voices = {v.name: v for v in program.voices}
    assert VOICE in voices and voices[VOICE].languages == ["en_US"] and voices[VOICE].installed
    assert info.asr == []


async def test_synthesize_speaks_the_sentence(tts, stt):
    async with client(tts) as c:
        await c.write_event(Synthesize(text=SENTENCE, voice=SynthesizeVoice(name=VOICE)).event())
        events = await wyoming_events(c, {"audio-stop"})
    assert [e.type for e in events][0] == "audio-start" and events[-1].type == "audio-stop"
    pcm, rate = audio_of(events)
    assert rate == 22050 and 1.0 < len(pcm) / 2 / rate < 6.0
    text = await heard(stt, pcm, rate)
    assert spoken_wer(SENTENCE, text) <= 0.2, text


@pytest.mark.parametrize("voice", [None, {"language": "en_US"}, {"language": "en"}, {"language": "en-GB"},
                                   {"name": "alloy"}, {"name": "EN_US-JOE-MEDIUM"}])
async def test_a_voice_by_name_alias_or_language(tts, voice):
    data = {"text": "Hello there."} | ({"voice": voice} if voice is not None else {})
    async with client(tts) as c:
        await c.write_event(Event("synthesize", data))
        events = await wyoming_events(c, {"audio-stop"})
    pcm, rate = audio_of(events)
    assert rate == 22050 and len(pcm) > rate  # over half a second of speech


async def test_a_stream_is_spoken_sentence_by_sentence_as_the_text_comes(tts, stt):
    """The first sentence's audio arrives before the rest of the text has been sent, each sentence
    framed by its own audio-start/audio-stop, then synthesize-stopped."""
    first, rest = STORY.split(". ", 1)
    async with client(tts) as c:
        await c.write_event(SynthesizeStart(voice=SynthesizeVoice(name=VOICE)).event())
        for word in (first + ". ").split(" "):
            await c.write_event(SynthesizeChunk(text=word + " ").event())
        early = await wyoming_events(c, {"audio-stop"})  # nothing more has been sent yet
        for word in rest.split(" "):
            await c.write_event(SynthesizeChunk(text=word + " ").event())
        await c.write_event(Synthesize(text=STORY, voice=SynthesizeVoice(name=VOICE)).event())  # ignored
        await c.write_event(SynthesizeStop().event())
        later = await wyoming_events(c, {"synthesize-stopped"})
    events = early + later
    types = [e.type for e in events if e.type != "audio-chunk"]
    sentences = types.count("audio-start")
    assert sentences >= 3 and types == ["audio-start", "audio-stop"] * sentences + ["synthesize-stopped"]
    pcm, rate = audio_of(events)
    # The first segment ends at the sentence, or sooner (TTS_FIRST_SEGMENT_MAX_WORDS, for fast audio).
    first_words = normalise(await heard(stt, audio_of(early)[0], rate))
    assert len(first_words) >= 3 and first_words == normalise(first)[:len(first_words)], first_words
    text = await heard(stt, pcm, rate)
    assert spoken_wer(STORY, text) <= 0.2, text  # the compatibility synthesize was not spoken again


async def test_wyoming_and_http_share_the_voice(tts):
    """A Wyoming stream and HTTP requests at once: all answered in full."""

    async def http() -> int:
        async with httpx.AsyncClient(timeout=60) as h:
            r = await h.post(tts.url + "/synthesize", json={"text": STORY, "return_format": "pcm"})
        assert r.status_code == 200, r.text
        return len(r.content)

    async def wy() -> int:
        async with client(tts) as c:
            await c.write_event(SynthesizeStart().event())
            await c.write_event(SynthesizeChunk(text=STORY).event())
            await c.write_event(SynthesizeStop().event())
            return len(audio_of(await wyoming_events(c, {"synthesize-stopped"}))[0])

    sizes = await asyncio.gather(wy(), http(), wy(), http())
    assert all(s > 22050 * 2 * 4 for s in sizes), sizes  # each over 4 s of speech


# --- bad input ---------------------------------------------------------------------------------
async def error_of(c: AsyncTcpClient, *events: Event) -> dict:
    for event in events:
        await c.write_event(event)
    last = (await wyoming_events(c, set()))[-1]
    assert last.type == "error", last
    return last.data


async def test_bad_requests_are_errors_and_the_connection_goes_on(tts):
    async with client(tts) as c:
        err = await error_of(c, Synthesize(text="Hi.", voice=SynthesizeVoice(name="nobody")).event())
        assert err["code"] == "unknown_voice" and "nobody" in err["text"]
        assert (await error_of(c, Synthesize(text="Hi.", voice=SynthesizeVoice(language="de")).event()))[
            "code"] == "unsupported_language"
        assert (await error_of(c, Synthesize(text="   ").event()))["code"] == "empty_text"
        assert (await error_of(c, Synthesize(text="x " * 5000).event()))["code"] == "text_too_long"
        assert (await error_of(c, Event("synthesize", {"text": 5})))["code"] == "invalid_event"
        assert (await error_of(c, Event("synthesize", {"voice": "joe"})))["code"] == "invalid_event"
        assert (await error_of(c, Synthesize(text="<speak>Hi</speak>", text_format="ssml").event()))[
            "code"] == "unsupported_text_format"
        assert (await error_of(c, SynthesizeChunk(text="Hi.").event()))["code"] == "invalid_event"
        assert (await error_of(c, SynthesizeStop().event()))["code"] == "invalid_event"
        # A stream whose text is over the limit: that text is dropped, the stream goes on.
        await c.write_event(SynthesizeStart().event())
        assert (await error_of(c, SynthesizeChunk(text="word " * 5000).event()))["code"] == "too_much_text"
        await c.write_event(SynthesizeChunk(text="Still here.").event())
        await c.write_event(SynthesizeStop().event())
        events = await wyoming_events(c, {"synthesize-stopped"})
        assert [e.type for e in events if e.type != "audio-chunk"] == \
            ["audio-start", "audio-stop", "synthesize-stopped"]


async def test_garbage_and_huge_chunks_leave_the_service_healthy(tts):
    reader, writer = await asyncio.open_connection("127.0.0.1", tts.wyoming_port)

    async def error() -> dict:
        header = json.loads(await asyncio.wait_for(reader.readline(), 10))
        assert header["type"] == "error", header
        return json.loads(await reader.readexactly(header["data_length"]))

    writer.write(b"not json at all\n")
    assert (await error())["code"] == "invalid_json"
    writer.write(b'{"type": "synthesize", "data_length": 99999999}\n')
    assert (await error())["code"] == "too_large"
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    assert httpx.get(tts.url + "/readyz", timeout=10).status_code == 200
    async with client(tts) as c:
        await c.write_event(Synthesize(text="All good.").event())
        assert audio_of(await wyoming_events(c, {"audio-stop"}))[0]
    assert tts.alive()


async def test_sigterm_finishes_the_stream_in_flight_then_closes():
    """Shutdown drains: the stream being spoken is finished, new clients are turned away, then the
    connection closes and the process exits."""
    proc = _with_wyoming("rvchat_tts", "TTS_").start()
    try:
        async with client(proc) as c:
            await c.write_event(Describe().event())  # the service has taken the connection
            await wyoming_events(c, {"info"})
            await c.write_event(SynthesizeStart().event())
            await c.write_event(SynthesizeChunk(text=STORY).event())
            await c.write_event(SynthesizeStop().event())
            proc.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            events = await wyoming_events(c, {"synthesize-stopped"})
            assert len(audio_of(events)[0]) > 22050 * 2 * 4  # all of it: over 4 s of speech
            async with client(proc) as late:
                assert (await wyoming_events(late, set()))[-1].data["code"] == "shutting_down"
            assert await asyncio.wait_for(c.read_event(), 30) is None  # closed once drained
        # uvicorn re-raises the SIGTERM once shut down, as without the drain.
        assert await asyncio.to_thread(proc.proc.wait, 30) in (0, -signal.SIGTERM)  # type: ignore[union-attr]
    except subprocess.TimeoutExpired:
        pytest.fail(f"TTS did not exit after SIGTERM:\n{proc.log_tail()}")
    finally:
        proc.stop()


async def test_hostile_sweep_never_breaks_a_connection_or_the_service(tts):
    """Every TTS event (and STT's) with wrong, missing, huge and odd values: each answered or
    ignored, never an internal error, never a dropped connection."""
    events = wyoming_hostile_events(
        ["synthesize", "synthesize-start", "synthesize-chunk", "synthesize-stop", "describe", "audio-chunk"],
        ["text", "voice", "text_format", "context"])
    errors = await wyoming_sweep(tts.wyoming_port, events)
    assert errors and all(isinstance(e.get("code"), str) and e.get("text") for e in errors)
    assert not [e for e in errors if e["code"] == "internal_error"], errors
    assert httpx.get(tts.url + "/readyz", timeout=10).status_code == 200
    async with client(tts) as c:
        await c.write_event(Synthesize(text="All good.").event())
        assert audio_of(await wyoming_events(c, {"audio-stop"}))[0]
