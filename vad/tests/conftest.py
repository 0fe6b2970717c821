"""VAD test fixtures: the real engine in-process, signals with and without speech."""

from __future__ import annotations

import numpy as np
import pytest

from rvchat_common.audio import decode_audio
from rvchat_common.testing import non_speech_signals, speech_sample

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
    return non_speech_signals(seconds=6, rate=SR)
