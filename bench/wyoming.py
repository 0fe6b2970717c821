"""Wyoming benchmark: what Home Assistant waits for, against the same service's HTTP API.

STT: from the end of a voice command (``audio-stop``) to its ``transcript``, with the command sent
at the pace it is spoken (as a satellite streams a microphone, so the early final can decode it
during the trailing silence) and all at once, against ``POST /transcribe`` of the same clip (whole
request). TTS: from ``synthesize`` to the first audio chunk and to ``audio-stop``, and a streamed
request (``synthesize-start`` / one chunk / ``synthesize-stop``) to its first audio, against
``POST /synthesize`` streamed. Both services run as processes with their Wyoming ports on; paths
take turns on each repetition so a busy machine slows them alike.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import time
import wave

import httpx
from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

from rvchat_common.testing import ServiceProcess, free_port, speech_sample, wyoming_events

CLIPS = ["ljspeech_LJ001-0008.wav", "mfa_thoughts.wav", "mfa_english_slow.wav"]
TEXTS = {
    "short (7 words)": "Okay, the kitchen lights are on now.",
    "medium (3 sentences, 38 words)": (
        "Sure, I can help with that. The quickest way is to open the settings page and choose "
        "a new voice from the list. After that, press save and the assistant will use the new "
        "voice from the next reply onwards."),
}
REPEATS = 5
CHUNK = 2048  # bytes: 64 ms of 16 kHz PCM16, what Home Assistant sends
TRAILING_SILENCE_S = 0.3  # a satellite's VAD ends the command after some silence


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _pcm(name: str) -> bytes:
    with wave.open(str(speech_sample(name))) as w:
        return w.readframes(w.getnframes())


async def stt_wyoming(port: int, pcm: bytes, real_time: bool) -> float:
    """Seconds from audio-stop to transcript."""
    pcm = pcm + b"\0" * int(TRAILING_SILENCE_S * 32000)
    async with AsyncTcpClient("127.0.0.1", port) as c:
        await c.write_event(Transcribe(language="en").event())
        await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        t0 = time.monotonic()
        for n, i in enumerate(range(0, len(pcm), CHUNK)):
            chunk = AudioChunk(rate=16000, width=2, channels=1, audio=pcm[i:i + CHUNK])
            await c.write_event(chunk.event())
            if real_time:
                await asyncio.sleep(max(0.0, t0 + (n + 1) * CHUNK / 32000 - time.monotonic()))
        start = time.perf_counter()
        await c.write_event(AudioStop().event())
        events = await wyoming_events(c, {"transcript"})
        assert events[-1].type == "transcript", events[-1]
        return time.perf_counter() - start


def stt_http(url: str, name: str) -> float:
    data = speech_sample(name).read_bytes()
    start = time.perf_counter()
    r = httpx.post(url + "/transcribe", files={"file": (name, data)}, data={"language": "en"}, timeout=120)
    r.raise_for_status()
    return time.perf_counter() - start


async def tts_wyoming(port: int, text: str) -> tuple[float, float]:
    """(first audio, last audio) in seconds from sending synthesize."""
    async with AsyncTcpClient("127.0.0.1", port) as c:
        start = time.perf_counter()
        await c.write_event(Synthesize(text=text).event())
        first = None
        while True:
            event = (await wyoming_events(c, {"audio-chunk", "audio-stop"}))[-1]
            if event.type == "audio-chunk" and first is None:
                first = time.perf_counter() - start
            if event.type == "audio-stop":
                return first or float("nan"), time.perf_counter() - start
            assert event.type != "error", event


async def tts_wyoming_stream(port: int, text: str) -> float:
    async with AsyncTcpClient("127.0.0.1", port) as c:
        start = time.perf_counter()
        await c.write_event(SynthesizeStart().event())
        await c.write_event(SynthesizeChunk(text=text).event())
        await c.write_event(SynthesizeStop().event())
        first = None
        while True:
            event = (await wyoming_events(c, {"audio-chunk", "synthesize-stopped"}))[-1]
            if event.type == "audio-chunk" and first is None:
                first = time.perf_counter() - start
            if event.type == "synthesize-stopped":
                return first or float("nan")
            assert event.type != "error", event


def tts_http_stream(url: str, text: str) -> float:
    start = time.perf_counter()
    body = {"text": text, "return_format": "pcm", "stream": True}
    with httpx.stream("POST", url + "/synthesize", json=body, timeout=60) as r:
        r.raise_for_status()
        for _ in r.iter_bytes():
            return time.perf_counter() - start
    return float("nan")


def _others() -> str:
    out = subprocess.run(["pgrep", "-af", "pytest|bench"], capture_output=True, text=True).stdout
    mine = str(os.getpid())
    lines = [line.split(None, 1)[1][:80] for line in out.splitlines()
             if line.split()[0] != mine and "pgrep" not in line and "bench.wyoming" not in line
             and "bench wyoming" not in line]
    return "; ".join(lines) or "nothing else"


def _row(what: str, path: str, seconds: list[float]) -> str:
    return f"| {what} | {path} | {_median(seconds) * 1000:.0f} | {min(seconds) * 1000:.0f} |"


def run() -> str:
    load0 = os.getloadavg()[0]
    others = _others()
    stt_port, tts_port = free_port(), free_port()
    stt = ServiceProcess("rvchat_stt", "STT_", {"STT_WYOMING_PORT": str(stt_port)})
    tts = ServiceProcess("rvchat_tts", "TTS_", {"TTS_WYOMING_PORT": str(tts_port)})
    stt_rows: list[str] = []
    tts_rows: list[str] = []
    with stt, tts:
        for name in CLIPS:
            pcm = _pcm(name)
            rt, burst, http = [], [], []
            for _ in range(REPEATS):
                rt.append(asyncio.run(stt_wyoming(stt_port, pcm, real_time=True)))
                burst.append(asyncio.run(stt_wyoming(stt_port, pcm, real_time=False)))
                http.append(stt_http(stt.url, name))
            clip = f"{name} ({len(pcm) / 32000:.1f} s)"
            stt_rows += [_row(clip, "Wyoming, spoken in real time", rt),
                         _row(clip, "Wyoming, sent at once", burst),
                         _row(clip, "HTTP POST /transcribe (whole request)", http)]
        for label, text in TEXTS.items():
            first, whole, stream, http = [], [], [], []
            for _ in range(REPEATS):
                f, w = asyncio.run(tts_wyoming(tts_port, text))
                first.append(f)
                whole.append(w)
                stream.append(asyncio.run(tts_wyoming_stream(tts_port, text)))
                http.append(tts_http_stream(tts.url, text))
            tts_rows += [_row(label, "Wyoming synthesize: first audio", first),
                         _row(label, "Wyoming synthesize: audio-stop", whole),
                         _row(label, "Wyoming synthesize-start/-chunk/-stop: first audio", stream),
                         _row(label, "HTTP POST /synthesize stream=true: first audio", http)]
    load1 = os.getloadavg()[0]
    return "\n".join([
        "## Wyoming (Home Assistant) against HTTP",
        "",
        f"Median and best of {REPEATS} runs per cell, the paths taking turns; STT tiny.en, TTS Piper "
        f"en_US-joe-medium, each service its own process. Load average {load0:.1f} at the start, "
        f"{load1:.1f} at the end; also running: {others}.",
        "",
        f"STT: from `audio-stop` (the command followed by {TRAILING_SILENCE_S * 1000:.0f} ms of silence, "
        "64 ms chunks) to `transcript`; for HTTP, the whole request (upload and decode).",
        "",
        "| clip | path | end of audio to transcript, median (ms) | best (ms) |",
        "|---|---|---:|---:|",
        *stt_rows,
        "",
        "TTS: from sending the request.",
        "",
        "| text | path | median (ms) | best (ms) |",
        "|---|---|---:|---:|",
        *tts_rows,
    ])


if __name__ == "__main__":
    print(run())
