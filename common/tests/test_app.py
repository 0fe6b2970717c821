"""The app skeleton: error envelope, auth, limits, health/readiness, metrics, request IDs."""

import asyncio
import threading
import time

import pytest
from fastapi import Depends, Request, WebSocket
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.websockets import WebSocketDisconnect

from rvchat_common import APIError, ServiceSettings, build_app, require_ready
from rvchat_common.inference import InferenceQueue
from rvchat_common.protocol import vad
from rvchat_common.ws import EventSocket


class SlowEngine:
    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay, self.fail = delay, fail
        self.loaded = threading.Event()

    def load(self) -> None:
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("weights are corrupt")
        self.loaded.set()


class Item(BaseModel):
    name: str
    count: int


def make_app(engine=None, **settings):
    app = build_app(service="demo", settings=ServiceSettings(**settings), engine=engine)

    @app.post("/items", dependencies=[Depends(require_ready)])
    async def items(item: Item) -> dict:
        if item.count < 0:
            raise APIError(400, "count must not be negative", "negative_count", param="count")
        return {"ok": item.name}

    @app.post("/upload")
    async def upload(request: Request) -> dict:
        return {"size": len(await request.body())}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await EventSocket(websocket, vad.client_events).close(1008, "bad_event", "bad event")

    return app


def wait_ready(client: TestClient, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "never became ready"
        time.sleep(0.02)


def assert_envelope(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) >= {"message", "type", "code"} and err["message"]
    if code:
        assert err["code"] == code
    return err


def test_readiness_follows_model_loading():
    with TestClient(make_app(SlowEngine(delay=0.3))) as client:
        assert client.get("/healthz").status_code == 200
        first = client.get("/readyz")
        assert first.status_code == 503 and "loading" in first.json()["reason"]
        assert_envelope(client.post("/items", json={"name": "a", "count": 1}), 503, "model_loading")
        wait_ready(client)
        assert client.post("/items", json={"name": "a", "count": 1}).json() == {"ok": "a"}


def test_failed_model_load_is_reported_and_process_stays_live():
    with TestClient(make_app(SlowEngine(fail=True))) as client:
        deadline = time.monotonic() + 5
        while "weights are corrupt" not in (resp := client.get("/readyz")).json()["reason"]:
            assert resp.status_code == 503 and time.monotonic() < deadline, resp.json()
            time.sleep(0.02)
        assert resp.status_code == 503
        assert client.get("/healthz").status_code == 200


def test_errors_share_one_shape():
    with TestClient(make_app()) as client:
        err = assert_envelope(client.post("/items", json={"name": "a", "count": -1}), 400, "negative_count")
        assert err["type"] == "invalid_request_error" and err["param"] == "count"
        err = assert_envelope(client.post("/items", json={"name": "a"}), 422, "validation_error")
        assert "count" in err["message"]
        assert_envelope(client.post("/items", content=b"{not json", headers={"content-type": "application/json"}),
                        422, "validation_error")
        assert_envelope(client.get("/nowhere"), 404)
        assert_envelope(client.delete("/items"), 405)


def test_api_key_guards_everything_but_health():
    with TestClient(make_app(api_key="s3cret")) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert_envelope(client.get("/metrics"), 401, "invalid_api_key")
        assert_envelope(client.post("/items", json={"name": "a", "count": 1}), 401)
        assert_envelope(client.post("/items", json={"name": "a", "count": 1},
                                    headers={"Authorization": "Bearer wrong"}), 401)
        ok = {"name": "a", "count": 1}
        assert client.post("/items", json=ok, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.post("/items", json=ok, headers={"X-API-Key": "s3cret"}).status_code == 200
        with pytest.raises(WebSocketDisconnect) as closed:
            with client.websocket_connect("/ws") as ws:
                ws.receive_json()
        assert closed.value.code == 1008
        with client.websocket_connect("/ws?api_key=s3cret") as ws:
            assert ws.receive_json()["type"] == "error"


def test_body_limit_gives_413_with_and_without_content_length():
    with TestClient(make_app(max_upload_mb=0.01)) as client:
        assert client.post("/upload", content=b"x" * 1000).status_code == 200
        assert_envelope(client.post("/upload", content=b"x" * 20000), 413, "too_large")

        def chunks():
            for _ in range(20):
                yield b"x" * 1000

        assert_envelope(client.post("/upload", content=chunks()), 413, "too_large")
        assert client.get("/healthz").status_code == 200


def test_websocket_errors_send_event_then_close_1008():
    with TestClient(make_app()) as client:
        with client.websocket_connect("/ws") as ws:
            event = ws.receive_json()
            assert event["type"] == "error" and event["error"]["code"] == "bad_event"
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1008


def test_request_id_is_echoed_or_made_and_metrics_count_routes():
    with TestClient(make_app()) as client:
        assert client.get("/healthz", headers={"X-Request-ID": "abc123"}).headers["x-request-id"] == "abc123"
        assert len(client.get("/healthz").headers["x-request-id"]) >= 8
        client.post("/items", json={"name": "a", "count": 1})
        client.get("/nowhere/1")
        text = client.get("/metrics").text
        assert 'http_requests_total{method="POST",path="/items",status="200"} 1.0' in text
        assert 'path="unknown"' in text and "/nowhere/1" not in text
        assert "http_request_duration_seconds_bucket" in text


async def test_inference_queue_serialises_and_sheds_load():
    queue = InferenceQueue(max_queue=1)  # one running, one waiting, the third turned away
    running = []
    peak = 0

    def work(i):
        nonlocal peak
        running.append(i)
        peak = max(peak, len(running))
        time.sleep(0.05)
        running.remove(i)
        return i

    results = await asyncio.gather(*(queue.run(work, i) for i in range(3)), return_exceptions=True)
    assert peak == 1  # one call in the model at a time
    busy = [r for r in results if isinstance(r, APIError)]
    assert len(busy) == 1 and busy[0].status == 503 and busy[0].headers["Retry-After"]
    assert sorted(r for r in results if isinstance(r, int)) == [0, 1]


@pytest.mark.parametrize("raw", ["{", "[" * 100_000 + "]" * 100_000, b"\xff\xfe"])
def test_parse_json_turns_every_malformed_input_into_value_error(raw):
    from rvchat_common.errors import parse_json

    with pytest.raises(ValueError):
        parse_json(raw)
