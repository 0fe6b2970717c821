"""Every curl example in the README works as written, against the services running as processes.

Each bash block with a curl command runs line by line (its curl and ffmpeg lines) in a scratch folder
holding `audio_sample.wav`, as a reader in the repository root would run it. The only change made to a
command is the port: tests run the services on free ports.
"""

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.models

REPO = Path(__file__).resolve().parents[1]
PORTS = {"3000": "app", "3001": "vad", "3002": "stt", "3003": "tts", "3004": "llm"}


def readme_blocks() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    blocks = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)  # line continuations
        lines = [line.strip() for line in joined.splitlines()]
        lines = [line for line in lines if line.startswith(("curl ", "ffmpeg "))]
        if any(line.startswith("curl ") for line in lines):
            blocks.append(lines)
    return blocks


BLOCKS = readme_blocks()


def test_readme_has_curl_examples_for_every_service():
    ports = {p for block in BLOCKS for line in block for p in re.findall(r"localhost:(300\d)", line)}
    assert ports == set(PORTS)


@pytest.mark.parametrize("block", BLOCKS, ids=[b[-1][:50] for b in BLOCKS])
def test_curl_examples_work(request, block, tmp_path):
    shutil.copy(REPO / "audio_sample.wav", tmp_path)
    for command in block:
        args = shlex.split(command)
        if args[0] == "ffmpeg":
            out = subprocess.run(args + ["-y", "-v", "error"], cwd=tmp_path, capture_output=True, timeout=60)
            assert out.returncode == 0, out.stderr.decode()
            continue
        port = re.search(r"localhost:(300\d)", command).group(1)
        proc = request.getfixturevalue(f"{PORTS[port]}_service")
        args = [a.replace(f"localhost:{port}", f"127.0.0.1:{proc.port}") for a in args]
        before = {p: p.stat().st_size for p in tmp_path.iterdir()}
        out = subprocess.run(args + ["-sS", "-w", "\n%{http_code}"], cwd=tmp_path, capture_output=True,
                             timeout=120)
        body, _, status = out.stdout.rpartition(b"\n")
        assert out.returncode == 0, f"{command}\n{out.stderr.decode()}"
        assert status.decode().startswith("2"), f"{command}\n{status.decode()}: {body[:500]!r}"
        wrote = [p for p in tmp_path.iterdir() if before.get(p) != p.stat().st_size]
        assert body.strip() or wrote, f"{command}: empty response"
        assert proc.alive()
