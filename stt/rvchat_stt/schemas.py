"""What the engine returns and the HTTP request options and responses; the WebSocket events are in
rvchat_common.protocol.stt."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Word(BaseModel):
    word: str
    start: float
    end: float
    probability: float | None = None


class Segment(BaseModel):
    """A transcribed segment, with Whisper's quality figures (kept for OpenAI verbose_json)."""

    id: int = 0
    seek: int = 0
    start: float
    end: float
    text: str
    tokens: list[int] = Field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: list[Word] | None = None


class Transcript(BaseModel):
    """What the engine returns; routes shape it for each API."""

    text: str
    language: str
    language_probability: float | None = None
    duration: float
    segments: list[Segment] = Field(default_factory=list)
    speech_seconds: float | None = None
    dropped_segments: int = 0


class TranscribeOptions(BaseModel):
    language: str | None = None
    prompt: str | None = None
    word_timestamps: bool = False
    vad_filter: bool = False
    beam_size: int | None = None
    temperature: float | None = None


# --- /transcribe response --------------------------------------------------
class SegmentOut(BaseModel):
    start: float
    end: float
    text: str
    words: list[Word] | None = None


class TranscribeResponse(BaseModel):
    text: str
    language: str
    duration: float
    segments: list[SegmentOut]
    words: list[Word] | None = None

    @classmethod
    def from_transcript(cls, t: Transcript, words: bool) -> "TranscribeResponse":
        segs = [SegmentOut(start=s.start, end=s.end, text=s.text.strip(),
                           words=s.words if words else None) for s in t.segments]
        flat = [w for s in t.segments for w in (s.words or [])] if words else None
        return cls(text=t.text, language=t.language, duration=t.duration, segments=segs, words=flat)
