"""The TTS engine: the :class:`TtsEngine` interface routes, ws and the Speaker use, and Piper behind it.

Piper voices are loaded on demand (a few, kept in an LRU cache). The only module that imports piper
and onnxruntime, and only once a voice is loaded or synthesis starts, so importing the interface
(and testing with a fake engine) loads neither.

Synthesis is blocking and meant to run in a worker thread (see
``rvchat_common.inference.InferenceQueue``). It can be abandoned part-way: a
:class:`CancelToken` stops between Piper sentences and aborts a running ONNX
call through ``RunOptions.terminate``, so a barge-in frees the CPU at once
instead of finishing a sentence nobody will hear.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .voices import VoiceCatalog, VoiceFiles

if TYPE_CHECKING:
    import onnxruntime
    from piper import PiperVoice

log = logging.getLogger("rvchat.tts")


# Phonemes per ONNX run, at most. Piper's memory grows with the length of one run and onnxruntime's
# arena keeps the peak: one unpunctuated run of 1,200 characters (42 s of audio) took the process
# from 195 MB to 1.05 GB and kept it there; 375 phonemes (~11 s) settle at ~400 MB, 200 at ~290 MB
# (about 0.55 MB a phoneme over 180 MB). 250 keeps TTS within 1.5x of its idle RSS and is longer
# than an ordinary spoken sentence (~200 characters); longer ones are cut at a word boundary, where
# the listener hears a normal word gap.
MAX_PHONEMES_PER_RUN = 250
# After a run this long (model input ids, ~2 per phoneme: ~4 s of speech), the arena gives back what
# the run added: the 30-minute soak had TTS at 400-520 MB with the arena keeping the largest run's
# working set; shrinking after long runs only keeps it at ~180-210 MB. Ordinary sentences are
# shorter and skip it: shrinking after every run (or no arena) made a 12-word sentence take
# 230-350 ms instead of 155.
SHRINK_AFTER_IDS = 240


def bounded_runs(sentences: list[list[str]], limit: int = MAX_PHONEMES_PER_RUN) -> list[list[str]]:
    """espeak's phoneme sentences, each cut at word boundaries (' ') into runs of at most ``limit``."""
    runs: list[list[str]] = []
    for phonemes in sentences:
        while len(phonemes) > limit:
            cut = limit
            while cut > limit // 2 and phonemes[cut] != " ":
                cut -= 1
            if phonemes[cut] != " ":
                cut = limit  # no word boundary in sight: cut anyway
            runs.append(phonemes[:cut])
            phonemes = phonemes[cut:]
            while phonemes and phonemes[0] == " ":
                phonemes = phonemes[1:]
        runs.append(phonemes)
    return runs


class Cancelled(Exception):
    """The synthesis was cancelled before it finished."""


class CancelToken:
    """Thread-safe "stop now" flag that also terminates the ONNX run in flight."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._runs: set[onnxruntime.RunOptions] = set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            for run in self._runs:
                run.terminate = True

    def _start(self) -> onnxruntime.RunOptions:
        import onnxruntime

        run = onnxruntime.RunOptions()
        with self._lock:
            if self._cancelled:
                raise Cancelled()
            self._runs.add(run)
        return run

    def _end(self, run: onnxruntime.RunOptions) -> None:
        with self._lock:
            self._runs.discard(run)


class TtsEngine(Protocol):
    """What the routes, the WebSocket and the Speaker need of a TTS engine (a fake in tests)."""

    catalog: VoiceCatalog

    def load(self) -> None:
        """Blocking: load and warm the default voice (run in a thread at start-up)."""

    def ensure_voice(self, name: str) -> str:
        """Load ``name`` (blocking); the default voice's name when it fails to load."""

    def sample_rate(self, name: str) -> int: ...

    def cancel_token(self) -> CancelToken: ...

    def synthesize(self, text: str, voice: str, speed: float = 1.0,
                   cancel: CancelToken | None = None) -> bytes:
        """PCM16 mono at the voice's rate for clean text (blocking); Cancelled when cancelled."""


