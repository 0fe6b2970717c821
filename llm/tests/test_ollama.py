"""The ollama provider against fake_ollama.py (Ollama's documented NDJSON protocol), with faults.

The fake is a real process on a fixed port, so 'upstream refused' is a stopped process and
recovery is the same process started again.
"""

from __future__ import annotations

import json
import os
import time

import httpx
import openai
import pytest

from rvchat_common.testing import ServiceProcess

# Not a model, but the real service process in front of a fake upstream, with seconds-long fault timeouts.
pytestmark = pytest.mark.models

USER = {"messages": [{"role": "user", "content": "hello there friend"}]}


@pytest.fixture(autouse=True)
def _reset(fake_ollama):
    fake_ollama.control(mode="ok", fail_next=0, models=["llama3.2"], clear=True)
    yield
    fake_ollama.control(mode="ok", fail_next=0, models=["llama3.2"])


def _chats(fake) -> list[dict]:
    return [r["body"] for r in fake.requests() if r["path"] == "/api/chat"]


def _wait_ready(url: str, want: int, timeout: float = 20) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(url + "/readyz", timeout=5)
        if r.status_code == want or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def test_generate_through_ollama(ollama_llm, fake_ollama):
    r = httpx.post(ollama_llm.url + "/generate", json={**USER, "temperature": 0.3, "max_tokens": 50},
                   timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["message"] == {"role": "assistant", "content": "You said: hello there friend"}
    assert body["provider"] == "ollama" and body["model"] == "llama3.2"
    assert body["usage"]["completion_tokens"] == 5  # the fake's eval_count
    assert body["usage"]["prompt_tokens"] > 0
    sent = _chats(fake_ollama)[-1]
    assert sent["stream"] is True and sent["keep_alive"] == "30m"
    assert sent["options"] == {"num_ctx": 2048, "temperature": 0.3, "num_predict": 50}
    # The default system prompt goes first when the request has none.
    assert sent["messages"][0]["role"] == "system" and sent["messages"][-1]["content"] == "hello there friend"


def test_model_was_warmed_at_startup(ollama_llm, fake_ollama):
    # The session fixture started before this test's request log was cleared, so ask a fresh service.
    fake_ollama.control(clear=True)
    env = {"LLM_PROVIDER": "ollama", "OLLAMA_BASE_URL": fake_ollama.url, "LLM_MODEL": "llama3.2"}
    with ServiceProcess("rvchat_llm", "LLM_", env, ready_timeout=60) as svc:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(not c["messages"] for c in _chats(fake_ollama)):
            time.sleep(0.2)
        loads = [c for c in _chats(fake_ollama) if not c["messages"]]
        assert loads and loads[0]["model"] == "llama3.2" and loads[0]["keep_alive"] == "30m"
        assert svc.alive()


def test_stream_sse_and_durations(ollama_llm, sse):
    with httpx.stream("POST", ollama_llm.url + "/generate", json={**USER, "stream": True}, timeout=30) as r:
        events = sse(r)
    deltas = [e["content"] for e in events if e["type"] == "delta"]
    assert deltas == ["You", " said:", " hello", " there", " friend"]
    done = events[-1]
    assert done["type"] == "done" and done["finish_reason"] == "stop"


def test_num_predict_length_maps_to_finish_reason(ollama_llm):
    r = httpx.post(ollama_llm.url + "/generate", json={**USER, "max_tokens": 2}, timeout=30)
    assert r.json()["message"]["content"] == "You said:"
    assert r.json()["finish_reason"] == "length"


def test_openai_client_through_ollama(ollama_llm):
    client = openai.OpenAI(base_url=ollama_llm.url + "/v1", api_key="x")
    r = client.chat.completions.create(model="llama3.2", messages=USER["messages"])
    assert r.choices[0].message.content == "You said: hello there friend"
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="llama3.2", messages=USER["messages"], stream=True) if c.choices)
    assert text == "You said: hello there friend"


def test_missing_model_is_a_clear_404(ollama_llm, fake_ollama):
    r = httpx.post(ollama_llm.url + "/generate", json={**USER, "model": "nosuch:7b"}, timeout=30)
    assert r.status_code == 404
    msg = r.json()["error"]["message"]
    assert "nosuch:7b" in msg and fake_ollama.url in msg and "ollama pull" in msg
    assert r.json()["error"]["code"] == "model_not_found"


def test_default_model_not_pulled_makes_readyz_say_so(ollama_llm, fake_ollama):
    fake_ollama.control(models=["other"])
    r = _wait_ready(ollama_llm.url, 503)
    assert r.status_code == 503 and "llama3.2" in r.json()["reason"] and fake_ollama.url in r.json()["reason"]
    fake_ollama.control(models=["llama3.2"])
    assert _wait_ready(ollama_llm.url, 200).status_code == 200


def test_auto_pull_pulls_a_missing_model(fake_ollama):
    fake_ollama.control(models=["llama3.2"])
    env = {"LLM_PROVIDER": "ollama", "OLLAMA_BASE_URL": fake_ollama.url, "LLM_MODEL": "qwen2.5:0.5b",
           "OLLAMA_AUTO_PULL": "true", "LLM_READY_CACHE_S": "0"}
    with ServiceProcess("rvchat_llm", "LLM_", env, ready_timeout=60) as svc:
        assert _wait_ready(svc.url, 200).status_code == 200
        pulls = [r["body"] for r in fake_ollama.requests() if r["path"] == "/api/pull"]
        assert pulls and pulls[0]["model"] == "qwen2.5:0.5b"
        r = httpx.post(svc.url + "/generate", json=USER, timeout=30)
        assert r.status_code == 200 and r.json()["model"] == "qwen2.5:0.5b"


