"""main_app fixtures: the app as a real process wired to the four real services."""

from __future__ import annotations

import pytest

from rvchat_app.testing import app_env
from rvchat_common.testing import ServiceProcess


@pytest.fixture(scope="session")
def services(vad_service, stt_service, tts_service, llm_service) -> dict:
    return {"vad": vad_service, "stt": stt_service, "tts": tts_service, "llm": llm_service}


@pytest.fixture(scope="session")
def app_service(services, tmp_path_factory):
    db = tmp_path_factory.mktemp("app") / "rvchat.sqlite3"
    proc = ServiceProcess("rvchat_app", "APP_", app_env(services, db)).start()
    try:
        yield proc
    finally:
        proc.stop()
