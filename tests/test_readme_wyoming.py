"""The README's Home Assistant (Wyoming) example runs as written, with the ``wyoming`` client library,
against STT and TTS as processes with their Wyoming ports on. The only change made to it is the ports:
tests run the services on free ports."""

import re
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from rvchat_common.testing import ServiceProcess, free_port, wer

pytestmark = pytest.mark.models

REPO = Path(__file__).resolve().parents[1]


def wyoming_examples() -> list[str]:
    text = (REPO / "README.md").read_text()
    return [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "AsyncTcpClient" in b]


def test_readme_has_a_wyoming_example_and_the_home_assistant_steps():
    assert wyoming_examples()
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Home Assistant (Wyoming)"):]
    for step in ("STT_WYOMING_PORT=10300", "TTS_WYOMING_PORT=10200", "Add integration", "Wyoming Protocol"):
        assert step in section


@pytest.fixture(scope="module")
def wyoming_services():
    stt_port, tts_port = free_port(), free_port()
    stt = ServiceProcess("rvchat_stt", "STT_", {"STT_WYOMING_PORT": str(stt_port)})
    tts = ServiceProcess("rvchat_tts", "TTS_", {"TTS_WYOMING_PORT": str(tts_port)})
    with stt, tts:
        yield {"10300": stt_port, "10200": tts_port, "procs": (stt, tts)}


@pytest.mark.parametrize("code", wyoming_examples())
def test_wyoming_example_works(wyoming_services, code, tmp_path):
    for readme_port in ("10300", "10200"):
        code = code.replace(f'"localhost", {readme_port}', f'"127.0.0.1", {wyoming_services[readme_port]}')
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert wer("Turn on the kitchen lights.", out.stdout.strip().splitlines()[-1]) <= 0.2, out.stdout
    with wave.open(str(tmp_path / "lights.wav")) as w:
        assert w.getframerate() == 22050 and w.getnframes() > 22050  # over a second of speech
    assert all(p.alive() for p in wyoming_services["procs"])
