"""Soak: normal and hostile load against the five services as processes, RSS per service over time.

Each round, one request at a time (the load stays light: others measure latency on this 2-core
machine), it sends the normal traffic of a voice chat and a share of what a hostile client sends:

- normal: VAD /detect and STT /transcribe of an 11 s recording, a TTS sentence, a short LLM reply,
  POST /api/message to main_app;
- hostile: text that spells out to minutes of speech ('1' * 5000), a 3-hour FLAC, 3,276 s of raw
  PCM, a long generation and a long synthesis abandoned by their client, lone surrogates and
  extreme numbers on main_app's and TTS's WebSockets, a body that stalls, made-up methods and paths;
- every few rounds, heavy but valid work: 1,700 s of raw PCM to VAD, 5,000 characters to TTS.

RSS of every process is sampled all along. The goal (issue 16): flat after warm-up, within 1.5x of
the idle RSS, TTS under 1 GB; no 5xx, no hang.

    .venv/bin/python -m bench.soak [MINUTES]     # default 30 (SOAK_MINUTES); writes results/soak.md
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import websockets

from bench.stack import rss_mb, stack
from rvchat_common.testing import REPO, long_flac

SAMPLE = (REPO / "audio_sample.wav").read_bytes()
SAMPLE_EVERY_S = 10.0
PAUSE_S = 2.0  # between requests: one service busy at a time, and idle time in between
TIMEOUT_S = 180.0  # a request unanswered this long is a hang


class Soak:
    def __init__(self, procs: dict) -> None:
        self.procs = procs
        self.url = {n: p.url for n, p in procs.items()}
        self.statuses: Counter[str] = Counter()
        self.server_errors: list[str] = []
        self.hangs: list[str] = []
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.stop = threading.Event()
        self.flac = long_flac(3 * 3600)
        self.client = httpx.Client(timeout=TIMEOUT_S)

    # --- bookkeeping ---------------------------------------------------------------------------
    def rss(self) -> dict[str, float]:
        return {n: rss_mb(p.proc.pid) for n, p in self.procs.items()}

    def sampler(self, t0: float) -> None:
        while not self.stop.wait(SAMPLE_EVERY_S):
            self.samples.append((time.monotonic() - t0, self.rss()))

    def call(self, what: str, method: str, url: str, **kwargs) -> int:
        try:
            r = self.client.request(method, url, **kwargs)
        except httpx.TimeoutException:
            self.hangs.append(what)
            return 0
        except httpx.HTTPError as exc:
            self.server_errors.append(f"{what}: {type(exc).__name__}")
            return 0
        self.statuses[f"{r.status_code}"] += 1
        if r.status_code >= 500:
            self.server_errors.append(f"{what}: {r.status_code} {r.text[:200]}")
        time.sleep(PAUSE_S)
        return r.status_code

    def abandon(self, what: str, method: str, url: str, after_s: float, **kwargs) -> None:
        try:
            httpx.request(method, url, timeout=after_s, **kwargs)
        except httpx.TimeoutException:
            pass
        self.statuses["abandoned"] += 1
        time.sleep(PAUSE_S)

    # --- traffic -------------------------------------------------------------------------------
    def normal(self, i: int) -> None:
        u = self.url
        self.call("vad detect", "POST", u["vad"] + "/detect", files={"file": ("a.wav", SAMPLE)})
        self.call("stt transcribe", "POST", u["stt"] + "/transcribe", files={"file": ("a.wav", SAMPLE)})
        self.call("tts sentence", "POST", u["tts"] + "/synthesize",
                  json={"text": f"This is sentence number {i}, spoken at normal speed.",
                        "return_format": "wav"})
        self.call("llm short", "POST", u["llm"] + "/generate",
                  json={"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 24})
        self.call("app message", "POST", u["app"] + "/api/message",
                  json={"text": f"What is {i} plus two?"})

    def hostile(self, i: int) -> None:
        u = self.url
        self.call("tts 1*5000", "POST", u["tts"] + "/synthesize", json={"text": "1" * 5000})
        self.call("vad 3h flac", "POST", u["vad"] + "/detect", files={"file": ("long.flac", self.flac)})
        self.call("stt 3276 s pcm", "POST", u["stt"] + "/transcribe?sample_rate=4000",
                  content=bytes(2 * 4000 * 3276), headers={"content-type": "audio/pcm"})
        self.abandon("llm abandoned", "POST", u["llm"] + "/generate", 2.0,
                     json={"messages": [{"role": "user", "content": "Tell a long story. " * 100}],
                           "max_tokens": 2000})
        self.abandon("tts abandoned", "POST", u["tts"] + "/synthesize", 1.0,
                     json={"text": "A long story begins here, and goes on. " * 100})
        self.call("app surrogate", "POST", u["app"] + "/api/message",
                  content=b'{"text": "\\ud800 hi"}', headers={"content-type": "application/json"})
        self.call("app long text", "POST", u["app"] + "/api/message", json={"text": "\u4e00\u9fff" * 2000})
        self.call("made-up method", "BREW", u["app"] + f"/pot/{i}")
        self.call("unknown path", "GET", u["tts"] + f"/nowhere/{i}?x={i}")
        self.stalled_body(u["llm"])
        asyncio.run(self.websockets())

    def heavy(self, i: int) -> None:
        u = self.url
        self.call("vad 1700 s pcm", "POST", u["vad"] + "/detect?sample_rate=4000",
                  content=bytes(2 * 4000 * 1700), headers={"content-type": "audio/pcm"})
        self.call("tts 5000 chars", "POST", u["tts"] + "/synthesize",
                  json={"text": "The weather today is mild, with a light wind from the west. " * 83,
                        "return_format": "pcm"})

    def stalled_body(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        t0 = time.monotonic()
        try:
            with socket.create_connection((host, int(port)), timeout=60) as sock:
                sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 100\r\n\r\n{\"mess")
                data = sock.recv(4096)
        except OSError:
            data = b""
        took = time.monotonic() - t0
        self.statuses["stalled body " + (data[9:12].decode() if data else "no answer")] += 1
        if took > 30:
            self.hangs.append(f"stalled body held {took:.0f} s")

    async def websockets(self) -> None:
        async def one(url: str, frames: list[str], what: str) -> None:
            try:
                async with websockets.connect(url, open_timeout=10) as ws:
                    for frame in frames:
                        await ws.send(frame)
                    deadline = time.monotonic() + 3
                    while time.monotonic() < deadline:
                        try:
                            await asyncio.wait_for(ws.recv(), 0.5)
                        except TimeoutError:
                            break
                self.statuses[f"ws {what} open"] += 1
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else 0
                self.statuses[f"ws {what} closed {code}"] += 1
                if code == 1011:
                    self.server_errors.append(f"ws {what}: 1011")

        app_ws = self.url["app"].replace("http", "ws") + "/ws"
        tts_ws = self.url["tts"].replace("http", "ws") + "/ws"
        await one(app_ws, ['{"type":"config","min_silence_ms":1e400}',
                           '{"type":"config","min_speech_ms":Infinity}',
                           '{"type":"text","text":"\\ud800 hi"}'], "app abuse")
        await one(tts_ws, ['{"type":"config","speed":' + "9" * 400 + "}",
                           '{"type":"text","text":"' + "1" * 3000 + '"}', '{"type":"flush"}'], "tts abuse")
        await one(tts_ws, ['{"type":"text","text":"Hello there. How are you today?"}', '{"type":"flush"}'],
                  "tts normal")

    # --- run -----------------------------------------------------------------------------------
    def run(self, minutes: float) -> dict:
        t0 = time.monotonic()
        idle = self.rss()
        self.normal(0)  # warm-up: first requests allocate lazily
        warm = self.rss()
        self.samples.append((time.monotonic() - t0, warm))
        sampler = threading.Thread(target=self.sampler, args=(t0,), daemon=True)
        sampler.start()
        end = t0 + minutes * 60
        i = 1
        while time.monotonic() < end:
            self.normal(i)
            if i % 2 == 0:
                self.hostile(i)
            if i % 6 == 0:
                self.heavy(i)
            i += 1
        self.stop.set()
        sampler.join()
        self.samples.append((time.monotonic() - t0, self.rss()))
        alive = {n: p.alive() for n, p in self.procs.items()}
        return {"idle": idle, "warm": warm, "rounds": i - 1, "alive": alive,
                "seconds": time.monotonic() - t0}


def report(soak: Soak, result: dict, minutes: float) -> str:
    names = list(soak.procs)
    samples = soak.samples
    warm_t = samples[0][0]
    after = [s for t, s in samples if t >= warm_t + 120] or [s for _, s in samples]  # after warm-up
    lines = [
        "## Soak: memory under normal and hostile load",
        "",
        f"{minutes:g} minutes, {result['rounds']} rounds, one request at a time with {PAUSE_S:g} s pauses "
        "(`.venv/bin/python -m bench.soak MINUTES`). Each round: VAD, STT, TTS, LLM and main_app "
        "normal requests; every 2nd round the hostile set ('1'*5000 to TTS, a 3-hour FLAC to VAD, "
        "3,276 s of raw PCM to STT, an abandoned 2,000-token generation and an abandoned long "
        "synthesis, a lone surrogate and 4,000 CJK characters to main_app, made-up methods and paths, "
        "a stalled body, WebSocket abuse on main_app and TTS); every 6th round heavy valid work "
        "(1,700 s of PCM to VAD, 5,000 characters to TTS). RSS from /proc every "
        f"{SAMPLE_EVERY_S:g} s.",
        "",
        "| service | idle MB | after warm-up MB | max after 2 min MB | last MB | max / idle | alive |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in names:
        peak = max(s[n] for s in after)
        last = samples[-1][1][n]
        alive = "yes" if result["alive"][n] else "NO"
        lines.append(f"| {n} | {result['idle'][n]:.0f} | {result['warm'][n]:.0f} | {peak:.0f} | {last:.0f} "
                     f"| {peak / max(result['idle'][n], 1):.2f} | {alive} |")
    # RSS over time: one column per ~tenth of the run.
    step = max(1, len(samples) // 10)
    picked = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
    lines += ["", "RSS (MB) over time:", "",
              "| t (min) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for t, s in picked:
        lines.append(f"| {t / 60:.1f} | " + " | ".join(f"{s[n]:.0f}" for n in names) + " |")
    slope = {}
    for n in names:
        pts = [(t, s[n]) for t, s in samples if t >= warm_t + 120]
        if len(pts) >= 3:
            half = len(pts) // 2
            slope[n] = statistics.mean(v for _, v in pts[half:]) - statistics.mean(v for _, v in pts[:half])
    lines += ["", "Drift (mean RSS of the second half after warm-up minus the first half): "
              + ", ".join(f"{n} {d:+.0f} MB" for n, d in slope.items()) + ".", "",
              f"Answers: {dict(sorted(soak.statuses.items()))}.", "",
              f"Server errors: {len(soak.server_errors)}"
              + (f" ({'; '.join(soak.server_errors[:10])})" if soak.server_errors else "")
              + f". Hangs: {len(soak.hangs)}"
              + (f" ({'; '.join(soak.hangs[:10])})" if soak.hangs else "") + "."]
    return "\n".join(lines) + "\n"


def run(minutes: float | None = None) -> str:
    minutes = float(os.environ.get("SOAK_MINUTES", "30")) if minutes is None else minutes
    with stack() as procs:
        soak = Soak(procs)
        result = soak.run(minutes)
        return report(soak, result, minutes)


if __name__ == "__main__":
    mins = float(sys.argv[1]) if len(sys.argv) > 1 else None
    section = run(mins)
    out = Path(__file__).parent / "results" / "soak.md"
    out.write_text(section)
    print(section)
