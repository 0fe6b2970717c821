"""main_app under a hostile client: WebSocket input that once closed the session with 1011, pages of
other sites, made-up methods and paths (metric labels)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from rvchat_app.app import create_app
from rvchat_app.settings import Settings
from rvchat_app.testing import FakeHub


@pytest.fixture
def client(tmp_path):
    hub = FakeHub()
    settings = Settings(db_path=str(tmp_path / "abuse.sqlite3"), vad_url="http://127.0.0.1:9",
                        stt_url="http://127.0.0.1:9", tts_url="http://127.0.0.1:9", llm_url="http://127.0.0.1:9",
                        status_interval_s=60)
    with TestClient(create_app(settings, factories=hub.factories())) as c:
        yield c


def _events_until(ws, wanted: str) -> list[dict]:
    events = []
    while True:
        msg = ws.receive()
        if msg.get("bytes") is not None:
            continue
        if msg.get("text") is None:
            raise AssertionError(f"socket closed: {msg}")
        events.append(json.loads(msg["text"]))
        if events[-1]["type"] == wanted:
            return events


@pytest.mark.parametrize("frame", [
    '{"type":"config","min_silence_ms":1e400}',
    '{"type":"config","min_speech_ms":Infinity}',
    '{"type":"config","threshold":NaN}',
    '{"type":"config","min_silence_ms":' + "9" * 400 + "}",
    '{"type":"text","text":"\\ud800 hi"}',
    '{"type":"text","text":"' + "x" * 70000 + '"}',
    '{"type":"playback","played_ms":-1e308}',
    '{"type":"' + "\\u0000" * 10 + '"}',
])
def test_websocket_input_never_closes_the_session_with_1011(client, frame):
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_json()["type"] == "hello"
        ws.send_text(frame)
        ws.send_json({"type": "text", "text": "still there?"})
        events = _events_until(ws, "reply_end")  # the session goes on and answers
        errors = [e for e in events if e["type"] == "error"]
        assert all(e["error"]["type"] != "server_error" for e in errors), errors


def test_pages_of_other_sites_can_neither_change_nor_read_the_history(client):
    cid = client.post("/api/conversations", json={"title": "mine"}).json()["id"]
    evil = {"Origin": "https://evil.example"}
    r = client.delete(f"/api/conversations/{cid}", headers=evil)
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site"
    assert client.post("/api/conversations", json={}, headers=evil).status_code == 403
    fetch = {"Sec-Fetch-Site": "cross-site"}
    assert client.post("/api/message", json={"text": "hi"}, headers=fetch).status_code == 403
    listing = client.get("/api/conversations", headers=evil)
    assert "access-control-allow-origin" not in listing.headers  # the browser hides the answer
    with pytest.raises(WebSocketDisconnect) as closed:
        with client.websocket_connect("/ws", headers=evil) as ws:
            ws.receive_json()
    assert closed.value.code == 1008
    # The page itself (same origin) is unaffected.
    own = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    assert client.delete(f"/api/conversations/{cid}", headers=own).status_code == 200
    with client.websocket_connect("/ws", headers={"Origin": "http://testserver"}) as ws:
        assert ws.receive_json()["type"] == "hello"


def test_metric_labels_of_main_app_stay_bounded(client):
    def series() -> int:
        return sum(1 for line in client.get("/metrics").text.splitlines() if line.startswith("http_request"))

    for i in range(3):
        client.request("BREW", f"/pot/{i}")
        client.get(f"/nowhere/{i}")
        client.get(f"/api/conversations/{i}")
    client.get("/metrics")
    before = series()
    for i in range(3, 150):
        client.request(f"X{i}", f"/pot/{i}")
        client.get(f"/nowhere/{i}")
        client.get(f"/api/conversations/{i}")
    assert series() == before
    assert 'path="/api/conversations/{cid}"' in client.get("/metrics").text
