"""HTTP and WebSocket endpoints: parse, validate, shape. Generation lives in the engine."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Annotated, Any, AsyncIterator

from fastapi import APIRouter, Depends, Request, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from rvchat_common.app import require_ready
from rvchat_common.errors import APIError, error_body, parse_json, ws_event_error
from rvchat_common.streaming import sse_event, sse_response

from .engine import Done, LLMEngine, Request as GenRequest
from .providers.base import Delta
from .schemas import ChatCompletionRequest, GenerateRequest
from .settings import Settings

log = logging.getLogger("rvchat.llm.routes")
router = APIRouter()


def get_engine(request: Request) -> LLMEngine:
    return request.app.state.engine


EngineDep = Annotated[LLMEngine, Depends(get_engine)]
Ready = [Depends(require_ready)]


# --- validation ----------------------------------------------------------------------
def check_limits(settings: Settings, contents: list[str], where: str = "messages") -> None:
    """Limits that depend on settings (the schema checks roles and types)."""
    if len(contents) > settings.max_messages:
        raise APIError(422, f"{where}: at most {settings.max_messages} messages are accepted, got "
                       f"{len(contents)}", "validation_error", param=where)
    for i, text in enumerate(contents):
        if len(text) > settings.max_message_chars:
            raise APIError(422, f"{where}.{i}.content: longer than the "
                           f"{settings.max_message_chars}-character "
                           "limit", "validation_error", param=where)


def to_request(settings: Settings, body: GenerateRequest) -> GenRequest:
    contents = [m.content for m in body.messages]
    check_limits(settings, contents + ([body.system] if body.system else []))
    return GenRequest(messages=[{"role": m.role, "content": m.content} for m in body.messages],
                      system=body.system, temperature=body.temperature, max_tokens=body.max_tokens,
                      model=body.model)


def done_body(done: Done) -> dict[str, Any]:
    return {"id": done.id, "message": done.message(), "model": done.model, "provider": done.provider,
            "finish_reason": done.finish_reason, "usage": done.usage, "timings": done.timings,
            "dropped_messages": done.dropped_messages}


async def prime(stream: AsyncIterator[Any]) -> Any:
    """The first item, so errors before any token become a proper HTTP status, not a 200 stream."""
    try:
        return await anext(stream)
    except BaseException:
        await stream.aclose()  # type: ignore[attr-defined]
        raise


def error_event(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, APIError):
        return exc.body()
    log.exception("stream failed", exc_info=exc)
    return error_body("internal error while generating", 500, "internal_error")


# --- /generate -----------------------------------------------------------------------------
@router.post("/generate", dependencies=Ready, tags=["llm"])
async def generate(body: GenerateRequest, request: Request, engine: EngineDep) -> Any:
    """Generate the assistant's reply to a conversation (JSON, or SSE with ``stream: true``)."""
    req = to_request(engine.settings, body)
    if not body.stream:
        return done_body(await engine.complete(req))
    stream = engine.stream(req)
    first = await prime(stream)

    async def events() -> AsyncIterator[str]:
        try:
            item = first
            while True:
                if isinstance(item, Delta):
                    yield sse_event({"type": "delta", "content": item.content})
                else:
                    yield sse_event({"type": "done", **done_body(item)})
                    return
                item = await anext(stream)
        except Exception as exc:
            yield sse_event({"type": "error", **error_event(exc)})
        finally:
            await stream.aclose()

    return sse_response(events())


# --- OpenAI-compatible -------------------------------------------------------------------
@router.get("/v1/models", tags=["openai"])
async def list_models(engine: EngineDep) -> dict[str, Any]:
    return {"object": "list", "data": [
        {"id": engine.model, "object": "model", "created": 0, "owned_by": engine.provider_name}]}


