"""deploy/: the Kubernetes manifests render (kubectl kustomize), validate against the Kubernetes API
schemas offline (kubernetes-validate ships them), and set only real settings. No cluster needed."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes_validate import utils as k8s

from rvchat_common import envdoc

REPO = Path(__file__).resolve().parents[1]
OVERLAYS = ["gpu-node", "external-llm"]
K8S_VERSION = "1.30"  # the oldest release the manifests promise to work on (autoscaling/v2, policy/v1)
OURS = {"vad": 3001, "stt": 3002, "tts": 3003, "llm": 3004, "main-app": 3000}
WYOMING = {"stt": 10300, "tts": 10200}  # Home Assistant's ports (its wyoming-faster-whisper, wyoming-piper)


def render(target: str | Path) -> list[dict]:
    exe = shutil.which("kubectl")
    if not exe:
        pytest.skip("kubectl is not installed: `kubectl kustomize` renders the manifests")
    out = subprocess.run([exe, "kustomize", str(REPO / "deploy" / target)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, render(f"overlays/{request.param}")


def of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(docs: list[dict]) -> dict[str, dict]:
    """Our five services' containers by Deployment name."""
    return {name: d["spec"]["template"]["spec"]["containers"][0]
            for name, d in of_kind(docs, "Deployment").items()}


def real_settings() -> set[str]:
    """Every environment variable a service reads: each settings field (prefix + name) and its aliases."""
    names = {"RVCHAT_MODELS_DIR"}  # read by rvchat_common.provision in every image
    for _, module in envdoc.SERVICES:
        cls = envdoc.settings_class(module)
        prefix = cls.model_config.get("env_prefix", "")
        for name, field in cls.model_fields.items():
            names.add(f"{prefix}{name}".upper())
            alias = field.validation_alias
            for choice in getattr(alias, "choices", [alias] if alias else []):
                if isinstance(choice, str):
                    names.add(choice.upper())
    return names


def test_every_resource_validates_against_the_kubernetes_schemas(overlay):
    name, docs = overlay
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "Ingress", "Namespace"} <= kinds
    for doc in docs:
        try:
            k8s.validate(doc, K8S_VERSION, strict=True)  # strict: an unknown (misspelt) field fails too
        except k8s.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
        except k8s.SchemaNotFoundError as exc:
            pytest.fail(f"{name}: no schema for {doc['kind']} {doc['apiVersion']}: {exc.message}")


def test_the_base_renders_on_its_own():
    docs = render("base")
    assert set(of_kind(docs, "Deployment")) == set(OURS)


def test_every_service_has_probes_resources_a_budget_and_a_graceful_shutdown(overlay):
    _, docs = overlay
    deployments, services = of_kind(docs, "Deployment"), of_kind(docs, "Service")
    pdbs = of_kind(docs, "PodDisruptionBudget")
    settings = of_kind(docs, "ConfigMap")
    drain = float(next(c for c in settings.values() if c["metadata"]["name"].startswith("rvchat-settings"))
                  ["data"]["APP_DRAIN_TIMEOUT_S"])
    for name, port in OURS.items():
        pod = deployments[name]["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert c["image"].startswith("rvchat/")
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert {"cpu", "memory"} <= set(c["resources"]["requests"])
        assert {"cpu", "memory"} <= set(c["resources"]["limits"])
        assert c["ports"][0]["containerPort"] == port
        assert services[name]["spec"]["ports"][0]["port"] == port
        selector = deployments[name]["spec"]["selector"]["matchLabels"]
        assert pdbs[name]["spec"]["selector"]["matchLabels"] == selector
        # preStop lets the endpoint go everywhere; then the app drains (main_app: APP_DRAIN_TIMEOUT_S,
        # the services: 20 s) and uvicorn takes its 5 s; the grace period must cover all of it.
        pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
        app_drain = drain if name == "main-app" else 20
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + app_drain + 5, name
        assert pod["securityContext"]["runAsNonRoot"] is True


def test_stt_and_tts_serve_wyoming_to_the_cluster_with_probes_on_http(overlay):
    _, docs = overlay
    deployments, services = of_kind(docs, "Deployment"), of_kind(docs, "Service")
    for name, c in containers(docs).items():
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        prefix = name.upper()
        if name in WYOMING:
            # The container listens where its Service sends Wyoming: the setting, the container port
            # and the Service port are the same number.
            assert ports == {"http": OURS[name], "wyoming": WYOMING[name]}
            assert env[f"{prefix}_WYOMING_PORT"] == str(WYOMING[name])
            wyoming = next(p for p in services[name]["spec"]["ports"] if p["name"] == "wyoming")
            assert wyoming == {"name": "wyoming", "port": WYOMING[name], "targetPort": "wyoming"}
            assert services[name]["spec"].get("type", "ClusterIP") == "ClusterIP"  # no authentication
        else:
            assert set(ports) == {"http"} and f"{prefix}_WYOMING_PORT" not in env
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"]["port"] == "http", (name, probe)
        assert deployments[name]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] \
            == str(OURS[name])


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_home_assistant_component_puts_wyoming_on_a_private_load_balancer(name, tmp_path):
    # As a user adds it to an overlay: `components: [../../components/home-assistant]`. Rendered from
    # a kustomization in tmp_path that wraps the overlay (kustomize takes relative paths only).
    deploy = REPO / "deploy"
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "rvchat",
        "resources": [os.path.relpath(deploy / "overlays" / name, tmp_path)],
        "components": [os.path.relpath(deploy / "components" / "home-assistant", tmp_path)]}))
    docs = render(tmp_path)
    services = of_kind(docs, "Service")
    pods = containers(docs)
    for svc, port in WYOMING.items():
        lb = services[f"{svc}-wyoming"]
        k8s.validate(lb, K8S_VERSION, strict=True)
        spec = lb["spec"]
        assert spec["type"] == "LoadBalancer" and spec["externalTrafficPolicy"] == "Local"
        assert spec["ports"] == [{"name": "wyoming", "port": port, "targetPort": "wyoming"}]
        assert spec["selector"] == services[svc]["spec"]["selector"]
        assert any(p["name"] == "wyoming" and p["containerPort"] == port for p in pods[svc]["ports"])
        # Private ranges only: no authentication, so never the whole internet.
        ranges = [ipaddress.ip_network(r) for r in spec["loadBalancerSourceRanges"]]
        assert ranges and all(r.is_private for r in ranges)
    # Only the two Wyoming Services are added: the rest is the overlay as it was.
    def names(rendered: list[dict]) -> list[tuple[str, str]]:
        return sorted((d["kind"], d["metadata"]["name"]) for d in rendered)

    added = [("Service", "stt-wyoming"), ("Service", "tts-wyoming")]
    assert names(docs) == sorted(names(render(f"overlays/{name}")) + added)


