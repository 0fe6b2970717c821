"""Fixtures shared by every test folder: the services as real processes, started once per session."""

from __future__ import annotations

import os

import pytest

from rvchat_common.testing import ServiceProcess

# Model threads: leave a core for the test process itself on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")

_SERVICES = {
    "vad": ("rvchat_vad", "VAD_", {}),
    "stt": ("rvchat_stt", "STT_", {}),
    "tts": ("rvchat_tts", "TTS_", {}),
    "llm": ("rvchat_llm", "LLM_", {"LLM_PROVIDER": "local"}),
}


def _service(name: str):
    module, prefix, env = _SERVICES[name]
    proc = ServiceProcess(module, prefix, env).start()
    try:
        yield proc
    finally:
        proc.stop()


# Tests that use one of these need the real models (as processes or in-process); `pytest -m "not models"`
# leaves them out and runs the fast layer in seconds. Modules that start services by name
# (request.getfixturevalue) carry `pytestmark = pytest.mark.models` themselves.
_MODEL_FIXTURES = frozenset({"vad_service", "stt_service", "tts_service", "llm_service", "services", "app_service"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.models)


@pytest.fixture(scope="session")
def vad_service():
    yield from _service("vad")


@pytest.fixture(scope="session")
def stt_service():
    yield from _service("stt")


@pytest.fixture(scope="session")
def tts_service():
    yield from _service("tts")


@pytest.fixture(scope="session")
def llm_service():
    yield from _service("llm")


@pytest.fixture(scope="session")
def services(vad_service, stt_service, tts_service, llm_service) -> dict:
    """The four model services by name."""
    return {"vad": vad_service, "stt": stt_service, "tts": tts_service, "llm": llm_service}


@pytest.fixture(scope="session")
def app_service(services, tmp_path_factory):
    """main_app wired to the four service processes, with its own SQLite file."""
    from rvchat_app.testing import app_env

    proc = ServiceProcess("rvchat_app", "APP_", app_env(services, tmp_path_factory.mktemp("app") / "rvchat.sqlite3"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
