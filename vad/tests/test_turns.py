"""Turn detection on its own: the state machine, chunking, resampling (fake model, no ONNX)."""

from __future__ import annotations

import numpy as np
import pytest

from rvchat_common.audio import float_to_pcm16, resample
from rvchat_vad.turns import TurnConfig, TurnDetector, TurnStream

CHUNK_S = 512 / 16000


def run(probs: list[float], **cfg) -> list[tuple[int, dict]]:
    """Feed one probability per 32 ms chunk; return (chunk index when emitted, event as JSON)."""
    det = TurnDetector(TurnConfig(**cfg), CHUNK_S)
    out = []
    for i, p in enumerate(probs):
        out += [(i, e.model_dump()) for e in det.step(i * CHUNK_S, p)]
    return out


def dumps(events) -> list[dict]:
    return [e.model_dump() for e in events]


def chunks(ms: float) -> int:
    return int(round(ms / 1000 / CHUNK_S))


def test_speech_start_after_hold_but_stamped_at_onset():
    probs = [0.0] * 10 + [0.9] * 30 + [0.0] * 40
    events = run(probs, min_speech_ms=250, min_silence_ms=500, speech_pad_ms=30)
    (i_start, start), (i_end, end) = events
    assert start["type"] == "speech_start" and end["type"] == "speech_end"
    # Sent once 250 ms of speech are in (8 chunks = 256 ms), stamped where speech began minus pad.
    assert i_start == 10 + 7
    assert start["timestamp"] == pytest.approx(10 * CHUNK_S - 0.03, abs=1e-3)
    # Sent as soon as 500 ms of silence have passed (16 chunks), stamped where silence began plus pad.
    assert i_end == 40 + 15
    assert end["timestamp"] == pytest.approx(40 * CHUNK_S + 0.03, abs=1e-3)
    assert end["start"] == start["timestamp"]
    assert end["duration"] == pytest.approx(end["timestamp"] - end["start"], abs=1e-3)


def test_cough_shorter_than_min_speech_starts_nothing():
    probs = [0.0] * 10 + [0.95] * chunks(150) + [0.0] * 50
    assert run(probs, min_speech_ms=250) == []


def test_pause_shorter_than_min_silence_does_not_end_turn():
    probs = [0.9] * 20 + [0.05] * chunks(300) + [0.9] * 20 + [0.0] * 30
    events = run(probs, min_silence_ms=500)
    assert [e["type"] for _, e in events] == ["speech_start", "speech_end"]


def test_hysteresis_between_neg_threshold_and_threshold():
    # 0.4 is below threshold 0.5 but above neg threshold 0.35: it neither starts speech...
    assert run([0.4] * 100) == []
    # ...nor ends it once started.
    events = run([0.9] * 10 + [0.4] * 60 + [0.0] * 20, min_silence_ms=300)
    (_, start), (i_end, end) = events
    assert end["timestamp"] == pytest.approx(70 * CHUNK_S + 0.03, abs=1e-3)


def test_silence_with_dips_above_neg_threshold_still_counts_as_silence():
    # Silero resets the silence timer only on p >= threshold, so 0.4 during a stop keeps it running.
    probs = [0.9] * 20 + [0.1, 0.4] * 10 + [0.0] * 10
    events = run(probs, min_silence_ms=500)
    assert [e["type"] for _, e in events] == ["speech_start", "speech_end"]
    assert events[1][0] == 20 + 15


def test_min_speech_zero_starts_on_first_speech_chunk():
    events = run([0.0, 0.0, 0.8, 0.8, 0.0], min_speech_ms=0, speech_pad_ms=0)
    assert events[0] == (2, {"type": "speech_start", "timestamp": round(2 * CHUNK_S, 3)})


def test_next_turn_start_never_precedes_previous_end():
    probs = [0.9] * 20 + [0.0] * 16 + [0.9] * 20 + [0.0] * 20
    events = [e for _, e in run(probs, min_silence_ms=500, speech_pad_ms=400)]
    assert [e["type"] for e in events] == ["speech_start", "speech_end"] * 2
    assert events[2]["timestamp"] >= events[1]["timestamp"]


def test_flush_closes_open_turn_and_drops_unstarted_candidate():
    det = TurnDetector(TurnConfig(min_speech_ms=250), CHUNK_S)
    for i in range(20):
        det.step(i * CHUNK_S, 0.9)
    (end,) = det.flush(20 * CHUNK_S)
    assert end.type == "speech_end" and end.timestamp == pytest.approx(20 * CHUNK_S, abs=1e-3)
    det.reset()
    det.step(0.0, 0.9)  # a 32 ms candidate, never started
    assert det.flush(CHUNK_S) == []


class EnergyModel:
    """A stand-in for Silero: loud chunks are speech. Records what it was fed."""

    chunk_size = 512

    def __init__(self) -> None:
        self.calls = 0
        self.resets = 0

    def __call__(self, chunk: np.ndarray) -> float:
        assert chunk.shape == (512,)
        self.calls += 1
        return 0.95 if np.abs(chunk).mean() > 0.05 else 0.01

    def reset(self) -> None:
        self.resets += 1


