"""Request and response shapes of the VAD service."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_MS = 600_000  # ten minutes: anything longer is a mistake, not a setting


class DetectParams(BaseModel):
    """/detect options (query string or multipart form fields); absent ones take the service defaults."""

    model_config = ConfigDict(extra="ignore")

    threshold: float | None = Field(None, gt=0, lt=1, description="Speech probability threshold.")
    min_speech_ms: int | None = Field(None, ge=0, le=MAX_MS, description="Drop shorter speech.")
    min_silence_ms: int | None = Field(None, ge=0, le=MAX_MS,
                                       description="Silence needed to split segments.")
    speech_pad_ms: int | None = Field(None, ge=0, le=MAX_MS, description="Padding on each side.")
    sample_rate: int | None = Field(None, ge=4000, le=192000,
                                    description="Sample rate of a raw PCM16 body (audio/pcm).")


class Segment(BaseModel):
    start: float = Field(description="Seconds from the start of the audio.")
    end: float = Field(description="Seconds from the start of the audio.")


class DetectResponse(BaseModel):
    segments: list[Segment]
    duration: float = Field(description="Length of the audio in seconds.")
    speech_seconds: float = Field(description="Total length of the segments in seconds.")


class StreamConfig(BaseModel):
    """The /ws ``config`` event; every field optional, unknown fields rejected (typos surface)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["config"] = "config"
    sample_rate: int | None = Field(None, ge=4000, le=192000)
    threshold: float | None = Field(None, gt=0, lt=1)
    min_speech_ms: int | None = Field(None, ge=0, le=MAX_MS)
    min_silence_ms: int | None = Field(None, ge=0, le=MAX_MS)
    speech_pad_ms: int | None = Field(None, ge=0, le=MAX_MS)
    probabilities: bool | None = None
