"""Work whose client has gone stops at once and frees the worker, for every provider: the local
model (also during prompt evaluation), Ollama and an OpenAI-compatible upstream (the upstream
request is closed), non-streaming and streaming alike; and the local model gets no false 504."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
import websockets

from rvchat_common.testing import abandoned_request
from rvchat_llm.engine import LLMEngine, Request
from rvchat_llm.providers.base import Delta, Final
from rvchat_llm.settings import Settings

LONG_PROMPT = [{"role": "user", "content": "Summarise this text. " + "The quick brown fox jumps over the lazy dog. " * 150}]
ONE_TOKEN = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
PROMPT_S = 10.0  # a 1-token reply to a short prompt: well under a second alone, slower on a busy box


class SlowLocal:
    """Named 'local' (in-process): a token every 0.3 s, beyond the 0.1 s token timeout."""

    name = "local"
    default_model = "slow"
    context_window = 2048

    def load(self) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def ready(self) -> str | None:
        return None

    def count_tokens(self, messages):
        return 10

    async def stream_chat(self, messages, options):
        for token in ("a", "b", "c"):
            await asyncio.sleep(0.3)
            yield Delta(token)
        yield Final("stop", 10, 3)


async def test_the_local_model_gets_no_false_504_while_it_generates():
    eng = LLMEngine(Settings(first_token_timeout_s=0.1, token_timeout_s=0.1), provider=SlowLocal())
    done = await eng.complete(Request(messages=[{"role": "user", "content": "hi"}]))
    assert done.content == "abc"


def _served_promptly(url: str, body: dict = ONE_TOKEN) -> float:
    t0 = time.perf_counter()
    r = httpx.post(url, json=body, timeout=120)
    took = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    assert took < PROMPT_S, f"the next request waited {took:.1f} s"
    return took


def _abandon(url: str, body: dict, after: float = 1.0) -> None:
    if body.get("stream"):
        def stream() -> None:  # read for ``after`` seconds, then hang up
            deadline = time.monotonic() + after
            try:
                with httpx.stream("POST", url, json=body, timeout=after) as r:
                    for _ in r.iter_bytes():
                        if time.monotonic() > deadline:
                            return
            except httpx.TimeoutException:
                pass
        t = threading.Thread(target=stream)
        t.start()
        t.join()
        return
    abandoned_request("POST", url, after, json=body)


# --- local (llama-cpp) --------------------------------------------------------------------
@pytest.mark.parametrize("path,body", [
    ("/generate", {"messages": LONG_PROMPT, "max_tokens": 2000}),
    ("/generate", {"messages": LONG_PROMPT, "max_tokens": 2000, "stream": True}),
    ("/v1/chat/completions", {"messages": LONG_PROMPT, "max_tokens": 2000}),
])
def test_local_generation_whose_client_left_frees_the_model(llm_service, path, body):
    # Abandoned during prompt evaluation (seconds for ~1,500 tokens): llama.cpp's abort callback
    # stops it there; before, the flag was read only when text came out (the next request waited 97.6 s).
    _abandon(llm_service.url + path, body)
    _served_promptly(llm_service.url + "/generate")


async def test_local_ws_cancel_during_prompt_evaluation_frees_the_model(llm_service):
    async with websockets.connect(llm_service.ws_url + "/ws") as ws:
        await ws.send(json.dumps({"type": "generate", "id": "g1", "messages": LONG_PROMPT, "max_tokens": 2000}))
        await asyncio.sleep(1.0)
        await ws.send(json.dumps({"type": "cancel", "id": "g1"}))
        t0 = time.perf_counter()
        while (event := json.loads(await asyncio.wait_for(ws.recv(), 30)))["type"] != "cancelled":
            pass
        await ws.send(json.dumps({"type": "generate", "id": "g2", **ONE_TOKEN}))
        while (event := json.loads(await asyncio.wait_for(ws.recv(), 60)))["type"] not in ("done", "error"):
            pass
        assert event["type"] == "done" and time.perf_counter() - t0 < PROMPT_S


# --- Ollama ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path,body", [
    ("/generate", {"messages": [{"role": "user", "content": "Talk."}], "max_tokens": 2000}),
    ("/generate", {"messages": [{"role": "user", "content": "Talk."}], "max_tokens": 2000, "stream": True}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Talk."}]}),
])
def test_ollama_request_whose_client_left_is_closed_upstream(ollama_llm, fake_ollama, path, body):
    fake_ollama.control(mode="slow", fail_next=0)
    try:
        _abandon(ollama_llm.url + path, body)
        deadline = time.monotonic() + 3
        while httpx.get(fake_ollama.url + "/_active", timeout=5).json() > 0:
            assert time.monotonic() < deadline, "Ollama is still generating for a client that has gone"
            time.sleep(0.05)
    finally:
        fake_ollama.control(mode="ok")
    _served_promptly(ollama_llm.url + "/generate")


# --- OpenAI-compatible ------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    {"messages": LONG_PROMPT, "max_tokens": 2000},
    {"messages": LONG_PROMPT, "max_tokens": 2000, "stream": True},
])
def test_openai_upstream_request_whose_client_left_is_closed(openai_llm, llm_service, body):
    # The upstream is a second LLM service (local model): closing our request to it frees its model,
    # so it serves the next request at once.
    _abandon(openai_llm.url + "/v1/chat/completions", body)
    _served_promptly(llm_service.url + "/generate")
    _served_promptly(openai_llm.url + "/generate")
