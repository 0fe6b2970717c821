"""Bounded work on the TTS service, with a fake synthesiser: how much speech a request may expand
to, how long one model run may be, and synthesis that stops when its client leaves."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from rvchat_common.testing import ThreadServer, abandoned_request
from rvchat_tts.app import create_app
from rvchat_tts.engine import MAX_PHONEMES_PER_RUN, Cancelled, CancelToken, bounded_runs
from rvchat_tts.settings import Settings
from rvchat_tts.voices import VoiceCatalog


class SlowSynth:
    """Takes ``steps`` x 50 ms a segment, stopping between steps once cancelled (as Piper stops
    between runs and ONNX aborts the run in flight)."""

    def __init__(self, steps: int = 1) -> None:
        self.catalog = VoiceCatalog("en_US-joe-medium", None, "", False)
        self.steps = steps
        self.cancelled = threading.Event()
        self.chars = 0

    def load(self) -> None:
        pass

    def ensure_voice(self, name: str) -> str:
        return name

    def sample_rate(self, name: str) -> int:
        return 22050

    def cancel_token(self) -> CancelToken:
        return CancelToken()

    def synthesize(self, text, voice, speed=1.0, cancel=None) -> bytes:
        self.chars += len(text)
        for _ in range(self.steps):
            if cancel is not None and cancel.cancelled:
                self.cancelled.set()
                raise Cancelled()
            time.sleep(0.05)
        return bytes(2205 * 2)


def app(engine=None, **settings):
    return create_app(Settings(log_json=False, **settings), engine=engine or SlowSynth())


def test_text_that_spells_out_too_long_is_413_before_any_synthesis():
    engine = SlowSynth()
    with TestClient(app(engine)) as client:
        r = client.post("/synthesize", json={"text": "1" * 5000})  # was 704 s of audio, 5.4 GB RSS
        assert r.status_code == 413 and r.json()["error"]["code"] == "speech_too_long", r.text
        r = client.post("/v1/audio/speech", json={"input": "1" * 5000, "voice": "alloy"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "speech_too_long", r.text
        assert engine.chars == 0
        ok = client.post("/synthesize", json={"text": "It costs $5 at 10:30.", "return_format": "pcm"})
        assert ok.status_code == 200


def test_websocket_queue_of_speech_is_bounded():
    with TestClient(app(SlowSynth(steps=40), max_speech_chars=500)) as client:
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_json()["type"] == "ready"
            ws.send_text(json.dumps({"type": "text", "text": "12345678. " * 40}))
            event = ws.receive_json()
            while event["type"] == "audio":
                ws.receive_bytes()
                event = ws.receive_json()
            assert event["type"] == "error" and event["error"]["code"] == "speech_too_long", event
            ws.send_text(json.dumps({"type": "cancel"}))


def test_one_model_run_is_bounded_and_cut_between_words():
    word = list("wˈʌn")
    sentence = (word + [" "]) * 300  # 1,500 phonemes: one unpunctuated sentence
    runs = bounded_runs([sentence, list("hˈɛloʊ")])
    assert all(len(r) <= MAX_PHONEMES_PER_RUN for r in runs)
    assert len(runs) <= len(sentence) // (MAX_PHONEMES_PER_RUN - len(word)) + 2  # cuts near the limit
    assert all(r[-1] == " " or r == list("hˈɛloʊ") or r[-len(word):] == word for r in runs)
    assert sum(r.count("ʌ") for r in runs) == 300  # nothing lost
    assert bounded_runs([list("x" * 1000)])[0] == list("x" * MAX_PHONEMES_PER_RUN)  # no space: cut anyway


@pytest.mark.parametrize("path,body", [
    ("/synthesize", {"text": "A long sentence to say. " * 3, "return_format": "wav"}),
    ("/synthesize", {"text": "A long sentence to say. " * 3, "return_format": "wav", "stream": True}),
    ("/v1/audio/speech", {"input": "A long sentence to say. " * 3, "response_format": "pcm"}),
])
def test_synthesis_whose_client_left_stops_and_frees_the_model(path, body):
    engine = SlowSynth(steps=200)  # 10 s a segment
    with ThreadServer(app(engine)) as server:
        threading.Thread(target=abandoned_request, args=("POST", server.url + path, 0.5),
                         kwargs={"json": body}, daemon=True).start()
        assert engine.cancelled.wait(3.0), "synthesis went on for a client that had gone"
        engine.steps = 1
        t0 = time.perf_counter()
        r = httpx.post(f"{server.url}/synthesize", json={"text": "Next.", "return_format": "pcm"}, timeout=30)
        assert r.status_code == 200 and time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize("frame", [
    '{"type":"config","speed":' + "9" * 400 + "}",
    '{"type":"config","speed":1e400}',
    '{"type":"config","speed":NaN}',
    '{"type":"text","text":"\\ud800 hi. "}',
])
def test_websocket_extreme_values_are_an_error_event_not_1011(frame):
    with TestClient(app()) as client:
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_json()["type"] == "ready"
            ws.send_text(frame)
            ws.send_text(json.dumps({"type": "text", "text": "Still here."}))
            ws.send_text(json.dumps({"type": "flush"}))
            events = []
            while not events or events[-1]["type"] != "done":
                msg = ws.receive()
                if msg.get("text") is None and msg.get("bytes") is None:
                    raise AssertionError(f"closed: {msg}")
                if msg.get("text") is not None:
                    events.append(json.loads(msg["text"]))
            assert all(e["error"]["type"] != "server_error" for e in events if e["type"] == "error")
