"""The openai provider against a real OpenAI-compatible server: a second instance of this service
(local provider, the `llm_service` fixture) started as a process."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
import websockets

from rvchat_common.testing import ServiceProcess, free_port

pytestmark = pytest.mark.models

SEED = {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "Hello!"}], "max_tokens": 12, "temperature": 0}


def test_generate_through_openai_upstream(openai_llm, llm_service):
    r = httpx.post(openai_llm.url + "/generate", json=SEED, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["provider"] == "openai"
    assert body["message"]["content"].strip()
    # The upstream's exact usage comes through (include_usage on the upstream stream).
    assert body["usage"]["completion_tokens"] > 0 and body["usage"]["prompt_tokens"] > 10
    # Same model, greedy decoding (temperature 0 passed through): the upstream called directly
    # says the same thing.
    direct = httpx.post(llm_service.url + "/generate", json=SEED, timeout=120).json()
    assert direct["message"]["content"] == body["message"]["content"]


def test_openai_client_streamed_through_two_hops(openai_llm):
    client = openai.OpenAI(base_url=openai_llm.url + "/v1", api_key="x")
    assert client.models.list().data[0].owned_by == "openai"
    chunks = list(client.chat.completions.create(
        model="smollm2", messages=SEED["messages"], max_tokens=8, stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert chunks[-1].usage.completion_tokens > 0


async def test_ws_through_openai_upstream(openai_llm):
    async with websockets.connect(openai_llm.ws_url + "/ws") as ws:
        await ws.send(json.dumps({"type": "generate", **SEED}))
        kinds = []
        while not kinds or kinds[-1] not in ("done", "error"):
            kinds.append(json.loads(await asyncio.wait_for(ws.recv(), 60))["type"])
        assert kinds[0] == "start" and "delta" in kinds and kinds[-1] == "done"


def test_unreachable_openai_upstream_is_503_and_recovers(llm_service):
    port = free_port()
    env = {"LLM_PROVIDER": "openai", "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
           "LLM_CONNECT_TIMEOUT_S": "1", "LLM_RETRIES": "1", "LLM_RETRY_BACKOFF_S": "0.1",
           "LLM_READY_CACHE_S": "0"}
    svc = ServiceProcess("rvchat_llm", "LLM_", env).start(wait_ready=False)
    upstream = None
    try:
        r = httpx.get(svc.url + "/readyz", timeout=10)
        assert r.status_code == 503 and f"127.0.0.1:{port}" in r.json()["reason"]
        r = httpx.post(svc.url + "/generate", json=SEED, timeout=30)
        assert r.status_code == 503 and f"127.0.0.1:{port}" in r.json()["error"]["message"]
        assert httpx.get(svc.url + "/healthz").status_code == 200
        # The upstream appears on that port: the service recovers by itself.
        upstream = ServiceProcess("rvchat_llm", "LLM_", {"LLM_PROVIDER": "local"}, port=port).start()
        deadline = time.monotonic() + 20
        while httpx.get(svc.url + "/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "did not recover"
            time.sleep(0.3)
        assert httpx.post(svc.url + "/generate", json=SEED, timeout=120).status_code == 200
    finally:
        svc.stop()
        if upstream:
            upstream.stop()
