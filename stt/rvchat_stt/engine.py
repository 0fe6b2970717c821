"""The STT engine: the :class:`SttEngine` interface routes and ws use, and faster-whisper behind it.

The only module that imports faster_whisper, and only once the model is loaded or used, so
importing the interface (and testing with a fake engine) does not load it.

One ``WhisperModel`` is loaded at start and shared; callers serialise calls
into it (``InferenceQueue``), so nothing here locks.

Two decoding paths:

- :meth:`WhisperEngine.transcribe` (REST and OpenAI endpoints) calls
  faster-whisper with its own defaults (beam 5, temperature fallback, ...) so
  accuracy equals the library called directly.
- :meth:`WhisperEngine.transcribe_stream` (WebSocket partials and finals) is
  tuned for latency: greedy, no timestamps, no conditioning, and an encoder
  window cut to the audio actually streamed. Whisper's encoder always gets a
  30 s window in faster-whisper; for a 2 s utterance that is >90% padding and
  most of the cost. CTranslate2 accepts a shorter window, and Whisper copes
  when it is at least ~10 s; when the result still looks like a loop, the
  full window is used instead.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Protocol, Sequence, TypeVar, runtime_checkable

import numpy as np

from rvchat_common.audio import SAMPLE_RATE
from rvchat_common.cancel import raise_if_cancelled
from rvchat_common.models import whisper_model

from . import guard
from .schemas import Segment, TranscribeOptions, Transcript, Word
from .settings import Settings

if TYPE_CHECKING:
    from faster_whisper import WhisperModel
    from faster_whisper.tokenizer import Tokenizer

log = logging.getLogger("rvchat.stt")
T = TypeVar("T")

DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
FRAMES_PER_SECOND = 100  # Whisper mel frames (10 ms hop)


class UnsupportedLanguage(ValueError):
    pass


class SttEngine(Protocol):
    """What the routes and the WebSocket need of a transcription engine (a fake in tests)."""

    model_name: str

    def load(self) -> None:
        """Blocking: load the model (run in a thread at start-up)."""

    def check_language(self, language: str | None) -> str | None:
        """The normalised language code (None: auto-detect); ValueError when it cannot be transcribed."""

    def transcribe(self, audio: np.ndarray, opts: TranscribeOptions) -> Transcript:
        """Full-accuracy decoding of 16 kHz mono float32 (REST and OpenAI endpoints)."""

    def transcribe_stream(self, audio: np.ndarray, language: str | None = None,
                          prompt: str | None = None, gate: bool = True) -> Transcript:
        """Latency-tuned decoding of one streamed utterance (``gate``: empty text where the speech gate
        hears no speech; False when the client's VAD heard it)."""


@runtime_checkable
class SpeechScorer(Protocol):
    """An engine that also scores speech per window: the stream then knows where speech ends in its
    buffer (no decode of silence, early finals). Engines without it decode on the partial interval only."""

    VAD_WINDOW: int

    def speech_probs(self, audio: np.ndarray) -> np.ndarray: ...


def _language_codes() -> tuple[str, ...]:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return _LANGUAGE_CODES


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _sanitise(audio: np.ndarray) -> np.ndarray:
    """Float files can carry NaN, inf or values far outside [-1, 1]; Whisper wants neither."""
    if np.isfinite(audio).all() and (audio.size == 0 or np.abs(audio).max() <= 1.0):
        return audio
    return np.clip(np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0).astype(np.float32)


def _until_cancelled(segments: Iterable[T]) -> Iterator[T]:
    """faster-whisper decodes each 30 s window as its segments are iterated: between windows is where
    a request whose client has gone stops (a 30-minute file is ~60 windows)."""
    for segment in segments:
        raise_if_cancelled()
        yield segment


def _temperatures(temperature: float | None) -> list[float]:
    """OpenAI semantics: 0 (or none) means 'start greedy, raise on failure'."""
    if not temperature:
        return list(DEFAULT_TEMPERATURES)
    t = min(max(float(temperature), 0.0), 1.0)
    return [round(t + 0.2 * i, 2) for i in range(6) if t + 0.2 * i <= 1.0 + 1e-9]


class WhisperEngine:
    """faster-whisper with the speech gate and hallucination guards (guard.py)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.model_name = self.settings.model
        self.model: WhisperModel | None = None
        self.multilingual = True
        self._tokenizers: dict[str | None, Tokenizer] = {}

    # --- lifecycle -----------------------------------------------------------
    def load(self) -> None:
        from faster_whisper import WhisperModel

        s = self.settings
        path = whisper_model(s.model)
        threads = s.cpu_threads or os.cpu_count() or 1
        log.info("loading faster-whisper %s (%s) on %s/%s, %d threads", s.model, path, s.device,
                 s.compute_type, threads)
        self.model = WhisperModel(
            path, device=s.device, compute_type=s.compute_type, cpu_threads=threads, num_workers=1,
            download_root=s.download_root, local_files_only=s.local_files_only,
        )
        self.multilingual = bool(self.model.model.is_multilingual)
        if s.language:
            self.check_language(s.language)
        # Warm up the kernels and the Silero VAD so the first real request is not slow.
        warm = (np.random.default_rng(0).standard_normal(SAMPLE_RATE) * 0.01).astype(np.float32)
        self.speech_spans(warm)
        self.speech_probs(warm)
        self._decode_short(warm, self.default_language(), None)

    # --- languages -----------------------------------------------------------
    @property
    def languages(self) -> list[str]:
        return list(_language_codes()) if self.multilingual else ["en"]

    def default_language(self) -> str | None:
        if not self.multilingual:
            return "en"
        return self.settings.language or None

    def check_language(self, language: str | None) -> str | None:
        """Normalise a requested language ('EN', 'en-US' -> 'en'); None means auto-detect."""
        if language is None or not language.strip():
            return self.default_language()
        codes = _language_codes()
        code = language.strip().lower().replace("_", "-")
        if code not in codes and "-" in code:
            code = code.split("-")[0]
        if code not in codes:
            raise UnsupportedLanguage(f"unknown language {language!r}: use an ISO-639-1 code such as 'en'")
        if not self.multilingual and code != "en":
            raise UnsupportedLanguage(
                f"model {self.model_name} is English-only and cannot transcribe language {code!r}; "
                "omit language or load a multilingual model (e.g. STT_MODEL=base)"
            )
        return code

    def _tokenizer(self, language: str | None) -> Tokenizer:
        from faster_whisper.tokenizer import Tokenizer

        tok = self._tokenizers.get(language)
        if tok is None:
            assert self.model is not None
            tok = Tokenizer(self.model.hf_tokenizer, self.multilingual, task="transcribe",
                            language=language or "en")
            self._tokenizers[language] = tok
        return tok

    # --- speech detection --------------------------------------------------
    def speech_spans(self, audio: np.ndarray) -> list[tuple[float, float]]:
        """Seconds of speech by Silero VAD (the ONNX model shipped inside faster_whisper); [] = none."""
        if guard.is_digital_silence(audio):
            return []
        return guard.speech_spans_from_probs(
            self.speech_probs(audio), self.VAD_WINDOW / SAMPLE_RATE,
            threshold=self.settings.gate_threshold, min_windows=self.settings.gate_min_windows)

    VAD_WINDOW = 512  # samples per Silero probability at 16 kHz (32 ms)

    def speech_probs(self, audio: np.ndarray) -> np.ndarray:
        """Silero speech probability per 32 ms window (audio padded to whole windows).

        Stateless and thread-safe (one ONNX session, no carried state), so the stream
        can call it on new audio without waiting for the Whisper lock.
        """
        from faster_whisper.vad import get_vad_model

        n = -(-audio.size // self.VAD_WINDOW) * self.VAD_WINDOW
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        padded = np.zeros(n, dtype=np.float32)
        padded[: audio.size] = audio
        return np.asarray(get_vad_model()(padded), dtype=np.float32).reshape(-1)

    def _silent(self, audio: np.ndarray, language: str | None, spans: list) -> Transcript:
        return Transcript(text="", language=language or self.default_language() or "en",
                          duration=round(audio.size / SAMPLE_RATE, 3), segments=[], speech_seconds=0.0)

    def _finish(self, audio: np.ndarray, language: str, language_probability: float | None,
                segments: list[Segment], spans: Sequence[tuple[float, float]]) -> Transcript:
        kept = segments
        if self.settings.hallucination_filter:
            kept = [s for s in segments if guard.keep_segment(s, spans)]
            if len(kept) != len(segments):
                log.info("dropped %d hallucinated segment(s): %s", len(segments) - len(kept),
                         [s.text for s in segments if s not in kept])
        for i, seg in enumerate(kept):
            seg.id = i
        return Transcript(
            text=" ".join(s.text.strip() for s in kept if s.text.strip()),
            language=language,
            language_probability=language_probability,
            duration=round(audio.size / SAMPLE_RATE, 3),
            segments=kept,
            speech_seconds=round(sum(e - s for s, e in spans), 3),
            dropped_segments=len(segments) - len(kept),
        )

    # --- full decoding (REST, OpenAI) ---------------------------------------
    def transcribe(self, audio: np.ndarray, opts: TranscribeOptions) -> Transcript:
        assert self.model is not None, "engine not loaded"
        language = self.check_language(opts.language)
        audio = _sanitise(audio)
        spans = self.speech_spans(audio)
        if self.settings.speech_gate and not spans:
            return self._silent(audio, language, spans)
        seg_iter, info = self.model.transcribe(
            audio,
            language=language,
            task="transcribe",
            beam_size=opts.beam_size or self.settings.beam_size,
            temperature=_temperatures(opts.temperature),
            initial_prompt=opts.prompt or None,
            word_timestamps=opts.word_timestamps,
            vad_filter=opts.vad_filter,
            condition_on_previous_text=self.settings.condition_on_previous_text,
        )
        segments = [
            Segment(
                id=s.id, seek=s.seek, start=round(s.start, 3), end=round(s.end, 3), text=s.text,
                tokens=list(s.tokens), temperature=s.temperature or 0.0, avg_logprob=s.avg_logprob,
                compression_ratio=s.compression_ratio, no_speech_prob=s.no_speech_prob,
                words=[Word(word=w.word.strip(), start=round(w.start, 3), end=round(w.end, 3),
                            probability=round(w.probability, 4)) for w in s.words]
                if s.words is not None else None,
            )
            for s in _until_cancelled(seg_iter)
        ]
        return self._finish(audio, info.language, info.language_probability, segments, spans)

    # --- fast decoding (WebSocket stream) -----------------------------------
    def transcribe_stream(self, audio: np.ndarray, language: str | None = None,
                          prompt: str | None = None, gate: bool = True) -> Transcript:
        """Greedy, timestamp-free decoding of one utterance, tuned for latency. Without ``gate`` the
        audio is decoded even where the speech gate hears nothing; segments over no detected speech
        still go through the hallucination filter."""
        assert self.model is not None, "engine not loaded"
        language = self.check_language(language)
        audio = _sanitise(audio)
        spans = self.speech_spans(audio)
        if gate and self.settings.speech_gate and not spans:
            return self._silent(audio, language, spans)
        duration = audio.size / SAMPLE_RATE
        seg = None
        lang, prob = language, None
        if self.settings.stream_short_context and duration < 29.0:
            seg, lang, prob = self._decode_short(audio, language, prompt)
            if seg is None:
                # Padded with silence instead of zero features, a short utterance that looped decodes right
                # ("Montreal forced liner" seven times -> once): 0.2 s here against 1 s for the full window.
                seg, lang, prob = self._decode_short(audio, language, prompt, pad_with_silence=True)
            if seg is None:
                log.info("short-context decode looked like a loop; using the full window")
        if seg is None:
            seg_iter, info = self.model.transcribe(
                audio, language=language, beam_size=self.settings.stream_beam_size,
                temperature=list(DEFAULT_TEMPERATURES), initial_prompt=prompt or None,
                without_timestamps=True, condition_on_previous_text=False, vad_filter=False,
            )
            segments = [Segment(id=s.id, seek=s.seek, start=round(s.start, 3), end=round(s.end, 3),
                                text=s.text, tokens=list(s.tokens), temperature=s.temperature or 0.0,
                                avg_logprob=s.avg_logprob, compression_ratio=s.compression_ratio,
                                no_speech_prob=s.no_speech_prob) for s in seg_iter]
            return self._finish(audio, info.language, info.language_probability, segments, spans)
        return self._finish(audio, lang or "en", prob, [seg] if seg.text.strip() else [], spans)

    def _decode_short(self, audio: np.ndarray, language: str | None, prompt: str | None,
                      pad_with_silence: bool = False) -> tuple[Segment | None, str | None, float | None]:
        """One greedy pass over an encoder window sized to the audio; None when it loops.

        The window is padded with zero features, as faster-whisper pads its 30 s windows, or with
        ``pad_with_silence`` with silent audio. Each fails where the other does not, on this set: zero
        features (a flat, fairly loud sound to Whisper) made a 1.6 s utterance loop; silence made two
        finished clips of 5-6 s go on repeating themselves into it (mean WER 0.11 -> 0.18 over the clips)."""
        import ctranslate2  # installed with faster-whisper; kept local as it is only needed here

        assert self.model is not None
        hop = SAMPLE_RATE // FRAMES_PER_SECOND
        n_frames = audio.size // hop + 1
        duration = audio.size / SAMPLE_RATE
        full = self.model.feature_extractor.nb_max_frames
        want = max(self.settings.stream_min_context_s * FRAMES_PER_SECOND, n_frames + FRAMES_PER_SECOND)
        window = int(min(full, np.ceil(want / 100) * 100))
        if pad_with_silence:
            padded = np.zeros(window * hop, dtype=np.float32)
            padded[: min(audio.size, padded.size)] = audio[: padded.size]
            x = np.ascontiguousarray(self.model.feature_extractor(padded)[None, :, :window], dtype=np.float32)
        else:
            feats = self.model.feature_extractor(audio)
            x = np.zeros((1, feats.shape[0], window), dtype=np.float32)
            x[0, :, : min(window, feats.shape[-1])] = feats[:, :window]
        encoded = self.model.model.encode(ctranslate2.StorageView.from_array(x), to_cpu=False)
        prob = None
        if language is None:
            lang_token, prob = self.model.model.detect_language(encoded)[0][0]
            language = lang_token[2:-2]
        tok = self._tokenizer(language)
        prompt_tokens: list[int] = []
        if prompt:
            prompt_tokens = [tok.sot_prev] + tok.encode(" " + prompt.strip())[-(223 - 4):]
        sot = prompt_tokens + list(tok.sot_sequence) + [tok.no_timestamps]
        # Speech runs at ~3-5 tokens/s; a cap well above that stops a loop early.
        max_length = int(min(224, 24 + duration * 12))
        result = self.model.model.generate(
            encoded, [sot], beam_size=self.settings.stream_beam_size, max_length=max_length,
            return_scores=True, return_no_speech_prob=True, suppress_blank=True, suppress_tokens=[-1],
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < tok.eot]
        text = tok.decode(tokens)
        ratio = _compression_ratio(text)
        if len(result.sequences_ids[0]) >= max_length - 1 or ratio > 2.4:
            return None, language, prob
        seg = Segment(id=0, seek=0, start=0.0, end=round(duration, 3), text=text, tokens=tokens,
                      temperature=0.0, avg_logprob=float(result.scores[0]) if result.scores else 0.0,
                      compression_ratio=ratio, no_speech_prob=float(result.no_speech_prob))
        return seg, language, prob
