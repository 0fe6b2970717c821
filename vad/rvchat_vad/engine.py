"""The VAD engine: the :class:`VadEngine` interface routes and ws use, and Silero VAD behind it.

The only module that uses onnxruntime and Silero's code, and only when the model is loaded or
used, so importing the interface (and testing with a fake engine) costs nothing. Silero's code is
its torch-free pieces, vendored in ``_silero`` (the ``silero_vad`` package imports torch on import;
it is installed only for its ONNX files, which ``rvchat_common.models`` finds without importing it).

Two ONNX sessions, both loaded once and shared:

- the streaming model (``silero_vad.onnx``), one 512-sample chunk (32 ms at 16 kHz) per call,
  with a 64-sample context and a recurrent state that live in each :class:`SileroStream`,
  so WebSocket clients share the session but never each other's state
  (``InferenceSession.run`` is thread-safe in ONNX Runtime);
- the sequence model (``silero_vad_16k_sequence.onnx``, same weights, bit-exact
  probabilities) for whole files: one call per ~16 s instead of one per 32 ms.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from rvchat_common.audio import SAMPLE_RATE
from rvchat_common.models import silero_vad_file

from .turns import ChunkModel

if TYPE_CHECKING:
    import onnxruntime as ort

    from ._silero import SileroVADSequence

log = logging.getLogger("rvchat.vad")

CHUNK = 512  # samples per model call at 16 kHz
CONTEXT = 64  # trailing samples of the previous chunk the v5/v6 model expects in front


# 16 kHz mono float32: one array, or its blocks in order (a file decoded as it is read).
Audio = np.ndarray | Iterable[np.ndarray]


class _Pieces:
    """Audio blocks of any sizes re-cut to exact sizes (the last one shorter), counting the samples."""

    def __init__(self, audio: Audio) -> None:
        self._blocks = [audio] if isinstance(audio, np.ndarray) else audio
        self.samples = 0

    def exact(self, size: int) -> Iterator[np.ndarray]:
        held: list[np.ndarray] = []
        n = 0
        for block in self._blocks:
            block = np.ascontiguousarray(block, dtype=np.float32).reshape(-1)
            self.samples += block.size
            held.append(block)
            n += block.size
            if n < size:
                continue
            joined = np.concatenate(held) if len(held) > 1 else held[0]
            cut = n - n % size
            for i in range(0, cut, size):
                yield joined[i:i + size]
            held, n = ([joined[cut:]], n - cut) if n > cut else ([], 0)
        if n:
            yield np.concatenate(held) if len(held) > 1 else held[0]


class VadEngine(Protocol):
    """What the routes and the WebSocket need of a VAD engine (a fake in tests)."""

    def load(self) -> None:
        """Blocking: load the model (run in a thread at start-up)."""

    def new_stream(self) -> ChunkModel:
        """A model stream with its own state, for one connection."""

    def detect(self, audio: Audio, threshold: float, min_speech_ms: int, min_silence_ms: int,
               speech_pad_ms: int) -> list[tuple[float, float]]:
        """Speech segments (start, end) in seconds of 16 kHz mono float32 audio (an array or its blocks)."""


def _session(path: Path, threads: int) -> ort.InferenceSession:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class SileroStream:
    """One audio stream's recurrent state over the shared streaming session.

    Mirrors ``silero_vad.utils_vad.OnnxWrapper.__call__`` for 16 kHz, batch 1, in numpy
    (no torch tensors on the per-chunk path).
    """

    chunk_size = CHUNK

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, CONTEXT), dtype=np.float32)

    def __call__(self, chunk: np.ndarray) -> float:
        """Speech probability of one 512-sample float32 chunk."""
        x = np.concatenate([self._context, chunk.reshape(1, CHUNK).astype(np.float32, copy=False)],
                           axis=1)
        out, self._state = self._session.run(None, {"input": x, "state": self._state, "sr": self._sr})
        self._context = x[:, -CONTEXT:]
        return float(out[0, 0])


class SileroEngine:
    """Silero VAD: a :class:`SileroStream` per connection, whole files through the sequence model."""

    def __init__(self, model_path: str | None = None, threads: int = 1) -> None:
        self.model_path = Path(model_path) if model_path else None
        self.threads = threads
        self._stream_session: ort.InferenceSession | None = None
        self._sequence: SileroVADSequence | None = None
        self._load_lock = threading.Lock()

    def load(self) -> None:
        from ._silero import SileroVADSequence

        with self._load_lock:
            path = self.model_path or silero_vad_file(onnx=True)
            self._stream_session = _session(path, self.threads)
            if self.model_path is None:
                seq_path = path.with_name("silero_vad_16k_sequence.onnx")
                if seq_path.is_file():
                    self._sequence = SileroVADSequence(str(seq_path), sampling_rate=SAMPLE_RATE)
            # First calls allocate ONNX Runtime buffers; pay that now, not on a user's first chunk.
            stream = self.new_stream()
            for _ in range(3):
                stream(np.zeros(CHUNK, dtype=np.float32))
            self.probabilities(np.zeros(SAMPLE_RATE, dtype=np.float32))
            log.info("Silero VAD loaded from %s (sequence model: %s, %d thread(s))",
                     path, "yes" if self._sequence else "no", self.threads)

    def new_stream(self) -> SileroStream:
        if self._stream_session is None:
            raise RuntimeError("VAD model is not loaded")
        return SileroStream(self._stream_session)

    def probabilities(self, audio: Audio) -> np.ndarray:
        """Per-chunk speech probabilities of 16 kHz mono float32 audio (last chunk zero-padded)."""
        return self._probabilities(_Pieces(audio))

    def _probabilities(self, pieces: _Pieces) -> np.ndarray:
        out: list[np.ndarray] = []
        if self._sequence is not None:
            # The sequence model's own loop (audio_forward) over blocks of max_frames chunks, its state and
            # the 64-sample context carried from one block to the next: the same probabilities as one
            # array, without holding one (a 1,700 s file is 109 MB of float32).
            from ._silero import frame_blocks

            seq = self._sequence
            hidden = np.zeros((1, 1, 128), dtype=np.float32)
            cell = np.zeros((1, 1, 128), dtype=np.float32)
            context = np.zeros(CONTEXT, dtype=np.float32)
            for piece in pieces.exact(CHUNK * seq.max_frames):
                for block in frame_blocks(piece, CHUNK, CONTEXT, seq.max_frames):
                    block[0, :CONTEXT] = context
                    context = block[-1, -CONTEXT:].copy()
                    values, hidden, cell = seq.session.run(
                        ["speech_probs", "hn", "cn"], {"input": block, "h": hidden, "c": cell})
                    out.append(np.asarray(values, dtype=np.float32).reshape(-1))
        else:
            stream = self.new_stream()
            for piece in pieces.exact(CHUNK):
                if piece.size < CHUNK:
                    piece = np.concatenate([piece, np.zeros(CHUNK - piece.size, dtype=np.float32)])
                out.append(np.array([stream(piece)], dtype=np.float32))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def detect(self, audio: Audio, threshold: float = 0.5, min_speech_ms: int = 250,
               min_silence_ms: int = 100, speech_pad_ms: int = 30) -> list[tuple[float, float]]:
        """Speech segments (start, end) in seconds, by Silero's own get_speech_timestamps logic."""
        from ._silero import get_speech_timestamps_from_probs

        pieces = _Pieces(audio)
        probs = self._probabilities(pieces)
        if pieces.samples == 0:
            return []
        stamps = get_speech_timestamps_from_probs(
            probs.tolist(), sampling_rate=SAMPLE_RATE, threshold=threshold,
            min_speech_duration_ms=min_speech_ms, min_silence_duration_ms=min_silence_ms,
            speech_pad_ms=speech_pad_ms, audio_length_samples=pieces.samples,
        )
        return [(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps]
