"""Tool calling through all three providers, with the official ``openai`` client and the service's own
/generate and /ws: the embedded model (grammar-constrained calls), the fake Ollama speaking Ollama's
tool protocol, and the openai provider in front of a second instance of this service."""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import openai
import pytest
import websockets

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Get the current time",
                                         "parameters": {"type": "object", "properties": {}}}}
# A schema with nesting and bounds, which the ollama client's own Tool model would have flattened.
NESTED = {"type": "function", "function": {
    "name": "set_alarm", "description": "Set an alarm",
    "parameters": {"type": "object", "required": ["label", "at"], "additionalProperties": False,
                   "properties": {
        "label": {"type": "string", "maxLength": 40},
        "at": {"type": "object", "required": ["hour"], "properties": {
            "hour": {"type": "integer", "minimum": 0, "maximum": 23}}}}}}}
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]
RESULT = "21 degrees celsius and sunny"


def client(svc) -> openai.OpenAI:
    return openai.OpenAI(base_url=svc.url + "/v1", api_key="x", max_retries=0, timeout=120)


def valid_args(call, tool: dict) -> dict:
    """The call's arguments, checked against the tool's schema."""
    assert call.type == "function" and call.function.name == tool["function"]["name"], call
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, tool["function"]["parameters"])
    return args


def assembled(chunks) -> tuple[list[dict], str | None, list]:
    """Streamed chunks put together as OpenAI's clients do: (calls, finish_reason, tool call pieces)."""
    calls: dict[int, dict] = {}
    pieces, finish = [], None
    for chunk in chunks:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                pieces.append(tc)
                call = calls.setdefault(tc.index, {"id": tc.id, "name": "", "arguments": ""})
                call["name"] += tc.function.name or ""
                call["arguments"] += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    return [calls[i] for i in sorted(calls)], finish, pieces


def with_result(call_id: str, name: str, arguments: str, result: str = RESULT) -> list[dict]:
    return ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": result}]


# --- the embedded model ---------------------------------------------------------------------
def test_local_required_tool_is_a_valid_call_of_the_right_tool(llm_service):
    r = client(llm_service).chat.completions.create(model="any", messages=ASK, tools=[WEATHER, TIME],
                                                    tool_choice="required", max_tokens=60)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_")
    # The name is the model's choice among the two, the arguments fill the schema.
    assert valid_args(call, WEATHER)["city"] == "Paris"


def test_local_streamed_call_assembles_to_the_same_call(llm_service):
    c = client(llm_service)
    whole = c.chat.completions.create(model="any", messages=ASK, tools=[WEATHER, TIME],
                                      tool_choice="required", max_tokens=60).choices[0].message.tool_calls[0]
    chunks = list(c.chat.completions.create(model="any", messages=ASK, tools=[WEATHER, TIME],
                                            tool_choice="required", max_tokens=60, stream=True))
    (call,), finish, pieces = assembled(chunks)
    assert finish == "tool_calls"
    assert (call["name"], call["arguments"]) == (whole.function.name, whole.function.arguments)
    # OpenAI's streaming shape: id and name in the first piece, then the arguments in pieces.
    assert pieces[0].id == call["id"] and pieces[0].function.name == "get_weather"
    assert all(p.id is None and p.function.name is None for p in pieces[1:]) and len(pieces) > 3


