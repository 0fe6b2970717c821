"""The app factory with an injected engine: readiness gating and the stream limit (no model)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from rvchat_common.audio import float_to_pcm16, wav_bytes
from rvchat_vad.app import create_app
from rvchat_vad.settings import Settings


class FakeStream:
    chunk_size = 512

    def __call__(self, chunk: np.ndarray) -> float:
        return 0.9 if np.abs(chunk).mean() > 0.05 else 0.0

    def reset(self) -> None:
        pass


class FakeEngine:
    """Loads only when told to, so the 'still loading' state can be observed."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def load(self) -> None:
        self.release.wait(30)

    def new_stream(self) -> FakeStream:
        return FakeStream()

    def detect(self, audio, threshold, min_speech_ms, min_silence_ms, speech_pad_ms):
        return [(0.5, 1.0)]


@pytest.fixture
def fake():
    engine = FakeEngine()
    settings = Settings(log_json=False, max_streams=1)
    with TestClient(create_app(settings, engine)) as client:
        yield client, engine
        engine.release.set()


def wait_ready(client: TestClient) -> None:
    """Poll /readyz until the (released) fake model has loaded."""
    for _ in range(200):
        if client.get("/readyz").status_code == 200:
            return
        threading.Event().wait(0.02)
    raise AssertionError("never became ready")


WAV = wav_bytes(float_to_pcm16(np.zeros(16000, dtype=np.float32)), 16000)


def test_not_ready_until_loaded(fake):
    client, engine = fake
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    r = client.post("/detect", files={"file": ("a.wav", WAV)})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_json()["error"]["code"] == "model_loading"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1013
    engine.release.set()
    wait_ready(client)
    body = client.post("/detect", files={"file": ("a.wav", WAV)}).json()
    assert body == {"segments": [{"start": 0.5, "end": 1.0}], "duration": 1.0, "speech_seconds": 0.5}


def test_stream_limit(fake):
    client, engine = fake
    engine.release.set()
    wait_ready(client)
    with client.websocket_connect("/ws") as first:
        assert first.receive_json()["type"] == "ready"
        with client.websocket_connect("/ws") as second:
            assert second.receive_json()["error"]["code"] == "too_many_streams"
    with client.websocket_connect("/ws") as again:  # the slot was given back
        assert again.receive_json()["type"] == "ready"


def test_ws_protocol_with_fake_engine(fake):
    client, engine = fake
    engine.release.set()
    wait_ready(client)
    with client.websocket_connect("/ws") as ws:
        ready = ws.receive_json()
        assert ready == {"type": "ready", "sample_rate": 16000, "threshold": 0.5, "min_speech_ms": 250,
                         "min_silence_ms": 500, "speech_pad_ms": 30, "probabilities": False}
        ws.send_json({"type": "config", "threshold": 1e400})
        assert ws.receive_json()["error"]["code"] == "invalid_event"
        ws.send_json({"type": "config", "min_speech_ms": 0, "min_silence_ms": 64})
        assert ws.receive_json() == {**ready, "min_speech_ms": 0, "min_silence_ms": 64}
        ws.send_bytes(b"\x00" * 3)
        assert ws.receive_json()["error"]["code"] == "odd_length_pcm"
        loud = float_to_pcm16(np.full(16000, 0.5, dtype=np.float32))
        ws.send_bytes(loud + float_to_pcm16(np.zeros(8000, dtype=np.float32)))
        assert ws.receive_json() == {"type": "speech_start", "timestamp": 0.0}
        assert ws.receive_json()["type"] == "speech_end"
        ws.send_bytes(loud)
        ws.send_json({"type": "reset"})  # forgets the open turn and restarts the clock
        ws.send_json({"type": "flush"})
        assert ws.receive_json()["type"] == "speech_start"  # sent before the reset arrived
        assert ws.receive_json() == {"type": "flushed", "timestamp": 0.0}
