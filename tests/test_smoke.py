"""Every service starts as a real process on its embedded model and answers /healthz and /readyz."""

import httpx
import pytest

from rvchat_common.testing import ServiceProcess


@pytest.fixture(scope="module")
def app_service(vad_service, stt_service, tts_service, llm_service, tmp_path_factory):
    env = {
        "APP_VAD_URL": vad_service.url, "APP_STT_URL": stt_service.url,
        "APP_TTS_URL": tts_service.url, "APP_LLM_URL": llm_service.url,
        "APP_DB_PATH": str(tmp_path_factory.mktemp("smoke") / "history.sqlite3"),
    }
    with ServiceProcess("rvchat_app", "APP_", env) as proc:
        yield proc


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
