"""Turn detection: PCM16 frames of any size in, ``speech_start`` / ``speech_end`` events out.

Pure logic (no model library, no socket): the model is any callable taking one 512-sample chunk
and returning a speech probability, so tests drive the state machine with fakes. The WebSocket
session around it is in ws.py.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from rvchat_common.audio import SAMPLE_RATE, Resampler, pcm16_to_float
from rvchat_common.protocol import vad

WARM_CHUNKS = 16  # quiet chunks (0.5 s) a reset model state is run over before it hears the next one
NEG_THRESHOLD_GAP = 0.15  # Silero's hysteresis: once in speech, stay there until p < threshold - 0.15

TurnEvent = vad.SpeechStart | vad.SpeechEnd | vad.Probability | vad.Flushed


class ChunkModel(Protocol):
    """One stream's speech model: a probability per ``chunk_size`` samples at 16 kHz, with state."""

    chunk_size: int

    def __call__(self, chunk: np.ndarray) -> float: ...

    def reset(self) -> None: ...


@dataclass
class TurnConfig:
    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 500
    speech_pad_ms: int = 30
    # The model's state is reset once the stream has been quiet this long after speech (0: never). Silero's
    # recurrent state, carried on from loud speech, made it deaf to a soft voice after it: a whisper or a falsetto
    # 3-6 s after a reader (4 readers x 4 soft clips x 2 gaps x 2 hold settings) got a speech_start in 25 of 64
    # streams; reset after 1.5 s of quiet, in 64 (pipecat resets it every 5 s, whatever is being said). The fresh
    # state is first run over the last WARM_CHUNKS of that quiet: one reset just before a phrase took 0.7 s to
    # hear it. Not shorter than 1.5 s: a reset inside a speaker's ~1 s pause moved a later turn's end by 0.45 s
    # (Silero's state is that sensitive), and a pause inside an utterance should not change how it is heard.
    reset_after_silence_ms: int = 1500

    @property
    def neg_threshold(self) -> float:
        return max(self.threshold - NEG_THRESHOLD_GAP, 0.01)


class TurnDetector:
    """quiet -> starting -> speaking -> stopping -> quiet, with start and stop hold times.

    - quiet: p >= threshold opens a candidate at this chunk's start.
    - starting: needs ``min_speech_ms`` of speech (p staying >= neg threshold) before
      ``speech_start`` is sent, stamped with the candidate's start (not the hold's end);
      a drop below the neg threshold first (a cough, a click) goes back to quiet silently.
    - speaking: p < neg threshold starts a possible end at this chunk's start.
    - stopping: p >= threshold resumes speaking (a pause); ``min_silence_ms`` of silence
      sends ``speech_end`` at once, stamped with where the silence began.
    Times are seconds of stream audio at 16 kHz; padding is added as in Silero's timestamps.
    """

    def __init__(self, config: TurnConfig, chunk_seconds: float) -> None:
        self.config = config
        self.chunk_seconds = chunk_seconds
        self.reset()

    def reset(self) -> None:
        self.state = "quiet"
        self._start = 0.0  # where the current (candidate) speech began, unpadded
        self._silence_start = 0.0
        self._last_end = 0.0  # padded end of the previous turn: the next start never precedes it

    def _padded_start(self) -> float:
        return max(self._start - self.config.speech_pad_ms / 1000, self._last_end, 0.0)

    def step(self, t: float, p: float) -> list[TurnEvent]:
        """Feed the probability of the chunk starting at stream time ``t``."""
        cfg = self.config
        end_of_chunk = t + self.chunk_seconds
        events: list[TurnEvent] = []
        if self.state == "quiet":
            if p >= cfg.threshold:
                self._start = t
                self.state = "starting"
            else:
                return events
        if self.state == "starting":
            if p < cfg.neg_threshold:
                self.state = "quiet"
            elif end_of_chunk - self._start >= cfg.min_speech_ms / 1000 - 1e-9:
                self.state = "speaking"
                events.append(vad.SpeechStart(timestamp=round(self._padded_start(), 3)))
            return events
        if self.state == "speaking":
            if p < cfg.neg_threshold:
                self._silence_start = t
                self.state = "stopping"
            else:
                return events
        if self.state == "stopping":
            if p >= cfg.threshold:
                self.state = "speaking"
            elif end_of_chunk - self._silence_start >= cfg.min_silence_ms / 1000 - 1e-9:
                events.append(self._end(min(self._silence_start + cfg.speech_pad_ms / 1000,
                                            end_of_chunk)))
        return events

    def _end(self, end: float) -> vad.SpeechEnd:
        start = self._padded_start()
        self.state = "quiet"
        self._last_end = end
        return vad.SpeechEnd(timestamp=round(end, 3), start=round(start, 3), duration=round(end - start, 3))

    def flush(self, now: float) -> list[TurnEvent]:
        """End of stream: close an open turn (a candidate that never started is dropped)."""
        if self.state == "speaking":
            return [self._end(now)]
        if self.state == "stopping":
            return [self._end(min(self._silence_start + self.config.speech_pad_ms / 1000, now))]
        self.state = "quiet"
        return []


