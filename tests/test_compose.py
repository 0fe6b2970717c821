"""The compose file is valid (checked by docker-compose itself, no engine needed) and wires the stack;
the Dockerfiles and .dockerignore hold what the images need (built and run for real by
scripts/docker-e2e.sh, `make docker-test`)."""

import ast
import fnmatch
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SERVICES = {"vad": ("VAD", 3001), "stt": ("STT", 3002), "tts": ("TTS", 3003), "llm": ("LLM", 3004),
            "main_app": ("APP", 3000)}
# Home Assistant's Wyoming protocol, on the ports of its own Wyoming add-ons (wyoming-faster-whisper,
# wyoming-piper), so that Home Assistant finds the composed stack where it looks first.
WYOMING = {"stt": 10300, "tts": 10200}


def compose_config(*args: str, **env: str) -> dict:
    exe = shutil.which("docker-compose")
    if not exe:
        pytest.fail("docker-compose is missing: run `make test` (it installs the test's Debian packages)")
    # The caller's own port variables (a developer's shell) would move the published ports.
    base = {k: v for k, v in os.environ.items() if not k.endswith("_PORT")}
    out = subprocess.run([exe, "-f", "docker-compose.yml", *args, "config"], cwd=REPO, check=False,
                         capture_output=True, text=True, timeout=60, env={**base, **env})
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


@pytest.fixture(scope="module")
def config() -> dict:
    return compose_config()


def test_five_services_on_their_ports_with_healthchecks(config):
    services = config["services"]
    for name, (prefix, port) in SERVICES.items():
        svc = services[name]
        # The HTTP port, then STT's and TTS's Wyoming port (the health check stays on HTTP).
        assert [p["target"] for p in svc["ports"]] == [port, *([WYOMING[name]] if name in WYOMING else [])]
        # The check follows the port the service is told to listen on inside its container ($$ is
        # compose's escape: the container's shell expands the variable, not compose).
        kind, command = svc["healthcheck"]["test"]
        assert kind == "CMD-SHELL"
        assert f"http://127.0.0.1:${{{prefix}_PORT:-{port}}}/" in command.replace("$$", "$")
        assert command.startswith(f"python {HEALTHCHECK_IN_IMAGE} ")
        assert svc["restart"] == "unless-stopped"
        assert (REPO / svc["build"]["dockerfile"]).is_file()


@pytest.mark.parametrize("service", list(WYOMING))
def test_wyoming_is_on_and_published_where_home_assistant_looks(config, service, monkeypatch):
    # The container is told to serve Wyoming on the port compose publishes, and its settings read it
    # as that port (an unparsable value would leave Wyoming off, or stop the service at start).
    prefix, wyoming = SERVICES[service][0], WYOMING[service]
    svc = config["services"][service]
    env = svc["environment"]
    assert env[f"{prefix}_WYOMING_PORT"] == str(wyoming)
    published = {p["target"]: str(p["published"]) for p in svc["ports"]}
    assert published[wyoming] == str(wyoming)  # the same port on the host: Home Assistant's default
    monkeypatch.setenv(f"{prefix}_WYOMING_PORT", env[f"{prefix}_WYOMING_PORT"])
    settings = importlib.import_module(f"rvchat_{service}.settings").Settings(_env_file=None)
    assert settings.wyoming_port == wyoming
    assert f"{wyoming} is the usual one" in type(settings).model_fields["wyoming_port"].description


def test_the_wyoming_host_ports_follow_their_variables_and_the_replicas_stay_unpublished():
    # As STT_PORT moves HTTP, STT_WYOMING_PORT in .env moves Wyoming's host side only: inside the
    # container it stays where the health of the stack and the replicas expect it.
    services = compose_config("--profile", "replicas", STT_WYOMING_PORT="10301",
                              TTS_WYOMING_PORT="10201")["services"]
    for service, moved in (("stt", "10301"), ("tts", "10201")):
        ports = {p["target"]: str(p["published"]) for p in services[service]["ports"]}
        assert ports[WYOMING[service]] == moved
        assert services[service]["environment"][f"{service.upper()}_WYOMING_PORT"] == str(WYOMING[service])
        # The second replica serves Wyoming inside the compose network only: one host port, one replica.
        replica = services[f"{service}-2"]
        assert not replica.get("ports")
        assert replica["environment"][f"{service.upper()}_WYOMING_PORT"] == str(WYOMING[service])


def test_models_are_in_the_images_not_in_a_shared_volume(config):
    # One volume shared by all five was filled by whichever started first and kept stale models
    # across upgrades; the models ship inside the images, and only main_app keeps data (its history).
    assert "models" not in (config.get("volumes") or {})
    for name in SERVICES:
        mounts = config["services"][name].get("volumes") or []
        targets = [m["target"] if isinstance(m, dict) else m.split(":")[1] for m in mounts]
        assert targets == (["/data"] if name == "main_app" else []), (name, targets)


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


HEALTHCHECK_IN_IMAGE = "/app/common/rvchat_common/healthcheck.py"


def test_healthcheck_script_needs_only_the_standard_library():
    # Run as a file, it must not import the package: `-m rvchat_common.healthcheck` loaded FastAPI
    # first (0.53 s of CPU) and timed out while the composed stack loaded its models.
    tree = ast.parse((REPO / "common" / "rvchat_common" / "healthcheck.py").read_text())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))
    assert modules and modules <= sys.stdlib_module_names, modules


