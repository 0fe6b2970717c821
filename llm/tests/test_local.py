"""The local provider end to end: the real SmolLM2 GGUF behind the real service process."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
import websockets

pytestmark = pytest.mark.models

SEED = {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "Hello!"}]}


def test_readme_seed_example(llm_service):
    # Exactly the README curl: no max_tokens, no stream.
    r = httpx.post(llm_service.url + "/generate", json=SEED, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["message"]["role"] == "assistant"
    assert len(body["message"]["content"].split()) >= 2
    assert body["provider"] == "local" and "SmolLM2" in body["model"]
    assert body["usage"]["prompt_tokens"] > 10 and body["usage"]["completion_tokens"] > 0
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 0 < body["timings"]["first_token_ms"] <= body["timings"]["total_ms"]


def test_answers_a_simple_question(llm_service):
    # Greedy default: the tiny model gets this one right (it drifts into French when sampled).
    r = httpx.post(llm_service.url + "/generate", timeout=120, json={
        "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 24})
    assert "paris" in r.json()["message"]["content"].lower()


def test_max_tokens_bounds_the_reply(llm_service):
    r = httpx.post(llm_service.url + "/generate", timeout=120, json={
        "messages": [{"role": "user", "content": "Tell me a long story about a dragon."}], "max_tokens": 5})
    body = r.json()
    assert body["usage"]["completion_tokens"] <= 6
    assert body["finish_reason"] == "length"


def test_stream_sse_deltas_then_done(llm_service, sse):
    with httpx.stream("POST", llm_service.url + "/generate", timeout=120,
                      json={**SEED, "stream": True, "max_tokens": 16}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse(r)
    deltas = [e for e in events if e["type"] == "delta"]
    assert len(deltas) >= 2 and events[-1]["type"] == "done"
    assert "".join(d["content"] for d in deltas) == events[-1]["message"]["content"]
    assert events[-1]["usage"]["completion_tokens"] >= len(deltas) - 1


def test_openai_client_unchanged(llm_service):
    client = openai.OpenAI(base_url=llm_service.url + "/v1", api_key="unused")
    models = client.models.list()
    assert models.data[0].owned_by == "local"
    r = client.chat.completions.create(model="gpt-4o-mini", max_tokens=12,
                                       messages=[{"role": "user", "content": "Say hello."}])
    assert r.object == "chat.completion" and r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=12, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_openai_client_without_a_system_message_gets_the_local_models_prompt(llm_service):
    """The openai client sends no system message unless told: the embedded model then gets the
    service's prompt, not SmolLM2's template default, which answered this question in French."""
    client = openai.OpenAI(base_url=llm_service.url + "/v1", api_key="unused")
    r = client.chat.completions.create(model="any", max_tokens=40, messages=[
        {"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in r.choices[0].message.content
    bare = r.usage.prompt_tokens
    # A system message of the client's own is kept as it is (and the service's is not added).
    r = client.chat.completions.create(model="any", max_tokens=8, messages=[
        {"role": "system", "content": "Hi."}, {"role": "user", "content": "What is the capital of France?"}])
    assert r.usage.prompt_tokens < bare


def test_openai_stream_ends_with_done_marker(llm_service, sse):
    with httpx.stream("POST", llm_service.url + "/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True}) as r:
        events = sse(r)
    assert events[-1] == "[DONE]"
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])


async def _ws_generate(url: str, payload: dict, cancel_after: int | None = None) -> list[dict]:
    events = []
    async with websockets.connect(url + "/ws") as ws:
        await ws.send(json.dumps({"type": "generate", **payload}))
        deltas = 0
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), 120))
            events.append(event)
            if event["type"] == "delta":
                deltas += 1
                if cancel_after is not None and deltas == cancel_after:
                    await ws.send(json.dumps({"type": "cancel"}))
            if event["type"] in ("done", "cancelled", "error"):
                return events


async def test_ws_generate(llm_service):
    events = await _ws_generate(llm_service.ws_url, {**SEED, "max_tokens": 12})
    assert events[0]["type"] == "start" and events[0]["provider"] == "local"
    done = events[-1]
    assert done["type"] == "done"
    assert "".join(e["content"] for e in events if e["type"] == "delta") == done["message"]["content"]
    assert done["timings"]["first_token_ms"] > 0


async def test_ws_cancel_stops_generation_and_frees_the_model(llm_service):
    events = await _ws_generate(llm_service.ws_url, {
        "messages": [{"role": "user", "content": "Write a very long story about a dragon and a knight."}],
        "max_tokens": 400, "temperature": 0.7}, cancel_after=3)
    assert events[-1]["type"] == "cancelled"
    deltas = [e for e in events if e["type"] == "delta"]
    # Cancelled after 3 deltas: only the few tokens already in flight may follow, not the 400 asked.
    assert len(deltas) < 40
    assert events[-1]["content"] == "".join(d["content"] for d in deltas)
    # The model is free again: the next request runs at once to completion.
    r = httpx.post(llm_service.url + "/generate", json={**SEED, "max_tokens": 4}, timeout=60)
    assert r.status_code == 200


async def test_ws_new_generate_replaces_running_one(llm_service):
    async with websockets.connect(llm_service.ws_url + "/ws") as ws:
        long = {"messages": [{"role": "user", "content": "Write a long poem about the sea."}],
                "max_tokens": 300}
        await ws.send(json.dumps({"type": "generate", **long}))
        first = json.loads(await asyncio.wait_for(ws.recv(), 60))
        assert first["type"] == "start"
        await ws.send(json.dumps({"type": "generate", **SEED, "max_tokens": 6}))
        kinds, second = [], None
        while True:
            e = json.loads(await asyncio.wait_for(ws.recv(), 60))
            kinds.append(e["type"])
            if e["type"] == "cancelled":
                assert e["id"] == first["id"]
            if e["type"] == "start":
                second = e["id"]
            if e["type"] == "done":
                assert e["id"] == second != first["id"]
                break
        assert "cancelled" in kinds and kinds.index("cancelled") < kinds.index("done")


async def test_ws_bad_events_keep_connection_open(llm_service):
    async with websockets.connect(llm_service.ws_url + "/ws") as ws:
        for bad, code in [("not json", "invalid_json"), (json.dumps([1]), "invalid_event"),
                          (json.dumps({"type": "dance"}), "unknown_event"),
                          (json.dumps({"type": "generate", "messages": []}), "invalid_event"),
                          (json.dumps({"type": "generate", "messages": [{"role": "wizard", "content": "x"}]}),
                           "invalid_event")]:
            await ws.send(bad)
            e = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert e["type"] == "error" and e["error"]["message"] and e["error"]["code"] == code, (bad, e)
        await ws.send(b"\x00\x01")
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["error"]["code"] == "unexpected_binary"
        await ws.send(json.dumps({"type": "cancel"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "cancelled"
        await ws.send(json.dumps({"type": "generate", **SEED, "max_tokens": 3}))
        kinds = []
        while not kinds or kinds[-1] not in ("done", "error"):
            kinds.append(json.loads(await asyncio.wait_for(ws.recv(), 60))["type"])
        assert kinds[-1] == "done"


@pytest.mark.parametrize("body", [
    {},
    {"messages": []},
    {"messages": "hello"},
    {"messages": [{"role": "wizard", "content": "hi"}]},
    {"messages": [{"role": "user"}]},
    {"messages": [{"role": "user", "content": 42}]},
    {"messages": [{"role": "user", "content": ["a"]}]},
    {"messages": [{"role": "user", "content": "x" * 40000}]},
    {"messages": [{"role": "user", "content": "hi"}] * 501},
    {"messages": [{"role": "user", "content": "hi"}], "temperature": 9},
    {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
    {"messages": [{"role": "user", "content": "hi"}], "system": 5},
])
def test_bad_inputs_get_422(llm_service, body):
    r = httpx.post(llm_service.url + "/generate", json=body, timeout=30)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error"


def test_malformed_bodies(llm_service):
    for path in ("/generate", "/v1/chat/completions"):
        r = httpx.post(llm_service.url + path, content=b"{not json", timeout=30,
                       headers={"content-type": "application/json"})
        assert r.status_code in (400, 422) and "error" in r.json()
    r = httpx.post(llm_service.url + "/v1/chat/completions", timeout=30,
                   json={"messages": [{"role": "tool", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_messages"  # answers no call
    r = httpx.post(llm_service.url + "/v1/chat/completions", timeout=30,
                   json={"messages": [{"role": "user", "content": "hi"}], "n": 3})
    assert r.status_code == 422
    assert httpx.get(llm_service.url + "/healthz").status_code == 200


def test_history_is_trimmed_to_the_context(llm_service):
    # 120 long turns (~10k tokens) cannot fit the 2048-token context. A large max_tokens leaves
    # room for only ~130 prompt tokens, which keeps the prompt (and the test) small; the stop
    # sequence keeps the reply short.
    turns = []
    for i in range(60):
        turns += [{"role": "user", "content": f"Fact {i}: " + "the quick brown fox jumps. " * 20},
                  {"role": "assistant", "content": "Noted."}]
    turns.append({"role": "user", "content": "Say OK."})
    r = httpx.post(llm_service.url + "/v1/chat/completions", timeout=120, json={
        "messages": [{"role": "system", "content": "You are terse."}, *turns], "max_tokens": 1900,
        "stop": ["."]})
    assert r.status_code == 200, r.text
    assert 10 < r.json()["usage"]["prompt_tokens"] <= 2048 - 1900


def test_a_message_larger_than_the_context_is_a_clear_400(llm_service):
    r = httpx.post(llm_service.url + "/generate", timeout=60, json={
        "messages": [{"role": "user", "content": "word " * 6000}]})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert httpx.get(llm_service.url + "/healthz").status_code == 200
