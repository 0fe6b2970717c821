"""The VAD service's WebSocket events (``ws://vad:3001/ws``; docs/protocols.md, VAD).

Client -> server: ``Config``, ``Flush``, ``Reset`` and binary PCM16 frames at the configured rate.
Server -> client: ``Ready``, ``SpeechStart``, ``SpeechEnd``, ``Probability``, ``Flushed``, ``ErrorEvent``.
Times are seconds of stream audio.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, TypeAdapter

from .base import ErrorEvent, Event

MAX_MS = 600_000  # ten minutes: anything longer is a mistake, not a setting


# --- client -> server -----------------------------------------------------------------------
class Config(Event):
    """Optional, first or at any time; every field optional (absent: unchanged). Unknown fields are
    rejected so a typo ("silence") is an error rather than a setting silently ignored."""

    model_config = ConfigDict(extra="forbid")
    only_set_fields = True

    type: Literal["config"] = "config"
    sample_rate: int | None = Field(None, ge=4000, le=192000, description="Rate of the PCM16 frames.")
    threshold: float | None = Field(None, gt=0, lt=1, description="Speech probability threshold.")
    min_speech_ms: int | None = Field(None, ge=0, le=MAX_MS, description="Speech needed before speech_start.")
    min_silence_ms: int | None = Field(None, ge=0, le=MAX_MS, description="Silence that ends a turn.")
    speech_pad_ms: int | None = Field(None, ge=0, le=MAX_MS, description="Padding on each side of speech.")
    probabilities: bool | None = Field(None, description="Send a probability event per 32 ms chunk.")


class Flush(Event):
    """End of stream: process the remainder, close an open turn, answer ``flushed``, start over."""

    type: Literal["flush"] = "flush"


class Reset(Event):
    """Forget everything (new turn); stream time restarts at 0. No reply."""

    type: Literal["reset"] = "reset"


ClientEvent = Annotated[Config | Flush | Reset, Field(discriminator="type")]
client_events: TypeAdapter[ClientEvent] = TypeAdapter(ClientEvent)


# --- server -> client -----------------------------------------------------------------------
class Ready(Event):
    """After connect and after each config: the settings in effect."""

    type: Literal["ready"] = "ready"
    sample_rate: int
    threshold: float
    min_speech_ms: int
    min_silence_ms: int
    speech_pad_ms: int
    probabilities: bool


class SpeechStart(Event):
    """Sent once ``min_speech_ms`` of speech is in, stamped where speech began (minus the pad)."""

    type: Literal["speech_start"] = "speech_start"
    timestamp: float


class SpeechEnd(Event):
    """Sent once ``min_silence_ms`` of silence has passed, stamped where the silence began (plus the pad)."""

    type: Literal["speech_end"] = "speech_end"
    timestamp: float
    start: float
    duration: float


class Probability(Event):
    """One per 32 ms chunk when ``probabilities`` is on; ``timestamp`` is the chunk's start."""

    type: Literal["probability"] = "probability"
    timestamp: float
    probability: float


class Flushed(Event):
    """The answer to ``flush``; ``timestamp`` is the stream's length."""

    type: Literal["flushed"] = "flushed"
    timestamp: float


ServerEvent = Annotated[Ready | SpeechStart | SpeechEnd | Probability | Flushed | ErrorEvent,
                        Field(discriminator="type")]
server_events: TypeAdapter[ServerEvent] = TypeAdapter(ServerEvent)
