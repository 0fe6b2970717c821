"""Every service starts as a real process on its embedded model and answers /healthz and /readyz."""

import httpx
import pytest

pytestmark = pytest.mark.models



@pytest.mark.parametrize("name", ["vad", "stt", "tts", "llm", "app"])
def test_service_is_live_ready_and_measured(request, name):
    proc = request.getfixturevalue(f"{name}_service")
    health = httpx.get(proc.url + "/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    ready = httpx.get(proc.url + "/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    metrics = httpx.get(proc.url + "/metrics", timeout=5)
    assert metrics.status_code == 200 and "http_requests_total" in metrics.text
    assert proc.alive()
