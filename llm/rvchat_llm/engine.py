"""The provider-neutral part of generation: defaults, history trimming, timeouts, retries, timings.

Routes and the WebSocket talk only to a :class:`ChatEngine` (the :class:`LLMEngine`, or a fake);
it picks the provider module named by the settings (the only modules that import ollama, openai
or llama_cpp).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Protocol

from rvchat_common.errors import APIError
from rvchat_common.inference import InferenceQueue
from rvchat_common.protocol import ErrorEvent, llm

from .eou import EndOfUtterance
from .providers.base import ChatOptions, Delta, Final, Provider, ToolCallDelta, UpstreamError
from .settings import Settings
from .tools import ToolCalls, message_text

log = logging.getLogger("rvchat.llm")

# Template framing per message (role markers, newlines) on top of the content's tokens.
_FRAMING = 6


def make_provider(settings: Settings, queue: InferenceQueue) -> Provider:
    if settings.provider == "ollama":
        from .providers.ollama import OllamaProvider

        return OllamaProvider(settings)
    if settings.provider == "openai":
        from .providers.openai_compat import OpenAIProvider

        return OpenAIProvider(settings)
    from .providers.local import LocalProvider

    return LocalProvider(settings, queue)


@dataclass
class Request:
    messages: list[dict[str, Any]]  # OpenAI's shape: role, content, tool_calls?, tool_call_id?
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    model: str | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    default_system: bool = True  # /generate and /ws add the configured system prompt; /v1 as set (v1_system_prompt)
    trim: bool = False  # cut a newest message too long for the context instead of refusing it
    tools: list[dict[str, Any]] | None = None  # checked by tools.check_tools, as is tool_choice
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None


@dataclass
class Done:
    """What a finished generation reports."""

    id: str
    content: str
    finish_reason: str
    model: str
    provider: str
    usage: dict[str, int]
    timings: dict[str, float | None]
    dropped_messages: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    def message(self) -> dict[str, Any]:
        """The OpenAI message: content null when the reply is only tool calls."""
        if not self.tool_calls:
            return {"role": "assistant", "content": self.content}
        return {"role": "assistant", "content": self.content or None, "tool_calls": self.tool_calls}

    def event(self, id: str | None = None) -> llm.Done:
        """The ``done`` event (WebSocket, SSE); without its ``type`` it is the /generate answer.
        ``id``: the WebSocket's generation id, where it differs from the engine's."""
        message = llm.Message(role="assistant", content=self.content,
                              tool_calls=[llm.ToolCall.model_validate(c) for c in self.tool_calls] or None)
        return llm.Done(id=id or self.id, message=message,
                        model=self.model, provider=self.provider, finish_reason=self.finish_reason,
                        usage=llm.Usage.model_validate(self.usage),
                        timings=llm.Timings.model_validate(self.timings),
                        dropped_messages=self.dropped_messages)


def generation_error(exc: BaseException, id: str | None = None) -> ErrorEvent:
    """The error event of a failed generation: an APIError as it says, anything else a logged 500."""
    if isinstance(exc, APIError):
        return ErrorEvent.from_api_error(exc, id=id)
    log.error("generation failed", exc_info=exc)
    return ErrorEvent.of("internal_error", "internal error while generating", status=500, id=id)


class ChatEngine(Protocol):
    """What the routes and the WebSocket need of the engine (a fake provider in tests goes behind
    the real :class:`LLMEngine` instead; this names the surface they rely on)."""

    settings: Settings

    def load(self) -> None:
        """Blocking start-up work (load weights); runs in a thread."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ready(self) -> str | None:
        """None when the upstream can serve, else the reason."""

    @property
    def provider_name(self) -> str: ...

    @property
    def model(self) -> str: ...

    def model_for(self, requested: str | None) -> str:
        """The model that will answer a request naming ``requested``."""

    def stream(self, req: Request) -> AsyncIterator[Delta | ToolCallDelta | Done]:
        """Deltas (text or tool call pieces), then one Done; APIError before or during the stream."""

    async def complete(self, req: Request) -> Done: ...

    async def end_of_utterance(self, text: str) -> float:
        """P(a user's message ends after ``text``); APIError 501 when the service has no model for it."""

    async def prefill(self, req: Request) -> int:
        """Evaluate the prompt of a generation to come; the prompt tokens evaluated."""