def test_local_named_tool_and_a_tool_without_arguments(llm_service):
    r = client(llm_service).chat.completions.create(
        model="any", messages=ASK, tools=[WEATHER, TIME], max_tokens=60,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    (call,) = r.choices[0].message.tool_calls
    assert valid_args(call, TIME) == {}


def test_local_tool_result_gives_a_spoken_answer(llm_service):
    messages = with_result("call_1", "get_weather", '{"city": "Paris"}')
    r = client(llm_service).chat.completions.create(model="any", messages=messages, tools=[WEATHER],
                                                    max_tokens=60)
    choice = r.choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    # The answer uses the result (the model is told it with the question).
    assert "sunny" in choice.message.content.lower() or "21" in choice.message.content


def test_local_auto_is_a_call_or_an_answer_never_a_broken_call(llm_service):
    c = client(llm_service)
    for question in ("What's the weather in Paris?", "Tell me a joke."):
        r = c.chat.completions.create(model="any", messages=[{"role": "user", "content": question}],
                                      tools=[WEATHER], tool_choice="auto", max_tokens=40)
        choice = r.choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            valid_args(choice.message.tool_calls[0], WEATHER)
        else:
            assert choice.finish_reason in ("stop", "length") and choice.message.content.strip()
            assert "<tool_call>" not in choice.message.content


def test_generate_and_sse_carry_the_call(llm_service, sse):
    body = {"messages": ASK, "tools": [WEATHER], "tool_choice": "required", "max_tokens": 60}
    r = httpx.post(llm_service.url + "/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["finish_reason"] == "tool_calls" and done["message"]["content"] == ""
    (call,) = done["message"]["tool_calls"]
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"])
    with httpx.stream("POST", llm_service.url + "/generate", json={**body, "stream": True}, timeout=120) as s:
        events = sse(s)
    assert [e["type"] for e in events] == ["tool_call", "done"]
    streamed = events[1]["message"]["tool_calls"][0]
    assert events[0]["call"]["function"] == call["function"] == streamed["function"]


async def test_ws_tool_call_event_then_done_then_the_answer(llm_service):
    async with websockets.connect(llm_service.ws_url + "/ws") as ws:
        await ws.send(json.dumps({"type": "generate", "messages": ASK, "tools": [WEATHER],
                                  "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                                  "max_tokens": 60}))
        events = []
        while not events or events[-1]["type"] not in ("done", "error"):
            events.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))
        assert [e["type"] for e in events] == ["start", "tool_call", "done"], events
        call = events[1]["call"]
        assert events[2]["message"]["tool_calls"] == [call] and events[2]["finish_reason"] == "tool_calls"
        # The result goes back on the same socket; the reply is text.
        history = ASK + [{"role": "assistant", "content": "", "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": call["id"], "content": RESULT}]
        await ws.send(json.dumps({"type": "generate", "tools": [WEATHER], "max_tokens": 60,
                                  "messages": history}))
        events = []
        while not events or events[-1]["type"] not in ("done", "error"):
            events.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))
        assert events[-1]["type"] == "done" and events[-1]["finish_reason"] == "stop", events
        assert "delta" in [e["type"] for e in events] and "tool_calls" not in events[-1]["message"]


# --- bad requests: 400 in the shared error shape (no model needed: the fake Ollama behind) ------
# (change, param, code, what /generate answers: its body is typed (rvchat_common.protocol.llm), so a
# wrong shape there is its usual 422; what only a check can tell is the same 400 as OpenAI's)
BAD = [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]},
     "tools.0", "invalid_tools", 400),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     "tools.0", "invalid_tools", 400),
    ({"tools": [{"type": "function", "function": {"name": "no spaces allowed"}}]}, "tools.0",
     "invalid_tools", 400),
    ({"tools": [WEATHER, WEATHER]}, "tools.1", "invalid_tools", 400),
    ({"tools": [{"type": "retrieval"}]}, "tools.0", "invalid_tools", 422),
    ({"tools": "get_weather"}, "tools", "invalid_tools", 422),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
     "tool_choice", "invalid_tool_choice", 400),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice", "invalid_tool_choice", 422),
    ({"tool_choice": "required"}, "tool_choice", "invalid_tool_choice", 400),
    ({"messages": ASK + [{"role": "tool", "tool_call_id": "call_x", "content": "1"}]}, "messages.1",
     "invalid_messages", 400),
    ({"messages": ASK + [{"role": "tool", "content": "1"}]}, "messages.1", "invalid_messages", 400),
    ({"messages": with_result("call_1", "get_weather", "{city: Paris")}, "messages.1.tool_calls.0",
     "invalid_messages", 400),
    ({"messages": ASK + [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]}]},
     "messages.1.tool_calls.0", "invalid_messages", 422),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
     "messages.0", "invalid_messages", 400),
]


