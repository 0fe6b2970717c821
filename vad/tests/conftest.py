"""VAD test fixtures: the real engine in-process, signals with and without speech."""

from __future__ import annotations

import numpy as np
import pytest

from rvchat_common.audio import decode_audio
from rvchat_common.testing import speech_sample

SR = 16000


@pytest.fixture(scope="session")
def engine():
    from rvchat_vad.engine import SileroEngine

    eng = SileroEngine()
    eng.load()
    return eng


def load(name: str) -> np.ndarray:
    return decode_audio(speech_sample(name).read_bytes())


@pytest.fixture(scope="session")
def jfk() -> np.ndarray:
    return load("jfk_inaugural_1961.wav")


def non_speech() -> dict[str, np.ndarray]:
    """Digital silence, white noise at several levels, tones, hum, brown noise: no speech in any."""
    rng = np.random.default_rng(0)
    n = SR * 6
    t = np.arange(n) / SR
    brown = np.cumsum(rng.normal(0, 1, n))
    brown -= np.convolve(brown, np.ones(1600) / 1600, "same")
    sigs = {"silence": np.zeros(n)}
    for amp in (0.001, 0.02, 0.1, 0.4):
        sigs[f"white_{amp}"] = np.clip(rng.normal(0, amp, n), -1, 1)
    sigs["tone_440"] = 0.3 * np.sin(2 * np.pi * 440 * t)
    sigs["tone_1000"] = 0.5 * np.sin(2 * np.pi * 1000 * t)
    sigs["hum_50"] = 0.2 * np.sin(2 * np.pi * 50 * t) + 0.1 * np.sin(2 * np.pi * 150 * t)
    sigs["brown"] = 0.3 * brown / np.abs(brown).max()
    return {k: v.astype(np.float32) for k, v in sigs.items()}