class PiperEngine:
    """Loads Piper voices on demand and turns clean text into PCM16 audio."""

    def __init__(self, catalog: VoiceCatalog, cache_size: int = 3, onnx_threads: int = 0,
                 noise_scale: float | None = None, noise_w: float | None = None,
                 sentence_silence_ms: int = 0) -> None:
        self.catalog = catalog
        self.cache_size = cache_size
        self.onnx_threads = onnx_threads
        self.noise_scale = noise_scale
        self.noise_w = noise_w
        self.sentence_silence_ms = sentence_silence_ms
        self._voices: OrderedDict[str, PiperVoice] = OrderedDict()
        self._lock = threading.RLock()
        self._rates: dict[str, int] = {}

    # -- voices --
    def load(self) -> None:
        """Load the default voice and warm it up (the first ONNX run is several times slower)."""
        voice = self.get_voice(self.catalog.default)
        t0 = time.perf_counter()
        self._synthesize(voice, "Hello there.", 1.0, None)
        log.info("voice %s warmed up in %.2f s", self.catalog.default, time.perf_counter() - t0)

    def _load_voice(self, files: VoiceFiles) -> PiperVoice:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        t0 = time.perf_counter()
        config = PiperConfig.from_dict(json.loads(Path(files.config).read_text(encoding="utf-8")))
        options = onnxruntime.SessionOptions()
        if self.onnx_threads:
            options.intra_op_num_threads = self.onnx_threads
        session = onnxruntime.InferenceSession(str(files.model), sess_options=options,
                                               providers=["CPUExecutionProvider"])
        voice = PiperVoice(session=session, config=config)
        log.info("loaded voice %s (%d Hz) in %.2f s", files.name, config.sample_rate,
                 time.perf_counter() - t0)
        return voice

    def get_voice(self, name: str) -> PiperVoice:
        """The loaded voice, loading it (and unloading the least recently used) when needed."""
        with self._lock:
            if name in self._voices:
                self._voices.move_to_end(name)
                return self._voices[name]
            voice = self._load_voice(self.catalog.voices[name])
            self._voices[name] = voice
            self._rates[name] = voice.config.sample_rate
            while len(self._voices) > self.cache_size:
                victim = next((v for v in self._voices if v != self.catalog.default), None)
                if victim is None:
                    break
                del self._voices[victim]
                log.info("unloaded voice %s (cache holds %d)", victim, self.cache_size)
            return voice

    def ensure_voice(self, name: str) -> str:
        """Load ``name``; on failure (broken file) log it and return the default voice's name."""
        try:
            self.get_voice(name)
            return name
        except Exception:
            if name == self.catalog.default:
                raise
            log.exception("voice %s failed to load; using the default voice", name)
            return self.catalog.default

    def sample_rate(self, name: str) -> int:
        if name not in self._rates:
            info = self.catalog.voices[name].info()
            self._rates[name] = int(info["sample_rate"] or 22050)
        return self._rates[name]

    # -- synthesis --
    def cancel_token(self) -> CancelToken:
        return CancelToken()

    def synthesize(self, text: str, voice: str, speed: float = 1.0,
                   cancel: CancelToken | None = None) -> bytes:
        """PCM16 mono at the voice's sample rate for clean text. Raises Cancelled when cancelled."""
        return self._synthesize(self.get_voice(voice), text, speed, cancel)

    def _synthesize(self, voice: PiperVoice, text: str, speed: float, cancel: CancelToken | None) -> bytes:
        cfg = voice.config
        scales = np.array([
            cfg.noise_scale if self.noise_scale is None else self.noise_scale,
            cfg.length_scale / max(speed, 0.01),
            cfg.noise_w_scale if self.noise_w is None else self.noise_w,
        ], dtype=np.float32)
        parts: list[np.ndarray] = []
        # Piper phonemises with espeak-ng, which also splits sentences; we synthesise each.
        # A slower speed makes each phoneme longer, and a run's memory follows its audio, not its text.
        limit = max(16, int(MAX_PHONEMES_PER_RUN * min(1.0, max(speed, 0.01))))
        for phonemes in bounded_runs(voice.phonemize(text), limit):
            if not phonemes:
                continue
            ids = np.array([voice.phonemes_to_ids(phonemes)], dtype=np.int64)
            args = {"input": ids, "input_lengths": np.array([ids.shape[1]], dtype=np.int64),
                    "scales": scales}
            if cfg.num_speakers > 1:
                args["sid"] = np.array([cfg.default_speaker_id], dtype=np.int64)
            run = cancel._start() if cancel else None
            if ids.shape[1] > SHRINK_AFTER_IDS:
                import onnxruntime

                run = run or onnxruntime.RunOptions()
                run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
            try:
                audio = voice.session.run(None, args, run)[0].squeeze()
            except Exception:
                if cancel is not None and cancel.cancelled:
                    raise Cancelled() from None
                raise
            finally:
                if cancel is not None and run is not None:
                    cancel._end(run)
            peak = float(np.max(np.abs(audio))) if audio.size else 0.0
            # Piper normalises each sentence to full scale; we leave a little headroom.
            audio = audio * (0.95 / peak) if peak > 1e-8 else np.zeros_like(audio)
            parts.append(np.asarray(audio, dtype=np.float32).reshape(-1))
            if self.sentence_silence_ms:
                parts.append(np.zeros(int(cfg.sample_rate * self.sentence_silence_ms / 1000), np.float32))
        if cancel is not None and cancel.cancelled:
            raise Cancelled()
        if not parts:
            return b""
        pcm = np.clip(np.concatenate(parts), -1.0, 1.0)
        return (pcm * 32767.0).astype("<i2").tobytes()
