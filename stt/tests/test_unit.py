"""Fast tests of the service's logic with a fake engine: request parsing, formats, queueing, guards."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from rvchat_stt import guard
from rvchat_stt.app import create_app
from rvchat_stt.formats import to_srt, to_vtt
from rvchat_stt.schemas import Segment, Transcript
from rvchat_stt.settings import Settings

from .conftest import wav_file_bytes


class FakeEngine:
    """Answers 'hello world' for any audio; optionally slow, to fill the queue."""

    model_name = "fake"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0

    def load(self) -> None:
        pass

    def check_language(self, language):
        if language in (None, ""):
            return "en"
        if language != "en":
            raise ValueError(f"unsupported language {language!r}")
        return language

    def _result(self, audio: np.ndarray) -> Transcript:
        self.calls += 1
        time.sleep(self.delay)
        dur = audio.size / 16000
        seg = Segment(start=0.0, end=dur, text=" hello world")
        return Transcript(text="hello world", language="en", duration=dur, segments=[seg])

    def transcribe(self, audio, opts):
        return self._result(audio)

    def transcribe_stream(self, audio, language=None, prompt=None, gate=True):
        return self._result(audio)


def client(engine=None, **settings) -> TestClient:
    app = create_app(Settings(log_json=False, **settings), engine=engine or FakeEngine())
    return TestClient(app)


WAV = wav_file_bytes(np.zeros(16000, np.float32))


def test_transcribe_shape_and_field_errors():
    with client() as c:
        r = c.post("/transcribe", files={"file": ("a.wav", WAV, "audio/wav")}, data={"language": "en"})
        assert r.status_code == 200
        body = r.json()
        assert body["text"] == "hello world" and body["language"] == "en" and body["duration"] == 1.0
        assert body["segments"] == [{"start": 0.0, "end": 1.0, "text": "hello world"}]
        assert "words" not in body  # only when asked for
        r = c.post("/transcribe", files={"audio": ("a.wav", WAV, "audio/wav")})
        assert r.status_code == 400 and "'file'" in r.json()["error"]["message"]
        assert "audio" in r.json()["error"]["message"]  # tells the caller what it did send
        r = c.post("/transcribe", files={"file": ("a.wav", WAV, "audio/wav")}, data={"language": "fr"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_language"
        r = c.post("/transcribe", files={"file": ("a.wav", WAV, "audio/wav")},
                   data={"word_timestamps": "maybe"})
        assert r.status_code == 400
        r = c.post("/transcribe", files={"file": ("a.wav", WAV, "audio/wav")}, data={"beam_size": "99"})
        assert r.status_code == 400
        r = c.post("/transcribe", data={"file": "not a file"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "missing_file"
        r = c.post("/transcribe")
        assert r.status_code == 400 and r.json()["error"]["code"] == "missing_file"
        r = c.post("/transcribe", content=b"--x\r\nbroken",
                   headers={"content-type": "multipart/form-data; boundary=x"})
        assert 400 <= r.status_code < 500
        assert c.get("/healthz").status_code == 200


def test_raw_pcm_body():
    with client() as c:
        pcm = np.zeros(8000, "<i2").tobytes()
        r = c.post("/transcribe?sample_rate=8000", content=pcm, headers={"content-type": "audio/pcm"})
        assert r.status_code == 200 and r.json()["duration"] == 1.0
        r = c.post("/transcribe?sample_rate=100", content=pcm, headers={"content-type": "audio/pcm"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_sample_rate"
        r = c.post("/transcribe", content=pcm[:-1], headers={"content-type": "audio/pcm"})
        assert r.status_code == 400


def test_openai_formats_and_errors():
    with client() as c:
        def post(**data):
            return c.post("/v1/audio/transcriptions", files={"file": ("a.wav", WAV, "audio/wav")},
                          data={"model": "whisper-1", **data})

        assert post().json()["text"] == "hello world"
        assert post(response_format="text").text == "hello world\n"
        assert post(response_format="srt").text.startswith("1\n00:00:00,000 --> 00:00:01,000\nhello world")
        assert post(response_format="vtt").text.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n")
        v = post(response_format="verbose_json").json()
        assert v["task"] == "transcribe" and v["language"] == "english" and v["duration"] == 1.0
        assert set(v["segments"][0]) == {"id", "seek", "start", "end", "text", "tokens", "temperature",
                                         "avg_logprob", "compression_ratio", "no_speech_prob"}
        r = post(response_format="yaml")
        assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
        assert post(**{"timestamp_granularities[]": "letter"}).status_code == 400
        assert post(language="english").status_code == 200  # names map to codes
        assert post(language="klingon").status_code == 400
        assert post(temperature="7").status_code == 400
        assert c.post("/v1/audio/transcriptions", content=WAV,
                      headers={"content-type": "audio/wav"}).status_code == 400


def test_queue_full_answers_503_with_retry_after():
    engine = FakeEngine(delay=0.6)
    with client(engine, max_queue=1) as c:
        results: list = []

        def call():
            r = c.post("/transcribe", files={"file": ("a.wav", WAV, "audio/wav")})
            results.append((r.status_code, r.headers.get("retry-after")))

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        codes = sorted(code for code, _ in results)
        assert codes.count(200) >= 2, results  # one running, one waiting
        assert 503 in codes, results
        assert all(ra for code, ra in results if code == 503)
        assert c.get("/healthz").status_code == 200


def test_not_ready_answers_503():
    class Slow(FakeEngine):
        def load(self):
            time.sleep(0.8)

    with client(Slow()) as c:
        r = c.post("/transcribe", files={"file": ("a.wav", WAV, "audio/wav")})
        assert r.status_code == 503
        assert c.get("/readyz").status_code == 503


def test_ws_protocol_with_fake_engine():
    with client(partial_interval_s=0.2, partial_min_audio_s=0.1, stream_max_seconds=2.0) as c:
        with c.websocket_connect("/ws") as ws:
            assert ws.receive_json()["type"] == "ready"
            ws.send_text("not json")
            assert ws.receive_json()["error"]["code"] == "invalid_json"
            ws.send_json({"type": "dance"})
            assert ws.receive_json()["error"]["code"] == "unknown_event"
            ws.send_json({"type": "config", "sample_rate": 5})
            assert ws.receive_json()["error"]["code"] == "invalid_event"
            ws.send_text('{"type": "config", "sample_rate": Infinity}')
            assert ws.receive_json()["error"]["code"] == "invalid_event"
            ws.send_json({"type": "config", "partials": "yes"})
            assert ws.receive_json()["error"]["code"] == "invalid_event"
            ws.send_json({"type": "config", "language": "fr"})
            error = ws.receive_json()["error"]
            assert error["code"] == "unsupported_language" and error["param"] == "language"
            ws.send_bytes(b"\x00\x01\x02")  # half a sample would misalign everything after it
            assert ws.receive_json()["error"]["code"] == "odd_length_pcm"
            ws.send_text('{"type": "config", "prompt": "\\ud800 names"}')  # lone surrogate: no 1011
            assert ws.receive_json()["type"] == "ready"
            ws.send_json({"type": "config", "sample_rate": 8000, "partials": False})
            ready = ws.receive_json()
            assert ready == {"type": "ready", "sample_rate": 8000, "language": "en", "model": "fake"}
            ws.send_bytes(np.zeros(8000, "<i2").tobytes())
            ws.send_json({"type": "end"})
            final = ws.receive_json()
            assert final["type"] == "final" and final["text"] == "hello world" and final["duration"] == 1.0
            ws.send_json({"type": "end"})  # nothing buffered: empty final, no model call
            assert ws.receive_json()["text"] == ""
            ws.send_bytes(np.zeros(4000, "<i2").tobytes())
            ws.send_json({"type": "config", "sample_rate": 16000})  # not mid-utterance
            assert ws.receive_json()["error"]["param"] == "sample_rate"
            ws.send_json({"type": "reset"})
            assert ws.receive_json() == {"type": "reset"}
            ws.send_json({"type": "config", "sample_rate": 16000, "partials": True})
            assert ws.receive_json()["type"] == "ready"
            # 2.5 s into a 2 s buffer: an automatic final at the limit, the rest starts the next utterance.
            for _ in range(25):
                ws.send_bytes(np.zeros(1600, "<i2").tobytes())
            events = []
            while not any(e["type"] == "final" for e in events):
                events.append(ws.receive_json())
            assert any(e.get("auto") for e in events if e["type"] == "final")
            assert all(e["type"] in ("partial", "final") for e in events)
            ws.send_json({"type": "flush"})
            while (e := ws.receive_json())["type"] != "final":
                assert e["type"] == "partial"
            assert e["duration"] == 0.5


def test_srt_vtt_timestamps():
    segs = [Segment(start=0, end=1.5, text=" a"), Segment(start=3661.25, end=3662.0, text=" b")]
    assert to_srt(segs) == "1\n00:00:00,000 --> 00:00:01,500\na\n\n2\n01:01:01,250 --> 01:01:02,000\nb\n"
    assert to_vtt(segs).splitlines()[5] == "01:01:01.250 --> 01:01:02.000"


@pytest.mark.parametrize("text,known", [("Thank you.", True), (" you", True), ("[Music]", True),
                                        ("Thanks for watching!", True), ("Thank you, Anna.", False),
                                        ("Firefox", False)])
def test_known_hallucinations(text, known):
    assert guard.is_known_hallucination(text) is known


def test_keep_segment_rules():
    def seg(text, nsp=0.1, lp=-0.3, cr=1.2, start=0.0, end=2.0):
        return Segment(start=start, end=end, text=text, no_speech_prob=nsp, avg_logprob=lp,
                       compression_ratio=cr)

    speech = [(0.5, 1.5)]
    assert not guard.keep_segment(seg("anything", nsp=0.9, lp=-1.2), speech)  # Whisper's own rule
    assert guard.keep_segment(seg("Thank you."), speech)  # said over speech: kept
    assert not guard.keep_segment(seg("Thank you.", start=3, end=4), speech)  # over silence: dropped
    assert not guard.keep_segment(seg("lorem", nsp=0.7, start=3, end=4), speech)
    assert guard.keep_segment(seg("real words", start=3, end=4), speech)  # unknown text, confident: kept
    assert guard.is_digital_silence(np.zeros(100, np.float32))
    assert not guard.is_digital_silence(np.full(100, 0.01, np.float32))


class FakeVadEngine(FakeEngine):
    """Adds a stand-in for Silero: a 32 ms window is speech when it is loud."""

    VAD_WINDOW = 512

    def speech_probs(self, audio):
        n = -(-audio.size // self.VAD_WINDOW) * self.VAD_WINDOW
        windows = np.pad(audio, (0, n - audio.size)).reshape(-1, self.VAD_WINDOW)
        return (np.sqrt((windows ** 2).mean(axis=1)) > 0.05).astype(np.float32)


def _loud(seconds: float) -> bytes:
    rng = np.random.default_rng(0)
    return (rng.uniform(-0.3, 0.3, int(16000 * seconds)) * 32767).astype("<i2").tobytes()


def _quiet(seconds: float) -> bytes:
    return np.zeros(int(16000 * seconds), "<i2").tobytes()


def _wait_calls(engine, n: int) -> None:
    deadline = time.monotonic() + 10
    while engine.calls < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.calls == n


def test_early_final_reuses_a_decode_made_after_speech_ended():
    engine = FakeVadEngine()
    with client(engine) as c, c.websocket_connect("/ws") as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_json({"type": "config", "partials": False})
        ws.receive_json()
        # Speech, then silence: the session decodes speculatively ...
        ws.send_bytes(_loud(1.0) + _quiet(0.5))
        _wait_calls(engine, 1)
        # ... and 'end' with no speech since then turns that decode into the final, no second call.
        ws.send_json({"type": "end"})
        final = ws.receive_json()
        assert final["type"] == "final" and final["text"] == "hello world" and final["duration"] == 1.5
        assert engine.calls == 1
        # Speech after the speculative snapshot: the final must decode the whole buffer again.
        ws.send_bytes(_loud(1.0) + _quiet(0.5))
        _wait_calls(engine, 2)
        ws.send_bytes(_loud(0.3))
        ws.send_json({"type": "end"})
        final = ws.receive_json()
        assert final["duration"] == 1.8 and engine.calls == 3
        # No speech at all: an empty final without calling the model.
        ws.send_bytes(_quiet(1.0))
        ws.send_json({"type": "end"})
        final = ws.receive_json()
        assert final["text"] == "" and final["duration"] == 1.0 and engine.calls == 3


def test_partials_skipped_when_audio_arrives_faster_than_real_time():
    engine = FakeVadEngine()
    with client(engine, partial_interval_s=0.2) as c, c.websocket_connect("/ws") as ws:
        assert ws.receive_json()["type"] == "ready"
        for _ in range(40):  # 4 s of speech in a few ms
            ws.send_bytes(_loud(0.1))
        ws.send_json({"type": "end"})
        events = [ws.receive_json()]
        while events[-1]["type"] != "final":
            events.append(ws.receive_json())
        # Only the partials due before the client got 1 s ahead of real time (at 0.5, 0.7, 0.9 s),
        # not one per 0.2 s of the 4 s.
        assert sum(e["type"] == "partial" for e in events) <= 4
        assert engine.calls <= 5


class GatedEngine(FakeVadEngine):
    """Holds the first decode until ``gate`` is set; records the audio length of each decode in order."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.decoded: list[float] = []

    def _result(self, audio):
        if not self.decoded and not self.gate.is_set():
            self.decoded.append(-1.0)  # the one holding the model
            self.gate.wait(10)
            self.decoded[0] = audio.size / 16000
        else:
            self.decoded.append(audio.size / 16000)
        return super()._result(audio)


def _wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_final_goes_before_another_streams_speculative_decode():
    engine = GatedEngine()
    with client(engine) as c, c.websocket_connect("/ws") as a, c.websocket_connect("/ws") as b, \
            c.websocket_connect("/ws") as f:
        queue = c.app.state.queue
        for ws in (a, b, f):
            assert ws.receive_json()["type"] == "ready"
            ws.send_json({"type": "config", "partials": False})
            ws.receive_json()
        a.send_bytes(_loud(1.0) + _quiet(0.5))  # A's early final takes the model (held)
        _wait_for(lambda: engine.decoded == [-1.0], "A's decode")
        b.send_bytes(_loud(1.2) + _quiet(0.5))  # B's early final waits
        _wait_for(lambda: queue.waiting == 1, "B's decode to queue")
        f.send_bytes(_loud(1.4))
        f.send_json({"type": "end"})  # a final, queued after B's speculative decode ...
        _wait_for(lambda: queue.waiting == 2, "the final to queue")
        engine.gate.set()
        assert f.receive_json()["type"] == "final"
        _wait_for(lambda: len(engine.decoded) == 3, "B's decode")
        assert engine.decoded == [1.5, 1.4, 1.7]  # ... but decoded before it
