"""TTS test helpers: deterministic synthesis, whisper for round trips, audio checks."""

from __future__ import annotations

import io
import os
import re
import wave

import av
import numpy as np
import pytest

from rvchat_common.audio import resample
from rvchat_common.testing import wer
from rvchat_tts.normalize import clean_for_speech

# The session's TTS process inherits these (ServiceProcess copies os.environ): with no noise, the
# same text gives the same audio, so sizes and round trips are repeatable.
os.environ.setdefault("TTS_NOISE_SCALE", "0")
os.environ.setdefault("TTS_NOISE_W", "0")

WAIT = 30  # seconds: every network wait is bounded


@pytest.fixture(scope="session")
def whisper():
    from faster_whisper import WhisperModel

    from rvchat_common.models import whisper_model

    return WhisperModel(whisper_model("tiny.en"), device="cpu", compute_type="int8")


def pcm_to_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def transcribe(model, audio: np.ndarray, rate: int) -> str:
    segments, _ = model.transcribe(resample(audio, rate, 16000), language="en", beam_size=1,
                                   condition_on_previous_text=False)
    return " ".join(s.text for s in segments).strip()


def spoken_wer(reference: str, hypothesis: str) -> float:
    """WER after both sides are put in spoken form, so '42' and 'forty-two' agree."""
    # Whisper writes times as 10.30 or 10:30; either way it is the time we said.
    hypothesis = re.sub(r"\b(\d{1,2})[.:](\d\d)\b", r"\1:\2", hypothesis)
    return wer(clean_for_speech(reference).lower(), clean_for_speech(hypothesis).lower())


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return pcm_to_float(w.readframes(w.getnframes())), w.getframerate()


def decode_any(data: bytes) -> tuple[np.ndarray, int]:
    """Decode a whole audio file with PyAV (the way a client would)."""
    with av.open(io.BytesIO(data)) as container:
        frames, rate = [], None
        for frame in container.decode(audio=0):
            rate = frame.sample_rate
            arr = frame.to_ndarray().astype(np.float32)
            if frame.format.name.startswith("s16"):
                arr = arr / 32768.0
            frames.append(arr.reshape(-1) if arr.shape[0] == 1 else arr.mean(axis=0))
    assert frames, "no audio decoded"
    return np.concatenate(frames), rate


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


def words_per_second(text: str, seconds: float) -> float:
    return len(clean_for_speech(text).split()) / seconds
