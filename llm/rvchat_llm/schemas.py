"""HTTP request bodies: POST /generate and the OpenAI chat-completions subset, and how a body becomes
an engine request. The WebSocket events are in rvchat_common.protocol.llm (``GenerateParams`` is
shared with ``POST /generate``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rvchat_common.errors import APIError
from rvchat_common.protocol import llm
from rvchat_common.protocol.base import UnicodeStr

from .engine import Request
from .settings import Settings
from .tools import check_messages, check_tools, message_text


class GenerateRequest(llm.GenerateParams):
    """POST /generate: the WebSocket ``generate`` event's fields, plus ``stream``."""

    stream: bool = Field(False, description="Server-Sent Events of token deltas.")


def check_limits(settings: Settings, contents: list[str], where: str = "messages") -> None:
    """Limits that depend on settings (the models check roles, types and ranges)."""
    if len(contents) > settings.max_messages:
        raise APIError(422, f"{where}: at most {settings.max_messages} messages are accepted, got "
                       f"{len(contents)}", "validation_error", param=where)
    for i, text in enumerate(contents):
        if len(text) > settings.max_message_chars:
            raise APIError(422, f"{where}.{i}.content: longer than the "
                           f"{settings.max_message_chars}-character limit", "validation_error", param=where)


def to_request(settings: Settings, body: llm.GenerateParams) -> Request:
    """A /generate body or a WebSocket ``generate`` event as an engine request."""
    messages = [m.model_dump() for m in body.messages]  # (absent tool fields stay absent)
    check_limits(settings, [message_text(m) for m in messages] + ([body.system] if body.system else []))
    tools, choice = check_tools(body.tools, body.tool_choice, settings.max_message_chars)
    check_messages(messages)
    return Request(messages=messages, system=body.system, temperature=body.temperature,
                   max_tokens=body.max_tokens, model=body.model, trim=bool(body.trim), tools=tools,
                   tool_choice=choice)


class TextPart(BaseModel):
    type: Literal["text"]
    text: UnicodeStr


class ChatMessage(BaseModel):
    """OpenAI message: content may be a string or a list of text parts. The tool fields are taken as
    they come and checked by rvchat_llm.tools (a 400, as OpenAI answers, not a 422)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: UnicodeStr | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: Any = None

    @field_validator("content")
    @classmethod
    def _join_parts(cls, v: Any) -> Any:
        if isinstance(v, list):
            return "".join(p.text for p in v)
        return v

    def text(self) -> str:
        return self.content or ""  # type: ignore[return-value]

    def as_dict(self) -> dict[str, Any]:
        """The engine's message (rvchat_llm.tools): role, content, and the tool fields if set."""
        out: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: UnicodeStr | None = Field(None, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: UnicodeStr | list[UnicodeStr] | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice is generated.")
    seed: int | None = None
    user: str | None = None
    tools: Any = Field(None, description="Functions the model may call (OpenAI's shape).")
    tool_choice: Any = Field(None, description="none, auto, required or "
                             '{"type": "function", "function": {"name"}}.')
    parallel_tool_calls: bool | None = None

    def to_request(self, settings: Settings) -> Request:
        """The engine request; tools, tool choice and tool messages checked (400 when wrong)."""
        messages = [m.as_dict() for m in self.messages]
        tools, choice = check_tools(self.tools, self.tool_choice, settings.max_message_chars)
        check_messages(messages)
        check_limits(settings, [message_text(m) for m in messages])
        return Request(messages=messages, temperature=self.temperature,
                       max_tokens=self.max_completion_tokens or self.max_tokens, model=self.model,
                       top_p=self.top_p, stop=self.stop_list(), seed=self.seed,
                       default_system=settings.v1_default_system(),
                       tools=tools, tool_choice=choice, parallel_tool_calls=self.parallel_tool_calls)

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s][:4]
