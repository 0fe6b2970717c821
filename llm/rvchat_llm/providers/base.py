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
    # Checked and normalised by rvchat_llm.tools: OpenAI's tool dicts, and None (no tools), "none",
    # "auto", "required" or {"type": "function", "function": {"name"}}.
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None

    def offered_tools(self) -> list[dict[str, Any]]:
        """The tools the model may call for this request (none when the choice is "none")."""
        if not self.tools or self.tool_choice == "none":
            return []
        if isinstance(self.tool_choice, dict):
            name = self.tool_choice["function"]["name"]
            return [t for t in self.tools if t["function"]["name"] == name]
        return self.tools


@dataclass
class Delta:
    """A piece of the reply (usually one token)."""

    content: str


@dataclass
class ToolCallDelta:
    """A piece of a tool call, as OpenAI streams them: the first piece of call ``index`` carries its
    ``id`` and ``name``, the next ones pieces of its ``arguments`` (a provider that has the whole
    call at once sends it in one piece)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class Final:
    """The last item of every stream."""

    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


StreamItem = Delta | ToolCallDelta | Final


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

    def count_tokens(self, messages: list[dict[str, Any]]) -> int:
        """Prompt tokens for these messages (exact where a tokenizer is at hand, else an estimate)."""

    def stream_chat(self, messages: list[dict[str, Any]], options: ChatOptions) -> AsyncIterator[StreamItem]:
        """Deltas (text or tool call pieces) then exactly one Final; closing the iterator early must
        stop generation upstream. ``messages`` are in OpenAI's shape (rvchat_llm.tools)."""


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    # ~3.5 characters per token for English with BPE vocabularies, plus the chat template's
    # per-message framing; deliberately on the high side so trimming errs towards fitting.
    def chars(m: dict[str, Any]) -> int:
        calls = m.get("tool_calls") or []
        return len(m.get("content") or "") + sum(len(c["function"]["arguments"]) + 24 for c in calls)

    return sum(chars(m) * 2 // 7 + 6 for m in messages) + 3


class EstimatedTokens:
    """Token counting for remote providers, whose tokenizer is not at hand."""

    def count_tokens(self, messages: list[dict[str, Any]]) -> int:
        return estimate_tokens(messages)

    def text_tokens(self, text: str) -> int:
        # The message framing estimate_tokens adds (6 + 3) is not part of a bare text.
        return estimate_tokens([{"content": text}]) - 9
