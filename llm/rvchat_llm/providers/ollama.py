"""An Ollama server (often on a separate GPU host) through the official ``ollama`` client.

At start-up the model is pulled when allowed and missing, then loaded with an empty
chat and ``keep_alive`` so the first user turn is not a cold start; every request
passes ``keep_alive`` again so it stays loaded. Every failure names the host.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator

import httpx
import ollama

from ..settings import Settings
from ..tools import new_call_id
from .base import ChatOptions, Delta, EstimatedTokens, Final, StreamItem, ToolCallDelta, UpstreamError

log = logging.getLogger("rvchat.llm.ollama")


def _same_model(wanted: str, have: str) -> bool:
    # 'llama3.2' is 'llama3.2:latest' to Ollama.
    norm = lambda n: n if ":" in n else f"{n}:latest"  # noqa: E731
    return norm(wanted) == norm(have)


def _keep_alive(value: str) -> str | float:
    # Ollama reads a bare number as seconds (-1: for ever) but a string must carry a unit ("30m").
    try:
        return float(value)
    except ValueError:
        return value


class OllamaProvider(EstimatedTokens):
    name = "ollama"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.host = settings.ollama_base_url.rstrip("/")
        self.default_model = settings.model_name()
        self.context_window = settings.num_ctx
        self.keep_alive: str | float = _keep_alive(settings.ollama_keep_alive)
        # Reads are bounded by the engine's token timeouts; this one is only the backstop.
        timeout = httpx.Timeout(settings.first_token_timeout_s + 5, connect=settings.connect_timeout_s)
        self.client = ollama.AsyncClient(host=self.host, timeout=timeout)
        self.probe = ollama.AsyncClient(host=self.host, timeout=httpx.Timeout(
            settings.connect_timeout_s, connect=settings.connect_timeout_s))
        self.warmed = False
        self._warm_task: asyncio.Task | None = None
        self._ready_cache: tuple[float, str | None] = (0.0, "not checked yet")

    def load(self) -> None:
        return None  # nothing to load here; warming is async and must not block readiness forever

    async def start(self) -> None:
        self._warm_task = asyncio.create_task(self._warm_loop())

    async def close(self) -> None:
        if self._warm_task:
            self._warm_task.cancel()
        for client in (self.client, self.probe):
            try:
                await client.close()
            except Exception:
                pass

    # --- errors ------------------------------------------------------------------
    def _error(self, exc: BaseException, model: str) -> UpstreamError:
        if isinstance(exc, UpstreamError):
            return exc
        if isinstance(exc, ollama.ResponseError):
            msg = str(exc.error)
            if exc.status_code == 404 or "not found" in msg.lower():
                hint = "" if self.settings.ollama_auto_pull else f" (run `ollama pull {model}` there, " \
                    "or set OLLAMA_AUTO_PULL=true)"
                return UpstreamError(404, f"model '{model}' is not available on the Ollama server at "
                                     f"{self.host}{hint}: {msg}", "model_not_found")
            if exc.status_code >= 500 or exc.status_code == -1:
                return UpstreamError(502, f"Ollama at {self.host} failed: {msg}", "upstream_error",
                                     retryable=exc.status_code != -1)
            return UpstreamError(400, f"Ollama at {self.host} rejected the request: {msg}",
                                 "upstream_rejected")
        if isinstance(exc, (ConnectionError, httpx.ConnectError, httpx.ConnectTimeout)):
            return UpstreamError(503, f"Ollama at {self.host} is unreachable ({type(exc).__name__})",
                                 "upstream_unavailable", retryable=True)
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamError(504, f"Ollama at {self.host} timed out", "upstream_timeout")
        if isinstance(exc, (httpx.HTTPError, ValueError)):  # dropped connection, garbled NDJSON
            return UpstreamError(502, f"connection to Ollama at {self.host} broke: "
                                 f"{type(exc).__name__}: {exc}", "upstream_error")
        return UpstreamError(502, f"Ollama at {self.host} failed: {type(exc).__name__}: {exc}",
                             "upstream_error")

    # --- readiness and warm-up ----------------------------------------------------
    async def _has_model(self, client: ollama.AsyncClient, model: str) -> bool:
        tags = await client.list()
        return any(_same_model(model, m.model or "") for m in tags.models)

    async def ready(self) -> str | None:
        at, reason = self._ready_cache
        if time.monotonic() - at < self.settings.ready_cache_s:
            return reason
        try:
            if await self._has_model(self.probe, self.default_model):
                reason = None
            else:
                reason = (f"model '{self.default_model}' is not pulled on the Ollama server at {self.host}"
                          + (" (pulling)" if self.settings.ollama_auto_pull else
                             f" (run `ollama pull {self.default_model}` there)"))
        except Exception as exc:
            reason = self._error(exc, self.default_model).message
        self._ready_cache = (time.monotonic(), reason)
        if reason is None and not self.warmed and (self._warm_task is None or self._warm_task.done()):
            self._warm_task = asyncio.create_task(self._warm_loop())
        return reason

    async def _warm_loop(self) -> None:
        model, delay = self.default_model, 1.0
        while not self.warmed:
            try:
                await self.warm(model)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("warming '%s' on %s failed (retrying in %.0f s): %s", model, self.host,
                            delay, self._error(exc, model).message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def warm(self, model: str) -> None:
        if not await self._has_model(self.client, model):
            if not self.settings.ollama_auto_pull:
                raise UpstreamError(404, f"model '{model}' is not pulled", "model_not_found")
            log.info("pulling '%s' on %s", model, self.host)
            async for progress in await self.client.pull(model, stream=True):
                if progress.status and progress.status != "downloading":
                    log.info("pull %s: %s", model, progress.status)
        t0 = time.perf_counter()
        # An empty chat loads the model without generating; keep_alive keeps it resident.
        await self.client.chat(model=model, messages=[], keep_alive=self.keep_alive)
        self.warmed = True
        log.info("model '%s' loaded on %s in %.2f s (keep_alive=%s)", model, self.host,
                 time.perf_counter() - t0, self.keep_alive)

    # --- generation ------------------------------------------------------------------
    async def stream_chat(self, messages: list[dict[str, Any]],
                          options: ChatOptions) -> AsyncIterator[StreamItem]:
        opts: dict = {"num_ctx": self.settings.num_ctx, "temperature": options.temperature,
                      "num_predict": options.max_tokens}
        if options.top_p is not None:
            opts["top_p"] = options.top_p
        if options.stop:
            opts["stop"] = options.stop
        if options.seed is not None:
            opts["seed"] = options.seed
        body: dict[str, Any] = {"model": options.model, "messages": to_ollama(messages), "stream": True,
                                "keep_alive": self.keep_alive, "options": opts}
        # Ollama has no tool_choice: "none" sends no tools, a named function only that one.
        # "required" cannot be enforced there; the model's template decides.
        tools = options.offered_tools()
        if tools:
            body["tools"] = tools
        stream = None
        try:
            # The client's own chat() passes tools through its Tool model, which keeps only a flat
            # subset of JSON Schema (nested properties, minimum, additionalProperties were dropped
            # when tried), and its ChatResponse drops a call's id: the request goes out as JSON and
            # the chunks come back as dicts, through the same client (its errors, its connection).
            stream = await self.client._request(_raw, "POST", "/api/chat", json=body, stream=True)
            calls = 0
            async for part in stream:
                message = part.get("message") or {}
                if message.get("content"):
                    yield Delta(message["content"])
                for call in message.get("tool_calls") or []:
                    # Ollama sends each call whole, arguments as an object, an id only in newer versions.
                    fn = call.get("function") or {}
                    yield ToolCallDelta(index=calls, id=call.get("id") or new_call_id(),
                                        name=fn.get("name") or "",
                                        arguments=json.dumps(fn.get("arguments") or {}))
                    calls += 1
                if part.get("done"):
                    ns = lambda v: round(v / 1e6, 1) if v else None  # noqa: E731
                    yield Final(
                        finish_reason=part.get("done_reason") or "stop",
                        prompt_tokens=part.get("prompt_eval_count"), completion_tokens=part.get("eval_count"),
                        model=part.get("model") or options.model,
                        extra={"upstream_ms": {
                            "total": ns(part.get("total_duration")), "load": ns(part.get("load_duration")),
                            "prompt_eval": ns(part.get("prompt_eval_duration")),
                            "eval": ns(part.get("eval_duration"))}})
                    return
            raise UpstreamError(502, f"Ollama at {self.host} closed the stream before it was done",
                                "upstream_incomplete")
        except (GeneratorExit, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise self._error(exc, options.model) from exc
        finally:
            if stream is not None:
                # Closing the response makes Ollama stop generating for this request.
                await stream.aclose()


def _raw(**part: Any) -> dict[str, Any]:
    return part


def to_ollama(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-shaped messages in Ollama's shape (docs/capabilities/tool-calling.mdx in ollama/ollama):
    a call's arguments as an object, with its index; a tool result names its function
    (``tool_name``), where OpenAI names the call."""
    names = {c["id"]: c["function"]["name"] for m in messages for c in m.get("tool_calls") or []}
    out = []
    for m in messages:
        o: dict[str, Any] = {"role": m["role"], "content": m.get("content") or ""}
        if m.get("tool_calls"):
            o["tool_calls"] = [{"type": "function", "function": {
                "index": i, "name": c["function"]["name"],
                "arguments": json.loads(c["function"]["arguments"])}}
                for i, c in enumerate(m["tool_calls"])]
        if m["role"] == "tool":
            o["tool_name"] = names.get(m.get("tool_call_id", ""), "")
        out.append(o)
    return out