def test_retries_before_the_first_token(ollama_llm, fake_ollama):
    fake_ollama.control(fail_next=2)  # two 500s, then fine: within LLM_RETRIES=2
    r = httpx.post(ollama_llm.url + "/generate", json=USER, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["message"]["content"] == "You said: hello there friend"
    assert len([c for c in _chats(fake_ollama) if c["messages"]]) == 3


def test_persistent_upstream_failure_is_502(ollama_llm, fake_ollama):
    fake_ollama.control(fail_next=10)
    r = httpx.post(ollama_llm.url + "/generate", json=USER, timeout=30)
    assert r.status_code == 502 and fake_ollama.url in r.json()["error"]["message"]


def test_upstream_hangs_gives_a_timeout_not_a_hang(ollama_llm, fake_ollama):
    fake_ollama.control(mode="hang")
    r = httpx.post(ollama_llm.url + "/generate", json=USER, timeout=30)
    assert r.status_code == 504
    assert "first token" in r.json()["error"]["message"]
    assert httpx.get(ollama_llm.url + "/healthz").status_code == 200


def test_upstream_stalls_mid_stream_gives_an_error_event(ollama_llm, fake_ollama, sse):
    fake_ollama.control(mode="stall")
    with httpx.stream("POST", ollama_llm.url + "/generate", json={**USER, "stream": True}, timeout=30) as r:
        assert r.status_code == 200
        events = sse(r)
    assert [e["type"] for e in events] == ["delta", "delta", "error"]
    assert events[-1]["error"]["code"] == "upstream_timeout"


def test_upstream_dies_mid_stream(ollama_llm, fake_ollama, sse):
    fake_ollama.control(mode="die")
    with httpx.stream("POST", ollama_llm.url + "/generate", json={**USER, "stream": True}, timeout=30) as r:
        events = sse(r)
    assert [e["type"] for e in events][:2] == ["delta", "delta"] and events[-1]["type"] == "error"
    assert fake_ollama.url in events[-1]["error"]["message"]
    # Nothing duplicated: the two tokens were not retried.
    assert "".join(e.get("content", "") for e in events) == "You said:"
    # OpenAI route: the official client raises instead of hanging.
    client = openai.OpenAI(base_url=ollama_llm.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="llama3.2", messages=USER["messages"], stream=True))
    fake_ollama.control(mode="ok")
    assert httpx.get(ollama_llm.url + "/healthz").status_code == 200
    assert httpx.post(ollama_llm.url + "/generate", json=USER, timeout=30).status_code == 200


async def test_ws_error_event_mid_stream(ollama_llm, fake_ollama):
    import asyncio

    import websockets

    fake_ollama.control(mode="die")
    async with websockets.connect(ollama_llm.ws_url + "/ws") as ws:
        await ws.send(json.dumps({"type": "generate", **USER}))
        kinds = []
        while not kinds or kinds[-1] not in ("done", "error", "cancelled"):
            kinds.append(json.loads(await asyncio.wait_for(ws.recv(), 20))["type"])
        assert kinds[0] == "start" and kinds[-1] == "error"
        fake_ollama.control(mode="ok")
        await ws.send(json.dumps({"type": "generate", **USER}))  # the connection is still usable
        kinds = []
        while not kinds or kinds[-1] not in ("done", "error"):
            kinds.append(json.loads(await asyncio.wait_for(ws.recv(), 20))["type"])
        assert kinds[-1] == "done"


def test_slow_client_does_not_block_others(ollama_llm):
    # A stream nobody reads stays open while another request completes.
    with httpx.Client(timeout=30) as slow:
        with slow.stream("POST", ollama_llm.url + "/generate", json={**USER, "stream": True}):
            r = httpx.post(ollama_llm.url + "/generate", json=USER, timeout=30)
            assert r.status_code == 200


def test_upstream_refused_then_recovers(ollama_llm, fake_ollama):
    fake_ollama.stop()
    try:
        r = httpx.post(ollama_llm.url + "/generate", json=USER, timeout=30)
        assert r.status_code == 503
        assert fake_ollama.url in r.json()["error"]["message"]
        assert r.json()["error"]["code"] == "upstream_unavailable"
        ready = _wait_ready(ollama_llm.url, 503)
        assert ready.status_code == 503 and fake_ollama.url in ready.json()["reason"]
        assert httpx.get(ollama_llm.url + "/healthz").status_code == 200
    finally:
        fake_ollama.start()
    assert _wait_ready(ollama_llm.url, 200).status_code == 200
    assert httpx.post(ollama_llm.url + "/generate", json=USER, timeout=30).status_code == 200


@pytest.mark.live
@pytest.mark.skipif(not os.environ.get("OLLAMA_TEST_URL"), reason="set OLLAMA_TEST_URL to test a real Ollama")
def test_live_ollama():
    env = {"LLM_PROVIDER": "ollama", "OLLAMA_BASE_URL": os.environ["OLLAMA_TEST_URL"],
           "LLM_MODEL": os.environ.get("OLLAMA_TEST_MODEL", "llama3.2"), "OLLAMA_AUTO_PULL": "true"}
    with ServiceProcess("rvchat_llm", "LLM_", env, ready_timeout=600) as svc:
        r = httpx.post(svc.url + "/generate", timeout=300, json={
            "messages": [{"role": "user", "content": "What is the capital of France? One word."}],
            "max_tokens": 20})
        assert r.status_code == 200, r.text
        assert "paris" in r.json()["message"]["content"].lower()
