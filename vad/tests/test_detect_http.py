"""POST /detect on the real service process: real speech, every format, raw PCM, hostile input."""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import numpy as np
import pytest

from rvchat_common.audio import float_to_pcm16, resample, wav_bytes
from rvchat_common.testing import ServiceProcess, speech_manifest, speech_sample

from .conftest import SR, non_speech

pytestmark = pytest.mark.models

TIMEOUT = 60
CLEAN_READ = ("ljspeech_", "librispeech_", "jfk_", "mfa_english_")


def post_file(url: str, data: bytes, filename: str = "audio.wav", **fields) -> httpx.Response:
    return httpx.post(f"{url}/detect", files={"file": (filename, data)},
                      data={k: str(v) for k, v in fields.items()}, timeout=TIMEOUT)


def wav_of(audio: np.ndarray) -> bytes:
    return wav_bytes(float_to_pcm16(audio), SR)


def merge(segs: list[dict], gap: float = 0.3) -> list[list[float]]:
    out: list[list[float]] = []
    for s in segs:
        if out and s["start"] - out[-1][1] < gap:
            out[-1][1] = s["end"]
        else:
            out.append([s["start"], s["end"]])
    return out


def assert_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    return err


@pytest.fixture(autouse=True)
def still_healthy(vad_service):
    yield
    assert vad_service.alive(), vad_service.log_tail()
    assert httpx.get(f"{vad_service.url}/healthz", timeout=10).status_code == 200


def test_readme_curl_example(vad_service, tmp_path):
    # Exactly the README command, from a folder holding audio_sample.wav.
    shutil.copy(speech_sample("jfk_inaugural_1961.wav"), tmp_path / "audio_sample.wav")
    out = subprocess.run(
        ["curl", "-sS", "-X", "POST", f"{vad_service.url}/detect", "-F", "file=@audio_sample.wav"],
        cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT, check=True).stdout
    body = json.loads(out)
    assert body["duration"] == pytest.approx(11.0, abs=0.05)
    assert len(body["segments"]) >= 3
    assert 5.0 < body["speech_seconds"] < 11.0


@pytest.mark.parametrize("item", speech_manifest(), ids=lambda m: m["file"])
def test_speech_samples(vad_service, item):
    body = post_file(vad_service.url, speech_sample(item["file"]).read_bytes()).json()
    segs, dur = body["segments"], body["duration"]
    assert dur == pytest.approx(item["seconds"], abs=0.1)
    prev_end = 0.0
    for s in segs:
        assert prev_end <= s["start"] < s["end"] <= dur + 1e-3
        prev_end = s["end"]
    assert body["speech_seconds"] == pytest.approx(sum(s["end"] - s["start"] for s in segs), abs=0.01)
    if item["file"] == "mfa_falsetto2.wav":
        return  # sung falsetto: Silero scores it below 0.5 in pieces shorter than 250 ms
    assert segs, "no speech found in a speech sample"
    if item["file"].startswith(CLEAN_READ):
        # Read speech fills most of these clips (measured 0.72-1.0 of the duration).
        assert 0.6 * dur < body["speech_seconds"] <= dur


def test_speech_found_at_right_offsets_inside_silence(vad_service, jfk):
    plain = post_file(vad_service.url, wav_of(jfk)).json()["segments"]
    pad = np.zeros(2 * SR, dtype=np.float32)
    padded = post_file(vad_service.url, wav_of(np.concatenate([pad, jfk, pad]))).json()
    assert padded["duration"] == pytest.approx(15.0, abs=0.01)
    segs = padded["segments"]
    # The 32 ms chunk grid moves by half a chunk against the speech, which can split a segment
    # at a 100 ms pause; compare after merging gaps under 0.3 s.
    merged, expected = merge(segs), merge([{"start": p["start"] + 2, "end": p["end"] + 2}
                                           for p in plain])
    assert len(merged) == len(expected)
    for m, e in zip(merged, expected):
        assert m[0] == pytest.approx(e[0], abs=0.3)
        assert m[1] == pytest.approx(e[1], abs=0.3)
    # Nothing in the silence: speech begins at 2.35 s in the padded clip, ends by 12.7 s.
    assert segs[0]["start"] > 2.0 and segs[-1]["end"] < 13.0


