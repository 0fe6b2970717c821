"""The compose file is valid (checked by docker-compose itself, no engine needed) and wires the stack."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config() -> dict:
    exe = shutil.which("docker-compose")
    if not exe:
        pytest.fail("docker-compose is missing: run `make test` (it installs the test's Debian packages)")
    out = subprocess.run([exe, "-f", "docker-compose.yml", "config"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_five_services_on_their_ports_with_healthchecks(config):
    services = config["services"]
    ports = {"vad": 3001, "stt": 3002, "tts": 3003, "llm": 3004, "main_app": 3000}
    for name, port in ports.items():
        svc = services[name]
        assert [p["target"] for p in svc["ports"]] == [port]
        assert svc["healthcheck"]["test"][-1].startswith(f"http://127.0.0.1:{port}/")
        assert svc["restart"] == "unless-stopped"
        assert (REPO / svc["build"]["dockerfile"]).is_file()


def test_app_waits_for_healthy_services_and_llm_points_at_gpu_host(config):
    services = config["services"]
    deps = services["main_app"]["depends_on"]
    assert set(deps) == {"vad", "stt", "tts", "llm"}
    assert all(d["condition"] == "service_healthy" for d in deps.values())
    env = services["main_app"]["environment"]
    assert env["APP_LLM_URL"] == "http://llm:3004"
    llm_env = services["llm"]["environment"]
    assert llm_env["LLM_PROVIDER"] == "ollama" and llm_env["OLLAMA_BASE_URL"].startswith("http://")


def test_ollama_profile_reserves_a_gpu(config):
    # `config` without --profile hides profiled services; read the file for that one.
    raw = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    ollama = raw["services"]["ollama"]
    assert ollama["profiles"] == ["ollama"]
    devices = ollama["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


@pytest.mark.parametrize("service", ["vad", "stt", "tts", "llm", "main_app"])
def test_dockerfiles_run_as_non_root_with_healthcheck(service):
    text = (REPO / service / "Dockerfile").read_text()
    assert "USER app" in text and "HEALTHCHECK" in text and "EXPOSE 300" in text
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            src = line.split()[1]
            assert (REPO / src).exists(), f"{service}/Dockerfile copies missing {src}"


def test_replicas_profile_runs_a_second_stt_and_tts_behind_main_app():
    exe = shutil.which("docker-compose")
    out = subprocess.run([exe, "-f", "docker-compose.yml", "--profile", "replicas", "config"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    env = services["main_app"]["environment"]
    for name, port in (("stt", 3002), ("tts", 3003)):
        first, second = services[name], services[f"{name}-2"]
        # Same image and settings; only the first is published on the host (main_app uses both).
        assert second["build"] == first["build"] and second["healthcheck"] == first["healthcheck"]
        assert not second.get("ports")
        assert env[f"APP_{name.upper()}_URL"].split(",") == [f"http://{name}:{port}", f"http://{name}-2:{port}"]