def test_stt_tts_and_main_app_scale_out(overlay):
    _, docs = overlay
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == {"stt", "tts", "main-app"}
    for hpa in hpas.values():
        assert hpa["spec"]["minReplicas"] >= 2  # one pod can always leave (PDB, rollouts) without an outage
        assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


def test_the_ingress_carries_the_websocket_to_main_app(overlay):
    _, docs = overlay
    ingress = of_kind(docs, "Ingress")["main-app"]
    notes = ingress["metadata"]["annotations"]
    # A listening session may send nothing for minutes: the proxy must not cut it after nginx's 60 s.
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(notes["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "main-app"


def test_every_env_var_the_manifests_set_is_a_real_setting(overlay):
    name, docs = overlay
    known = real_settings()
    config = next(c for c in of_kind(docs, "ConfigMap").values()
                  if c["metadata"]["name"].startswith("rvchat-"))
    secrets = next(s for s in of_kind(docs, "Secret").values()
                   if s["metadata"]["name"].startswith("rvchat-"))
    assert set(config["data"]) <= known, f"{name}: not settings: {sorted(set(config['data']) - known)}"
    for service, c in containers(docs).items():
        set_here = {e["name"] for e in c.get("env", [])}
        assert set_here <= known, f"{service}: not settings: {sorted(set_here - known)}"
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == secrets["metadata"]["name"] and ref["key"] in secrets["data"], e
        for source in c.get("envFrom", []):
            assert source["configMapRef"]["name"] == config["metadata"]["name"]
    # main_app finds the four services at their Services' names, and keeps history in PostgreSQL.
    for svc, port in OURS.items():
        if svc != "main-app":
            assert config["data"][f"APP_{svc.upper()}_URL"] == f"http://{svc}:{port}"
    app_env = {e["name"] for e in containers(docs)["main-app"]["env"]}
    assert {"APP_DATABASE_URL", "APP_SERVICES_API_KEY"} <= app_env


def test_the_llm_is_pointed_at_ollama_on_a_gpu_node_or_an_external_host():
    gpu = render("overlays/gpu-node")
    settings = next(c for c in of_kind(gpu, "ConfigMap").values())["data"]
    assert settings["LLM_PROVIDER"] == "ollama" and settings["OLLAMA_BASE_URL"] == "http://ollama:11434"
    ollama = of_kind(gpu, "StatefulSet")["ollama"]["spec"]["template"]["spec"]
    assert ollama["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert of_kind(gpu, "Service")["ollama"]["spec"]["ports"][0]["port"] == 11434

    external = render("overlays/external-llm")
    settings = next(c for c in of_kind(external, "ConfigMap").values())["data"]
    assert "ollama" not in {d["metadata"]["name"] for d in external}
    assert settings["OLLAMA_BASE_URL"].startswith("http://") and "ollama:" not in settings["OLLAMA_BASE_URL"]
