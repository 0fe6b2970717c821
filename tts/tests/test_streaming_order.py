"""Ordering proofs with a gated fake engine behind a real uvicorn server (no timing involved).

The fake engine synthesises a sentence only when the test releases it, so the
tests can show that audio for sentence 1 reaches the client while sentence 2 is
still being synthesised, and that a cancel abandons the sentence in flight.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect

from rvchat_common.audio import wav_header
from rvchat_common.testing import free_port
from rvchat_tts.app import create_app
from rvchat_tts.engine import Cancelled, CancelToken
from rvchat_tts.settings import Settings
from rvchat_tts.voices import VoiceCatalog

WAIT = 20
RATE = 16000


class GatedEngine:
    """Each synthesize() waits for a permit (or a cancel); audio is 0.1 s of a constant per call."""

    def __init__(self) -> None:
        self.catalog = VoiceCatalog("en_US-joe-medium")
        self.permits = threading.Semaphore(0)
        self.started: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []

    def load(self) -> None:
        pass

    def cancel_token(self) -> CancelToken:
        return CancelToken()

    def sample_rate(self, voice: str) -> int:
        return RATE

    def ensure_voice(self, name: str) -> str:
        return name

    def synthesize(self, text: str, voice: str, speed: float = 1.0,
                   cancel: CancelToken | None = None) -> bytes:
        self.started.append(text)
        deadline = time.monotonic() + WAIT
        while not self.permits.acquire(timeout=0.01):
            if cancel is not None and cancel.cancelled:
                self.cancelled.append(text)
                raise Cancelled()
            if time.monotonic() > deadline:
                raise TimeoutError("test never released this sentence")
        self.finished.append(text)
        return len(self.finished).to_bytes(2, "little") * (RATE // 10)


@pytest.fixture()
def served():
    engine = GatedEngine()
    settings = Settings(port=free_port(), host="127.0.0.1", log_json=False)
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engine), host="127.0.0.1", port=settings.port,
                                           log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    yield engine, f"http://127.0.0.1:{settings.port}", f"ws://127.0.0.1:{settings.port}"
    engine.permits.release(100)
    server.should_exit = True
    thread.join(WAIT)


THREE = "The first sentence is here. The second sentence follows it. And the third one ends it."


@pytest.mark.parametrize("fmt", ["wav", "pcm"])
def test_http_stream_delivers_sentence_one_while_sentence_two_is_still_synthesising(served, fmt) -> None:
    engine, url, _ = served
    engine.permits.release(1)  # only the first sentence may finish
    with httpx.stream("POST", f"{url}/synthesize", timeout=WAIT,
                      json={"text": THREE, "return_format": fmt, "stream": True}) as r:
        assert r.status_code == 200
        first_len = (44 if fmt == "wav" else 0) + RATE // 10 * 2
        received = b""
        chunks = r.iter_raw()
        while len(received) < first_len:
            received += next(chunks)
        # Sentence one's audio is in our hands; sentence two cannot have finished (no permit).
        assert len(received) == first_len
        assert engine.finished == ["The first sentence is here."]
        if fmt == "wav":
            assert received[:44] == wav_header(RATE)
        engine.permits.release(2)
        received += b"".join(chunks)
    assert len(received) == first_len + 2 * RATE // 10 * 2
    assert engine.finished == THREE.replace(". ", ".|").split("|")


def test_openai_endpoint_streams_the_same_way(served) -> None:
    engine, url, _ = served
    engine.permits.release(1)
    with httpx.stream("POST", f"{url}/v1/audio/speech", timeout=WAIT,
                      json={"model": "tts-1", "input": THREE, "voice": "alloy",
                            "response_format": "wav"}) as r:
        assert r.status_code == 200
        chunks = r.iter_raw()
        received = next(chunks)
        while len(received) < 44 + RATE // 10 * 2:
            received += next(chunks)
        assert len(engine.finished) == 1
        engine.permits.release(2)
        received += b"".join(chunks)
    assert len(received) == 44 + 3 * RATE // 10 * 2


async def recv(ws):
    msg = await asyncio.wait_for(ws.recv(), WAIT)
    return msg if isinstance(msg, bytes) else json.loads(msg)


async def test_ws_sends_a_sentence_as_soon_as_the_text_completes_it(served) -> None:
    engine, _, ws_url = served
    engine.permits.release(10)
    async with connect(f"{ws_url}/ws", open_timeout=WAIT) as ws:
        assert (await recv(ws))["type"] == "ready"
        for tok in ["The", " first", " sentence", " is", " here", ".", " The", " second"]:
            await ws.send(json.dumps({"type": "text", "text": tok}))
        # No flush: the first sentence is complete, the second is not.
        event = await recv(ws)
        assert event["type"] == "audio" and event["text"] == "The first sentence is here."
        assert len(await recv(ws)) == event["bytes"]
        assert engine.started == ["The first sentence is here."]
        await ws.send(json.dumps({"type": "text", "text": " one."}))
        await ws.send(json.dumps({"type": "flush"}))
        event = await recv(ws)
        assert event["text"] == "The second one." and event["index"] == 1
        await recv(ws)
        assert await recv(ws) == {"type": "done", "sentences": 2}


async def test_ws_cancel_abandons_the_sentence_being_synthesised(served) -> None:
    engine, _, ws_url = served
    engine.permits.release(1)
    async with connect(f"{ws_url}/ws", open_timeout=WAIT) as ws:
        await recv(ws)
        await ws.send(json.dumps({"type": "text", "text": THREE}))
        await ws.send(json.dumps({"type": "flush"}))
        first = await recv(ws)
        assert first["index"] == 0 and len(await recv(ws)) == first["bytes"]
        # Sentence two is stuck in synthesis (no permit). Cancel must not wait for it.
        await ws.send(json.dumps({"type": "cancel"}))
        assert await recv(ws) == {"type": "cancelled"}
        deadline = time.monotonic() + WAIT
        while not engine.cancelled and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert engine.cancelled == ["The second sentence follows it."]
        assert "And the third one ends it." not in engine.started  # the queue was dropped
        # The connection carries on with a new turn.
        engine.permits.release(1)
        await ws.send(json.dumps({"type": "text", "text": "A fresh start."}))
        await ws.send(json.dumps({"type": "flush"}))
        event = await recv(ws)
        assert event["text"] == "A fresh start." and event["index"] == 0
        await recv(ws)
        assert await recv(ws) == {"type": "done", "sentences": 1}


def test_stream_start_failure_is_a_clean_error_not_a_broken_stream(served) -> None:
    engine, url, _ = served

    def boom(*_a, **_k):
        raise RuntimeError("model exploded")

    engine.synthesize = boom
    r = httpx.post(f"{url}/synthesize", timeout=WAIT, json={"text": THREE, "stream": True})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert httpx.get(f"{url}/healthz", timeout=WAIT).status_code == 200


async def test_ws_a_replys_first_sentence_goes_before_another_replys_later_ones(served) -> None:
    engine, url, ws_url = served

    async def until(predicate, what: str) -> None:
        deadline = time.monotonic() + WAIT
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.01)

    def waiting() -> float:
        text = httpx.get(f"{url}/metrics", timeout=WAIT).text
        return float(next(ln.split()[1] for ln in text.splitlines()
                          if ln.startswith("inference_queue_depth ")))

    async with connect(f"{ws_url}/ws", open_timeout=WAIT) as a, \
            connect(f"{ws_url}/ws", open_timeout=WAIT) as b, connect(f"{ws_url}/ws", open_timeout=WAIT) as c:
        for ws in (a, b, c):
            await recv(ws)
        await a.send(json.dumps({"type": "text", "text": THREE}))
        await a.send(json.dumps({"type": "flush"}))
        await until(lambda: engine.started == ["The first sentence is here."], "A's first sentence")
        await c.send(json.dumps({"type": "text", "text": "See one."}))
        await c.send(json.dumps({"type": "flush"}))
        await until(lambda: waiting() == 1, "C's first sentence to queue")
        engine.permits.release(1)  # A's first is done; C's goes in and A's second queues behind it
        await until(lambda: engine.started[-1] == "See one." and waiting() == 1, "A's second to queue")
        await b.send(json.dumps({"type": "text", "text": "Be one."}))
        await b.send(json.dumps({"type": "flush"}))
        await until(lambda: waiting() == 2, "B's first sentence to queue")
        engine.permits.release(10)
        for ws in (a, b, c):
            while (await recv(ws)) != {"type": "done", "sentences": 3 if ws is a else 1}:
                pass
    # B's first sentence arrived after A's second, and went before it.
    assert engine.started == ["The first sentence is here.", "See one.", "Be one.",
                              "The second sentence follows it.", "And the third one ends it."]