def dockerfile(service: str) -> str:
    return (REPO / service / "Dockerfile").read_text()


def copied_sources(service: str) -> list[str]:
    """What a Dockerfile copies from the build context (not from another stage)."""
    lines = dockerfile(service).splitlines()
    return [src for line in lines if line.startswith("COPY ") and "--from" not in line
            for src in line.split()[1:-1]]


def final_stage(service: str) -> list[str]:
    lines = dockerfile(service).splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return lines[start:]


@pytest.mark.parametrize("service", list(SERVICES))
def test_dockerfiles_run_as_non_root_with_healthcheck(service):
    text = dockerfile(service)
    assert "USER app" in text and "HEALTHCHECK" in text and "EXPOSE 300" in text
    for src in copied_sources(service):
        assert (REPO / src).exists(), f"{service}/Dockerfile copies missing {src}"


@pytest.mark.parametrize("service", list(SERVICES))
def test_dockerfiles_take_the_base_image_as_a_build_arg(service):
    lines = dockerfile(service).splitlines()
    first_from = next(i for i, line in enumerate(lines) if line.startswith("FROM "))
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in lines[:first_from]
    assert all(line.split()[1] == "${PYTHON_IMAGE}" for line in lines if line.startswith("FROM "))


@pytest.mark.parametrize("service", list(SERVICES))
def test_healthcheck_follows_the_configured_port(service):
    # Shell form, so the container's own <PREFIX>_PORT decides: with APP_PORT=3010 (or host
    # networking) the check probes the port the service really listens on.
    prefix, port = SERVICES[service]
    text = re.sub(r"\\\n\s*", " ", dockerfile(service))
    check = re.search(r"^HEALTHCHECK .*? CMD (.*)$", text, re.MULTILINE).group(1)
    assert not check.startswith("["), "exec form: no variable expansion"
    assert check.startswith(f"python {HEALTHCHECK_IN_IMAGE} "), "run as a file, without the package"
    assert f'"http://127.0.0.1:${{{prefix}_PORT:-{port}}}/' in check
    exposed = [int(p) for p in re.search(r"^EXPOSE (.*)$", text, re.MULTILINE).group(1).split()]
    # The HTTP port, and the Wyoming port compose turns on (served only when it is set).
    assert exposed == [port, *([WYOMING[service]] if service in WYOMING else [])]


def test_the_five_images_share_their_first_layers():
    # The same instructions up to the shared requirements' install: built and stored once for all five.
    preludes = {}
    for service in SERVICES:
        stage = final_stage(service)
        end = next(i for i, line in enumerate(stage) if line.startswith("# ---- end of the shared layers"))
        preludes[service] = stage[:end]
    assert len({tuple(p) for p in preludes.values()}) == 1, "the shared layers differ between Dockerfiles"
    prelude = "\n".join(preludes["vad"])
    assert "COPY requirements/base.txt requirements/constraints.txt requirements/" in prelude
    assert "pip install -r requirements/base.txt" in prelude


@pytest.mark.parametrize("service", list(SERVICES))
def test_no_wheels_or_build_tools_left_in_the_image(service):
    stage = "\n".join(final_stage(service))
    assert "/wheels" not in stage
    assert "build-essential" not in stage and "cmake" not in stage
    # binutils (strip) is installed and purged in the same layer, or it would stay in the image.
    for run in re.findall(r"^RUN (?:.*\\\n)*.*$", stage, re.MULTILINE):
        if "install" in run and "binutils" in run:
            assert "purge -y --auto-remove binutils" in run


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.strip("/").split("/")
    result = False
    for pattern in dockerignore():
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if pat.startswith("**/"):
            n = len(parts)
            candidates += ["/".join(parts[i:j]) for i in range(n) for j in range(i + 1, n + 1)]
            pat = pat[3:]
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            result = not negate
    return result


def test_dockerignore_keeps_the_build_context_small():
    # After `make run` the .venv is 2 GB: without this every build first sent it to the engine.
    for path in [".venv/bin/python", ".git/HEAD", ".env", "tests/data/speech/manifest.jsonl",
                 "bench/REPORT.md", "common/rvchat_common/__pycache__/app.cpython-311.pyc"]:
        assert ignored(path), f"{path} would be in the build context"


@pytest.mark.parametrize("service", list(SERVICES))
def test_dockerignore_keeps_what_the_dockerfiles_copy(service):
    for src in copied_sources(service):
        files = [p for p in (REPO / src).rglob("*") if p.is_file() and "__pycache__" not in p.parts] \
            if (REPO / src).is_dir() else [REPO / src]
        assert files
        for f in files:
            assert not ignored(str(f.relative_to(REPO))), f"{service}: .dockerignore drops {f}"


def test_replicas_profile_runs_a_second_stt_and_tts_behind_main_app():
    services = compose_config("--profile", "replicas")["services"]
    env = services["main_app"]["environment"]
    for name, port in (("stt", 3002), ("tts", 3003)):
        first, second = services[name], services[f"{name}-2"]
        # Same image and settings; only the first is published on the host (main_app uses both).
        assert second["build"] == first["build"] and second["healthcheck"] == first["healthcheck"]
        assert not second.get("ports")
        assert env[f"APP_{name.upper()}_URL"].split(",") == [f"http://{name}:{port}", f"http://{name}-2:{port}"]
