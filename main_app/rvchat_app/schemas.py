"""Request bodies of the REST API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ConversationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field("", max_length=200, description="Optional title; the first message names it otherwise.")


class MessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conversation_id: str | None = Field(None, max_length=64, description="Continue this conversation (else a new one).")
    text: str = Field(..., min_length=1, max_length=4000, description="The user's message.")
    audio: bool = Field(False, description="Also synthesise the reply: base64 WAV in `audio`.")
