"""What every provider offers: a token stream over a chat, plus readiness and token counting.

Providers raise :class:`UpstreamError` for anything the upstream did wrong; ``retryable``
says whether trying again (before any token was sent) could help.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Protocol

from rvchat_common.errors import APIError


@dataclass
class ChatOptions:
    model: str
    temperature: float
    max_tokens: int
    stop: list[str] = field(default_factory=list)
    top_p: float | None = None
    seed: int | None = None


@dataclass
class Delta:
    """A piece of the reply (usually one token)."""

    content: str


@dataclass
class Final:
    """The last item of every stream."""

    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


StreamItem = Delta | Final


class UpstreamError(APIError):
    """The upstream failed. ``retryable``: a new attempt might succeed (refused, timeout, 5xx)."""

    def __init__(self, status: int, message: str, code: str, retryable: bool = False) -> None:
        super().__init__(status, message, code)
        self.retryable = retryable


class Provider(Protocol):
    name: str
    default_model: str
    context_window: int

    def load(self) -> None:
        """Blocking start-up work (load weights); runs in a thread."""

    async def start(self) -> None:
        """Async start-up work (warm the upstream model); must not raise."""

    async def close(self) -> None: ...

    async def ready(self) -> str | None:
        """None when the upstream can serve, else the reason (naming the upstream)."""

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens for these messages (exact where a tokenizer is at hand, else an estimate)."""

    def stream_chat(self, messages: list[dict[str, str]], options: ChatOptions) -> AsyncIterator[StreamItem]:
        """Deltas then exactly one Final; closing the iterator early must stop generation upstream."""


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    # ~3.5 characters per token for English with BPE vocabularies, plus the chat template's
    # per-message framing; deliberately on the high side so trimming errs towards fitting.
    return sum(len(m.get("content") or "") * 2 // 7 + 6 for m in messages) + 3


class EstimatedTokens:
    """Token counting for remote providers, whose tokenizer is not at hand."""

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return estimate_tokens(messages)

    def text_tokens(self, text: str) -> int:
        # The message framing estimate_tokens adds (6 + 3) is not part of a bare text.
        return estimate_tokens([{"content": text}]) - 9
