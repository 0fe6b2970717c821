"""The Silero engine against the silero-vad library itself, on real speech and on non-speech."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from silero_vad import get_speech_timestamps, load_silero_vad

from rvchat_common.audio import float_to_pcm16
from rvchat_vad.turns import TurnConfig, TurnStream

from .conftest import SR, load, non_speech

pytestmark = pytest.mark.models


def stream_probs(engine, audio: np.ndarray) -> np.ndarray:
    s = engine.new_stream()
    n = audio.size // 512
    return np.array([s(audio[i * 512:(i + 1) * 512]) for i in range(n)])


def test_stream_matches_library_onnx_wrapper(engine, jfk):
    lib = load_silero_vad(onnx=True)
    n = jfk.size // 512
    ref = lib.audio_forward(torch.from_numpy(jfk[: n * 512]), SR).numpy().reshape(-1)
    ours = stream_probs(engine, jfk)
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) < 1e-5
    # And the whole-file path (sequence model) gives the same probabilities.
    assert np.max(np.abs(engine.probabilities(jfk[: n * 512]) - ref)) < 1e-4


def _uneven_blocks(audio: np.ndarray, seed: int = 7) -> list[np.ndarray]:
    """The audio cut at random places (1 sample to 40,000), as a decoder hands it out."""
    rng = np.random.default_rng(seed)
    cuts = np.cumsum(rng.integers(1, 40000, size=audio.size // 1000))
    return [b for b in np.split(audio, cuts[cuts < audio.size]) if b.size]


@pytest.mark.parametrize("sequence", [True, False], ids=["sequence-model", "streaming-model"])
def test_audio_in_blocks_gives_what_the_whole_array_gives(engine, jfk, sequence):
    """A file is detected block by block as it is decoded (never held whole): across the sequence
    model's 16 s blocks and the decoder's uneven ones, the probabilities and segments are the same."""
    from rvchat_vad.engine import SileroEngine

    if not sequence:
        engine = SileroEngine(model_path=str(engine.model_path or _stream_model_path()))
        engine.load()
    audio = np.concatenate([jfk, np.zeros(12345, np.float32), jfk, jfk[:777]])  # ~35 s, not a whole chunk
    blocks = _uneven_blocks(audio)
    assert sum(b.size for b in blocks) == audio.size and len(blocks) > 10
    whole = engine.probabilities(audio)
    assert whole.size == -(-audio.size // 512)
    assert np.array_equal(engine.probabilities(iter(blocks)), whole)
    spans = engine.detect(audio, 0.5, 250, 100, 30)
    assert len(spans) >= 3
    assert engine.detect(iter(blocks), 0.5, 250, 100, 30) == spans


def _stream_model_path() -> str:
    from rvchat_common.models import silero_vad_file

    return str(silero_vad_file(onnx=True))


@pytest.mark.parametrize("name", ["jfk_inaugural_1961.wav", "mfa_surround.wav"])
def test_detect_matches_library_get_speech_timestamps(engine, name):
    audio = load(name)
    lib = load_silero_vad(onnx=True)
    ref = get_speech_timestamps(torch.from_numpy(audio), lib, threshold=0.5,
                                min_speech_duration_ms=250, min_silence_duration_ms=100,
                                speech_pad_ms=30)
    ours = engine.detect(audio, 0.5, 250, 100, 30)
    assert len(ours) == len(ref) > 0
    for (s, e), r in zip(ours, ref):
        assert s == pytest.approx(r["start"] / SR, abs=1e-6)
        assert e == pytest.approx(r["end"] / SR, abs=1e-6)


def test_streams_are_independent_when_interleaved(engine, jfk):
    silence = np.zeros_like(jfk)
    alone_speech = stream_probs(engine, jfk)
    alone_silence = stream_probs(engine, silence)
    a, b = engine.new_stream(), engine.new_stream()
    mixed_a, mixed_b = [], []
    for i in range(jfk.size // 512):
        mixed_a.append(a(jfk[i * 512:(i + 1) * 512]))
        mixed_b.append(b(silence[i * 512:(i + 1) * 512]))
    assert np.array_equal(alone_speech, mixed_a)
    assert np.array_equal(alone_silence, mixed_b)
    assert max(mixed_b) < 0.1 < max(mixed_a)


def test_streams_on_threads_share_the_session_safely(engine, jfk):
    expected = stream_probs(engine, jfk)
    results: list[np.ndarray] = [None] * 4  # type: ignore[list-item]

    def work(k: int) -> None:
        results[k] = stream_probs(engine, jfk)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in results:
        assert np.array_equal(r, expected)


def test_reset_forgets_state(engine, jfk):
    s = engine.new_stream()
    first = [s(jfk[i * 512:(i + 1) * 512]) for i in range(50)]
    s.reset()
    again = [s(jfk[i * 512:(i + 1) * 512]) for i in range(50)]
    assert first == again


@pytest.mark.parametrize("name", list(non_speech()))
def test_no_speech_in_silence_or_noise(engine, name):
    audio = non_speech()[name]
    assert engine.detect(audio) == []
    assert engine.detect(audio, threshold=0.5, min_speech_ms=0, min_silence_ms=100) == []
    stream = TurnStream(engine.new_stream(), TurnConfig())
    pcm = float_to_pcm16(audio)
    events = []
    for i in range(0, len(pcm), 640):
        events += stream.feed(pcm[i:i + 640])
    assert [e.type for e in events + stream.flush()] == ["flushed"]


def test_detect_empty_and_tiny_audio(engine):
    assert engine.detect(np.zeros(0, dtype=np.float32)) == []
    assert engine.detect(np.zeros(10, dtype=np.float32)) == []
