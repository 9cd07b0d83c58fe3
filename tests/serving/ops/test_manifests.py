"""The container and the Kubernetes manifests, checked offline: kubernetes-validate (strict schemas)
on deploy/k8s/, hadolint on deploy/Dockerfile, the gateway's ConfigMap equal to what the code renders
and accepted by the real HAProxy, and the properties the deployment relies on. (No image can be built
or cluster run on these machines.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sane.serving.ops.gateway import K8S_KEYS_MAP, haproxy_binary, kubernetes_configmap
from sane.serving.ops.server import read_properties

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
BIN = Path(sys.executable).parent


def _docs() -> dict[tuple[str, str], dict]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def _tool(name: str) -> str:
    found = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    assert found, f"{name} is not installed (pip install -e '.[dev]')"
    return found


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_every_manifest_passes_kubernetes_validate(version):
    files = sorted(str(p) for p in K8S.glob("*.yaml"))
    assert len(files) >= 5
    done = subprocess.run([_tool("kubernetes-validate"), "--strict", "-k", version, *files], check=False,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == sum(1 for _ in _docs())


def test_the_dockerfile_is_clean_under_hadolint():
    done = subprocess.run([_tool("hadolint"), str(ROOT / "deploy" / "Dockerfile")], check=False, capture_output=True,
                          text=True)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_the_dockerfile_runs_torchserve_in_the_foreground_as_a_non_root_user():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert "ARG BASE=python:3.11-slim-bookworm" in lines and "FROM ${BASE}" in lines
    assert any(line.startswith("ARG TORCH_INDEX=") for line in lines)
    assert [line for line in lines if line.startswith("USER ")] == ["USER 10001"]
    entry = text[text.index("ENTRYPOINT"):]
    assert '"torchserve", "--foreground"' in entry and '"--models", "all"' in entry
    assert "sane archive" in text and "--profile" in text  # archives baked in, for the target


def test_the_gateway_config_map_is_the_rendered_one_and_haproxy_accepts_it(tmp_path):
    committed = (K8S / "gateway-config.yaml").read_text()
    assert committed == kubernetes_configmap(), "regenerate: python -m sane.serving.ops.gateway > deploy/k8s/gateway-config.yaml"
    cfg = yaml.safe_load(committed)["data"]["haproxy.cfg"]
    (tmp_path / "keys.map").write_text("")
    local = cfg.replace(K8S_KEYS_MAP, str(tmp_path / "keys.map")).replace("/var/run/haproxy/", f"{tmp_path}/")
    (tmp_path / "haproxy.cfg").write_text(local)
    done = subprocess.run([haproxy_binary(), "-c", "-f", str(tmp_path / "haproxy.cfg")], check=False,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "server-template ts" in cfg and "sane-torchserve.sane.svc.cluster.local:7070 proto h2" in cfg


def test_the_manifests_keep_what_the_deployment_relies_on():
    docs = _docs()
    ts = docs[("Deployment", "sane-torchserve")]["spec"]["template"]["spec"]
    container = ts["containers"][0]
    timeout = int(read_properties(ROOT / "config.properties")["default_response_timeout"])
    assert ts["terminationGracePeriodSeconds"] >= timeout
    assert docs[("Deployment", "sane-gateway")]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= timeout
    assert container["resources"]["requests"]["nvidia.com/gpu"] == container["resources"]["limits"]["nvidia.com/gpu"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ping"  # 200 only with every archive's workers
    assert "wait-idle" in container["lifecycle"]["preStop"]["exec"]["command"]
    assert ts["securityContext"]["runAsNonRoot"] is True
    # The gateway finds the pods through a headless Service (per-pod DNS records), not a ClusterIP.
    assert docs[("Service", "sane-torchserve")]["spec"]["clusterIP"] == "None"
    # Only the gateway reaches inference and management; metrics only from monitoring.
    rules = docs[("NetworkPolicy", "sane-torchserve")]["spec"]["ingress"]
    for rule in rules:
        ports = {p["port"] for p in rule["ports"]}
        sources = rule["from"]
        if 8081 in ports:
            assert sources == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "sane-gateway"}}}]
        assert ports <= {8080, 7070, 8081} or ports == {8082}
    hpa = docs[("HorizontalPodAutoscaler", "sane-torchserve")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "sane-torchserve" and hpa["minReplicas"] >= 2
