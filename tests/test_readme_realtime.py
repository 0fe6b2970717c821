"""The README's Realtime API example runs as written, with the official openai client, against main_app
over the real services. The only change made to it is the port: tests run main_app on a free port."""

import re
import subprocess
import sys
import wave
from pathlib import Path

import pytest

pytestmark = pytest.mark.models

REPO = Path(__file__).resolve().parents[1]


def realtime_examples() -> list[str]:
    text = (REPO / "README.md").read_text()
    return [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "realtime.connect" in b]


def test_readme_has_a_realtime_example():
    assert realtime_examples()


@pytest.mark.parametrize("code", realtime_examples())
def test_realtime_example_works(app_service, code, tmp_path):
    code = code.replace("localhost:3000", f"127.0.0.1:{app_service.port}")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-3000:]
    transcript, status = out.stdout.strip().splitlines()[-2:]
    assert "paris" in transcript.lower(), out.stdout
    assert status.split()[0] == "completed" and int(status.split()[1]) > 0
    with wave.open(str(tmp_path / "reply.wav")) as w:
        assert w.getframerate() == 24000 and w.getnframes() > 24000 * 0.5  # over half a second of speech
    assert app_service.alive()
