"""The skeleton's edge guards: bounded metric labels, rate limits, CORS and cross-site refusal,
body read timeouts and body limits while FastAPI parses the body."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from rvchat_common.ratelimit import RateLimiter
from rvchat_common.testing import free_port

from .test_app import assert_envelope, make_app


def _series(client: TestClient) -> int:
    return sum(1 for line in client.get("/metrics").text.splitlines() if line.startswith("http_request"))


def test_metric_labels_stay_bounded_under_made_up_methods_and_paths():
    with TestClient(make_app(max_upload_mb=0.001)) as client:
        for i in range(5):  # every label value once, so the count below is the steady state
            client.request("BREW", f"/pot/{i}")
            client.get(f"/nowhere/{i}")
            client.post(f"/big/{i}", content=b"x" * 5000)
            client.request("PURGE", "/items")
            with pytest.raises(WebSocketDisconnect):
                with client.websocket_connect(f"/no-socket/{i}") as ws:
                    ws.receive_json()
        client.get("/metrics")  # its own series, so both counts below include them
        before = _series(client)
        for i in range(5, 200):
            client.request(f"M{i}", f"/pot/{i}")
            client.get(f"/nowhere/{i}?q={i}")
            client.post(f"/big/{i}", content=b"x" * 5000)
            client.request("PURGE", "/items")
            with pytest.raises(WebSocketDisconnect):
                with client.websocket_connect(f"/no-socket/{i}") as ws:
                    ws.receive_json()
        assert _series(client) == before
        text = client.get("/metrics").text
        assert "/nowhere/" not in text and "/pot/" not in text and "M150" not in text
        assert 'method="OTHER",path="unknown"' in text
        assert 'method="OTHER",path="/items"' in text  # a known route keeps its template


def test_rate_limit_answers_429_with_retry_after_per_client():
    limiter = RateLimiter(per_minute=3, exempt="127.0.0.0/8,::1")
    assert [limiter.check("10.0.0.1", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.check("10.0.0.1", now=0.0) == pytest.approx(20.0)  # one token per 20 s
    assert limiter.check("10.0.0.2", now=0.0) == 0.0  # another client has its own bucket
    assert limiter.check("10.0.0.1", api_key="k", now=0.0) == 0.0  # ... and so has an API key
    assert limiter.check("10.0.0.1", now=20.0) == 0.0  # refilled
    assert all(limiter.check("127.0.0.1", now=0.0) == 0.0 for _ in range(10))  # localhost: exempt
    small = RateLimiter(per_minute=1, exempt="", max_clients=50)
    for i in range(500):
        small.check(f"10.1.{i // 250}.{i % 250}", now=0.0)
    assert len(small) == 50  # the table of clients is bounded

    app = make_app(rate_limit_per_minute=2, rate_limit_exempt="")
    with TestClient(app, client=("203.0.113.7", 5000)) as client:
        ok = {"name": "a", "count": 1}
        assert client.post("/items", json=ok).status_code == 200
        assert client.post("/items", json=ok).status_code == 200
        resp = client.post("/items", json=ok)
        err = assert_envelope(resp, 429, "rate_limited")
        assert resp.headers["retry-after"] == str(err["retry_after"]) and err["retry_after"] >= 1
        assert err["type"] == "rate_limit_error"
        assert client.get("/healthz").status_code == 200  # probes are never limited
        with pytest.raises(WebSocketDisconnect) as closed:
            with client.websocket_connect("/ws") as ws:
                ws.receive_json()
        assert closed.value.code == 1013
    with TestClient(make_app(rate_limit_per_minute=1), client=("127.0.0.1", 5000)) as client:
        assert all(client.get("/nowhere").status_code == 404 for _ in range(5))  # localhost: off


def test_cors_is_same_origin_by_default_and_configurable():
    with TestClient(make_app()) as client:
        pre = client.options("/items", headers={"Origin": "https://evil.example",
                                                "Access-Control-Request-Method": "DELETE"})
        assert "access-control-allow-origin" not in pre.headers
        assert "access-control-allow-origin" not in client.get("/healthz", headers={
            "Origin": "https://evil.example"}).headers
    with TestClient(make_app(cors_origins="https://app.example")) as client:
        resp = client.get("/healthz", headers={"Origin": "https://app.example"})
        assert resp.headers["access-control-allow-origin"] == "https://app.example"


def test_state_changing_requests_from_other_sites_are_refused():
    ok = {"name": "a", "count": 1}
    with TestClient(make_app(), base_url="http://localhost:3000") as client:
        assert client.post("/items", json=ok).status_code == 200  # curl, scripts: no Origin
        same = {"Origin": "http://localhost:3000", "Sec-Fetch-Site": "same-origin"}
        assert client.post("/items", json=ok, headers=same).status_code == 200
        assert_envelope(client.post("/items", json=ok, headers={"Origin": "https://evil.example"}),
                        403, "cross_site")
        assert_envelope(client.post("/items", json=ok, headers={"Sec-Fetch-Site": "cross-site"}),
                        403, "cross_site")
        assert_envelope(client.post("/items", json=ok, headers={"Origin": "null"}), 403, "cross_site")
        # Reading is not changing: a GET from anywhere is answered (CORS keeps other pages from
        # reading the answer).
        assert client.get("/healthz", headers={"Origin": "https://evil.example"}).status_code == 200
        with pytest.raises(WebSocketDisconnect) as closed:
            with client.websocket_connect("/ws", headers={"Origin": "https://evil.example"}) as ws:
                ws.receive_json()
        assert closed.value.code == 1008
        # (the test client opens every WebSocket on ws://testserver)
        with client.websocket_connect("/ws", headers={"Origin": "http://testserver"}) as ws:
            assert ws.receive_json()["type"] == "error"  # the demo socket's own answer: it got through
    with TestClient(make_app(cors_origins="https://app.example")) as client:
        assert client.post("/items", json=ok, headers={"Origin": "https://app.example"}).status_code == 200
    with TestClient(make_app(api_key="k")) as client:  # with the key, any origin may (it is a token)
        assert client.post("/items", json=ok, headers={"Origin": "https://other.example",
                                                       "X-API-Key": "k"}).status_code == 200


def test_chunked_json_body_over_the_limit_is_413_not_400():
    def chunks():
        yield b'{"name": "'
        for _ in range(30):
            yield b"x" * 1000
        yield b'", "count": 1}'

    with TestClient(make_app(max_upload_mb=0.01)) as client:
        assert_envelope(client.post("/items", content=chunks(), headers={"content-type": "application/json"}),
                        413, "too_large")


@pytest.fixture
def live_server():
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(make_app(body_timeout_s=0.5), host="127.0.0.1", port=port,
                                           log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(5)


def _raw(port: int, request: bytes, wait: float = 5.0) -> tuple[bytes, float]:
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data, time.monotonic() - t0


def test_a_stalled_body_is_cut_off_with_408(live_server):
    head = (b"POST /items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n")
    data, took = _raw(live_server, head + b'{"name": ')
    assert data.startswith(b"HTTP/1.1 408") and b'"body_timeout"' in data
    assert took < 3.0  # the body timeout (0.5 s), not uvicorn's or the client's
    data, _ = _raw(live_server, b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                   b"Connection: close\r\n\r\nabc")
    assert data.startswith(b"HTTP/1.1 200")  # a body that arrives is unaffected


def test_a_page_opened_with_the_key_keeps_it_as_a_same_site_cookie():
    with TestClient(make_app(api_key="s3cret")) as client:
        assert client.get("/nowhere").status_code == 401
        first = client.get("/nowhere?api_key=s3cret")  # e.g. http://host:3000/?api_key=KEY
        assert first.status_code == 404  # authorised; there is just no such page
        cookie = first.headers["set-cookie"]
        assert "rvchat_api_key=s3cret" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        # The test client keeps the cookie, as a browser does: later requests and sockets carry it.
        assert client.post("/items", json={"name": "a", "count": 1}).status_code == 200
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_json()["type"] == "error"  # through to the demo socket
        # ... but a page of another origin on the same site (whose requests carry it too) is refused.
        r = client.post("/items", json={"name": "a", "count": 1}, headers={"Origin": "http://localhost:8080"})
        assert r.status_code == 403
        client.cookies.clear()
        assert client.get("/nowhere?api_key=wrong").status_code == 401
