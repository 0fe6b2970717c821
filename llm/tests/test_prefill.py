"""Prefill: the prompt of a reply to come (the user's words so far) evaluated ahead of its generation,
on the real SmolLM2, in the provider and through the service's WebSocket."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from rvchat_common.inference import InferenceQueue
from rvchat_llm.providers.base import ChatOptions, Delta
from rvchat_llm.providers.local import LocalProvider, conversation_of
from rvchat_llm.settings import Settings

SYSTEM = {"role": "system", "content": "You are a helpful voice assistant. Answer in one short sentence."}
HISTORY = [SYSTEM, {"role": "user", "content": "What is the capital of France?"},
           {"role": "assistant", "content": "The capital of France is Paris."}]
PARTIAL = "And what is the capital"
FINAL = "And what is the capital of Spain?"


def options(max_tokens: int = 30) -> ChatOptions:
    return ChatOptions(model="m", temperature=0.0, max_tokens=max_tokens)


async def reply(provider: LocalProvider, messages) -> str:
    return "".join([item.content async for item in provider.stream_chat(messages, options())
                    if isinstance(item, Delta)])


def copy_of(provider: LocalProvider, messages):
    return next(inst for inst in provider._instances if inst.conversation == conversation_of(messages))


@pytest.fixture(scope="module")
def provider() -> LocalProvider:
    p = LocalProvider(Settings(instances=2), InferenceQueue(8))
    p.load()
    return p


@pytest.mark.models
async def test_a_prefill_leaves_only_the_rest_to_evaluate_and_the_same_reply(provider):
    first = await reply(provider, HISTORY[:2])
    assert first
    final = [*HISTORY, {"role": "user", "content": FINAL}]
    whole = provider._tokens(final)
    mine = copy_of(provider, final)
    before = mine.cached(whole)

    evaluated = await provider.prefill([*HISTORY, {"role": "user", "content": PARTIAL}], options())
    after = mine.cached(whole)
    # The history's new end and the words so far were evaluated; only the last words and the template's
    # assistant header are left for the generation.
    assert evaluated > 0 and after > before
    assert len(whole) - after <= len(provider._tokens([{"role": "user", "content": "of Spain?"}]))
    # Asked again with nothing new, it evaluates nothing.
    assert await provider.prefill([*HISTORY, {"role": "user", "content": PARTIAL}], options()) == 0

    # The reply is the one the model gives without any prefill (greedy), on a copy that starts cold.
    prefilled = await reply(provider, final)
    other = next(inst for inst in provider._instances if inst is not mine)
    other.llm.reset()
    cold = LocalProvider(Settings(instances=1), InferenceQueue(8))
    cold.load()
    assert prefilled and prefilled == await reply(cold, final)


@pytest.mark.models
async def test_a_prefill_gives_way_to_its_generation(provider):
    # Cancelled at once (the generate came), it stops and the copy is free again for the generation.
    messages = [*HISTORY, {"role": "user", "content": "Tell me about the sea, the waves and the wind " * 20}]
    task = asyncio.create_task(provider.prefill(messages, options()))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await reply(provider, [SYSTEM, {"role": "user", "content": "Hello!"}])
    await asyncio.sleep(0.5)
    assert len(provider._free) == len(provider._instances) and not provider.queue.busy


@pytest.mark.models
async def test_the_websocket_answers_prefilled_and_a_generate_after_it_works(llm_service):
    history = [{"role": "user", "content": "What is the capital of France?"},
               {"role": "assistant", "content": "The capital of France is Paris."}]
    async with websockets.connect(llm_service.ws_url + "/ws") as ws:
        await ws.send(json.dumps({"type": "prefill", "id": "p1",
                                  "messages": [*history, {"role": "user", "content": PARTIAL}]}))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 60))
        assert answer["type"] == "prefilled" and answer["id"] == "p1" and answer["tokens"] > 0
        await ws.send(json.dumps({"type": "prefill", "id": "p2", "messages": []}))  # bad: a clear error
        bad = json.loads(await asyncio.wait_for(ws.recv(), 60))
        assert bad["type"] == "error" and bad["error"]["code"] == "invalid_event"
        await ws.send(json.dumps({"type": "generate", "max_tokens": 30,
                                  "messages": [*history, {"role": "user", "content": FINAL}]}))
        events = []
        while not events or events[-1]["type"] not in ("done", "error"):
            events.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
    done = events[-1]
    assert done["type"] == "done" and "madrid" in done["message"]["content"].lower(), done


@pytest.mark.models
async def test_one_prefill_at_a_time_and_the_newest_waiting_one_runs_next(llm_service):
    # A running prefill is not thrown away for the next partial's: one waiting is replaced (answered 0).
    base = [{"role": "system", "content": "Conversation " + "of many words " * 30},
            {"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hello, how can I help?"}]
    async with websockets.connect(llm_service.ws_url + "/ws") as ws:
        for i, words in enumerate(["Tell me", "Tell me about", "Tell me about the sea"]):
            await ws.send(json.dumps({"type": "prefill", "id": f"p{i}",
                                      "messages": [*base, {"role": "user", "content": words}]}))
            if i == 0:
                await asyncio.sleep(0.05)  # p0 under way (127 tokens: far longer than this)
        answers = {}
        while len(answers) < 3:
            event = json.loads(await asyncio.wait_for(ws.recv(), 60))
            answers[event["id"]] = event["tokens"]
    assert answers["p1"] == 0  # replaced while it waited
    assert answers["p0"] > 60 and 0 < answers["p2"] < 10  # the newest: only its words after p0's
    # A first turn is not prefilled: every copy holds the default system prompt from the start.
    async with websockets.connect(llm_service.ws_url + "/ws") as ws:
        await ws.send(json.dumps({"type": "prefill", "id": "f", "messages": [{"role": "user", "content": "Tell"}]}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 60))["tokens"] == 0
