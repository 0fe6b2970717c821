"""A small Ollama stand-in speaking the documented REST protocol (docs/api.md in ollama/ollama).

- ``POST /api/chat``: NDJSON chunks ``{"model", "created_at", "message": {"role", "content"}, "done": false}``
  and a final ``done: true`` chunk with ``done_reason``, ``total_duration``, ``load_duration``,
  ``prompt_eval_count``, ``prompt_eval_duration``, ``eval_count``, ``eval_duration`` (nanoseconds);
  ``stream: false`` gives the final object with the whole message; an empty ``messages`` list loads
  the model (``done_reason: "load"``); an unknown model gets 404 ``{"error": "model \"x\" not found,
  try pulling it first"}``.
- Tools (docs/capabilities/tool-calling.mdx): with ``tools`` and a user message last, the reply is a
  call of the first tool, sent whole in one chunk (``message.tool_calls: [{"function": {"index",
  "name", "arguments": {...}}}]``, arguments an object built from the schema: strings are the user's
  text) and ``done_reason: "stop"``; after a ``tool`` message (``tool_name``, ``content``) the reply is
  text: "<tool_name> said: <content>".
- ``GET /api/tags``, ``POST /api/show``, ``POST /api/pull`` (streamed status lines), ``GET /api/version``.

Test-only controls: ``POST /_control {"mode": ..., "fail_next": n}`` and ``GET /_requests``.
Modes: ``ok``; ``hang`` (headers, then nothing); ``stall`` (two tokens, then nothing);
``die`` (two tokens, then the connection is cut); ``slow`` (a 500-token reply, a token every 0.1 s).
``GET /_active`` counts the chat streams still being sent (a client that closes its request ends one).

Run: ``python fake_ollama.py PORT [model ...]``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import datetime, timezone

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

STATE: dict = {"models": {"llama3.2:latest"}, "mode": "ok", "fail_next": 0, "requests": [], "active": 0}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _norm(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def _not_found(model: str) -> JSONResponse:
    return JSONResponse({"error": f'model "{model}" not found, try pulling it first'}, status_code=404)


def reply_for(messages: list[dict]) -> str:
    if messages[-1].get("role") == "tool":
        return f"{messages[-1].get('tool_name')} said: {messages[-1].get('content')}"
    last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    return f"You said: {last}"


def value_for(schema: dict, text: str):
    """A value of the schema's type: the user's text for strings."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {k: value_for(v, text) for k, v in (schema.get("properties") or {}).items()
                if k in (schema.get("required") or [])}
    return {"integer": 1, "number": 1.5, "boolean": True, "array": []}.get(kind, text)


def call_for(tools: list[dict], messages: list[dict]) -> dict:
    fn = tools[0]["function"]
    return {"function": {"index": 0, "name": fn["name"],
                         "arguments": value_for(fn.get("parameters") or {}, messages[-1].get("content", ""))}}


app = FastAPI()


@app.get("/api/version")
async def version() -> dict:
    return {"version": "0.12.0"}


@app.get("/api/tags")
async def tags() -> dict:
    return {"models": [{"name": m, "model": m, "modified_at": _now(), "size": 1_000_000,
                        "digest": "0" * 64, "details": {"format": "gguf", "family": "llama",
                                                         "parameter_size": "3.2B",
                                                         "quantization_level": "Q4_K_M"}}
                       for m in sorted(STATE["models"])]}


@app.post("/api/show")
async def show(request: Request) -> JSONResponse:
    body = await request.json()
    model = body.get("model") or body.get("name") or ""
    if _norm(model) not in STATE["models"]:
        return _not_found(model)
    return JSONResponse({"modelfile": "", "parameters": "", "template": "{{ .Prompt }}",
                         "details": {"format": "gguf", "family": "llama"},
                         "model_info": {"llama.context_length": 131072}, "capabilities": ["completion"]})


