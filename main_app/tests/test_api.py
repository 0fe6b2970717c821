"""REST API and WebSocket edges, with the app in-process and fake service streams."""

from __future__ import annotations

import base64
import io
import wave

import pytest
from fastapi.testclient import TestClient

from rvchat_app.app import create_app
from rvchat_app.settings import Settings
from rvchat_app.testing import FakeHub
from rvchat_common.protocol import ErrorEvent


@pytest.fixture
def hub():
    return FakeHub()


@pytest.fixture
def client(tmp_path, hub):
    settings = Settings(db_path=str(tmp_path / "api.sqlite3"), vad_url="http://127.0.0.1:9",
                        stt_url="http://127.0.0.1:9", tts_url="http://127.0.0.1:9", llm_url="http://127.0.0.1:9",
                        status_interval_s=60, vad_min_silence_ms=420)
    with TestClient(create_app(settings, factories=hub.factories())) as c:
        yield c


def test_page_and_config(client):
    r = client.get("/")
    assert r.status_code == 200 and "<title>Realtime Voice Chat</title>" in r.text
    for path in ("/static/app.js", "/static/worklet.js", "/static/style.css"):
        assert client.get(path).status_code == 200
    cfg = client.get("/config").json()
    assert cfg["input_sample_rate"] == 16000
    assert cfg["turn_taking"]["min_silence_ms"] == 420  # the page gets the configured turn-taking
    assert client.get("/readyz").status_code == 200


def test_conversation_crud(client):
    assert client.get("/api/conversations").json() == {"conversations": []}
    c = client.post("/api/conversations", json={"title": "Trip"}).json()
    assert c["title"] == "Trip"
    got = client.get(f"/api/conversations/{c['id']}").json()
    assert got["messages"] == [] and got["id"] == c["id"]
    assert [x["id"] for x in client.get("/api/conversations").json()["conversations"]] == [c["id"]]
    assert client.delete(f"/api/conversations/{c['id']}").json()["deleted"] is True
    r = client.get(f"/api/conversations/{c['id']}")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert client.delete(f"/api/conversations/{c['id']}").status_code == 404


def test_message_with_audio(client, hub):
    r = client.post("/api/message", json={"text": "Hi!", "audio": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == hub.reply
    wav = wave.open(io.BytesIO(base64.b64decode(body["audio"]["audio"])))
    assert wav.getframerate() == 22050 and wav.getnframes() > 0
    conv = client.get(f"/api/conversations/{body['conversation_id']}").json()
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    assert conv["title"] == "Hi!"
    # Continue the same conversation: the LLM sees the history.
    client.post("/api/message", json={"text": "And then?", "conversation_id": body["conversation_id"]})
    gen = hub.last("llm").calls("generate")[0]
    assert [m["role"] for m in gen["messages"]] == ["user", "assistant", "user"]


@pytest.mark.parametrize("body,status", [
    ({}, 422), ({"text": ""}, 422), ({"text": "   "}, 400), ({"text": "x", "audio": "maybe"}, 422),
    ({"text": "x", "conversation_id": "nope"}, 404), ({"text": "x" * 5000}, 422), ({"text": "x", "extra": 1}, 422),
])
def test_message_bad_input(client, body, status):
    r = client.post("/api/message", json=body)
    assert r.status_code == status
    assert set(r.json()["error"]) >= {"message", "type", "code"}


def test_bad_json_and_limits(client):
    r = client.post("/api/message", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert client.get("/api/conversations?limit=0").status_code == 400
    assert client.post("/api/conversations", json={"title": 5}).status_code == 422
    assert client.get("/healthz").status_code == 200


def test_llm_down_gives_503(client, hub):
    hub.down.add("llm")
    r = client.post("/api/message", json={"text": "hi"})
    assert r.status_code == 503 and "language model" in r.json()["error"]["message"]


def test_input_the_llm_refuses_is_the_callers_400_and_its_other_failures_a_502(client, hub):
    # The words themselves do not fit (e.g. a remote model with a small context and no trimming).
    hub.llm_error = ErrorEvent.of("context_length_exceeded", "the prompt needs 9000 tokens of 8192", status=400)
    r = client.post("/api/message", json={"text": "hi"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and "9000 tokens" in err["message"]
    assert err["type"] == "invalid_request_error"
    # Not the caller's doing: LLM_MODEL names a model the Ollama host lacks, or the host fails.
    for status, code in ((404, "model_not_found"), (502, "upstream_error")):
        hub.llm_error = ErrorEvent.of(code, "no", status=status)
        r = client.post("/api/message", json={"text": "hi"})
        assert r.status_code == 502 and r.json()["error"]["code"] == "llm_failed", r.text
    hub.llm_error = None
    assert client.post("/api/message", json={"text": "hi"}).status_code == 200


def test_status_reports_unreachable_services(client):
    s = client.get("/api/status").json()
    assert set(s["services"]) == {"vad", "stt", "llm", "tts"}
    assert all(v["status"] == "down" for v in s["services"].values())
    assert s["modes"] == {"voice_in": False, "voice_out": False, "chat": False}
    assert s["app"]["database"] == "ok"


def test_websocket_text_turn_and_bad_events(client, hub):
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_json()["type"] == "hello"
        ws.send_text("{not json")
        ws.send_json(["a"])
        ws.send_json({"type": "open_conversation", "id": "missing"})
        ws.send_json({"type": "text", "text": "hello"})
        codes, types, audio = [], [], 0
        while "reply_end" not in types:
            msg = ws.receive()
            if msg.get("bytes") is not None:
                audio += len(msg["bytes"])
                continue
            import json
            ev = json.loads(msg["text"])
            types.append(ev["type"])
            if ev["type"] == "error":
                codes.append(ev["error"]["code"])
        assert codes[:3] == ["invalid_json", "invalid_event", "not_found"]
        assert types.index("transcript") < types.index("reply_delta") < types.index("audio")
        assert audio > 0
        cid = [e for e in [client.get("/api/conversations").json()]][0]["conversations"][0]["id"]
    # A new tab resumes the conversation by id and gets its messages.
    with client.websocket_connect(f"/ws?conversation_id={cid}") as ws:
        assert ws.receive_json()["type"] == "hello"
        conv = ws.receive_json()
        while conv["type"] != "conversation":
            conv = ws.receive_json()
        assert conv["type"] == "conversation" and [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    assert "voice_turn_latency_seconds" in client.get("/metrics").text
