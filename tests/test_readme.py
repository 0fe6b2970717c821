"""Every curl example in the README works as written, against the services running as processes.

The only change made to a command is the port (tests run the services on free ports); each command
runs from the repository root, as a reader would run it.
"""

import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PORTS = {"3000": "app", "3001": "vad", "3002": "stt", "3003": "tts", "3004": "llm"}


def readme_curls() -> list[str]:
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)  # line continuations
        commands += [line.strip() for line in joined.splitlines() if line.strip().startswith("curl ")]
    return commands


CURLS = readme_curls()


def test_readme_has_curl_examples_for_every_service():
    ports = {p for cmd in CURLS for p in re.findall(r"localhost:(300\d)", cmd)}
    assert ports == set(PORTS)


@pytest.mark.parametrize("command", CURLS, ids=[c[:60] for c in CURLS])
def test_curl_example_works(request, command, tmp_path):
    port = re.search(r"localhost:(300\d)", command).group(1)
    proc = request.getfixturevalue(f"{PORTS[port]}_service")
    command = command.replace(f"localhost:{port}", f"127.0.0.1:{proc.port}")
    args = shlex.split(command)
    # Where the example saves to a file, save into tmp_path; report the status either way.
    args = [str(tmp_path / a) if i and args[i - 1] in ("-o", "--output") else a for i, a in enumerate(args)]
    out = subprocess.run(args + ["-sS", "-w", "\n%{http_code}"], cwd=REPO, capture_output=True, timeout=120)
    body, _, status = out.stdout.rpartition(b"\n")
    assert out.returncode == 0, out.stderr.decode()
    assert status.decode().startswith("2"), f"{status.decode()}: {body[:500]!r}"
    assert body.strip() or any(p.stat().st_size > 0 for p in tmp_path.iterdir()), "empty response"
    assert proc.alive()
