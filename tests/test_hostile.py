"""A sweep of hostile requests over every service: each gets a 4xx in the shared error shape, never a
5xx, a hang or a dead service."""

import json
import os

import httpx
import pytest

from rvchat_common.testing import REPO

pytestmark = pytest.mark.models

WAV = (REPO / "audio_sample.wav").read_bytes()
BODIES = [
    b"", b"{", b"null", b"[]", b"{}", b'"x"', b"\xff\xfe\x00garbage", b"[" * 5000 + b"]" * 5000,
    json.dumps({"a": [1] * 10000}).encode(), json.dumps({"text": None, "input": 5}).encode(),
    json.dumps({"messages": "hi"}).encode(), json.dumps({"messages": [{"role": "user", "content": {"x": 1}}]}).encode(),
    json.dumps({"messages": [{"role": "wizard", "content": "hi"}], "max_tokens": -5}).encode(),
    json.dumps({"text": "a" * 100_000}).encode(), json.dumps({"text": "hi", "speed": 0}).encode(),
    WAV[:100], os.urandom(4000),
]
CONTENT_TYPES = ["application/json", "text/plain", "audio/wav", "audio/pcm", "multipart/form-data; boundary=xyz", None]
PATHS = {
    "vad": ["/detect", "/detect?threshold=2&sample_rate=-1"],
    "stt": ["/transcribe?sample_rate=0", "/v1/audio/transcriptions"],
    "tts": ["/synthesize", "/v1/audio/speech"],
    "llm": ["/generate", "/v1/chat/completions"],
    "app": ["/api/message", "/api/conversations"],
}


@pytest.mark.parametrize("service", sorted(PATHS))
def test_hostile_requests_get_4xx_and_the_service_lives(request, service):
    proc = request.getfixturevalue(f"{service}_service")
    failures = []
    with httpx.Client(base_url=proc.url, timeout=60) as client:
        for path in PATHS[service]:
            attempts = [dict(content=b, headers={"content-type": ct} if ct else {})
                        for b in BODIES for ct in CONTENT_TYPES]
            attempts += [dict(files={"file": ("x.wav", b"")}), dict(files={"audio": ("x.wav", WAV)}),
                         dict(files={"file": ("x", os.urandom(3000))}, data={"response_format": "bogus"}),
                         dict(files={"file": ("x.wav", WAV[:60])}, data={"language": "zz"})]
            for kwargs in attempts:
                r = client.post(path, **kwargs)
                ok = 200 <= r.status_code < 300 or (
                    400 <= r.status_code < 500 and set(r.json().get("error", {})) >= {"message", "type", "code"})
                if not ok:
                    failures.append((path, kwargs.get("headers"), r.status_code, r.text[:120]))
            for method in ("GET", "PUT", "DELETE", "PATCH"):
                if client.request(method, path).status_code >= 500:
                    failures.append((path, method))
        assert client.get("/healthz").status_code == 200
    assert not failures, failures[:5]
    assert proc.alive()