@app.post("/api/pull")
async def pull(request: Request) -> StreamingResponse:
    body = await request.json()
    model = body.get("model") or body.get("name") or ""
    STATE["requests"].append({"path": "/api/pull", "body": body})

    async def lines():
        for status in ("pulling manifest", "verifying sha256 digest", "writing manifest", "success"):
            await asyncio.sleep(0.05)
            yield json.dumps({"status": status}) + "\n"
        STATE["models"].add(_norm(model))

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@app.post("/api/chat")
async def chat(request: Request):
    body = await request.json()
    STATE["requests"].append({"path": "/api/chat", "body": body})
    model = body.get("model", "")
    if STATE["fail_next"] > 0:
        STATE["fail_next"] -= 1
        return JSONResponse({"error": "llama runner process has terminated"}, status_code=500)
    if _norm(model) not in STATE["models"]:
        return _not_found(model)
    messages = body.get("messages") or []
    if not messages:  # load request
        return JSONResponse({"model": model, "created_at": _now(),
                             "message": {"role": "assistant", "content": ""},
                             "done_reason": "load", "done": True})
    tool_calls = [call_for(body["tools"], messages)] \
        if body.get("tools") and messages[-1].get("role") == "user" else []
    words = [] if tool_calls else reply_for(messages).split(" ")
    if STATE["mode"] == "slow":
        words = ["word"] * 500
    limit = (body.get("options") or {}).get("num_predict") or 10_000
    tokens = [w if i == 0 else " " + w for i, w in enumerate(words)][:limit]
    done_reason = "length" if len(words) > limit else "stop"
    prompt_count = sum(len(str(m.get("content", "")).split()) + 4 for m in messages)
    t0 = time.perf_counter_ns()

    def final(content: str, calls: list | None = None) -> dict:
        total = time.perf_counter_ns() - t0
        message = {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}
        return {"model": model, "created_at": _now(), "message": message,
                "done": True, "done_reason": done_reason, "total_duration": total + 1_000_000,
                "load_duration": 1_000_000, "prompt_eval_count": prompt_count,
                "prompt_eval_duration": 500_000, "eval_count": len(tokens), "eval_duration": max(total, 1)}

    if body.get("stream") is False:
        return JSONResponse(final("".join(tokens), tool_calls))
    mode = STATE["mode"]

    async def chunks():
        STATE["active"] += 1
        try:
            if mode == "hang":
                await asyncio.sleep(3600)
            for i, tok in enumerate(tokens):
                if i == 2 and mode == "stall":
                    await asyncio.sleep(3600)
                if i == 2 and mode == "die":
                    raise RuntimeError("simulated crash mid-stream")  # uvicorn cuts the connection
                await asyncio.sleep(0.1 if mode == "slow" else 0.01)
                yield json.dumps({"model": model, "created_at": _now(),
                                  "message": {"role": "assistant", "content": tok}, "done": False}) + "\n"
            if tool_calls:  # Ollama streams a call whole, in a chunk of its own
                message = {"role": "assistant", "content": "", "tool_calls": tool_calls}
                yield json.dumps({"model": model, "created_at": _now(), "message": message,
                                  "done": False}) + "\n"
            yield json.dumps(final("")) + "\n"
        finally:
            STATE["active"] -= 1

    return StreamingResponse(chunks(), media_type="application/x-ndjson")


@app.post("/_control")
async def control(request: Request) -> dict:
    body = await request.json()
    for key in ("mode", "fail_next"):
        if key in body:
            STATE[key] = body[key]
    if "models" in body:
        STATE["models"] = {_norm(m) for m in body["models"]}
    if body.get("clear"):
        STATE["requests"].clear()
    return {"mode": STATE["mode"], "fail_next": STATE["fail_next"], "models": sorted(STATE["models"])}


@app.get("/_active")
async def active() -> int:
    return STATE["active"]


@app.get("/_requests")
async def requests_seen() -> list:
    return STATE["requests"]


if __name__ == "__main__":
    port = int(sys.argv[1])
    if len(sys.argv) > 2:
        STATE["models"] = {_norm(m) for m in sys.argv[2:]}
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
