"""HTTP routes of the LLM service: /generate, the OpenAI-compatible /v1/chat/completions, /v1/models.

Parse, validate, shape; generation lives in the engine, the WebSocket in ws.py.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Annotated, Any, AsyncIterator

from fastapi import APIRouter, Depends, Request

from rvchat_common.app import require_ready
from rvchat_common.cancel import while_connected
from rvchat_common.streaming import sse_event, sse_response

from rvchat_common.protocol import llm

from .engine import ChatEngine, generation_error
from .providers.base import Delta, ToolCallDelta
from .schemas import ChatCompletionRequest, GenerateRequest, to_request
from .tools import ToolCalls

log = logging.getLogger("rvchat.llm.routes")
router = APIRouter()


def get_engine(request: Request) -> ChatEngine:
    return request.app.state.engine


EngineDep = Annotated[ChatEngine, Depends(get_engine)]
Ready = [Depends(require_ready)]


async def prime(stream: AsyncIterator[Any]) -> Any:
    """The first item, so errors before any token become a proper HTTP status, not a 200 stream."""
    try:
        return await anext(stream)
    except BaseException:
        await stream.aclose()  # type: ignore[attr-defined]
        raise


# --- /generate -----------------------------------------------------------------------------
# JSON, or Server-Sent Events with stream: true.
STREAMED = {200: {"description": "The reply (JSON), or its events (stream: true)",
                  "content": {"application/json": {}, "text/event-stream": {}}}}


@router.post("/generate", dependencies=Ready, tags=["llm"], responses=STREAMED)
async def generate(body: GenerateRequest, request: Request, engine: EngineDep) -> Any:
    """Generate the assistant's reply to a conversation (JSON, or SSE with ``stream: true``)."""
    req = to_request(engine.settings, body)
    if not body.stream:
        # A client that leaves cancels the generation (the provider frees the model or closes the
        # upstream request) instead of leaving it to run for nobody.
        return (await while_connected(request, engine.complete(req))).event().model_dump(exclude={"type"})
    stream = engine.stream(req)
    first = await while_connected(request, prime(stream))

    async def events() -> AsyncIterator[str]:
        calls = ToolCalls()
        try:
            item = first
            while True:
                if isinstance(item, Delta):
                    yield sse_event({"type": "delta", "content": item.content})
                elif isinstance(item, ToolCallDelta):
                    for call in calls.add(item):
                        yield sse_event(_tool_call_event(call))
                else:
                    for call in calls.finish():
                        yield sse_event(_tool_call_event(call))
                    yield sse_event(item.event().model_dump())
                    return
                item = await anext(stream)
        except Exception as exc:
            yield sse_event(generation_error(exc).model_dump())
        finally:
            await stream.aclose()

    return sse_response(events())


# --- OpenAI-compatible -------------------------------------------------------------------
@router.get("/v1/models", tags=["openai"])
async def list_models(engine: EngineDep) -> dict[str, Any]:
    return {"object": "list", "data": [
        {"id": engine.model, "object": "model", "created": 0, "owned_by": engine.provider_name}]}


@router.post("/v1/chat/completions", dependencies=Ready, tags=["openai"], responses=STREAMED)
async def chat_completions(body: ChatCompletionRequest, request: Request, engine: EngineDep) -> Any:
    req = body.to_request(engine.settings)
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if not body.stream:
        done = await while_connected(request, engine.complete(req))
        return {"id": cid, "object": "chat.completion", "created": created, "model": done.model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "message": done.message(), "logprobs": None,
                             "finish_reason": _finish(done.finish_reason)}],
                "usage": done.usage}
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    model = engine.model_for(body.model)
    stream = engine.stream(req)
    first = await while_connected(request, prime(stream))

    def chunk(delta: dict, finish: str | None = None, model_name: str = model) -> str:
        return sse_event({"id": cid, "object": "chat.completion.chunk", "created": created,
                          "model": model_name, "system_fingerprint": None,
                          "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                       "finish_reason": finish}]})

    async def events() -> AsyncIterator[str]:
        try:
            yield chunk({"role": "assistant", "content": ""})
            item = first
            while True:
                if isinstance(item, Delta):
                    yield chunk({"content": item.content})
                elif isinstance(item, ToolCallDelta):
                    yield chunk({"tool_calls": [_tool_call_chunk(item)]})
                else:
                    yield chunk({}, _finish(item.finish_reason), item.model)
                    if include_usage:
                        yield sse_event({"id": cid, "object": "chat.completion.chunk", "created": created,
                                         "model": item.model, "choices": [], "usage": item.usage})
                    break
                item = await anext(stream)
        except Exception as exc:
            # The official client raises APIError on a data event carrying "error".
            yield sse_event(generation_error(exc).model_dump(exclude={"type"}))
        finally:
            await stream.aclose()
        yield "data: [DONE]\n\n"

    return sse_response(events())


# --- end of utterance ---------------------------------------------------------------------
@router.post("/v1/eou", dependencies=Ready, tags=["llm"])
async def end_of_utterance(body: llm.EouParams, engine: EngineDep) -> dict[str, float]:
    """P(the user's message is finished after ``text``): the embedded model's probability that the next
    token is . ? ! or the end of the message (rvchat_llm/eou.py). 501 ``eou_unavailable`` without it."""
    return {"probability": await engine.end_of_utterance(body.text)}


def _tool_call_chunk(d: ToolCallDelta) -> dict[str, Any]:
    """OpenAI's streamed tool call piece: id, type and name in a call's first piece only."""
    out: dict[str, Any] = {"index": d.index}
    if d.id:
        out["id"] = d.id
        out["type"] = "function"
    fn: dict[str, str] = {"arguments": d.arguments}
    if d.name:
        fn["name"] = d.name
    out["function"] = fn
    return out


def _tool_call_event(call: dict[str, Any]) -> dict[str, Any]:
    # /generate's SSE carries no generation id (one stream, one generation), as its deltas.
    return llm.ToolCallEvent(id="", call=llm.ToolCall.model_validate(call)).model_dump(exclude={"id"})


def _finish(reason: str) -> str:
    return reason if reason in ("stop", "length", "content_filter", "tool_calls") else "stop"
