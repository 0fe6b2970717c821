"""TTS benchmark: time to first audio and real-time factor, service vs the Piper library in-process.

The same texts go to ``piper`` called directly (``PiperVoice.synthesize``, which
yields one chunk per sentence) and to the service three ways: streamed
``POST /synthesize`` (pcm), ``WS /ws`` (whole text then flush, and the same
text as LLM-sized deltas), and whole ``POST /synthesize``. Time to first audio
is what a listener waits for; RTF = synthesis time / audio duration.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import httpx

from rvchat_common.models import embedded_piper_voice
from rvchat_common.testing import ServiceProcess

TEXTS = {
    "short (7 words)": "Hello, how can I help you today?",
    "medium (3 sentences, 38 words)": (
        "Sure, I can help with that. The quickest way is to open the settings page and choose "
        "a new voice from the list. After that, press save and the assistant will use the new "
        "voice from the next reply onwards."),
    "long (8 sentences, 120 words)": (
        "The history of the lighthouse goes back more than two thousand years. The most famous early "
        "example stood at Alexandria, where a tall tower guided ships into the busy harbour. For "
        "centuries, keepers burned wood or oil to make the light visible at night. In the nineteenth "
        "century, new lenses made the beam far brighter and let it reach much further out to sea. "
        "Keepers often lived with their families in small houses at the foot of the tower. Their work "
        "was lonely, and storms could cut them off for weeks. Today most lighthouses are automatic, "
        "and many have become museums. Still, their lights continue to warn sailors of rocks and "
        "shallow water along the coast."),
}
REPEATS = 5
RATE = 22050


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def bench_library(text: str) -> tuple[float, float]:
    voice = _library_voice()
    t0 = time.perf_counter()
    first = None
    samples = 0
    for chunk in voice.synthesize(text):
        if first is None:
            first = time.perf_counter() - t0
        samples += len(chunk.audio_float_array)
    total = time.perf_counter() - t0
    return first, total / (samples / RATE)


_VOICE = None


def _library_voice():
    global _VOICE
    if _VOICE is None:
        from piper import PiperVoice

        _VOICE = PiperVoice.load(*embedded_piper_voice())
        list(_VOICE.synthesize("Warm up."))
    return _VOICE


def bench_http_stream(url: str, text: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    first = None
    n = 0
    with httpx.stream("POST", f"{url}/synthesize", timeout=120,
                      json={"text": text, "return_format": "pcm", "stream": True}) as r:
        r.raise_for_status()
        for chunk in r.iter_raw():
            if first is None and chunk:
                first = time.perf_counter() - t0
            n += len(chunk)
    total = time.perf_counter() - t0
    return first, total / (n / 2 / RATE)


def bench_http_whole(url: str, text: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/synthesize", timeout=120, json={"text": text, "return_format": "pcm"})
    r.raise_for_status()
    total = time.perf_counter() - t0
    return total, total / (len(r.content) / 2 / RATE)


async def _ws(ws_url: str, text: str, deltas: bool) -> tuple[float, float]:
    from websockets.asyncio.client import connect

    async with connect(f"{ws_url}/ws") as ws:
        await ws.recv()  # ready
        t0 = time.perf_counter()
        first = None
        n = 0

        async def reader() -> None:  # audio is read while text is still being sent
            nonlocal first, n
            while True:
                msg = await asyncio.wait_for(ws.recv(), 120)
                if isinstance(msg, bytes):
                    if first is None:
                        first = time.perf_counter() - t0
                    n += len(msg)
                elif json.loads(msg)["type"] == "done":
                    return

        reading = asyncio.create_task(reader())
        if deltas:  # an LLM writing ~30 tokens/s; the clock starts at its first token
            for word in text.split(" "):
                await ws.send(json.dumps({"type": "text", "text": word + " "}))
                await asyncio.sleep(0.033)
        else:
            await ws.send(json.dumps({"type": "text", "text": text}))
        await ws.send(json.dumps({"type": "flush"}))
        await reading
        total = time.perf_counter() - t0
    return first, total / (n / 2 / RATE)


def run() -> str:
    svc = ServiceProcess("rvchat_tts", "TTS_").start()
    paths = [
        ("piper library in-process (per-sentence chunks)", bench_library),
        ("service POST /synthesize stream=true (pcm)", lambda t: bench_http_stream(svc.url, t)),
        ("service WS /ws (whole text + flush)", lambda t: asyncio.run(_ws(svc.ws_url, t, False))),
        ("service WS /ws (deltas at 30 tokens/s)", lambda t: asyncio.run(_ws(svc.ws_url, t, True))),
        ("service POST /synthesize whole (pcm)", lambda t: bench_http_whole(svc.url, t)),
    ]
    rows: list[tuple[str, str, float, float, float]] = []
    try:
        _library_voice()
        httpx.post(f"{svc.url}/synthesize", json={"text": "Warm up."}, timeout=60)
        for name, text in TEXTS.items():
            # Interleaved repetitions: the library and the service see the same machine load.
            results: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in paths}
            for _ in range(REPEATS):
                for label, fn in paths:
                    results[label].append(fn(text))
            for label, res in results.items():
                firsts = [r[0] for r in res]
                rows.append((name, label, _median(firsts), min(firsts), _median([r[1] for r in res])))
    finally:
        svc.stop()
    lines = [
        "## TTS (Piper en_US-joe-medium)",
        "",
        f"Median of {REPEATS} runs per cell; voice defaults (noise 0.667/0.8), service defaults "
        "(first segment may be a clause of >= 4 words). Time to first audio: from sending the request "
        "(WS: the first text) to the first audio byte. RTF: wall time / audio duration (lower is faster; "
        "for the deltas rows the clock starts at the first token, so first audio includes the time the "
        "LLM takes to write the first segment: about 0.2 s (medium) and 0.4 s (long) at 30 tokens/s). "
        "Other processes "
        "shared the 2 cores during the run (load average 3-6), so runs are interleaved (library and service "
        "paths take turns on each repetition) and the best run is shown too.",
        "",
        "| text | path | first audio, median (ms) | first audio, best (ms) | RTF (median) |",
        "|---|---|---:|---:|---:|",
    ]
    for name, label, first, best, rtf in rows:
        lines.append(f"| {name} | {label} | {first * 1000:.0f} | {best * 1000:.0f} | {rtf:.3f} |")
    lines += [
        "",
        "Streaming makes time to first audio depend on the first segment, not the whole text: for the "
        "long text the service's first audio arrives about as soon as the library yields its first "
        "sentence chunk, "
        "while a whole-file request waits for all of it. The first segment is cut at a clause when one "
        "appears after 4 words (TTS_FIRST_CLAUSE_WORDS), so it is often shorter than the library's first "
        "sentence.",
    ]
    return "\n".join(lines)