class LLMEngine:
    """Generation over the configured provider, with the service's defaults and limits."""

    def __init__(self, settings: Settings, provider: Provider | None = None,
                 eou: EndOfUtterance | None = None) -> None:
        self.settings = settings
        self.queue = InferenceQueue(settings.max_queue)
        # The end-of-utterance model comes with the real providers; a test's fake provider gets one
        # only when it passes it.
        self.eou = eou if provider is not None else (eou or self._eou_model(settings))
        self.provider = provider or make_provider(settings, self.queue)

    @staticmethod
    def _eou_model(settings: Settings) -> EndOfUtterance | None:
        if not settings.eou:
            return None
        from rvchat_common.models import ModelNotFound, smollm2_gguf

        try:
            # Always the embedded SmolLM2, the model main_app's threshold was chosen on (bench/turns.py);
            # the local provider's default file, so its weights are mapped once.
            smollm2_gguf()
            return EndOfUtterance(quant=settings.embedded_quant)
        except ModelNotFound as exc:
            log.info("no end-of-utterance model (%s): /v1/eou answers 501", exc)
            return None

    # Lifecycle: load() runs in a thread at start-up (build_app); start/close on the loop.
    def load(self) -> None:
        self.provider.load()
        if self.provider.name == "local":
            self._load_eou()

    def _load_eou(self) -> None:
        if self.eou is not None and not self.eou.loaded:
            try:
                self.eou.load()
            except Exception:  # a GGUF llama.cpp cannot load for this: replies still work
                log.exception("end-of-utterance model failed to load: /v1/eou answers 501")
                self.eou = None

    async def start(self) -> None:
        await self.provider.start()
        if self.eou is not None and not self.eou.loaded:
            # A remote provider is ready without it (its readiness is the upstream's): load it behind.
            self._eou_loading = asyncio.create_task(asyncio.to_thread(self._load_eou))

    async def close(self) -> None:
        await self.provider.close()

    async def ready(self) -> str | None:
        return await self.provider.ready()

    @property
    def provider_name(self) -> str:
        return self.provider.name

    @property
    def model(self) -> str:
        return self.provider.default_model

    def model_for(self, requested: str | None) -> str:
        # One embedded model: any name is served by it (clients often send 'gpt-4o-mini').
        if self.provider.name == "local" or not requested:
            return self.provider.default_model
        return requested

    # --- conversation hygiene ------------------------------------------------------
    def prepare(self, req: Request, max_tokens: int) -> tuple[list[dict[str, Any]], int, int]:
        """System prompt first, then as many of the newest turns as fit the context window.

        Returns the messages, how many old ones were dropped and the max_tokens that fits.
        Blocking (tokenises); run
        it in a thread.
        """
        messages = [{**m, "role": "system" if m["role"] == "developer" else m["role"]} for m in req.messages]
        if req.system is not None:
            messages = [m for m in messages if m["role"] != "system"]
            if req.system:
                messages.insert(0, {"role": "system", "content": req.system})
        elif req.default_system and self.settings.system_prompt \
                and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": self.settings.system_prompt})

        system = [m for m in messages if m["role"] == "system"]
        turns = [m for m in messages if m["role"] != "system"]
        count = getattr(self.provider, "text_tokens", None)

        def cost(m: dict[str, Any]) -> int:
            text = message_text(m)
            return (count(text) if count else len(text) * 2 // 7) + _FRAMING

        budget = self.provider.context_window - max_tokens - 16
        used = sum(cost(m) for m in system)
        if req.tools and req.tool_choice != "none":
            # The tools are described in the prompt (by the upstream's template, or ours).
            used += cost({"content": json.dumps(req.tools)}) + 64
        kept: list[dict[str, str]] = []
        # Newest first, stopping at the first turn that does not fit, so only what is kept
        # gets tokenised (a hostile 500-message request costs no more than a fitting one).
        for m in reversed(turns):
            c = cost(m)
            if used + c > budget and kept:
                break
            kept.append(m)
            used += c
        kept.reverse()
        while len(kept) > 1 and kept[0]["role"] == "tool":
            # A result whose call was trimmed away answers nothing (and upstreams refuse it).
            used -= cost(kept.pop(0))
        if used > budget:
            # The newest turn alone is too big for the reply room asked for: shorten the reply
            # rather than refuse, as long as a useful reply still fits.
            room = self.provider.context_window - used - 16
            if room >= 16:
                log.info("max_tokens lowered from %d to %d to fit the context", max_tokens, room)
                return system + kept, len(turns) - len(kept), room
            if req.trim and kept:
                return self._trimmed(system, kept[-1], cost, budget, max_tokens), len(turns) - 1, max_tokens
            raise APIError(400, f"the system prompt and last message need about {used} tokens, more than "
                           f"the {self.provider.context_window}-token context window of '{self.model}' "
                           f"leaves after max_tokens={max_tokens}; shorten them or lower max_tokens",
                           "context_length_exceeded", param="messages")
        dropped = len(turns) - len(kept)
        if dropped:
            log.info("trimmed %d old message(s) to fit the %d-token context", dropped,
                     self.provider.context_window)
        return system + kept, dropped, max_tokens

    def _trimmed(self, system: list[dict[str, Any]], last: dict[str, Any], cost: Any, budget: int,
                 max_tokens: int) -> list[dict[str, Any]]:
        """The system prompt and ``last`` cut (from its end) until both fit ``budget``; 400 when even
        the system prompt alone leaves no room."""
        room = budget - sum(cost(m) for m in system)
        text = last["content"]
        while text and cost({**last, "content": text}) > room:
            # Shrink in proportion to the excess, a little more so a few rounds suffice.
            over = cost({**last, "content": text}) / max(room, 1)
            text = text[: int(len(text) / over * 0.95)] if over > 1 else text[:-1]
        if not text:
            raise APIError(400, f"the system prompt alone fills the {self.provider.context_window}-token "
                           f"context window of '{self.model}' with max_tokens={max_tokens}",
                           "context_length_exceeded", param="messages")
        log.info("newest message cut from %d to %d characters to fit the context", len(last["content"]),
                 len(text))
        return system + [{**last, "content": text}]

    # --- generation ------------------------------------------------------------------
    async def _prepared(self, req: Request) -> tuple[list[dict[str, Any]], int, ChatOptions]:
        """The messages the provider gets (system prompt in, trimmed to fit), how many were dropped, and
        the options: the same for a generation and for the prefill that prepares it."""
        s = self.settings
        max_tokens = min(req.max_tokens or s.max_tokens, s.max_tokens_limit)
        messages, dropped, max_tokens = await asyncio.to_thread(self.prepare, req, max_tokens)
        options = ChatOptions(model=self.model_for(req.model),
                              temperature=(s.default_temperature() if req.temperature is None
                                           else req.temperature),
                              max_tokens=max_tokens, stop=req.stop, top_p=req.top_p, seed=req.seed,
                              tools=req.tools, tool_choice=req.tool_choice,
                              parallel_tool_calls=req.parallel_tool_calls)
        return messages, dropped, options

    async def prefill(self, req: Request) -> int:
        """Evaluate ``req``'s prompt into the provider's prompt cache ahead of the generation that will
        start with it (the user's words so far): the prompt tokens evaluated, 0 where the provider keeps
        no cache of its own (Ollama and OpenAI-compatible servers keep theirs out of reach)."""
        prefill = getattr(self.provider, "prefill", None)
        if prefill is None:
            return 0
        messages, _, options = await self._prepared(req)
        return await prefill(messages, options)

    async def stream(self, req: Request) -> AsyncIterator[Delta | ToolCallDelta | Done]:
        """Deltas (text or tool call pieces), then one Done. Raises APIError (before or during the stream).

        Closing this iterator early (client gone, cancel) closes the provider's stream,
        which stops generation upstream or in the worker thread.
        """
        s = self.settings
        t0 = time.perf_counter()
        messages, dropped, options = await self._prepared(req)
        gen_id = uuid.uuid4().hex[:16]
        parts: list[str] = []
        calls = ToolCalls()
        first_ms: float | None = None
        attempt = 0
        # The token timeouts are for upstreams that can hang (a dead connection, a stuck server).
        # The local model is in this process and busy whenever it is slow (a long prompt, a 2-core
        # machine under load, text held back by the guard): a timeout there was a false 504 for a
        # generation still running. Its waits are bounded by the queue (503) and max_tokens.
        timed = self.provider.name != "local"
        while True:
            gen = self.provider.stream_chat(messages, options)
            try:
                while True:
                    started = bool(parts) or bool(calls.calls)
                    wait = (s.token_timeout_s if started else s.first_token_timeout_s) if timed else None
                    try:
                        # asyncio.timeout, not wait_for: the generator must stay in this task
                        # (httpx/anyio streams inside it dislike hopping between tasks).
                        async with asyncio.timeout(wait):
                            item = await anext(gen)
                    except StopAsyncIteration:
                        raise UpstreamError(502, f"{self.provider.name} ended the stream without finishing",
                                            "upstream_incomplete") from None
                    except asyncio.TimeoutError:
                        what = "between tokens" if started else "for the first token"
                        raise UpstreamError(504, f"{self._upstream()} sent nothing for {wait:g} s {what}; "
                                            "gave up", "upstream_timeout") from None
                    if isinstance(item, (Delta, ToolCallDelta)):
                        if first_ms is None:
                            first_ms = (time.perf_counter() - t0) * 1000
                        if isinstance(item, Delta):
                            parts.append(item.content)
                        else:
                            calls.add(item)
                        yield item
                        continue
                    done = self._done(gen_id, parts, item, messages, options, dropped, first_ms, t0)
                    done.tool_calls = calls.all()
                    if done.tool_calls and done.finish_reason == "stop":
                        done.finish_reason = "tool_calls"  # (Ollama says "stop")
                    yield done
                    return
            except UpstreamError as exc:
                # Retry only while nothing has been sent: a retry after a token would repeat output.
                if parts or calls.calls or not exc.retryable or attempt >= s.retries:
                    log.warning("generation failed after %d attempt(s): %s", attempt + 1, exc.message)
                    raise
                delay = s.retry_backoff_s * (2 ** attempt)
                attempt += 1
                log.info("upstream failed before the first token (%s); retry %d/%d in %.2f s",
                         exc.message, attempt, s.retries, delay)
                await asyncio.sleep(delay)
            finally:
                await gen.aclose()

    def _upstream(self) -> str:
        p = self.provider
        where = getattr(p, "host", None) or getattr(p, "base_url", None)
        return f"{p.name} at {where}" if where else f"the {p.name} model"

    def _done(self, gen_id: str, parts: list[str], final: Final, messages: list[dict[str, Any]],
              options: ChatOptions, dropped: int, first_ms: float | None, t0: float) -> Done:
        content = "".join(parts)
        prompt = final.prompt_tokens
        if prompt is None:
            prompt = self.provider.count_tokens(messages)
        completion = final.completion_tokens
        if completion is None:
            completion = len(parts)
        total_ms = (time.perf_counter() - t0) * 1000
        timings: dict[str, float | None] = {
            "first_token_ms": round(first_ms, 1) if first_ms is not None else None,
            "total_ms": round(total_ms, 1),
        }
        if first_ms is not None and completion > 1 and total_ms > first_ms:
            timings["tokens_per_s"] = round((completion - 1) / ((total_ms - first_ms) / 1000), 1)
        return Done(id=gen_id, content=content, finish_reason=final.finish_reason,
                    model=final.model or options.model, provider=self.provider.name,
                    usage={"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion},
                    timings=timings, dropped_messages=dropped, extra=final.extra)

    async def end_of_utterance(self, text: str) -> float:
        if self.eou is not None and not self.eou.loaded:
            raise APIError(503, "the end-of-utterance model is still loading; retry shortly", "model_loading")
        if self.eou is None:
            raise APIError(501, "this LLM service has no end-of-utterance model (LLM_EOU is off, or the "
                           "embedded GGUF is not installed)", "eou_unavailable")
        return await asyncio.to_thread(self.eou.probability, text)

    async def complete(self, req: Request) -> Done:
        done: Done | None = None
        stream = self.stream(req)
        try:
            async for item in stream:
                if isinstance(item, Done):
                    done = item
        finally:
            await stream.aclose()
        assert done is not None
        return done
