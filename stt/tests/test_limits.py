"""Bounded work on the STT service, with a fake model: raw PCM is held to the same length limit as
files, and a transcription whose client has left stops and frees the model."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
from fastapi.testclient import TestClient

from rvchat_common.cancel import Cancelled, raise_if_cancelled
from rvchat_common.testing import ThreadServer, abandoned_request, long_flac
from rvchat_stt.app import create_app
from rvchat_stt.schemas import Segment, Transcript
from rvchat_stt.settings import Settings


class WindowedEngine:
    """Decodes in 'windows' of 50 ms, checking for a departed client between them, as the real
    engine does between faster-whisper's 30 s windows."""

    model_name = "fake"

    def __init__(self, windows: int = 1) -> None:
        self.windows = windows
        self.stopped = threading.Event()

    def load(self) -> None:
        pass

    def check_language(self, language):
        return "en"

    def transcribe(self, audio, opts):
        try:
            for _ in range(self.windows):
                raise_if_cancelled()
                time.sleep(0.05)
        except Cancelled:
            self.stopped.set()
            raise
        dur = audio.size / 16000
        return Transcript(text="hi", language="en", duration=dur, segments=[Segment(start=0, end=dur, text="hi")])

    transcribe_stream = None


def app(engine=None, **settings):
    return create_app(Settings(log_json=False, **settings), engine=engine or WindowedEngine())


def test_raw_pcm_has_the_same_length_limit_as_files():
    with TestClient(app()) as client:
        pcm = bytes(2 * 4000 * 3276)  # just under 25 MiB at 4 kHz: 3,276 s, accepted before (RSS 0.63 -> 1.48 GB)
        r = client.post("/transcribe?sample_rate=4000", content=pcm, headers={"content-type": "audio/pcm"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "audio_too_long", r.text
        r = client.post("/transcribe", files={"file": ("a.flac", long_flac(1860), "audio/flac")})
        assert r.status_code == 413 and r.json()["error"]["code"] == "audio_too_long", r.text
        r = client.post("/transcribe", content=bytes(32000), headers={"content-type": "audio/pcm"})
        assert r.status_code == 200 and r.json()["text"] == "hi"


def test_a_transcription_whose_client_left_stops_and_frees_the_model():
    engine = WindowedEngine(windows=400)  # 20 s of decoding
    pcm, headers = bytes(2 * 16000), {"content-type": "audio/pcm"}
    with ThreadServer(app(engine)) as server:
        abandoned_request("POST", f"{server.url}/transcribe", 0.5, content=pcm, headers=headers)
        assert engine.stopped.wait(2.0), "the decode went on for a client that had gone"
        engine.windows = 1
        t0 = time.perf_counter()
        r = httpx.post(f"{server.url}/transcribe", content=pcm, headers=headers, timeout=30)
        assert r.status_code == 200 and time.perf_counter() - t0 < 2.0


def test_streams_beyond_max_streams_are_refused_with_1013():
    import pytest
    from starlette.websockets import WebSocketDisconnect

    with TestClient(app(max_streams=1)) as client:
        with client.websocket_connect("/ws") as first:
            assert first.receive_json()["type"] == "ready"
            with pytest.raises(WebSocketDisconnect) as closed:
                with client.websocket_connect("/ws") as second:
                    assert second.receive_json()["error"]["code"] == "too_many_streams"
                    second.receive_json()
            assert closed.value.code == 1013
        with client.websocket_connect("/ws") as again:  # the place is free once the first has gone
            assert again.receive_json()["type"] == "ready"
