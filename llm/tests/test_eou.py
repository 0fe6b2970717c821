"""End of utterance (POST /v1/eou and the WebSocket's eou): the real SmolLM2 behind the real service,
and the 501 of a service without the model."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets
from fastapi.testclient import TestClient
from rvchat_llm.app import create_app
from rvchat_llm.engine import LLMEngine
from rvchat_llm.providers.base import Delta, Final
from rvchat_llm.settings import Settings


class Says:
    """A provider that answers "ok" (no model)."""

    name, default_model, context_window = "fake", "fake-1", 200

    def load(self) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def ready(self) -> None:
        return None

    def count_tokens(self, messages) -> int:
        return 1

    async def stream_chat(self, messages, options):
        yield Delta("ok")
        yield Final("stop", prompt_tokens=1, completion_tokens=1)


def eou(url: str, body) -> httpx.Response:
    return httpx.post(url + "/v1/eou", json=body, timeout=60)


@pytest.mark.models
def test_unfinished_words_score_lower_than_a_question(llm_service):
    unfinished = eou(llm_service.url, {"text": "I want to go to the"})
    question = eou(llm_service.url, {"text": "What is the capital of France?"})
    assert unfinished.status_code == 200 and question.status_code == 200, (unfinished.text, question.text)
    p_unfinished, p_question = unfinished.json()["probability"], question.json()["probability"]
    assert 0 <= p_unfinished < 0.1 and 0.5 < p_question <= 1, (p_unfinished, p_question)
    # Whisper's full stop after half a sentence does not fool it: the words are read without it.
    assert eou(llm_service.url, {"text": "I want to go to the."}).json()["probability"] == p_unfinished
    # Asked again, and after other text (its cached prefix is gone): the same answer.
    assert eou(llm_service.url, {"text": "What is the capital of France?"}).json()["probability"] == p_question


# Whisper tiny.en's transcripts at the pauses of bench/turns.py's set (bench/results/turns.md): the words
# before a speaker's thinking pause, and the same utterances' real ends. main_app holds 300 ms from 0.3
# (APP_TURN_END_EOU_THRESHOLD) and its long hold (1600 ms) below it.
PAUSED = ["And so my fellow Americans asked not", "And so my fellow Americans asked not what you",
          "The Red Fox has read many books, but...", "And I think it's like...",
          "For although the Chinese took impressions from wood blocks engraved in",
          "produced the block books which were the immediate", "in being coming."]
FINISHED = ["And so my fellow Americans ask not what your country can do for you. Ask what you can do for your country.",
            "The Red Fox has read many books, but there's always more to read.",
            "Montreal forced liner. I hardly know her.",
            "The truck righted itself just before I tipped over on to its top and came to a full stop."]


@pytest.fixture(scope="module")
def model():
    from rvchat_llm.eou import EndOfUtterance

    m = EndOfUtterance()  # the embedded model as the service loads it
    m.load()
    return m


@pytest.mark.models
def test_real_pauses_score_below_the_threshold_and_real_ends_above(model):
    paused = {t: model.probability(t) for t in PAUSED}
    finished = {t: model.probability(t) for t in FINISHED}
    assert max(paused.values()) < 0.3 <= min(finished.values()), (paused, finished)


@pytest.mark.models
@pytest.mark.parametrize("body", [{}, {"text": ""}, {"text": 5}, {"text": None}, {"text": "x" * 4001},
                                  {"words": "hello"}, [], "hello"])
def test_bad_input_is_a_4xx_in_the_shared_shape(llm_service, body):
    r = eou(llm_service.url, body)
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


@pytest.mark.models
async def test_ws_eou_beside_a_generation(llm_service):
    """An eou request during a generation is answered with its id, and the generation goes on to done."""
    expected = eou(llm_service.url, {"text": "And so my fellow Americans asked not"}).json()["probability"]
    async with websockets.connect(llm_service.ws_url + "/ws") as ws:
        await ws.send(json.dumps({"type": "generate", "max_tokens": 40,
                                  "messages": [{"role": "user", "content": "Tell me about the sea."}]}))
        first = json.loads(await ws.recv())
        assert first["type"] == "start"
        await ws.send(json.dumps({"type": "eou", "id": "q1", "text": "And so my fellow Americans asked not"}))
        await ws.send(json.dumps({"type": "eou", "id": "q2", "text": ""}))
        events = []
        while not any(e["type"] == "done" for e in events) or not any(e["type"] == "eou_result" for e in events):
            events.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
    answer = next(e for e in events if e["type"] == "eou_result")
    assert answer == {"type": "eou_result", "id": "q1", "probability": expected}
    bad = next(e for e in events if e["type"] == "error")
    assert bad["error"]["code"] == "invalid_event" and bad["error"]["param"] == "text"
    done = next(e for e in events if e["type"] == "done")
    assert done["id"] == first["id"] and done["message"]["content"]
    assert not any(e["type"] == "cancelled" for e in events)


@pytest.mark.models
def test_other_providers_use_the_embedded_model(ollama_llm, llm_service):
    """Ollama offers no such probability: the service answers with the embedded model all the same."""
    text = {"text": "What is the capital of France?"}
    deadline = time.monotonic() + 30
    while (r := eou(ollama_llm.url, text)).status_code == 503:  # it loads after the service is ready
        assert r.json()["error"]["code"] == "model_loading" and time.monotonic() < deadline, r.text
        time.sleep(0.2)
    assert r.json() == eou(llm_service.url, text).json()


def test_without_the_model_it_is_a_501():
    settings = Settings(eou=False)
    eng = LLMEngine(settings, provider=Says())
    with TestClient(create_app(settings, eng)) as client:
        r = client.post("/v1/eou", json={"text": "hello"})
        assert r.status_code == 501, r.text
        assert r.json()["error"]["code"] == "eou_unavailable"
        with client.websocket_connect("/ws") as ws:
            ws.send_json({"type": "eou", "id": "e1", "text": "hello"})
            event = ws.receive_json()
            assert event["type"] == "error" and event["id"] == "e1"
            assert event["error"]["code"] == "eou_unavailable"
            ws.send_json({"type": "generate", "messages": [{"role": "user", "content": "hi"}]})
            assert [ws.receive_json()["type"] for _ in range(3)] == ["start", "delta", "done"]
