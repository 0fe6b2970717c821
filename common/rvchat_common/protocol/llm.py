"""The LLM service's WebSocket events (``ws://llm:3004/ws``; docs/protocols.md, LLM).

Client -> server: ``Generate``, ``Cancel``, ``Eou``. Server -> client: ``Start``, ``Delta``, ``ToolCallEvent``,
``Done``, ``Cancelled``, ``EouResult``, ``ErrorEvent``; every event of a generation carries its ``id``, and an
``eou`` request's answer (or error) the request's ``id``. Tool calling
uses OpenAI's shapes (``Tool``, ``ToolCall``, ``tool`` messages with ``tool_call_id``).
``GenerateParams`` is also the body of ``POST /generate`` (plus ``stream``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, field_validator, model_validator

from .base import ErrorEvent, Event, UnicodeStr, WireModel

Role = Literal["system", "user", "assistant", "tool"]


# --- tool calling (OpenAI's shapes) ----------------------------------------------------------
class FunctionCall(WireModel):
    name: str = Field(description="The function called.")
    arguments: str = Field(description="Its arguments: the text of a JSON object.")


class ToolCall(WireModel):
    id: str = Field(description="Names the call; the ``tool`` message with its result carries it "
                    "as ``tool_call_id``.")
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDef(WireModel):
    omit_if_none = frozenset({"description", "parameters"})

    name: str = Field(description="Letters, digits, _ and -, at most 64.")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="JSON Schema of the arguments object.")


class Tool(WireModel):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedToolChoice(WireModel):
    type: Literal["function"] = "function"
    function: dict[str, str] = Field(description='{"name": "..."}: this function must be called.')


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class Message(WireModel):
    omit_if_none = frozenset({"tool_calls", "tool_call_id"})

    role: Role = Field(description="system, user, assistant or tool (a function's result).")
    content: UnicodeStr = Field("", description="The message text (may be empty in an assistant "
                                "message that calls tools).")
    tool_calls: list[ToolCall] | None = Field(None, description="The calls an assistant message made.")
    tool_call_id: str | None = Field(None, description="In a tool message: the call it answers.")

    @model_validator(mode="before")
    @classmethod
    def _content_unless_calling(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("content") is None and not data.get("tool_calls"):
            raise ValueError("content is required (only an assistant message calling tools may leave it "
                             "out or null)")
        return data

    @field_validator("content", mode="before")
    @classmethod
    def _null_is_empty(cls, v: Any) -> Any:
        return "" if v is None else v  # OpenAI's clients send null beside tool_calls


# --- client -> server -----------------------------------------------------------------------
class GenerateParams(WireModel):
    """What a generation needs: the conversation and optional sampling settings."""

    omit_if_none = frozenset({"system", "temperature", "max_tokens", "model", "trim", "tools",
                              "tool_choice"})

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
    tools: list[Tool] | None = Field(None, description="Functions the model may call.")
    tool_choice: ToolChoice | None = Field(None, description="none, auto (the default with tools), "
                                           "required, or one named function.")


class Generate(GenerateParams, Event):
    """Start a generation; one already running is cancelled first (it gets its ``cancelled``)."""

    type: Literal["generate"] = "generate"


class Cancel(Event):
    """Stop the generation in flight; with none running the answer is ``cancelled`` with content ""."""

    type: Literal["cancel"] = "cancel"


class EouParams(WireModel):
    """What an end-of-utterance question needs (also the body of ``POST /v1/eou``)."""

    text: UnicodeStr = Field(min_length=1, max_length=4000, description="The user's words so far (a "
                             "transcript); only their last ~48 tokens are read.")


class Eou(EouParams, Event):
    """How likely the user's message is finished after ``text``; answered by ``eou_result`` with the same
    ``id`` while generations go on (it neither waits for nor cancels one)."""

    type: Literal["eou"] = "eou"
    id: str = Field(min_length=1, max_length=64, description="Chosen by the client; the answer carries it.")


class Prefill(GenerateParams, Event):
    """Evaluate the prompt of this conversation ahead of its ``generate`` - up to the user's words so far
    (none yet, or a partial transcript's) - so that the generation evaluates only what changed; generates
    nothing. Answered by ``prefilled`` with the same ``id``, beside any generation (it never cancels one;
    one runs at a time: a newer one replaces one still waiting, and a ``generate`` stops both)."""

    type: Literal["prefill"] = "prefill"
    id: str = Field(min_length=1, max_length=64, description="Chosen by the client; the answer carries it.")


ClientEvent = Annotated[Generate | Cancel | Eou | Prefill, Field(discriminator="type")]
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


class ToolCallEvent(Event):
    """A whole tool call, sent as soon as the model has written it (before ``done``)."""

    type: Literal["tool_call"] = "tool_call"
    id: str
    call: ToolCall


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
    finish_reason: str = Field(description="stop, length or tool_calls.")
    usage: Usage
    timings: Timings
    dropped_messages: int = Field(0, description="Old messages trimmed to fit the context window.")


class Cancelled(Event):
    """``content`` is what was generated before the cancel; ``id`` is absent when nothing was running."""

    omit_if_none = frozenset({"id"})

    type: Literal["cancelled"] = "cancelled"
    id: str | None = None
    content: str = ""


class EouResult(Event):
    """The answer to ``eou``: P(the message ends here), from the embedded model's next token."""

    type: Literal["eou_result"] = "eou_result"
    id: str
    probability: float = Field(ge=0, le=1, description="P(the next token after the words is . ? ! or the "
                               "end of the message).")


class Prefilled(Event):
    """The answer to ``prefill``: how many prompt tokens it evaluated (0: all were cached already, the
    provider keeps no cache of its own (Ollama, OpenAI-compatible), or it gave way to a generation)."""

    type: Literal["prefilled"] = "prefilled"
    id: str
    tokens: int = Field(ge=0)


ServerEvent = Annotated[Start | Delta | ToolCallEvent | Done | Cancelled | EouResult | Prefilled | ErrorEvent,
                        Field(discriminator="type")]
server_events: TypeAdapter[ServerEvent] = TypeAdapter(ServerEvent)
