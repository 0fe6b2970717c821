"""The STT service's WebSocket events (``ws://stt:3002/ws``; docs/protocols.md, STT).

Client -> server: ``Config``, ``End`` (alias ``flush``), ``Reset`` and binary PCM16 frames.
Server -> client: ``Ready``, ``Partial``, ``Final``, ``ResetAck``, ``ErrorEvent``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr, TypeAdapter

from .base import ErrorEvent, Event, WireModel


# --- client -> server -----------------------------------------------------------------------
class Config(Event):
    """Optional; absent fields are unchanged. ``"language": null`` means auto-detect (or the service's
    default language), ``"prompt": null`` clears the prompt."""

    only_set_fields = True

    type: Literal["config"] = "config"
    language: StrictStr | None = Field(None, max_length=32, description="ISO-639-1 code; null: auto.")
    sample_rate: StrictInt | None = Field(None, ge=8000, le=48000, description="Rate of the PCM16 frames.")
    partials: StrictBool | None = Field(None, description="Send partial transcripts while audio arrives.")
    prompt: StrictStr | None = Field(None, max_length=4000,
                                     description="Text that guides Whisper's spelling.")


class End(Event):
    """Transcribe what was sent, answer ``final``, then start the next utterance."""

    type: Literal["end", "flush"] = "end"
    speech: StrictBool | None = Field(
        None, description="The client's own VAD heard speech in this utterance: decode it even where the "
        "service's speech gate hears none (a falsetto or a soft voice); the hallucination filter still applies.")


class Reset(Event):
    """Drop the buffer without transcribing (answered by ``ResetAck``)."""

    type: Literal["reset"] = "reset"


ClientEvent = Annotated[Config | End | Reset, Field(discriminator="type")]
client_events: TypeAdapter[ClientEvent] = TypeAdapter(ClientEvent)


# --- server -> client -----------------------------------------------------------------------
class Ready(Event):
    """After connect and after each config."""

    type: Literal["ready"] = "ready"
    sample_rate: int
    language: str | None
    model: str


class Partial(Event):
    """The transcript so far of the utterance in progress."""

    type: Literal["partial"] = "partial"
    text: str
    audio_seconds: float


class FinalSegment(WireModel):
    start: float
    end: float
    text: str


class Final(Event):
    """The utterance's transcript; ``auto`` (present only when true) when the buffer hit its limit."""

    omit_if_none = frozenset({"auto"})

    type: Literal["final"] = "final"
    text: str
    language: str
    duration: float
    segments: list[FinalSegment] = Field(default_factory=list)
    processing_ms: float
    auto: Literal[True] | None = None


class ResetAck(Event):
    """Acknowledges a ``reset``: no partial of the dropped audio follows it."""

    type: Literal["reset"] = "reset"


ServerEvent = Annotated[Ready | Partial | Final | ResetAck | ErrorEvent, Field(discriminator="type")]
server_events: TypeAdapter[ServerEvent] = TypeAdapter(ServerEvent)
