"""The cap on conversations at once (APP_MAX_SESSIONS), its metrics, and main_app while draining."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from rvchat_app.app import create_app
from rvchat_app.settings import Settings
from rvchat_app.testing import FakeHub

DOWN = "http://127.0.0.1:9"


@pytest.fixture
def hub():
    return FakeHub()


@pytest.fixture
def client(tmp_path, hub):
    settings = Settings(db_path=str(tmp_path / "cap.sqlite3"), vad_url=DOWN, stt_url=DOWN, tts_url=DOWN,
                        llm_url=DOWN, status_interval_s=60, max_sessions=2, busy_retry_s=1)
    with TestClient(create_app(settings, factories=hub.factories())) as c:
        yield c


def metric(client: TestClient, line_start: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {line_start}")


def refused(client: TestClient) -> dict:
    """What a page turned away gets: one error event, then close 1013 (try again later)."""
    with client.websocket_connect("/ws") as ws:
        event = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1013
    return event


def test_past_the_cap_the_page_is_told_busy_and_the_api_answers_503(client):
    with client.websocket_connect("/ws") as a, client.websocket_connect("/ws") as b:
        assert a.receive_json()["type"] == "hello" and b.receive_json()["type"] == "hello"
        event = refused(client)
        assert event["type"] == "error" and event["error"]["code"] == "server_busy"
        assert event["error"]["type"] == "service_unavailable"
        assert "busy" in event["error"]["message"] and "try again" in event["error"]["message"]

        r = client.post("/api/message", json={"text": "Hi"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "server_busy"

        assert metric(client, "voice_sessions_active") == 2
        assert metric(client, "conversations_limit") == 2
        assert metric(client, 'conversations_refused_total{kind="voice",reason="busy"}') == 1
        assert metric(client, 'conversations_refused_total{kind="api",reason="busy"}') == 1
        status = client.get("/api/status").json()["app"]
        assert status["sessions"] == 2 and status["max_sessions"] == 2
    # Places are given back when pages leave.
    assert metric(client, "voice_sessions_active") == 0
    with client.websocket_connect("/ws") as c:
        assert c.receive_json()["type"] == "hello"
    assert client.post("/api/message", json={"text": "Hi"}).status_code == 200


def test_an_api_reply_holds_a_place_while_it_runs(client, hub):
    with client.websocket_connect("/ws") as a:
        assert a.receive_json()["type"] == "hello"
        # One session open and one API reply at a time: both fit under the cap of 2.
        assert client.post("/api/message", json={"text": "Hi"}).status_code == 200
    assert metric(client, "api_replies_active") == 0


def test_no_limit_with_zero(tmp_path, hub):
    settings = Settings(db_path=str(tmp_path / "nolimit.sqlite3"), vad_url=DOWN, stt_url=DOWN, tts_url=DOWN,
                        llm_url=DOWN, status_interval_s=60, max_sessions=0)
    with TestClient(create_app(settings, factories=hub.factories())) as client:
        with client.websocket_connect("/ws") as a, client.websocket_connect("/ws") as b, \
                client.websocket_connect("/ws") as c:
            assert {a.receive_json()["type"], b.receive_json()["type"], c.receive_json()["type"]} == {"hello"}


def test_draining_refuses_new_work_and_reports_not_ready(client):
    app = client.app
    with client.websocket_connect("/ws") as a:
        assert a.receive_json()["type"] == "hello"
        assert app.state.capacity.mid_turn() is None  # listening: nothing to wait for
        app.state.drain.draining = True
        try:
            r = client.get("/readyz")
            assert r.status_code == 503 and "shutting down" in r.json()["reason"]
            assert client.get("/healthz").status_code == 200
            event = refused(client)
            assert event["error"]["code"] == "restarting"
            r = client.post("/api/message", json={"text": "Hi"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "restarting"
            assert r.headers["retry-after"]
        finally:
            app.state.drain.draining = False
