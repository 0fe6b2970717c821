"""Guards against Whisper's hallucinations on silence and noise.

Whisper was trained on subtitles, so on silence, hum or noise it tends to
"hear" the credits: "Thank you.", "Thanks for watching!", "you". The service
checks three things, cheapest first:

1. digital silence (no sample above -70 dBFS) never reaches the model;
2. a speech gate: fewer than ``min_windows`` 32 ms Silero VAD windows reach
   ``threshold`` -> empty text, no decode. The threshold is low (0.25, not the
   usual 0.5) because Silero scores whispered speech low, and lower still when
   there is a little noise: measured on the whispered samples with white noise
   from 30 to 0 dB SNR, at least 4 windows reach 0.25, while pink/brown noise,
   hum, tones, clicks and white noise up to 0.1 RMS reach it in none. Loud
   white noise (0.3 RMS and up) sometimes passes: Whisper then writes nothing,
   or rule 3 removes what it writes;
3. per segment: Whisper's own silence rule (no_speech_prob > 0.6 and
   avg_logprob < -1) and, only where VAD found no speech under the segment,
   the known phrases, a high no_speech_prob or a looping (compressible) text.

Real speech is never filtered by its words alone: a user who says "thank you"
is over detected speech, so rule 3 keeps it.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from .schemas import Segment

DIGITAL_SILENCE_PEAK = 10 ** (-70 / 20)

# Normalised (lower case, no punctuation) texts Whisper produces on non-speech.
HALLUCINATIONS = {
    "you", "thank you", "thanks", "thank you very much", "thank you so much", "thanks for watching",
    "thank you for watching", "thanks for watching and see you next time", "thank you for listening",
    "please subscribe", "subscribe", "like and subscribe", "bye", "bye bye", "goodbye", "oh", "so",
    "okay", "hmm", "um", "uh", "ah", "the end", "see you next time", "see you in the next video",
    "subtitles by the amara org community", "transcription by castingwords", "music", "applause",
    "silence", "laughter", "i'm sorry", "i'll see you next time", "thank you for your attention",
}

_NON_WORD = re.compile(r"[^a-z0-9' ]+")


def normalise(text: str) -> str:
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def is_known_hallucination(text: str) -> bool:
    norm = normalise(text)
    # "[Music]", "(applause)", "♪" and friends normalise to these or to nothing.
    return not norm or norm in HALLUCINATIONS


def is_digital_silence(audio: np.ndarray) -> bool:
    return audio.size == 0 or float(np.max(np.abs(audio))) < DIGITAL_SILENCE_PEAK


SPAN_THRESHOLD = 0.2  # a window at least this likely to be speech counts for spans and the stream's tail


def speech_spans_from_probs(probs: np.ndarray, window_s: float, threshold: float = 0.25,
                            min_windows: int = 4, pad_s: float = 0.3) -> list[tuple[float, float]]:
    """Speech spans (seconds) from per-window Silero probabilities; [] when the gate finds no speech."""
    if probs.size == 0 or int((probs >= threshold).sum()) < min_windows:
        return []
    spans: list[tuple[float, float]] = []
    for i in np.flatnonzero(probs >= SPAN_THRESHOLD):
        start, end = max(0.0, i * window_s - pad_s), (i + 1) * window_s + pad_s
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    total = probs.size * window_s
    return [(round(s, 3), round(min(e, total), 3)) for s, e in spans]


def speech_overlap(spans: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of detected speech inside [start, end]."""
    return sum(max(0.0, min(end, e) - max(start, s)) for s, e in spans)


def keep_segment(seg: Segment, spans: Sequence[tuple[float, float]] | None) -> bool:
    """False for a segment that is most likely a hallucination."""
    if seg.no_speech_prob > 0.6 and seg.avg_logprob < -1.0:
        return False  # Whisper's own silence rule
    if spans is None:
        return True
    # Segment timestamps are approximate: allow a little slack around them.
    if speech_overlap(spans, seg.start - 0.2, seg.end + 0.2) >= 0.1:
        return True
    return not (
        is_known_hallucination(seg.text)
        or seg.no_speech_prob > 0.5
        or seg.compression_ratio > 2.4
    )