def _signal() -> np.ndarray:
    rng = np.random.default_rng(1)
    quiet = np.zeros(16000, dtype=np.float32)
    loud = rng.uniform(-0.5, 0.5, 16000).astype(np.float32)
    return np.concatenate([quiet, loud, quiet, quiet])


@pytest.mark.parametrize("frame_bytes", [2, 640, 1024, 1026, 4098, 70000])
def test_frame_size_does_not_change_events(frame_bytes):
    pcm = float_to_pcm16(_signal())
    reference = TurnStream(EnergyModel(), TurnConfig())
    expected = dumps(reference.feed(pcm) + reference.flush())
    stream = TurnStream(EnergyModel(), TurnConfig())
    events = []
    for i in range(0, len(pcm), frame_bytes):
        events += dumps(stream.feed(pcm[i:i + frame_bytes]))
    events += dumps(stream.flush())
    assert events == expected
    types = [e["type"] for e in events]
    assert types == ["speech_start", "speech_end", "flushed"]
    assert events[0]["timestamp"] == pytest.approx(1.0 - 0.03, abs=0.04)
    assert events[1]["timestamp"] == pytest.approx(2.0 + 0.03, abs=0.04)
    assert events[2]["timestamp"] == pytest.approx(4.0, abs=1e-3)


def test_probabilities_and_reset():
    model = EnergyModel()
    stream = TurnStream(model, TurnConfig(), probabilities=True)
    events = dumps(stream.feed(float_to_pcm16(np.zeros(512 * 3, dtype=np.float32))))
    assert [e["timestamp"] for e in events] == [0.0, 0.032, 0.064]
    assert all(e["type"] == "probability" and 0 <= e["probability"] <= 1 for e in events)
    resets = model.resets
    stream.reset()
    assert stream.time == 0 and model.resets == resets + 1


def test_model_state_is_reset_after_quiet_following_speech():
    model = EnergyModel()
    stream = TurnStream(model, TurnConfig(min_silence_ms=300, reset_after_silence_ms=1000))
    base = model.resets

    def feed(n_chunks: int, level: float = 0.0) -> None:
        stream.feed(float_to_pcm16(np.full(512 * n_chunks, level, dtype=np.float32)))

    feed(40)  # quiet, nothing heard yet: nothing to forget
    assert model.resets == base
    feed(10, 0.2)  # speech ...
    feed(31)  # ... 0.99 s of quiet after it (the turn ended at 0.3 s)
    assert model.resets == base
    feed(1)  # 1.02 s
    assert model.resets == base + 1
    feed(100)  # once per speech
    assert model.resets == base + 1
    feed(10, 0.2)
    feed(32)
    assert model.resets == base + 2


def test_model_state_is_not_reset_inside_a_turn_or_when_turned_off():
    model = EnergyModel()
    stream = TurnStream(model, TurnConfig(min_silence_ms=2000, reset_after_silence_ms=1000))
    base = model.resets
    events = dumps(stream.feed(float_to_pcm16(np.concatenate([np.full(512 * 10, 0.2, dtype=np.float32),
                                                               np.zeros(512 * 50, dtype=np.float32)]))))
    assert model.resets == base  # 1.6 s of quiet, but the turn is still open (2 s hold)
    events += dumps(stream.feed(float_to_pcm16(np.zeros(512 * 20, dtype=np.float32))))
    assert [e["type"] for e in events] == ["speech_start", "speech_end"]
    assert model.resets == base + 1  # the turn ended: forgotten with it

    off = EnergyModel()
    stream = TurnStream(off, TurnConfig(min_silence_ms=300, reset_after_silence_ms=0))
    stream.feed(float_to_pcm16(np.concatenate([np.full(512 * 10, 0.2, dtype=np.float32),
                                               np.zeros(512 * 200, dtype=np.float32)])))
    assert off.resets == 1  # only the stream's own at its start


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("frame_bytes", [98, 642, 4096])
def test_other_rates_give_the_same_turns_and_clock(rate, frame_bytes):
    # The stream resampler is continuous across frames (its own test is in common/tests/test_audio.py):
    # any frame size at any rate gives the 16 kHz stream's turns, and the clock ends at the true length.
    signal = _signal()
    ref = dumps(TurnStream(EnergyModel(), TurnConfig()).feed(float_to_pcm16(signal)))
    pcm = float_to_pcm16(resample(signal, 16000, rate))
    stream = TurnStream(EnergyModel(), TurnConfig(), sample_rate=rate)
    events = []
    for i in range(0, len(pcm), frame_bytes):
        events += dumps(stream.feed(pcm[i:i + frame_bytes]))
    events += dumps(stream.flush())
    turns = [e for e in events if e["type"] != "flushed"]
    assert [e["type"] for e in turns] == [e["type"] for e in ref] == ["speech_start", "speech_end"]
    for got, want in zip(turns, ref):
        assert got["timestamp"] == pytest.approx(want["timestamp"], abs=0.035)
    assert events[-1] == {"type": "flushed", "timestamp": 4.0}
