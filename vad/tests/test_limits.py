"""Bounded work on /detect, with a fake model: long audio refused before it is decoded, and a
detection whose client has left stops."""

from __future__ import annotations

import threading
import time

import httpx
from fastapi.testclient import TestClient

from rvchat_common.testing import ThreadServer, abandoned_request, long_flac
from rvchat_vad.app import create_app
from rvchat_vad.settings import Settings


class FakeVad:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.done = threading.Event()

    def load(self) -> None:
        pass

    def new_stream(self):  # not used here
        raise NotImplementedError

    def detect(self, audio, threshold, min_speech_ms, min_silence_ms, speech_pad_ms):
        time.sleep(self.delay)
        self.done.set()
        return [(0.0, sum(block.size for block in audio) / 16000)]


def app(engine: FakeVad | None = None, **settings):
    return create_app(Settings(log_json=False, **settings), engine=engine or FakeVad())


def test_three_hour_flac_and_long_raw_pcm_are_refused_before_decoding():
    flac = long_flac(3 * 3600)
    with TestClient(app()) as client:
        t0 = time.perf_counter()
        r = client.post("/detect", files={"file": ("long.flac", flac, "audio/flac")})
        assert r.status_code == 413 and r.json()["error"]["code"] == "audio_too_long", r.text
        assert time.perf_counter() - t0 < 1.0  # was: 200 after 38 s, 1.7 GB RSS
        pcm = bytes(2 * 4000 * 1801)  # 1,801 s at 4 kHz: 14 MB, under the body limit
        r = client.post("/detect?sample_rate=4000", content=pcm, headers={"content-type": "audio/pcm"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "audio_too_long", r.text
        short = bytes(2 * 16000)
        r = client.post("/detect", content=short, headers={"content-type": "audio/pcm"})
        assert r.status_code == 200 and r.json()["duration"] == 1.0


def test_a_queued_detection_whose_client_left_gives_up_its_place():
    engine = FakeVad(delay=1.5)
    pcm, headers = bytes(2 * 16000), {"content-type": "audio/pcm"}
    with ThreadServer(app(engine, max_queue=1)) as server:  # one running, one waiting
        url = f"{server.url}/detect"
        first = threading.Thread(target=httpx.post, args=(url,), kwargs={"content": pcm, "headers": headers,
                                                                         "timeout": 30})
        first.start()
        time.sleep(0.3)
        abandoned_request("POST", url, 0.3, content=pcm, headers=headers)  # queued, then gone
        time.sleep(0.1)
        r = httpx.post(url, content=pcm, headers=headers, timeout=30)
        assert r.status_code == 200, r.text  # not 503 queue_full: the place was given up
        first.join()


def test_without_pyav_the_image_reads_wav_flac_mp3_ogg_and_says_so_for_the_rest(monkeypatch, tmp_path):
    # The VAD image leaves PyAV out (rvchat_common.audio decodes with libsndfile there).
    import subprocess

    from rvchat_common import audio
    from rvchat_common.testing import speech_sample

    monkeypatch.setattr(audio, "_pyav", lambda: None)
    src = speech_sample("ljspeech_LJ001-0002.wav")
    with TestClient(app()) as client:
        for ext, ok in (("mp3", True), ("ogg", True), ("flac", True), ("webm", False), ("m4a", False)):
            path = tmp_path / f"clip.{ext}"
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), str(path)], check=True, timeout=60)
            r = client.post("/detect", files={"file": (path.name, path.read_bytes())})
            if ok:
                assert r.status_code == 200 and abs(r.json()["duration"] - 1.9) < 0.1, (ext, r.text)
            else:
                err = r.json()["error"]
                assert r.status_code == 415 and err["code"] == "unsupported_audio", (ext, r.text)
                assert "webm and m4a need" in err["message"]
        assert client.get("/healthz").status_code == 200
