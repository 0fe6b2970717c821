"""The shared receive loop on a tiny app: every fault's error code and close code, in seconds, no model."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from rvchat_common.errors import APIError
from rvchat_common.protocol import ProtocolError, tts, vad
from rvchat_common.ws import EventSocket, Limits


SMALL = Limits(max_text_bytes=12_000, max_binary_bytes=64)


def make_app(limits: Limits = SMALL, pcm: bool = True) -> FastAPI:
    """An echo service over the VAD protocol: config -> ready-ish echo, flush -> flushed(bytes so far)."""
    app = FastAPI()

    @app.websocket("/ws")
    async def endpoint(ws: WebSocket) -> None:
        sock = EventSocket(ws, vad.client_events, limits)
        received = bytearray()

        async def on_event(event: vad.ClientEvent) -> None:
            if isinstance(event, vad.Config):
                if event.sample_rate == 4000:
                    raise ProtocolError("unsupported_rate", "not that one")
                if event.sample_rate == 4001:
                    raise ProtocolError("go_away", "closing", close_code=1008)
                if event.sample_rate == 4002:
                    raise APIError(503, "queue is full", "queue_full")
                if event.sample_rate == 4003:
                    raise RuntimeError("our bug")
                await sock.send(vad.Flushed(timestamp=float(event.min_silence_ms or 0)))
            elif isinstance(event, vad.Flush):
                await sock.send(vad.Flushed(timestamp=len(received) / 2))
            else:
                await sock.send_audio(tts.Audio(index=0, text="x", sample_rate=1, bytes=2), b"\x01\x02")

        async def on_pcm(data: bytes) -> None:
            received.extend(data)

        await sock.accept()
        await sock.send(vad.Ready(sample_rate=16000, threshold=0.5, min_speech_ms=1, min_silence_ms=2,
                                  speech_pad_ms=3, probabilities=False))
        await sock.run(on_event, on_pcm if pcm else None)

    return app


@pytest.fixture
def ws():
    with TestClient(make_app()) as client, client.websocket_connect("/ws") as sock:
        assert sock.receive_json()["type"] == "ready"
        yield sock


def error_code(ws) -> str:
    event = ws.receive_json()
    assert event["type"] == "error" and event["error"]["message"] and event["error"]["type"], event
    return event["error"]["code"]


def still_open(ws) -> None:
    ws.send_text('{"type": "flush"}')
    assert ws.receive_json()["type"] == "flushed"


@pytest.mark.parametrize("text, code", [
    ("{not json", "invalid_json"),
    ("", "invalid_json"),
    ("[" * 5000 + "]" * 5000, "invalid_json"),  # deeper than the parser's recursion limit
    ("[1, 2]", "invalid_event"),
    ('"config"', "invalid_event"),
    ('{"no_type": true}', "invalid_event"),
    ('{"type": 5}', "invalid_event"),
    ('{"type": null}', "invalid_event"),
    ('{"type": "dance"}', "unknown_event"),
    ('{"type": "\\ud800 hi"}', "unknown_event"),  # a lone surrogate, echoed in the message
    ('{"type": "config", "threshold": 2}', "invalid_event"),
    ('{"type": "config", "min_silence_ms": -1}', "invalid_event"),
    ('{"type": "config", "min_silence_ms": 1e400}', "invalid_event"),
    ('{"type": "config", "min_silence_ms": Infinity}', "invalid_event"),
    ('{"type": "config", "threshold": NaN}', "invalid_event"),
    ('{"type": "config", "threshold": -Infinity}', "invalid_event"),
    ('{"type": "config", "sample_rate": 1' + "0" * 400 + "}", "invalid_event"),
    ('{"type": "config", "sample_rate": 1' + "0" * 5000 + "}", "invalid_json"),  # over int's digit limit
    ('{"type": "config", "silence": 300}', "invalid_event"),  # a typo is not silently ignored
    ('{"type": "config", "probabilities": [1]}', "invalid_event"),
    ('{"type": "config", "x": "a' + "b" * 12_000 + '"}', "frame_too_large"),
    ('{"type": "flush", "pad": "' + "é" * 6000 + '"}', "frame_too_large"),  # 12k bytes, 6k characters
])
def test_bad_text_frames_get_their_code_and_the_connection_stays_open(ws, text, code):
    ws.send_text(text)
    assert error_code(ws) == code
    still_open(ws)


def test_invalid_event_names_the_field(ws):
    ws.send_text('{"type": "config", "threshold": 2}')
    error = ws.receive_json()["error"]
    assert error["param"] == "threshold" and "threshold" in error["message"]
    assert error["type"] == "invalid_request_error"


def test_lone_surrogates_in_values_are_accepted_and_echoed_safely(ws):
    # The unknown type comes back in the message: it must be sendable (no UnicodeEncodeError, no 1011).
    ws.send_text('{"type": "\\udc00"}')
    assert "\ufffd" in ws.receive_json()["error"]["message"]
    ws.send_text('{"type": "flush", "note": "\\ud83d\\ude00 \\ud800"}')  # ignored extra field
    assert ws.receive_json()["type"] == "flushed"


def test_binary_frames(ws):
    ws.send_bytes(b"\x01\x02\x03")
    assert error_code(ws) == "odd_length_pcm"
    ws.send_bytes(b"\x00" * 66)
    assert error_code(ws) == "frame_too_large"
    ws.send_bytes(b"")  # empty: ignored
    ws.send_bytes(b"\x00" * 64)
    ws.send_text('{"type": "flush"}')
    # Only the good frame counted: the odd and the oversized ones were dropped whole.
    assert ws.receive_json() == {"type": "flushed", "timestamp": 32.0}


def test_binary_where_none_is_taken():
    with TestClient(make_app(pcm=False)) as client, client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_bytes(b"\x00\x01")
        assert error_code(ws) == "unexpected_binary"
        still_open(ws)


def test_handler_refusals(ws):
    ws.send_json({"type": "config", "sample_rate": 4000})
    assert error_code(ws) == "unsupported_rate"
    ws.send_json({"type": "config", "sample_rate": 4002})
    event = ws.receive_json()
    assert event["error"] == {"message": "queue is full", "type": "service_unavailable", "code": "queue_full"}
    still_open(ws)
    ws.send_json({"type": "config", "sample_rate": 4001})
    assert error_code(ws) == "go_away"
    with pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_json()
    assert closed.value.code == 1008


def test_a_failure_on_our_side_is_1011(ws):
    ws.send_json({"type": "config", "sample_rate": 4003})
    event = ws.receive_json()
    assert event["error"]["code"] == "internal_error" and event["error"]["type"] == "server_error"
    with pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_json()
    assert closed.value.code == 1011


def test_idle_timeout_closes_with_1008():
    with TestClient(make_app(Limits(idle_timeout_s=0.2))) as client, client.websocket_connect("/ws") as ws:
        ws.receive_json()
        assert error_code(ws) == "idle_timeout"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1008


def test_audio_header_is_followed_by_its_frame(ws):
    ws.send_json({"type": "reset"})
    header = ws.receive_json()
    assert header == {"type": "audio", "index": 0, "text": "x", "sample_rate": 1, "bytes": 2}
    assert ws.receive_bytes() == b"\x01\x02"


def test_events_are_sent_compact_and_typed(ws):
    ws.send_json({"type": "config", "min_silence_ms": 7})
    assert json.loads(ws.receive_text()) == {"type": "flushed", "timestamp": 7.0}
