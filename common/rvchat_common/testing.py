"""Helpers for tests and benchmarks: run a service as a real process, score transcripts."""

from __future__ import annotations

import json
import os
import shutil
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
SPEECH_DIR = REPO / "tests" / "data" / "speech"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """``python -m <module>`` on a free port, waited on until ``/readyz`` says ready.

    Output goes to a log file whose tail is shown when the service fails to start.
    """

    def __init__(self, module: str, env_prefix: str, env: dict[str, str] | None = None,
                 port: int | None = None, ready_timeout: float = 180.0) -> None:
        self.module = module
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.ready_timeout = ready_timeout
        # No Wyoming port unless the test asks for one: a developer's .env with STT_WYOMING_PORT=10300
        # would have every test process (several at once) try to bind it.
        self.env = {**os.environ, f"{env_prefix}HOST": "127.0.0.1", f"{env_prefix}PORT": str(self.port),
                    f"{env_prefix}LOG_JSON": "false", f"{env_prefix}WYOMING_PORT": "", **(env or {})}
        self.log_path = Path(tempfile.mkstemp(prefix=f"{module}-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True) -> "ServiceProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", self.module], env=self.env, cwd=REPO,
                                     stdout=log, stderr=subprocess.STDOUT)
        if wait_ready:
            self.wait("/readyz", self.ready_timeout)
        else:
            self.wait("/healthz", 60)
        return self

    def wait(self, path: str = "/readyz", timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.module} not answering {path} after {timeout} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> "ServiceProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def speech_manifest() -> list[dict]:
    with open(SPEECH_DIR / "manifest.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def speech_sample(name: str) -> Path:
    return SPEECH_DIR / name


def non_speech_signals(seconds: float = 4.0, rate: int = 16000) -> dict:
    """Audio with no speech in it: digital silence, white noise at several levels, tones, mains hum,
    brown noise. Services must find no speech and write no text for any of them."""
    import numpy as np

    rng = np.random.default_rng(0)
    n = int(rate * seconds)
    t = np.arange(n) / rate
    brown = np.cumsum(rng.normal(0, 1, n))
    brown -= np.convolve(brown, np.ones(1600) / 1600, "same")
    sigs = {"silence": np.zeros(n)}
    for amp in (0.001, 0.02, 0.1, 0.4):
        sigs[f"white_{amp}"] = np.clip(rng.normal(0, amp, n), -1, 1)
    sigs["tone_440"] = 0.3 * np.sin(2 * np.pi * 440 * t)
    sigs["tone_1000"] = 0.5 * np.sin(2 * np.pi * 1000 * t)
    sigs["hum_50"] = 0.2 * np.sin(2 * np.pi * 50 * t) + 0.1 * np.sin(2 * np.pi * 150 * t)
    sigs["hum_60_low"] = 0.02 * np.sin(2 * np.pi * 60 * t)
    sigs["brown"] = 0.3 * brown / np.abs(brown).max()
    return {k: v.astype(np.float32) for k, v in sigs.items()}


_FILLERS = {"uh", "um", "ah", "er", "hmm", "mm"}


def normalise(text: str) -> list[str]:
    """Lower-case words without punctuation or fillers, for WER."""
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    return [w.strip("'") for w in text.split() if w.strip("'") and w not in _FILLERS]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance over reference length."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / len(ref)


class ThreadServer:
    """An app (with fake engines) under a real uvicorn in a thread: for what a test client cannot
    show, such as a client that leaves mid-request or a body that stalls."""

    def __init__(self, app: object) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                                    ws_max_size=4 * 1024 * 1024))
        self.thread: object = None

    def __enter__(self) -> "ThreadServer":
        import threading

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)  # type: ignore[attr-defined]


def abandoned_request(method: str, url: str, after_s: float, **kwargs: object) -> None:
    """Send a request and hang up after ``after_s`` (a client that gives up)."""
    try:
        httpx.request(method, url, timeout=after_s, **kwargs)  # type: ignore[arg-type]
    except httpx.TimeoutException:
        return
    raise AssertionError(f"{method} {url} was answered within {after_s} s; the test wanted it abandoned")