@router.post("/v1/chat/completions", dependencies=Ready, tags=["openai"])
async def chat_completions(body: ChatCompletionRequest, engine: EngineDep) -> Any:
    contents = [m.text() for m in body.messages]
    check_limits(engine.settings, contents)
    req = GenRequest(messages=[{"role": m.role, "content": c} for m, c in zip(body.messages, contents)],
                     temperature=body.temperature, max_tokens=body.max_completion_tokens or body.max_tokens,
                     model=body.model, top_p=body.top_p, stop=body.stop_list(), seed=body.seed,
                     default_system=False)
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if not body.stream:
        done = await engine.complete(req)
        return {"id": cid, "object": "chat.completion", "created": created, "model": done.model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "message": done.message(), "logprobs": None,
                             "finish_reason": _finish(done.finish_reason)}],
                "usage": done.usage}
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    model = engine.model_for(body.model)
    stream = engine.stream(req)
    first = await prime(stream)

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
                else:
                    yield chunk({}, _finish(item.finish_reason), item.model)
                    if include_usage:
                        yield sse_event({"id": cid, "object": "chat.completion.chunk", "created": created,
                                         "model": item.model, "choices": [], "usage": item.usage})
                    break
                item = await anext(stream)
        except Exception as exc:
            # The official client raises APIError on a data event carrying "error".
            yield sse_event(error_event(exc))
        finally:
            await stream.aclose()
        yield "data: [DONE]\n\n"

    return sse_response(events())


def _finish(reason: str) -> str:
    return reason if reason in ("stop", "length", "content_filter", "tool_calls") else "stop"


# --- WebSocket ------------------------------------------------------------------------------
@router.websocket("/ws")
async def ws_generate(ws: WebSocket) -> None:
    """See docs/protocols.md. A new ``generate`` while one runs cancels the running one first
    (it gets ``cancelled``), so a barge-in needs only the new turn."""
    engine: LLMEngine = ws.app.state.engine
    await ws.accept()
    send_lock = asyncio.Lock()
    current: asyncio.Task | None = None

    async def send(payload: dict[str, Any]) -> None:
        async with send_lock:
            await ws.send_json(payload)

    async def run(req: GenRequest) -> None:
        gen_id = uuid.uuid4().hex[:16]
        parts: list[str] = []
        stream = engine.stream(req)
        try:
            await send({"type": "start", "id": gen_id, "model": engine.model_for(req.model),
                        "provider": engine.provider_name})
            async for item in stream:
                if isinstance(item, Delta):
                    parts.append(item.content)
                    await send({"type": "delta", "id": gen_id, "content": item.content})
                else:
                    await send({**done_body(item), "type": "done", "id": gen_id})
        except asyncio.CancelledError:
            await stream.aclose()  # stop the model before telling the client it stopped
            try:
                await send({"type": "cancelled", "id": gen_id, "content": "".join(parts)})
            except Exception:
                pass
        except APIError as exc:
            await send({"type": "error", "id": gen_id, **exc.body()})
        except Exception as exc:
            await send({"type": "error", "id": gen_id, **error_event(exc)})
        finally:
            await stream.aclose()

    async def stop_current() -> bool:
        nonlocal current
        task, current = current, None
        if task is None or task.done():
            return False
        task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(task), 10)
        except (asyncio.CancelledError, asyncio.TimeoutError, Exception):
            pass
        return True

    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                break
            if msg.get("text") is None:
                await ws_event_error(ws, "binary frames are not used by the LLM protocol; send JSON text",
                                     "bad_frame")
                continue
            try:
                event = parse_json(msg["text"])
                if not isinstance(event, dict):
                    raise ValueError("not an object")
            except ValueError:
                await ws_event_error(ws, "malformed JSON: send an object with a 'type' field", "bad_json")
                continue
            kind = event.get("type")
            if kind == "generate":
                try:
                    req = to_request(engine.settings, GenerateRequest.model_validate(event))
                except ValidationError as exc:
                    where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                                      for e in exc.errors()[:5])
                    await send({"type": "error", **error_body(where, 422, "validation_error")})
                    continue
                except APIError as exc:
                    await send({"type": "error", **exc.body()})
                    continue
                if not ws.app.state.load_state["loaded"]:
                    await send({"type": "error", **error_body("model is still loading; retry shortly",
                                                              503, "model_loading")})
                    continue
                await stop_current()
                current = asyncio.create_task(run(req))
            elif kind == "cancel":
                if not await stop_current():
                    await send({"type": "cancelled", "content": ""})
            else:
                await send({"type": "error", **error_body(
                    f"unknown event type {kind!r}; expected 'generate' or 'cancel'", 400, "unknown_event")})
    except WebSocketDisconnect:
        pass
    finally:
        if current is not None and not current.done():
            current.cancel()
