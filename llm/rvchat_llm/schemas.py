"""Request and response bodies: our /generate and /ws, and the OpenAI chat-completions subset."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Role = Field(description="system, user or assistant.")
    content: StrictStr = Field(description="The message text.")


class GenerateRequest(BaseModel):
    """POST /generate and the WS ``generate`` event."""

    model_config = ConfigDict(extra="ignore")

    messages: list[Message] = Field(min_length=1, description="The conversation, oldest first.")
    system: StrictStr | None = Field(None, description="System prompt; replaces any system messages "
                                     "and the default. Omit for the service default.")
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    model: StrictStr | None = Field(None, max_length=256, description="Upstream model (ignored by the "
                                    "local provider, which has one).")
    stream: bool = Field(False, description="Server-Sent Events of token deltas.")


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    """OpenAI message: content may be a string or a list of text parts."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart] | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _join_parts(cls, v: Any) -> Any:
        if isinstance(v, list):
            return "".join(p.text for p in v)
        return v

    def text(self) -> str:
        return self.content or ""  # type: ignore[return-value]


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(None, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice is generated.")
    seed: int | None = None
    user: str | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s][:4]
