"""LLM test fixtures: a fake Ollama server and LLM services pointed at upstreams, all real processes."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from rvchat_common.testing import ServiceProcess, free_port

HERE = Path(__file__).parent

# Short fault timeouts so the fault tests finish quickly; retries fast.
FAST_FAULTS = {
    "LLM_CONNECT_TIMEOUT_S": "1", "LLM_FIRST_TOKEN_TIMEOUT_S": "3", "LLM_TOKEN_TIMEOUT_S": "2",
    "LLM_RETRIES": "2", "LLM_RETRY_BACKOFF_S": "0.1", "LLM_READY_CACHE_S": "0",
}


class FakeOllama:
    """fake_ollama.py as a process on a fixed port, so it can be stopped and brought back."""

    def __init__(self, models: tuple[str, ...] = ("llama3.2",)) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.models = models
        self.log = Path(tempfile.mkstemp(prefix="fake-ollama-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def start(self) -> "FakeOllama":
        cmd = [sys.executable, str(HERE / "fake_ollama.py"), str(self.port), *self.models]
        self.proc = subprocess.Popen(cmd,
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/api/version", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError(f"fake ollama did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def control(self, **kw) -> dict:
        return httpx.post(self.url + "/_control", json=kw, timeout=5).json()

    def requests(self) -> list[dict]:
        return httpx.get(self.url + "/_requests", timeout=5).json()


@pytest.fixture(scope="session")
def fake_ollama():
    fake = FakeOllama().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="session")
def ollama_llm(fake_ollama):
    """The LLM service with provider=ollama in front of the fake Ollama."""
    env = {"LLM_PROVIDER": "ollama", "OLLAMA_BASE_URL": fake_ollama.url, "LLM_MODEL": "llama3.2",
           "LLM_NUM_CTX": "2048", **FAST_FAULTS}
    proc = ServiceProcess("rvchat_llm", "LLM_", env, ready_timeout=60).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def openai_llm(llm_service):
    """The LLM service with provider=openai in front of a second, local-provider instance."""
    env = {"LLM_PROVIDER": "openai", "OPENAI_BASE_URL": llm_service.url + "/v1", "OPENAI_API_KEY": "test",
           "LLM_MODEL": "smollm2", **FAST_FAULTS, "LLM_FIRST_TOKEN_TIMEOUT_S": "60",
           "LLM_TOKEN_TIMEOUT_S": "30"}
    proc = ServiceProcess("rvchat_llm", "LLM_", env, ready_timeout=60).start()
    try:
        yield proc
    finally:
        proc.stop()


def sse_events(resp: httpx.Response) -> list:
    """Parse an SSE body into JSON payloads ('[DONE]' kept as a string)."""
    import json

    out = []
    for line in resp.iter_lines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.fixture(scope="session")
def sse():
    return sse_events
