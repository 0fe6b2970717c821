"""STT test fixtures: audio helpers and the non-speech signals that must transcribe to nothing."""

from __future__ import annotations

import io
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from rvchat_common.testing import speech_manifest, speech_sample

SR = 16000

MANIFEST = {m["file"]: m for m in speech_manifest()}


def wav_file_bytes(audio: np.ndarray, rate: int = SR) -> bytes:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


def pcm16(name: str) -> bytes:
    with wave.open(str(speech_sample(name))) as w:
        assert w.getframerate() == SR and w.getnchannels() == 1
        return w.readframes(w.getnframes())


def non_speech() -> dict[str, np.ndarray]:
    """Digital silence, white noise at several levels, mains hum, brown noise: no speech in any."""
    rng = np.random.default_rng(0)
    n = SR * 4
    t = np.arange(n) / SR
    brown = np.cumsum(rng.normal(0, 1, n))
    brown -= np.convolve(brown, np.ones(1600) / 1600, "same")
    sigs = {"silence": np.zeros(n)}
    for amp in (0.001, 0.02, 0.1, 0.4):
        sigs[f"white_{amp}"] = np.clip(rng.normal(0, amp, n), -1, 1)
    sigs["hum_50"] = 0.2 * np.sin(2 * np.pi * 50 * t) + 0.1 * np.sin(2 * np.pi * 150 * t)
    sigs["hum_60_low"] = 0.02 * np.sin(2 * np.pi * 60 * t)
    sigs["brown"] = 0.3 * brown / np.abs(brown).max()
    return {k: v.astype(np.float32) for k, v in sigs.items()}


def encode(src: Path, dst: Path, *args: str) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), *args, str(dst)], check=True, timeout=60)
    return dst


@pytest.fixture(scope="session")
def encoded(tmp_path_factory) -> dict[str, Path]:
    """One clip in the formats browsers and phones upload."""
    src = speech_sample("mfa_english_slow.wav")
    out = tmp_path_factory.mktemp("encoded")
    return {
        "webm": encode(src, out / "clip.webm", "-c:a", "libopus", "-b:a", "32k"),
        "mp3": encode(src, out / "clip.mp3", "-c:a", "libmp3lame", "-b:a", "64k"),
        "flac": encode(src, out / "clip.flac", "-c:a", "flac"),
        "ogg": encode(src, out / "clip.ogg", "-c:a", "libopus", "-b:a", "32k"),
        "m4a": encode(src, out / "clip.m4a", "-c:a", "aac", "-b:a", "64k"),
        "wav44k_stereo": encode(src, out / "clip_44k.wav", "-ar", "44100", "-ac", "2"),
    }