@pytest.mark.parametrize("change,param,code,generate_status", BAD,
                         ids=[f"{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_bad_tools_are_400_in_the_shared_error_shape(ollama_llm, change, param, code, generate_status):
    body = {"model": "llama3.2", "messages": ASK, **change}
    for path, status in (("/v1/chat/completions", 400), ("/generate", generate_status)):
        r = httpx.post(ollama_llm.url + path, json=body, timeout=30)
        assert r.status_code == status, (path, r.text)
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"], (path, error)
        if status == 400:
            assert (error["code"], error["param"]) == (code, param), (path, error)
    with pytest.raises(openai.BadRequestError):
        client(ollama_llm).chat.completions.create(**body)


async def test_bad_tools_on_the_websocket_are_invalid_events(ollama_llm):
    async with websockets.connect(ollama_llm.ws_url + "/ws") as ws:
        await ws.send(json.dumps({"type": "generate", "messages": ASK, "tools": [WEATHER],
                                  "tool_choice": {"type": "function", "function": {"name": "nope"}}}))
        event = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert event["type"] == "error" and event["error"]["code"] == "invalid_event"
        assert "nope" in event["error"]["message"]
        # The connection stays usable.
        await ws.send(json.dumps({"type": "generate", "messages": ASK}))
        kinds = []
        while not kinds or kinds[-1] not in ("done", "error"):
            kinds.append(json.loads(await asyncio.wait_for(ws.recv(), 30))["type"])
        assert kinds[-1] == "done"


# --- Ollama ------------------------------------------------------------------------------------
def last_chat(fake) -> dict:
    return [r for r in fake.requests() if r["path"] == "/api/chat" and r["body"].get("messages")][-1]["body"]


def test_ollama_call_passes_the_whole_schema_and_comes_back_in_openai_shape(ollama_llm, fake_ollama):
    ask = [{"role": "user", "content": "Wake me at seven"}]
    r = client(ollama_llm).chat.completions.create(model="llama3.2", messages=ask,
                                                   tools=[NESTED, WEATHER], tool_choice="required")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"  # (Ollama says "stop")
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_")
    assert valid_args(call, NESTED) == {"label": "Wake me at seven", "at": {"hour": 1}}
    sent = last_chat(fake_ollama)
    assert sent["tools"] == [NESTED, WEATHER]  # nested properties, bounds and all


def test_ollama_streamed_call_and_the_result_in_ollamas_shape(ollama_llm, fake_ollama):
    c = client(ollama_llm)
    chunks = list(c.chat.completions.create(model="llama3.2", messages=ASK, tools=[WEATHER],
                                            stream=True))
    (call,), finish, _ = assembled(chunks)
    assert finish == "tool_calls" and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": ASK[0]["content"]}
    r = c.chat.completions.create(model="llama3.2", tools=[WEATHER],
                                  messages=with_result(call["id"], call["name"], call["arguments"]))
    assert r.choices[0].message.content == f"get_weather said: {RESULT}"
    assert r.choices[0].finish_reason == "stop"
    sent = last_chat(fake_ollama)["messages"]
    # Ollama's shape: the arguments an object, the result naming its tool.
    assert sent[1]["tool_calls"] == [{"type": "function", "function": {
        "index": 0, "name": "get_weather", "arguments": {"city": ASK[0]["content"]}}}]
    assert sent[2] == {"role": "tool", "content": RESULT, "tool_name": "get_weather"}


def test_ollama_tool_choice_none_and_named(ollama_llm, fake_ollama):
    c = client(ollama_llm)
    r = c.chat.completions.create(model="llama3.2", messages=ASK, tools=[WEATHER], tool_choice="none")
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls
    assert "tools" not in last_chat(fake_ollama)
    r = c.chat.completions.create(model="llama3.2", messages=ASK, tools=[WEATHER, NESTED],
                                  tool_choice={"type": "function", "function": {"name": "set_alarm"}})
    assert r.choices[0].message.tool_calls[0].function.name == "set_alarm"
    assert last_chat(fake_ollama)["tools"] == [NESTED]  # Ollama has no tool_choice: only that tool


# --- an OpenAI-compatible upstream (this service, local model, behind the openai provider) --------
def test_openai_upstream_call_stream_and_answer(openai_llm, llm_service):
    hop, direct = client(openai_llm), client(llm_service)
    args = {"model": "smollm2", "messages": ASK, "tools": [WEATHER, TIME], "tool_choice": "required",
            "max_tokens": 60}
    call = hop.chat.completions.create(**args).choices[0].message.tool_calls[0]
    valid_args(call, WEATHER)
    # Greedy, same model: the call is the one the upstream makes when asked directly.
    same = direct.chat.completions.create(**args).choices[0].message.tool_calls[0]
    assert (call.function.name, call.function.arguments) == (same.function.name, same.function.arguments)
    (streamed,), finish, pieces = assembled(list(hop.chat.completions.create(**args, stream=True)))
    assert finish == "tool_calls" and len(pieces) > 3  # the upstream's pieces come through as pieces
    assert (streamed["name"], streamed["arguments"]) == (call.function.name, call.function.arguments)
    answer = hop.chat.completions.create(model="smollm2", tools=[WEATHER], max_tokens=60,
                                         messages=with_result(call.id, call.function.name,
                                                              call.function.arguments))
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content.strip()
    assert not answer.choices[0].message.tool_calls


def nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


HOSTILE_TOOLS = [
    {"tools": [None]}, {"tools": [1]}, {"tools": [{"type": "function", "function": None}]},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                              "properties": "x"}}}]},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": nested(400)}}]},
    {"tools": [{"type": "function", "function": {"name": "f", "description": 5}}]},
    {"tools": [{"type": "function", "function": {"name": "f" * 65}}]},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "description": "x" * 40000}}}}}]},
    {"tools": [WEATHER] * 129},
    {"tools": [WEATHER], "tool_choice": 5}, {"tools": [WEATHER], "tool_choice": {"type": "function"}},
    {"tools": [WEATHER], "tool_choice": {"type": "function", "function": "get_weather"}},
    {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": 5}}},
    {"messages": ASK + [{"role": "assistant", "content": None, "tool_calls": "x"}]},
    {"messages": ASK + [{"role": "assistant", "content": None, "tool_calls": [None]}]},
    {"messages": ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": 5, "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
    {"messages": ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
    {"messages": ASK + [{"role": "tool", "tool_call_id": 5, "content": "x"}]},
    {"messages": ASK + [{"role": "tool", "tool_call_id": "c", "content": None}]},
]


def test_hostile_tool_requests_get_4xx_never_5xx(ollama_llm):
    failures = []
    for change in HOSTILE_TOOLS:
        body = {"model": "llama3.2", "messages": ASK, **change}
        for path in ("/v1/chat/completions", "/generate"):
            r = httpx.post(ollama_llm.url + path, json=body, timeout=30)
            if not (400 <= r.status_code < 500 and {"message", "type", "code"} <= set(r.json()["error"])):
                failures.append((path, json.dumps(change)[:80], r.status_code, r.text[:200]))
    assert not failures, failures
    assert httpx.get(ollama_llm.url + "/healthz").status_code == 200


# --- logic, without a service ------------------------------------------------------------------
def test_streamed_pieces_assemble_into_whole_calls_in_order():
    from rvchat_llm.providers.base import ToolCallDelta
    from rvchat_llm.tools import ToolCalls

    calls = ToolCalls()
    assert calls.add(ToolCallDelta(0, id="call_a", name="get_weather")) == []
    assert calls.add(ToolCallDelta(0, arguments='{"city": ')) == []
    assert calls.add(ToolCallDelta(0, arguments='"Paris"}')) == []
    # A piece of the next call completes the first.
    first = {"id": "call_a", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"city": "Paris"}'}}
    assert calls.add(ToolCallDelta(1, id="call_b", name="get_time", arguments="{}")) == [first]
    second = {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    assert calls.finish() == [second] and calls.finish() == []
    assert calls.all() == [first, second]
    # A provider that names no id still gets one.
    other = ToolCalls()
    other.add(ToolCallDelta(0, name="f", arguments="{}"))
    assert other.all()[0]["id"].startswith("call_")


def test_trimming_never_keeps_a_result_without_its_call():
    from rvchat_llm.engine import LLMEngine, Request
    from rvchat_llm.providers.base import EstimatedTokens
    from rvchat_llm.settings import Settings

    class Tiny(EstimatedTokens):
        name, default_model, context_window = "fake", "fake", 300

    history = [{"role": "user", "content": "old " * 200}, *with_result("call_1", "get_weather", "{}")[1:],
               {"role": "assistant", "content": "It is sunny."}, {"role": "user", "content": "Thanks!"}]
    history[1]["content"] = "x " * 600  # the call's message is too long to keep, its result is not
    kept, dropped, _ = LLMEngine(Settings(), provider=Tiny()).prepare(
        Request(messages=history, default_system=False), 32)
    assert [m["role"] for m in kept] == ["assistant", "user"] and dropped == 3


def test_the_loosened_schema_keeps_names_types_and_enums_with_short_strings():
    from rvchat_llm.providers.local_tools import LOOSE_STRING_CHARS, _loosened

    short = {"type": "string", "maxLength": LOOSE_STRING_CHARS}
    loose = _loosened({"type": "object", "required": ["a", "gone"], "properties": {
        "a": {"$ref": "#/$defs/x"}, "b": {"type": "string", "pattern": "[a-z]+"}, "c": {"type": "integer"},
        "d": {"enum": ["x", "y"]}, "e": {"type": ["string", "null"]}}, "$defs": {"x": {"$ref": "#/$defs/x"}}})
    assert loose == {"type": "object", "required": ["a"], "properties": {
        "a": short, "b": short, "c": {"type": "integer"}, "d": {"enum": ["x", "y"]}, "e": short}}


def test_local_schemas_llama_cpp_cannot_follow_still_give_an_object(llm_service):
    # A $ref that refers only to itself converts to a left-recursive grammar, which llama.cpp
    # refuses (and llama-cpp-python then crashed the process on); a pattern the converter lacks.
    c = client(llm_service)
    for params in ({"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}},
                    "$defs": {"x": {"$ref": "#/$defs/x"}}},
                   {"type": "object", "properties": {"a": {"type": "string", "pattern": "[a-z]+"}}}):
        tool = {"type": "function", "function": {"name": "f", "parameters": params}}
        r = c.chat.completions.create(model="any", messages=ASK, tools=[tool], tool_choice="required",
                                      max_tokens=40)
        assert isinstance(json.loads(r.choices[0].message.tool_calls[0].function.arguments), dict)
    assert httpx.get(llm_service.url + "/healthz").status_code == 200