@pytest.mark.parametrize("name", list(non_speech()))
def test_no_segments_in_silence_or_noise(vad_service, name):
    body = post_file(vad_service.url, wav_of(non_speech()[name])).json()
    assert body["segments"] == [] and body["speech_seconds"] == 0
    assert body["duration"] == pytest.approx(6.0, abs=0.01)


FORMATS = {"wav": [], "flac": ["-c:a", "flac"], "mp3": ["-c:a", "libmp3lame"],
           "ogg": ["-c:a", "libopus"], "webm": ["-c:a", "libopus"], "m4a": ["-c:a", "aac"]}


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    src = speech_sample("jfk_inaugural_1961.wav")
    out = tmp_path_factory.mktemp("formats")
    files = {}
    for ext, args in FORMATS.items():
        path = out / f"jfk.{ext}"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), *args, str(path)],
                       check=True, timeout=60)
        files[ext] = path
    return files


@pytest.mark.parametrize("ext", list(FORMATS))
def test_every_format(vad_service, encoded, ext):
    ref = post_file(vad_service.url, speech_sample("jfk_inaugural_1961.wav").read_bytes()).json()
    body = post_file(vad_service.url, encoded[ext].read_bytes(), filename=f"audio.{ext}").json()
    assert body["duration"] == pytest.approx(11.0, abs=0.1)
    # Lossy codecs may split a segment at a 100 ms pause: compare with such gaps merged.
    got, want = merge(body["segments"]), merge(ref["segments"])
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a[0] == pytest.approx(b[0], abs=0.15)
        assert a[1] == pytest.approx(b[1], abs=0.15)


