"""HTTP request and response shapes of the VAD service.

Its WebSocket events are in rvchat_common.protocol.vad.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from rvchat_common.protocol.vad import MAX_MS


class DetectParams(BaseModel):
    """/detect options (query string or multipart form fields); absent ones take the service defaults.

    ``sample_rate`` (raw PCM16 bodies) belongs to the upload and is read by rvchat_common.upload."""

    model_config = ConfigDict(extra="ignore")

    threshold: float | None = Field(None, gt=0, lt=1, description="Speech probability threshold.")
    min_speech_ms: int | None = Field(None, ge=0, le=MAX_MS, description="Drop shorter speech.")
    min_silence_ms: int | None = Field(None, ge=0, le=MAX_MS,
                                       description="Silence needed to split segments.")
    speech_pad_ms: int | None = Field(None, ge=0, le=MAX_MS, description="Padding on each side.")


class Segment(BaseModel):
    start: float = Field(description="Seconds from the start of the audio.")
    end: float = Field(description="Seconds from the start of the audio.")


class DetectResponse(BaseModel):
    segments: list[Segment]
    duration: float = Field(description="Length of the audio in seconds.")
    speech_seconds: float = Field(description="Total length of the segments in seconds.")
