"""The LLM service's WebSocket events (``ws://llm:3004/ws``; docs/protocols.md, LLM).

Client -> server: ``Generate``, ``Cancel``. Server -> client: ``Start``, ``Delta``, ``Done``,
``Cancelled``, ``ErrorEvent``; every event of a generation carries its ``id``.
``GenerateParams`` is also the body of ``POST /generate`` (plus ``stream``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from .base import ErrorEvent, Event, UnicodeStr, WireModel

Role = Literal["system", "user", "assistant"]


class Message(WireModel):
    role: Role = Field(description="system, user or assistant.")
    content: UnicodeStr = Field(description="The message text.")


# --- client -> server -----------------------------------------------------------------------
class GenerateParams(WireModel):
    """What a generation needs: the conversation and optional sampling settings."""

    omit_if_none = frozenset({"system", "temperature", "max_tokens", "model", "trim"})

    messages: list[Message] = Field(min_length=1, description="The conversation, oldest first.")
    system: UnicodeStr | None = Field(None, description="System prompt; replaces any system messages "
                                     "and the default. Omit for the service default.")
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    model: UnicodeStr | None = Field(None, max_length=256, description="Upstream model (ignored by the "
                                    "local provider, which has one).")
    trim: bool | None = Field(None, description="When the newest message alone is too long for the "
                              "context window, cut it to fit (its start is kept) rather than answer "
                              "context_length_exceeded. For a chat whose user typed the text: a 4,000-"
                              "character message of rare characters is more tokens than a 2,048-token "
                              "window holds.")


class Generate(GenerateParams, Event):
    """Start a generation; one already running is cancelled first (it gets its ``cancelled``)."""

    type: Literal["generate"] = "generate"


class Cancel(Event):
    """Stop the generation in flight; with none running the answer is ``cancelled`` with content ""."""

    type: Literal["cancel"] = "cancel"


ClientEvent = Annotated[Generate | Cancel, Field(discriminator="type")]
client_events: TypeAdapter[ClientEvent] = TypeAdapter(ClientEvent)


# --- server -> client -----------------------------------------------------------------------
class Start(Event):
    type: Literal["start"] = "start"
    id: str
    model: str
    provider: str


class Delta(Event):
    """A piece of the reply, usually one token."""

    type: Literal["delta"] = "delta"
    id: str
    content: str


class Usage(WireModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Timings(WireModel):
    omit_if_none = frozenset({"tokens_per_s"})

    first_token_ms: float | None = None
    total_ms: float
    tokens_per_s: float | None = None


class Done(Event):
    type: Literal["done"] = "done"
    id: str
    message: Message
    model: str
    provider: str
    finish_reason: str = Field(description="stop or length.")
    usage: Usage
    timings: Timings
    dropped_messages: int = Field(0, description="Old messages trimmed to fit the context window.")


class Cancelled(Event):
    """``content`` is what was generated before the cancel; ``id`` is absent when nothing was running."""

    omit_if_none = frozenset({"id"})

    type: Literal["cancelled"] = "cancelled"
    id: str | None = None
    content: str = ""


ServerEvent = Annotated[Start | Delta | Done | Cancelled | ErrorEvent, Field(discriminator="type")]
server_events: TypeAdapter[ServerEvent] = TypeAdapter(ServerEvent)
