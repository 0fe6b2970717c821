"""The shared Wyoming server loop and audio edge, on a tiny echo handler: every fault's error code and
whether the connection survives it, in seconds, no model. The services' real handlers are tested in
stt/tests/test_wyoming.py and tts/tests/test_wyoming.py."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import pytest_asyncio
from wyoming.asr import Transcript
from wyoming.audio import AudioChunk, AudioStart
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.ping import Ping

from rvchat_common.audio import float_to_pcm16
from rvchat_common.testing import wyoming_events
from rvchat_common.wyoming import (
    AudioInput,
    Connection,
    Limits,
    Model,
    WyomingError,
    WyomingServer,
    asr_info,
    audio_chunks,
    pcm_to_mono,
    tts_info,
)

SMALL = Limits(max_line_bytes=1024, max_data_bytes=256, max_payload_bytes=4096, idle_timeout_s=5,
               max_connections=2)


class Echo:
    """describe -> info; an audio-chunk -> a transcript of its byte count; 'refuse' -> WyomingError;
    'crash' -> our bug."""

    closed = 0

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def on_event(self, event: Event) -> None:
        if Describe.is_type(event.type):
            info = asr_info("echo", "echo", [Model("m", ["en"])], ("us", "https://example.com"))
            await self.conn.send(info.event())
        elif event.type == "audio-chunk":
            await self.conn.send(Transcript(text=str(len(event.payload or b""))).event())
        elif event.type == "refuse":
            raise WyomingError("refused", "no")
        elif event.type == "crash":
            raise RuntimeError("our bug")

    async def close(self) -> None:
        Echo.closed += 1


@pytest_asyncio.fixture(loop_scope="function")  # the test's own loop: the server lives in it
async def server():
    srv = WyomingServer("test", "127.0.0.1", 0, Echo, SMALL)
    await srv.start()
    yield srv
    await srv.stop()


async def raw(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def read_error(reader: asyncio.StreamReader) -> dict:
    header = json.loads(await asyncio.wait_for(reader.readline(), 5))
    assert header["type"] == "error", header
    data = json.loads(await reader.readexactly(header["data_length"]))
    return data


async def still_serves(port: int) -> None:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Describe().event())
        info = Info.from_event((await wyoming_events(client, {"info"}))[-1])
        assert info.asr[0].models[0].name == "m"


async def test_the_wyoming_client_talks_to_it(server):
    async with AsyncTcpClient("127.0.0.1", server.port) as client:
        await client.write_event(Ping(text="hi").event())
        assert (await wyoming_events(client, {"pong"}))[-1].data == {"text": "hi"}
        await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=b"\0" * 100).event())
        assert (await wyoming_events(client, {"transcript"}))[-1].data["text"] == "100"
        # An event the server does not know is ignored, as the protocol asks (newer clients send more).
        await client.write_event(Event(type="select-program", data={"name": "x"}))
        await client.write_event(Describe().event())
        assert (await wyoming_events(client, {"info"}))[-1].type == "info"


@pytest.mark.parametrize("line, code", [
    (b"this is not json\n", "invalid_json"),
    (b"[1, 2]\n", "invalid_event"),
    (b'{"data": {}}\n', "invalid_event"),
    (b'{"type": 5}\n', "invalid_event"),
    (b'{"type": "x", "data_length": 4}\nnope', "invalid_json"),
    (b'{"type": "x", "data_length": 2}\n[]', "invalid_json"),
    (b'{"type": "refuse"}\n', "refused"),
])
async def test_a_bad_event_is_an_error_and_the_connection_stays_open(server, line, code):
    reader, writer = await raw(server.port, line)
    assert (await read_error(reader))["code"] == code
    # The same connection goes on.
    writer.write(json.dumps({"type": "audio-chunk", "payload_length": 3}).encode() + b"\nabc")
    await writer.drain()
    header = json.loads(await asyncio.wait_for(reader.readline(), 5))
    assert header["type"] == "transcript"
    writer.close()


@pytest.mark.parametrize("data, code", [
    (json.dumps({"type": "audio-chunk", "payload_length": 10 ** 10}).encode() + b"\n", "too_large"),
    (json.dumps({"type": "x", "data_length": 10 ** 6}).encode() + b"\n", "too_large"),
    (json.dumps({"type": "x", "payload_length": -1}).encode() + b"\n", "invalid_event"),
    (json.dumps({"type": "x", "payload_length": "12"}).encode() + b"\n", "invalid_event"),
    (b'{"type": "' + b"x" * 5000 + b'"}\n', "line_too_long"),
    (b'{"type": "crash"}\n', "internal_error"),
])
async def test_a_framing_fault_is_an_error_then_the_connection_closes(server, data, code):
    reader, writer = await raw(server.port, data)
    assert (await read_error(reader))["code"] == code
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    writer.close()
    await still_serves(server.port)


async def test_an_idle_client_is_closed_and_its_handler_told():
    srv = WyomingServer("test", "127.0.0.1", 0, Echo, Limits(idle_timeout_s=0.3))
    await srv.start()
    try:
        before = Echo.closed
        reader, writer = await raw(srv.port, b'{"type": "audio-chunk", "payload_length": 100}\n' + b"\0" * 10)
        assert (await read_error(reader))["code"] == "idle_timeout"
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert Echo.closed == before + 1
        writer.close()
    finally:
        await srv.stop()


async def test_connections_over_the_limit_are_refused(server):
    held = [await raw(server.port, b"") for _ in range(SMALL.max_connections)]
    await asyncio.sleep(0.1)
    reader, writer = await raw(server.port, b"")
    assert (await read_error(reader))["code"] == "too_many_connections"
    for _, w in held:
        w.close()
    writer.close()
    await asyncio.sleep(0.1)
    await still_serves(server.port)


async def test_a_draining_server_turns_new_clients_away():
    srv = WyomingServer("test", "127.0.0.1", 0, Echo, SMALL, refusing=lambda: "shutting down")
    await srv.start()
    try:
        reader, _ = await raw(srv.port, b"")
        assert (await read_error(reader))["code"] == "shutting_down"
    finally:
        await srv.stop()


async def test_stop_ends_open_connections():
    srv = WyomingServer("test", "127.0.0.1", 0, Echo, SMALL)
    await srv.start()
    reader, _ = await raw(srv.port, b"")
    await asyncio.sleep(0.1)
    assert srv.connections == 1
    await asyncio.wait_for(srv.stop(), 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert srv.connections == 0


# --- audio at the edge -------------------------------------------------------------------------
def test_pcm_of_every_width_and_channel_count_becomes_mono_float():
    x = np.array([0.5, -0.5, 0.25, 0.0], np.float32)
    s16 = float_to_pcm16(x)
    assert np.allclose(pcm_to_mono(s16, 2, 1), x, atol=1e-4)
    stereo = np.stack([x, np.zeros_like(x)], axis=1).reshape(-1)  # left = x, right = silence
    assert np.allclose(pcm_to_mono(float_to_pcm16(stereo), 2, 2), x / 2, atol=1e-4)
    u8 = (np.round(x * 127) + 128).astype(np.uint8).tobytes()
    assert np.allclose(pcm_to_mono(u8, 1, 1), x, atol=0.01)
    s32 = (x.astype(np.float64) * 2 ** 31).astype("<i4").tobytes()
    assert np.allclose(pcm_to_mono(s32, 4, 1), x, atol=1e-6)
    with pytest.raises(WyomingError) as err:
        pcm_to_mono(b"\0" * 6, 2, 2)  # a frame and a half
    assert err.value.code == "invalid_audio"


@pytest.mark.parametrize("fmt", [(8000, 2, 1), (44100, 2, 2), (48000, 4, 1), (22050, 1, 1)])
def test_audio_in_any_format_arrives_at_16_khz_chunk_by_chunk(fmt):
    rate, width, channels = fmt
    t = np.arange(rate) / rate  # one second of a 440 Hz tone
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    inter = np.repeat(tone, channels)
    if width == 2:
        pcm = float_to_pcm16(inter)
    elif width == 4:
        pcm = (inter.astype(np.float64) * 2 ** 31 * 0.999).astype("<i4").tobytes()
    else:
        pcm = (np.round(inter * 127) + 128).astype(np.uint8).tobytes()
    audio = AudioInput(rate, width, channels)
    frame = width * channels
    step = 1000 * frame
    parts = [audio(AudioChunk(rate=rate, width=width, channels=channels, audio=pcm[i:i + step]).event())
             for i in range(0, len(pcm), step)]
    out = np.concatenate(parts + [audio.flush()])
    assert abs(out.size - 16000) <= 2
    # Still a 440 Hz tone at the same level: the strongest frequency and the RMS.
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 16000 / out.size - 440) < 3
    assert abs(np.sqrt(np.mean(out[100:-100] ** 2)) - 0.5 / np.sqrt(2)) < 0.02


@pytest.mark.parametrize("fmt", [(100, 2, 1), (16000, 3, 1), (16000, 2, 0), (16000, 2, 99),
                                 ("16000", 2, 1), (16000, True, 1), (None, 2, 1)])
def test_an_unusable_audio_format_is_refused(fmt):
    with pytest.raises(WyomingError) as err:
        AudioInput(*fmt)
    assert err.value.code == "unsupported_audio_format"


def test_audio_out_is_cut_into_chunks_of_1024_samples():
    events = audio_chunks(b"\1\0" * 2500, 22050)
    chunks = [AudioChunk.from_event(e) for e in events]
    assert [c.samples for c in chunks] == [1024, 1024, 452]
    assert {(c.rate, c.width, c.channels) for c in chunks} == {(22050, 2, 1)}
    assert AudioStart.is_type("audio-start")


def test_info_round_trips_through_the_wyoming_types():
    by = ("who", "https://example.com/w")
    asr = Info.from_event(asr_info("stt", "d", [Model("tiny.en", ["en"])], by).event())
    assert asr.asr[0].supports_transcript_streaming and asr.asr[0].models[0].languages == ["en"]
    tts = Info.from_event(tts_info("tts", "d", [Model("v1", ["en_US"]), Model("v2", ["de_DE"])], by).event())
    assert tts.tts[0].voices[0].attribution.url == "https://example.com/w"
    assert [v.name for v in tts.tts[0].voices] == ["v1", "v2"]
    assert tts.tts[0].supports_synthesize_streaming and tts.tts[0].installed