class TurnStream:
    """One connection's stream: resample to 16 kHz, cut into model chunks, run the detector."""

    def __init__(self, model: ChunkModel, config: TurnConfig, sample_rate: int = SAMPLE_RATE,
                 probabilities: bool = False,
                 on_chunk: Callable[[float], None] | None = None) -> None:
        self.model = model
        self.chunk = model.chunk_size
        self.config = config
        self.probabilities = probabilities
        self.on_chunk = on_chunk
        self.detector = TurnDetector(config, self.chunk / SAMPLE_RATE)
        self.sample_rate = sample_rate
        self.reset()

    def set_sample_rate(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.resampler = Resampler(sample_rate)

    def reset(self) -> None:
        self.model.reset()
        self._quiet_chunks = 0  # model chunks in a row under the neg threshold
        self._recent: collections.deque[np.ndarray] = collections.deque(maxlen=WARM_CHUNKS)
        self._heard = False  # speech (p >= threshold) since the model's state was last reset
        self.detector.reset()
        self.resampler = Resampler(self.sample_rate)
        self._pending = np.zeros(0, dtype=np.float32)
        self.samples = 0  # 16 kHz samples fed to the model so far: the stream clock

    @property
    def time(self) -> float:
        return self.samples / SAMPLE_RATE

    def pending_chunks(self, n_bytes: int) -> int:
        """How many model calls a frame of ``n_bytes`` will cause (to decide where to run it)."""
        incoming = n_bytes // 2 * SAMPLE_RATE / self.sample_rate
        return int((self._pending.size + incoming) // self.chunk)

    def feed(self, pcm16: bytes) -> list[TurnEvent]:
        """Process a PCM16 frame (even length, checked by the receive loop); return the events."""
        return self._chunks(self.resampler(pcm16_to_float(pcm16)))

    def _chunks(self, audio: np.ndarray) -> list[TurnEvent]:
        buf = np.concatenate([self._pending, audio]) if self._pending.size else audio
        n = buf.size // self.chunk
        events: list[TurnEvent] = []
        for i in range(n):
            events += self._run(buf[i * self.chunk:(i + 1) * self.chunk])
        self._pending = buf[n * self.chunk:].copy()
        return events

    def _run(self, chunk: np.ndarray) -> list[TurnEvent]:
        t = self.time
        p = self.model(chunk)
        self._recent.append(chunk)
        self._forget_after_quiet(p)
        self.samples += self.chunk
        if self.on_chunk:
            self.on_chunk(p)
        events: list[TurnEvent] = [vad.Probability(timestamp=round(t, 3), probability=round(p, 4))] \
            if self.probabilities else []
        return events + self.detector.step(t, p)

    def _forget_after_quiet(self, p: float) -> None:
        """Reset the model's state (not the turn) once it has been quiet long enough after speech, and run the
        fresh state over the last of that quiet, as if the stream had started in it."""
        cfg = self.config
        self._heard = self._heard or p >= cfg.threshold
        self._quiet_chunks = self._quiet_chunks + 1 if p < cfg.neg_threshold else 0
        if (cfg.reset_after_silence_ms and self._heard and self.detector.state == "quiet"
                and self._quiet_chunks * self.chunk / SAMPLE_RATE >= cfg.reset_after_silence_ms / 1000 - 1e-9):
            self.model.reset()
            for quiet in self._recent:
                self.model(quiet)
            self._heard = False
            self._quiet_chunks = 0

    def flush(self) -> list[TurnEvent]:
        """End of stream: run the buffered remainder (zero-padded), close any open turn, start over."""
        events = self._chunks(self.resampler.flush())  # the resampler's last ~1 ms
        if self._pending.size:
            real = self._pending.size
            chunk = np.zeros(self.chunk, dtype=np.float32)
            chunk[:real] = self._pending
            self._pending = np.zeros(0, dtype=np.float32)
            events += self._run(chunk)
            self.samples -= self.chunk - real  # the padding is not stream time
        now = self.time
        events += self.detector.flush(now)
        events.append(vad.Flushed(timestamp=round(now, 3)))
        self.reset()
        return events
