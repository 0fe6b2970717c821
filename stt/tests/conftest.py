"""STT test fixtures: audio helpers and the non-speech signals that must transcribe to nothing."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from rvchat_common.audio import float_to_pcm16, wav_bytes
from rvchat_common.testing import non_speech_signals, speech_manifest, speech_sample

SR = 16000

MANIFEST = {m["file"]: m for m in speech_manifest()}


def wav_file_bytes(audio: np.ndarray, rate: int = SR) -> bytes:
    return wav_bytes(float_to_pcm16(audio), rate)


def pcm16(name: str) -> bytes:
    with wave.open(str(speech_sample(name))) as w:
        assert w.getframerate() == SR and w.getnchannels() == 1
        return w.readframes(w.getnframes())


def non_speech() -> dict[str, np.ndarray]:
    # Tones are left to the VAD tests; these are the noises Whisper is known to hallucinate on.
    return {k: v for k, v in non_speech_signals(seconds=4, rate=SR).items() if not k.startswith("tone")}


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
