"""Any OpenAI-compatible server (vLLM, llama.cpp server, LM Studio, hosted APIs) through the
official ``openai`` client. Its own retries are off: the engine retries, and only before
the first token."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator

import httpx
import openai

from ..settings import Settings
from ..tools import new_call_id
from .base import ChatOptions, Delta, EstimatedTokens, Final, StreamItem, ToolCallDelta, UpstreamError

log = logging.getLogger("rvchat.llm.openai")


class OpenAIProvider(EstimatedTokens):
    name = "openai"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base_url = settings.openai_base_url.rstrip("/")
        self.default_model = settings.model_name()
        self.context_window = settings.openai_context_window
        timeout = httpx.Timeout(settings.first_token_timeout_s + 5, connect=settings.connect_timeout_s)
        self.client = openai.AsyncOpenAI(base_url=self.base_url, api_key=settings.openai_api_key or "none",
                                         timeout=timeout, max_retries=0)
        self._ready_cache: tuple[float, str | None] = (0.0, "not checked yet")

    def load(self) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        try:
            await self.client.close()
        except Exception:
            pass

    def _error(self, exc: BaseException, model: str) -> UpstreamError:
        where = f"the OpenAI-compatible server at {self.base_url}"
        if isinstance(exc, UpstreamError):
            return exc
        if isinstance(exc, openai.APITimeoutError):
            return UpstreamError(504, f"{where} timed out", "upstream_timeout")
        if isinstance(exc, openai.APIConnectionError):
            return UpstreamError(503, f"{where} is unreachable ({exc})", "upstream_unavailable",
                                 retryable=True)
        if isinstance(exc, openai.NotFoundError):
            return UpstreamError(404, f"model '{model}' is not available on {where}: {exc.message}",
                                 "model_not_found")
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return UpstreamError(502, f"{where} refused our API key (set OPENAI_API_KEY): {exc.message}",
                                 "upstream_auth")
        if isinstance(exc, openai.RateLimitError):
            return UpstreamError(429, f"{where} is rate limiting: {exc.message}", "upstream_rate_limited",
                                 retryable=True)
        if isinstance(exc, openai.APIStatusError):
            if exc.status_code >= 500:
                return UpstreamError(502, f"{where} failed ({exc.status_code}): {exc.message}",
                                     "upstream_error", retryable=True)
            return UpstreamError(400, f"{where} rejected the request ({exc.status_code}): {exc.message}",
                                 "upstream_rejected")
        if isinstance(exc, openai.APIError):  # an error event inside the stream
            return UpstreamError(502, f"{where} reported an error mid-stream: {exc.message}",
                                 "upstream_error")
        if isinstance(exc, (httpx.HTTPError, ValueError)):
            return UpstreamError(502, f"connection to {where} broke: {type(exc).__name__}: {exc}",
                                 "upstream_error")
        return UpstreamError(502, f"{where} failed: {type(exc).__name__}: {exc}", "upstream_error")

    async def ready(self) -> str | None:
        at, reason = self._ready_cache
        if time.monotonic() - at < self.settings.ready_cache_s:
            return reason
        try:
            t = self.settings.connect_timeout_s
            await self.client.with_options(timeout=httpx.Timeout(t, connect=t)).models.list()
            reason = None
        except openai.NotFoundError:
            reason = None  # reachable; some servers simply have no /models
        except Exception as exc:
            reason = self._error(exc, self.default_model).message
        self._ready_cache = (time.monotonic(), reason)
        return reason

    async def stream_chat(self, messages: list[dict[str, Any]],
                          options: ChatOptions) -> AsyncIterator[StreamItem]:
        kwargs: dict = {"model": options.model, "messages": [_upstream_message(m) for m in messages],
                        "temperature": options.temperature, "max_tokens": options.max_tokens,
                        "stream": True, "stream_options": {"include_usage": True}}
        if options.tools:  # OpenAI's own shapes: passed as they are
            kwargs["tools"] = options.tools
            kwargs["tool_choice"] = options.tool_choice
            if options.parallel_tool_calls is not None:
                kwargs["parallel_tool_calls"] = options.parallel_tool_calls
        if options.top_p is not None:
            kwargs["top_p"] = options.top_p
        if options.stop:
            kwargs["stop"] = options.stop
        if options.seed is not None:
            kwargs["seed"] = options.seed
        stream = None
        finish, usage, model = None, None, options.model
        seen: set[int] = set()  # tool call indexes
        try:
            stream = await self.client.chat.completions.create(**kwargs)
            async for chunk in stream:
                model = chunk.model or model
                if chunk.usage:
                    usage = chunk.usage
                for choice in chunk.choices or []:
                    if choice.delta and choice.delta.content:
                        yield Delta(choice.delta.content)
                    for tc in (choice.delta.tool_calls if choice.delta else None) or []:
                        fn = tc.function
                        # Every call's first piece names it, for our clients, even where a lax
                        # server left the id out.
                        first = tc.index not in seen
                        seen.add(tc.index)
                        yield ToolCallDelta(index=tc.index, id=tc.id or (new_call_id() if first else None),
                                            name=fn.name if fn else None,
                                            arguments=(fn.arguments if fn else None) or "")
                    if choice.finish_reason:
                        finish = choice.finish_reason
            if finish is None:
                raise UpstreamError(502, f"the OpenAI-compatible server at {self.base_url} ended the "
                                    "stream without a finish reason", "upstream_incomplete")
            yield Final(finish_reason=finish, model=model,
                        prompt_tokens=usage.prompt_tokens if usage else None,
                        completion_tokens=usage.completion_tokens if usage else None)
        except (GeneratorExit, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise self._error(exc, options.model) from exc
        finally:
            if stream is not None:
                await stream.close()  # frees the upstream request on cancel


def _upstream_message(m: dict[str, Any]) -> dict[str, Any]:
    # An assistant message that only calls tools has content null in OpenAI's shape.
    if m.get("tool_calls") and not m.get("content"):
        return {**m, "content": None}
    return m
