"""HTTP request bodies (pydantic); the WebSocket events are in rvchat_common.protocol.tts.

Types are strict so a number where text belongs is a 422, not a guess.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator

from rvchat_common.protocol.tts import MAX_SPEED, MIN_SPEED  # one speed range for HTTP and /ws


class SynthesizeRequest(BaseModel):
    """POST /synthesize."""

    model_config = ConfigDict(extra="ignore")

    text: StrictStr = Field(..., description="Text to speak (markdown, numbers and emoji are handled).")
    voice: StrictStr | None = Field(None, description="Voice name or alias (see GET /voices); "
                                    "unknown names use the default voice.")
    return_format: Literal["wav", "base64", "pcm"] = Field(
        "wav", description="wav: audio/wav; base64: JSON with base64 WAV; pcm: raw PCM16 mono.")
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED, description="Speaking rate (1 = normal).")
    stream: StrictBool = Field(False, description="wav/pcm: send each sentence's audio as soon as "
                               "it is ready (chunked; WAV header with unknown length).")


class SpeechRequest(BaseModel):
    """POST /v1/audio/speech (OpenAI-compatible)."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr = Field("tts-1", description="Accepted and ignored (any value): one engine, Piper.")
    input: StrictStr = Field(..., description="Text to speak.")
    voice: StrictStr | dict | None = Field("alloy", description="OpenAI voice name, alias or "
                                           "installed voice; {'id': name} is accepted too.")
    response_format: Literal["wav", "pcm", "mp3", "opus", "flac", "aac"] = Field("mp3")
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED)
    instructions: StrictStr | None = Field(
        None, description="Accepted and ignored (Piper has no style control).")
    stream_format: Literal["audio", "sse"] = Field("audio", description="audio: the file, streamed; "
                                                   "sse: speech.audio.delta events with base64 chunks.")

    @field_validator("voice")
    @classmethod
    def _voice_id(cls, v: str | dict | None) -> str | None:
        if isinstance(v, dict):
            vid = v.get("id")
            if not isinstance(vid, str):
                raise ValueError("voice object needs a string 'id'")
            return vid
        return v