def long_flac(seconds: float, rate: int = 8000) -> bytes:
    """A FLAC of silence ``seconds`` long, made in memory (3 hours: 2 MB, ~2.5 s to encode): long
    audio for limit tests without committing big files."""
    import io

    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono")
        stream.format = "s16"
        minute = np.zeros((1, rate * 60), np.int16)
        for _ in range(int(seconds // 60)):
            frame = av.AudioFrame.from_ndarray(minute, format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


# --- schemathesis (tests/test_fuzz.py, bench/fuzz.py) ---------------------------------------
FUZZ_SEED = 42
FUZZ_CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
               "response_schema_conformance")
FUZZ_REQUEST_TIMEOUT_S = 120  # a request unanswered this long counts as a hang


def st_binary() -> str:
    exe = Path(sys.executable).with_name("st")
    return str(exe) if exe.exists() else (shutil.which("st") or "st")


def run_schemathesis(url: str, max_examples: int, max_time_s: float, seed: int = FUZZ_SEED) -> dict:
    """One schemathesis run against ``url``; its figures and the failures it found."""
    report_dir = Path(tempfile.mkdtemp(prefix="schemathesis-"))
    cmd = [st_binary(), "run", f"{url}/openapi.json", "--checks", FUZZ_CHECKS, "--seed", str(seed),
           "--max-examples", str(max_examples), "--max-time", str(int(max_time_s)), "--workers", "1",
           "--request-timeout", str(FUZZ_REQUEST_TIMEOUT_S), "--report", "json",
           "--report-dir", str(report_dir),
           "--no-color"]
    t0 = time.perf_counter()
    # cwd: schemathesis keeps a .schemathesis/ folder wherever it runs, not in the checkout.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max_time_s + 600, cwd=report_dir)
    reports = sorted(report_dir.glob("*.json"))
    if not reports:
        raise RuntimeError(f"schemathesis wrote no report:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    report = json.loads(reports[-1].read_text())
    cases = report["test_cases"]
    return {
        "exit_code": proc.returncode,
        "seconds": round(time.perf_counter() - t0, 1),
        "generated": cases["generated"],
        "with_failures": cases["with_failures"],
        "unique_failures": cases["unique_failures"],
        "errored": cases["errored"] + len(report.get("errors") or []),
        "operations": report["operations"]["tested"],
        "stop_reason": report.get("stop_reason"),
        "failures": report.get("failures") or [],
        "output_tail": proc.stdout[-4000:],
    }


# --- Wyoming (tests and the README's Home Assistant example) ------------------------------------
WYOMING_WAIT_S = 60.0  # every read from a Wyoming service in a test is bounded


async def wyoming_events(client: object, until: set[str], timeout: float = WYOMING_WAIT_S) -> list:
    """Read events from a ``wyoming.client.AsyncClient`` up to and including the first of a type in
    ``until`` (or an ``error``); the service closing the connection first is an AssertionError."""
    import asyncio

    events = []
    while True:
        event = await asyncio.wait_for(client.read_event(), timeout)  # type: ignore[attr-defined]
        assert event is not None, \
            f"the service closed the connection; events so far: {[e.type for e in events]}"
        events.append(event)
        if event.type in until or event.type == "error":
            return events


async def wyoming_transcribe(port: int, pcm16: bytes, rate: int = 16000, language: str | None = None,
                             host: str = "127.0.0.1") -> dict:
    """Send PCM16 mono to a Wyoming STT service as Home Assistant does; the transcript's data (or the
    error's: ``{"text", "code"}`` with ``error`` set)."""
    from wyoming.asr import Transcribe
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient

    async with AsyncTcpClient(host, port) as client:
        await client.write_event(Transcribe(language=language).event())
        await client.write_event(AudioStart(rate=rate, width=2, channels=1).event())
        step = 2048
        for i in range(0, len(pcm16), step):
            chunk = AudioChunk(rate=rate, width=2, channels=1, audio=pcm16[i:i + step])
            await client.write_event(chunk.event())
        await client.write_event(AudioStop().event())
        last = (await wyoming_events(client, {"transcript"}))[-1]
        return {**last.data, "error": True} if last.type == "error" else last.data


def wyoming_hostile_events(types: list[str], fields: list[str]) -> list:
    """Well-framed Wyoming events with wrong, missing, huge and odd values, for a hostile sweep: each
    type with no data, then each field set to each bad value, then with odd and random audio."""
    from wyoming.event import Event

    values: list[object] = [None, 0, -1, 2 ** 63, 1e308, True, "", "x" * 20000, "é 中 🙂",
                            [], {}, [1, "a"], {"name": 5, "language": [], "text": {}}]
    rng = __import__("random").Random(0)
    events = []
    for kind in types:
        events.append(Event(kind, {}))
        events += [Event(kind, {field: value}) for field in fields for value in values]
        fmt = {"rate": 16000, "width": 2, "channels": 1}
        events.append(Event(kind, fmt, payload=b"\1" * 3))
        events.append(Event(kind, fmt, payload=rng.randbytes(3200)))
    return events


async def wyoming_sweep(port: int, events: list, host: str = "127.0.0.1") -> list[dict]:
    """Send each event on one connection, with a ``ping`` after it as a barrier; the error events
    the service answered. The service closing the connection is an AssertionError."""
    from wyoming.client import AsyncTcpClient
    from wyoming.ping import Ping

    errors = []
    async with AsyncTcpClient(host, port) as client:
        for event in events:
            await client.write_event(event)
            await client.write_event(Ping().event())
            while True:
                got = (await wyoming_events(client, {"pong"}))[-1]
                if got.type == "pong":
                    break
                errors.append({**got.data, "after": event.type})
    return errors
