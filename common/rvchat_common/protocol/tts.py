"""The TTS service's WebSocket events (``ws://tts:3003/ws``; docs/protocols.md, TTS).

Client -> server: ``Config``, ``Text``, ``Flush`` (alias ``end``), ``Cancel`` (alias ``reset``).
Server -> client: ``Ready``, ``Audio`` (a JSON header, then one binary frame of PCM16), ``Done``,
``Cancelled``, ``ErrorEvent``.
"""

from __future__ import annotations

import builtins
from typing import Annotated, Literal

from pydantic import Field, StrictFloat, StrictStr, TypeAdapter

from .base import ErrorEvent, Event

MIN_SPEED, MAX_SPEED = 0.25, 4.0


# --- client -> server -----------------------------------------------------------------------
class Config(Event):
    """Optional; applies to text sent after it. Absent fields are unchanged; ``"voice": null`` is the
    default voice."""

    only_set_fields = True

    type: Literal["config"] = "config"
    voice: StrictStr | None = Field(None, max_length=1024, description="Voice name or alias.")
    speed: StrictFloat | None = Field(None, ge=MIN_SPEED, le=MAX_SPEED, description="1 = normal.")


class Text(Event):
    """Token delta or whole text, appended; each sentence is spoken as soon as it is complete."""

    type: Literal["text"] = "text"
    text: StrictStr


class Flush(Event):
    """Speak whatever text remains, then answer ``done``."""

    type: Literal["flush", "end"] = "flush"


class Cancel(Event):
    """Stop at once, drop queued text and sentences, answer ``cancelled``."""

    type: Literal["cancel", "reset"] = "cancel"


ClientEvent = Annotated[Config | Text | Flush | Cancel, Field(discriminator="type")]
client_events: TypeAdapter[ClientEvent] = TypeAdapter(ClientEvent)


# --- server -> client -----------------------------------------------------------------------
class Ready(Event):
    """After connect and after each config."""

    type: Literal["ready"] = "ready"
    sample_rate: int
    voice: str


class Audio(Event):
    """One segment's audio: this header, then one binary frame of ``bytes`` bytes of PCM16.

    ``pcm`` is not part of the JSON: the sender passes it alongside (``EventSocket.send_audio``),
    the receiver attaches the binary frame that follows the header.
    """

    type: Literal["audio"] = "audio"
    index: int = Field(description="Counts from 0 in each turn.")
    text: str = Field(description="The segment as written.")
    sample_rate: int
    bytes: int = Field(description="Length of the binary frame that follows.")
    # builtins.bytes: within this class, ``bytes`` is the field above.
    pcm: builtins.bytes = Field(b"", exclude=True, repr=False)


class Done(Event):
    """A flush has been fully spoken."""

    type: Literal["done"] = "done"
    sentences: int


class Cancelled(Event):
    """Nothing of the cancelled turn is sent after it."""

    type: Literal["cancelled"] = "cancelled"


ServerEvent = Annotated[Ready | Audio | Done | Cancelled | ErrorEvent, Field(discriminator="type")]
server_events: TypeAdapter[ServerEvent] = TypeAdapter(ServerEvent)
