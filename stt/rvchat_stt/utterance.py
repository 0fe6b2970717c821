"""One utterance of the STT stream: its PCM16 buffer, where the speech in it ends, when to decode it.

Pure logic (no socket, no model library). PCM16 arrives at the client's rate and is buffered as is;
Silero VAD scores each new 32 ms window as it arrives (cheap, and outside the Whisper lock), so the
utterance always knows where its speech ends. The session in ws.py asks it when a decode is worth
starting and runs the decodes.
"""

from __future__ import annotations

import time

import numpy as np

from rvchat_common.audio import SAMPLE_RATE, Resampler, pcm16_to_float, resample

from . import guard
from .engine import SpeechScorer
from .schemas import Transcript
from .settings import Settings


class Utterance:
    def __init__(self, sample_rate: int, settings: Settings, scorer: SpeechScorer | None) -> None:
        self.sample_rate = sample_rate
        self.settings = settings
        self.scorer = scorer  # None: no speech tracking, decode on the partial interval only
        self.buffer = bytearray()
        self.limit = int(settings.stream_max_seconds * sample_rate) * 2  # bytes, whole samples
        # Speech tracking, at 16 kHz through one continuous resampler.
        self._resampler = Resampler(sample_rate)
        self._vad_pending = np.zeros(0, dtype=np.float32)  # 16 kHz audio not yet a whole window
        self.vad_samples = 0  # 16 kHz samples scored
        self.speech_end = 0  # 16 kHz sample where the last speech window ends (0: none yet)
        # Decodes of this utterance.
        self.last_partial_at = 0  # 16 kHz samples at the last interval partial
        self.result: Transcript | None = None  # the latest finished decode ...
        self.result_upto = 0  # ... and how much audio (16 kHz samples) it covered
        self.first_audio_at: float | None = None  # wall clock of the first frame

    # --- audio ---------------------------------------------------------------------------------
    def add(self, pcm16: bytes) -> bytes:
        """Buffer what fits under ``stream_max_seconds`` and score it; return what did not fit."""
        if self.first_audio_at is None:
            self.first_audio_at = time.monotonic()
        room = self.limit - len(self.buffer)
        self.buffer.extend(pcm16[:room])
        self._score(pcm16[:room])
        return pcm16[room:]

    @property
    def full(self) -> bool:
        return len(self.buffer) >= self.limit

    @property
    def samples(self) -> int:
        """Buffer length in 16 kHz samples."""
        return int(len(self.buffer) // 2 * SAMPLE_RATE / self.sample_rate)

    def audio(self) -> np.ndarray:
        """The whole buffer at 16 kHz, for a decode."""
        return resample(pcm16_to_float(bytes(self.buffer)), self.sample_rate, SAMPLE_RATE)

    # --- speech tracking -----------------------------------------------------------------------
    def _score(self, pcm16: bytes, flush: bool = False) -> None:
        """Score the audio that arrived since the last call, 32 ms window by window."""
        if self.scorer is None:
            return
        parts = [self._vad_pending, self._resampler(pcm16_to_float(pcm16))]
        if flush:
            parts.append(self._resampler.flush())
        self._vad_pending = np.concatenate(parts)
        win = self.scorer.VAD_WINDOW
        n = self._vad_pending.size if flush else self._vad_pending.size // win * win
        if n == 0:
            return
        probs = self.scorer.speech_probs(self._vad_pending[:n])
        self._vad_pending = self._vad_pending[n:]
        # A low bar: whatever might be speech keeps the utterance open (no early final before it).
        voiced = np.flatnonzero(probs >= guard.SPAN_THRESHOLD)
        if voiced.size:
            self.speech_end = self.vad_samples + int(voiced[-1] + 1) * win
        self.vad_samples += n

    def finish_scoring(self) -> None:
        """End of the utterance: score the remainder (under a window) too."""
        self._score(b"", flush=True)

    @property
    def no_speech(self) -> bool:
        """VAD heard nothing at all (only known when speech is tracked)."""
        return self.scorer is not None and self.speech_end == 0

    # --- when to decode ------------------------------------------------------------------------
    def new_speech(self) -> bool:
        """Speech arrived that no finished decode has covered yet."""
        return self.speech_end > self.result_upto if self.scorer is not None else True

    def partial_due(self, partials: bool) -> bool:
        """Another ``partial_interval_s`` of audio since the last partial, from a live source."""
        s = self.settings
        total = self.samples
        if not partials or total - self.last_partial_at < s.partial_interval_s * SAMPLE_RATE:
            return False
        # Audio arriving much faster than real time (a file, not a microphone): a partial would be
        # stale at once and only hold up the final.
        ahead = total / SAMPLE_RATE - (time.monotonic() - (self.first_audio_at or time.monotonic()))
        return ahead < 1.0

    def early_final_due(self) -> bool:
        """The tail has been silent for ``early_final_silence_s``: the user has probably finished."""
        s = self.settings
        return (s.early_final and self.scorer is not None and self.speech_end > 0
                and self.vad_samples - self.speech_end >= s.early_final_silence_s * SAMPLE_RATE)

    def covers_speech(self, upto: int) -> bool:
        """A decode of the first ``upto`` samples heard all of the speech so far (it can be the final)."""
        return self.scorer is not None and self.settings.early_final and upto >= self.speech_end