def test_raw_wav_body_with_query_params(vad_service):
    data = speech_sample("jfk_inaugural_1961.wav").read_bytes()
    r = httpx.post(f"{vad_service.url}/detect?min_silence_ms=100", content=data,
                   headers={"Content-Type": "audio/wav"}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    split = r.json()["segments"]
    joined = httpx.post(f"{vad_service.url}/detect?min_silence_ms=2000", content=data,
                        headers={"Content-Type": "audio/wav"}, timeout=TIMEOUT).json()["segments"]
    assert len(joined) == 1 < len(split)


def test_form_params_take_effect(vad_service, jfk):
    data = wav_of(jfk)
    default = post_file(vad_service.url, data).json()
    padded = post_file(vad_service.url, data, speech_pad_ms=200).json()
    assert padded["speech_seconds"] > default["speech_seconds"]
    strict = post_file(vad_service.url, data, threshold=0.95, min_speech_ms=1000).json()
    assert strict["speech_seconds"] < default["speech_seconds"]


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_raw_pcm_at_sample_rates(vad_service, jfk, rate):
    ref = post_file(vad_service.url, wav_of(jfk)).json()["segments"]
    pcm = float_to_pcm16(resample(jfk, SR, rate))
    r = httpx.post(f"{vad_service.url}/detect?sample_rate={rate}", content=pcm,
                   headers={"Content-Type": "audio/pcm"}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["duration"] == pytest.approx(11.0, abs=0.01)
    got, want = merge(body["segments"]), merge(ref)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a[0] == pytest.approx(b[0], abs=0.1)
        assert a[1] == pytest.approx(b[1], abs=0.1)


def test_raw_pcm_sample_rate_as_form_field(vad_service, jfk):
    pcm = float_to_pcm16(resample(jfk, SR, 8000))
    r = httpx.post(f"{vad_service.url}/detect", data={"sample_rate": "8000"},
                   files={"file": ("a.pcm", pcm, "audio/pcm")}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json()["duration"] == pytest.approx(11.0, abs=0.01)


WAV = speech_sample("jfk_inaugural_1961.wav").read_bytes()


@pytest.mark.parametrize("case,status", [
    ("empty_file", 400), ("not_audio", 415), ("half_header", 415), ("header_only", 415),
    ("no_body", 400), ("wrong_field", 400), ("file_as_text", 400), ("urlencoded", 400),
    ("odd_pcm", 400),
])
def test_bad_uploads(vad_service, case, status):
    url = f"{vad_service.url}/detect"
    send = {
        "empty_file": lambda: post_file(vad_service.url, b""),
        "not_audio": lambda: post_file(vad_service.url, b"this is plainly not audio\n" * 40,
                                       filename="notes.txt"),
        "half_header": lambda: post_file(vad_service.url, WAV[:30]),
        "header_only": lambda: post_file(vad_service.url, WAV[:44]),
        "no_body": lambda: httpx.post(url, timeout=TIMEOUT),
        "wrong_field": lambda: httpx.post(url, files={"audio": ("a.wav", WAV)}, timeout=TIMEOUT),
        "file_as_text": lambda: httpx.post(url, files={"file": (None, "abc")}, timeout=TIMEOUT),
        "urlencoded": lambda: httpx.post(url, data={"file": "abc"}, timeout=TIMEOUT),
        "odd_pcm": lambda: httpx.post(url, content=b"\x00\x01\x02",
                                      headers={"Content-Type": "audio/pcm"}, timeout=TIMEOUT),
    }[case]
    err = assert_error(send(), status)
    if case in ("no_body", "wrong_field", "file_as_text", "urlencoded"):
        # The same answer as STT's: one upload parser (rvchat_common.upload).
        assert "'file'" in err["message"] and err["param"] == "file" and err["code"] == "missing_file"


def test_truncated_wav_keeps_what_decodes(vad_service):
    r = post_file(vad_service.url, WAV[: len(WAV) // 2])
    assert r.status_code == 200, r.text
    assert r.json()["duration"] == pytest.approx(5.5, abs=0.05)
    assert r.json()["segments"]


@pytest.mark.parametrize("field,value,status", [
    ("threshold", "0", 422), ("threshold", "1", 422), ("threshold", "1.5", 422), ("threshold", "-0.2", 422),
    ("threshold", "abc", 422), ("min_speech_ms", "-1", 422), ("min_silence_ms", "-100", 422),
    ("speech_pad_ms", "-5", 422), ("min_silence_ms", "1e12", 422),
    # The upload's own option: the same answer as STT's (400 invalid_sample_rate).
    ("sample_rate", "100", 400), ("sample_rate", "fast", 400),
])
def test_bad_params_are_4xx_naming_the_field(vad_service, field, value, status):
    err = assert_error(post_file(vad_service.url, WAV, **{field: value}), status)
    assert err["param"] == field and field in err["message"]
    # The same through the query string of a raw body.
    r = httpx.post(f"{vad_service.url}/detect", params={field: value}, content=WAV,
                   headers={"Content-Type": "audio/wav"}, timeout=TIMEOUT)
    assert_error(r, status)


def test_wrong_method_and_path(vad_service):
    assert_error(httpx.get(f"{vad_service.url}/detect", timeout=TIMEOUT), 405)
    assert_error(httpx.post(f"{vad_service.url}/detec", timeout=TIMEOUT), 404)


def test_upload_over_limit_is_413():
    # A second process with a tiny limit, so the size check is real without sending 25 MiB.
    with ServiceProcess("rvchat_vad", "VAD_", {"VAD_MAX_UPLOAD_MB": "0.1"}) as small:
        big = WAV[: 300_000]
        assert_error(post_file(small.url, big), 413)

        def chunks():  # no Content-Length: the limit must hold while streaming too
            for i in range(0, len(big), 16384):
                yield big[i:i + 16384]

        r = httpx.post(f"{small.url}/detect", content=chunks(),
                       headers={"Content-Type": "audio/wav"}, timeout=TIMEOUT)
        assert_error(r, 413)
        ok = post_file(small.url, WAV[:60_000])
        assert ok.status_code == 200, ok.text
        assert httpx.get(f"{small.url}/healthz", timeout=10).status_code == 200
        assert small.alive()
