"""Engine logic with a scripted fake provider: trimming, retries, timeouts, settings. Fast, no model."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from rvchat_common.errors import APIError
from rvchat_llm.app import create_app
from rvchat_llm.engine import LLMEngine, Request
from rvchat_llm.providers.base import Delta, Final, UpstreamError
from rvchat_llm.settings import Settings


class Scripted:
    """Plays one script per call: a list of tokens, or an exception raised at a position."""

    name = "fake"
    default_model = "fake-1"
    host = "http://fake:1"

    def __init__(self, scripts: list, context_window: int = 200) -> None:
        self.scripts = scripts
        self.calls: list[list[dict]] = []
        self.context_window = context_window

    def load(self) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def ready(self) -> str | None:
        return None

    def count_tokens(self, messages):
        return sum(self.text_tokens(m["content"]) + 6 for m in messages)

    def text_tokens(self, text: str) -> int:
        return len(text.split())

    async def stream_chat(self, messages, options):
        self.calls.append(messages)
        script = self.scripts[min(len(self.calls) - 1, len(self.scripts) - 1)]
        for step in script:
            if isinstance(step, BaseException):
                raise step
            if step == "sleep":
                await asyncio.sleep(3600)
            yield Delta(step)
        yield Final("stop", prompt_tokens=3, completion_tokens=len(script))


def engine(scripts, **settings) -> tuple[LLMEngine, Scripted]:
    fake = Scripted(scripts, settings.pop("context_window", 200))
    s = Settings(retry_backoff_s=0, system_prompt="SYS", **settings)
    return LLMEngine(s, provider=fake), fake


def refused() -> UpstreamError:
    return UpstreamError(503, "fake at http://fake:1 is unreachable", "upstream_unavailable", retryable=True)


async def test_retries_before_first_token_then_succeeds():
    eng, fake = engine([[refused()], [refused()], ["a", "b"]], retries=2)
    done = await eng.complete(Request(messages=[{"role": "user", "content": "hi"}]))
    assert done.content == "ab" and len(fake.calls) == 3


async def test_gives_up_after_the_retries():
    eng, fake = engine([[refused()]], retries=2)
    with pytest.raises(APIError) as err:
        await eng.complete(Request(messages=[{"role": "user", "content": "hi"}]))
    assert err.value.status == 503 and "http://fake:1" in err.value.message and len(fake.calls) == 3


async def test_never_retries_after_a_token():
    eng, fake = engine([["a", refused()], ["x", "y"]], retries=3)
    got = []
    with pytest.raises(APIError):
        async for item in eng.stream(Request(messages=[{"role": "user", "content": "hi"}])):
            got.append(item)
    assert [d.content for d in got] == ["a"] and len(fake.calls) == 1


async def test_timeout_between_tokens():
    eng, _ = engine([["a", "sleep"]], token_timeout_s=0.2)
    with pytest.raises(APIError) as err:
        await eng.complete(Request(messages=[{"role": "user", "content": "hi"}]))
    assert err.value.status == 504 and "between tokens" in err.value.message


def test_trim_keeps_system_and_newest_turns():
    eng, _ = engine([[]], context_window=100)
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn{i} " + "w " * 10}
             for i in range(20)]
    msgs, dropped, _ = eng.prepare(Request(messages=[{"role": "system", "content": "be nice"}, *turns]),
                                max_tokens=20)
    assert msgs[0] == {"role": "system", "content": "be nice"}
    assert msgs[-1]["content"].startswith("turn19")
    assert dropped == 20 - (len(msgs) - 1) and dropped > 0
    kept = [int(m["content"].split()[0][4:]) for m in msgs[1:]]
    assert kept == list(range(20 - len(kept), 20))  # a contiguous newest tail


def test_system_prompt_rules():
    eng, _ = engine([[]])
    user = [{"role": "user", "content": "hi"}]
    assert eng.prepare(Request(messages=user), 10)[0][0] == {"role": "system", "content": "SYS"}
    assert eng.prepare(Request(messages=user, system="OWN"), 10)[0][0]["content"] == "OWN"
    assert eng.prepare(Request(messages=user, default_system=False), 10)[0] == user
    own = [{"role": "system", "content": "MINE"}, *user]
    assert eng.prepare(Request(messages=own), 10)[0] == own


def test_v1_adds_the_system_prompt_for_the_local_model_only_unless_set():
    from rvchat_llm.schemas import ChatCompletionRequest

    body = ChatCompletionRequest(model="any", messages=[{"role": "user", "content": "hi"}])
    for provider, setting, expected in [("local", None, True), ("ollama", None, False),
                                        ("openai", None, False), ("local", False, False),
                                        ("openai", True, True)]:
        settings = Settings(provider=provider, v1_system_prompt=setting)
        assert body.to_request(settings).default_system is expected, (provider, setting)


def test_context_too_small_is_400_and_max_tokens_shrinks_to_fit():
    eng, _ = engine([[]], context_window=50)
    with pytest.raises(APIError) as err:
        eng.prepare(Request(messages=[{"role": "user", "content": "w " * 100}]), 10)
    assert err.value.status == 400 and err.value.code == "context_length_exceeded"
    msgs, _, max_tokens = eng.prepare(Request(messages=[{"role": "user", "content": "w " * 5}],
                                              default_system=False), 1000)
    assert len(msgs) == 1 and 16 <= max_tokens <= 50 - 11


def test_settings_read_the_upstream_tools_own_variables(monkeypatch):
    monkeypatch.setenv("OLLAMA_BASE_URL", "http://gpu:11434")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OLLAMA_AUTO_PULL", "true")
    s = Settings()
    assert (s.ollama_base_url, s.openai_api_key, s.ollama_auto_pull) == ("http://gpu:11434", "sk-test", True)
    monkeypatch.setenv("LLM_OLLAMA_BASE_URL", "http://prefixed:1")
    assert Settings().ollama_base_url == "http://prefixed:1"
    assert Settings().provider == "local" and Settings().port == 3004
    assert Settings(provider="ollama").default_temperature() == 0.7
    assert Settings().default_temperature() == 0.0


def test_app_with_injected_engine_shapes_responses():
    eng, _ = engine([["Hel", "lo"]])
    with TestClient(create_app(eng.settings, eng)) as client:
        r = client.post("/generate", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
        body = r.json()
        assert body["message"] == {"role": "assistant", "content": "Hello"}
        assert body["provider"] == "fake" and body["usage"]["completion_tokens"] == 2
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"}]}]})
        assert r.json()["choices"][0]["message"]["content"] == "Hello"
        assert client.get("/v1/models").json()["data"][0]["id"] == "fake-1"


def test_upstream_error_before_stream_is_a_status_not_a_200_stream():
    eng, _ = engine([[refused()]], retries=0)
    with TestClient(create_app(eng.settings, eng)) as client:
        for path in ("/generate", "/v1/chat/completions"):
            r = client.post(path, json={"messages": [{"role": "user", "content": "hi"}], "stream": True})
            assert r.status_code == 503 and "http://fake:1" in r.json()["error"]["message"]


def test_ws_events_and_errors_with_a_scripted_provider():
    eng, fake = engine([["Hel", "lo"], ["a", "sleep"], [refused()]], retries=0)
    hi = [{"role": "user", "content": "hi"}]
    with TestClient(create_app(eng.settings, eng)) as client, client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "generate", "messages": hi})
        start, d1, d2, done = (ws.receive_json() for _ in range(4))
        assert start == {"type": "start", "id": start["id"], "model": "fake-1", "provider": "fake"}
        assert [d1["content"], d2["content"]] == ["Hel", "lo"] and d1["id"] == start["id"]
        assert done["type"] == "done" and done["id"] == start["id"]
        assert done["message"] == {"role": "assistant", "content": "Hello"}
        assert done["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        assert set(done["timings"]) >= {"first_token_ms", "total_ms"} and done["dropped_messages"] == 0
        # A generation that hangs after one token, cancelled: its content so far, under its id.
        ws.send_json({"type": "generate", "messages": hi})
        start = ws.receive_json()
        assert ws.receive_json()["content"] == "a"
        ws.send_json({"type": "cancel"})
        assert ws.receive_json() == {"type": "cancelled", "id": start["id"], "content": "a"}
        ws.send_json({"type": "cancel"})  # nothing running: still answered, without an id
        assert ws.receive_json() == {"type": "cancelled", "content": ""}
        # An upstream failure: an error event carrying the generation's id; the socket stays open.
        ws.send_json({"type": "generate", "messages": hi})
        start = ws.receive_json()
        error = ws.receive_json()
        assert error["id"] == start["id"] and error["error"]["code"] == "upstream_unavailable"
        for bad, code in [("{", "invalid_json"), ('{"type": "dance"}', "unknown_event"),
                          ('{"type": "generate", "messages": []}', "invalid_event"),
                          ('{"type": "generate", "messages": [{"role": "user", "content": "x"}], '
                           '"temperature": Infinity}', "invalid_event"),
                          ('{"type": "generate", "messages": [{"role": "user", "content": "\\ud800"}], '
                           '"max_tokens": 0}', "invalid_event")]:
            ws.send_text(bad)
            event = ws.receive_json()
            assert event["type"] == "error" and "id" not in event and event["error"]["code"] == code, bad
        ws.send_bytes(b"\x00\x01")
        assert ws.receive_json()["error"]["code"] == "unexpected_binary"
        ws.send_json({"type": "generate", "messages": hi * (eng.settings.max_messages + 1)})
        assert ws.receive_json()["error"]["code"] == "invalid_event"  # the service's own limit


def test_lone_surrogates_reach_the_provider_as_valid_unicode():
    eng, fake = engine([["ok"]])
    with TestClient(create_app(eng.settings, eng)) as client:
        body = '{"messages": [{"role": "user", "content": "a \\ud800 b"}]}'
        r = client.post("/generate", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        body = '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud83d!"}]}]}'
        r = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        with client.websocket_connect("/ws") as ws:
            ws.send_text('{"type": "generate", "messages": [{"role": "user", "content": "c \\udc00 d"}]}')
            while ws.receive_json()["type"] != "done":
                pass
    for messages in fake.calls:
        for m in messages:
            m["content"].encode("utf-8")  # what a tokenizer does first: no UnicodeEncodeError


def test_trim_cuts_a_newest_message_too_long_for_the_context_instead_of_refusing():
    eng, _ = engine([[]], context_window=50)
    long = [{"role": "user", "content": " ".join(f"w{i}" for i in range(100))}]
    msgs, _, _ = eng.prepare(Request(messages=long, trim=True), 10)
    assert msgs[0]["role"] == "system" and msgs[-1]["content"].startswith("w0 w1 w2")
    assert sum(len(m["content"].split()) + 6 for m in msgs) <= 50 - 10 - 16  # fits, reply room kept
    with pytest.raises(APIError) as err:  # without trim: the clear 400 as before
        eng.prepare(Request(messages=long), 10)
    assert err.value.code == "context_length_exceeded"
    # POST /generate and the WebSocket take the flag (main_app sends it for what users type)
    with TestClient(create_app(Settings(), engine=eng)) as client:
        r = client.post("/generate", json={"messages": long, "trim": True, "max_tokens": 10})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("frame", [
    '{"type":"generate","messages":[{"role":"user","content":"\\ud800 hi"}]}',
    '{"type":"generate","messages":[{"role":"user","content":"hi"}],"max_tokens":1e400}',
    '{"type":"generate","messages":[{"role":"user","content":"hi"}],"temperature":NaN}',
])
def test_websocket_odd_encodings_and_extreme_values_never_close_with_1011(frame):
    eng, _ = engine([["ok"]])
    with TestClient(create_app(Settings(), engine=eng)) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_text(frame)
            ws.send_text('{"type":"generate","messages":[{"role":"user","content":"again"}]}')
            events = []
            while not events or events[-1]["type"] != "done":
                events.append(ws.receive_json())
            assert all(e["error"]["type"] != "server_error" for e in events if e["type"] == "error"), events
    with TestClient(create_app(Settings(), engine=engine([["ok"]])[0])) as client:
        r = client.post("/generate", content=b'{"messages":[{"role":"user","content":"\\ud800 hi"}]}',
                        headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text  # the lone surrogate becomes U+FFFD, not a 400 or 500
