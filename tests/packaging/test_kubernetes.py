"""packaging/kubernetes: every manifest validates against the Kubernetes schemas
(kubernetes-validate ships them: no network, no cluster), the kustomization lists exactly
the manifests, and the StatefulSet agrees with the image, its settings and the Services."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import settings as settings_module
from tests.packaging.files import (
    KUBERNETES,
    dockerfile,
    entrypoint_variables,
    exposed_ports,
    image_settings,
    port_of,
    settings_variables,
    volumes,
)

KUSTOMIZATION = KUBERNETES / "kustomization.yaml"


def _manifests() -> list[Path]:
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p != KUSTOMIZATION)


def _validator() -> str:
    exe = Path(sys.executable).parent / "kubernetes-validate"
    if exe.exists():
        return str(exe)
    found = shutil.which("kubernetes-validate")
    if found is None:
        pytest.fail("kubernetes-validate is not installed: pip install kubernetes-validate")
    return found


def _validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_validator(), "--strict", "--no-warn", *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


def _docs() -> dict[str, dict[str, Any]]:
    """Every resource by kind (one of each kind but Service)."""
    out: dict[str, dict[str, Any]] = {}
    for path in _manifests():
        for doc in yaml.safe_load_all(path.read_text()):
            key = doc["kind"] if doc["kind"] != "Service" else f"Service/{doc['metadata']['name']}"
            assert key not in out, key
            out[key] = doc
    return out


def test_every_manifest_passes_strict_schema_validation() -> None:
    r = _validate(*_manifests())
    assert r.returncode == 0, r.stdout + r.stderr
    for path in _manifests():
        assert f"{path} passed" in r.stdout, r.stdout  # each one was validated, none skipped


def test_strict_validation_is_not_blind(tmp_path: Path) -> None:
    """A misspelt field and a wrong type are refused (the schemas are really there)."""
    text = (KUBERNETES / "statefulset.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem"))
    r = _validate(bad)
    assert r.returncode != 0 and "readOnlyRootFileSystem" in r.stdout + r.stderr
    bad.write_text(text.replace("containerPort: 7080", 'containerPort: "7080"'))
    assert _validate(bad).returncode != 0


def test_kustomization_lists_every_manifest_and_nothing_else() -> None:
    k = yaml.safe_load(KUSTOMIZATION.read_text())
    assert k["kind"] == "Kustomization"
    listed = k["resources"]
    assert len(listed) == len(set(listed)), listed
    assert sorted(listed) == sorted(p.name for p in _manifests())


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_and_the_result_validates(tmp_path: Path) -> None:
    r = subprocess.run(["kubectl", "kustomize", str(KUBERNETES)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    built = tmp_path / "built.yaml"
    built.write_text(r.stdout)
    docs = list(yaml.safe_load_all(r.stdout))
    assert len(docs) == sum(len(list(yaml.safe_load_all(p.read_text()))) for p in _manifests())
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "overcast", doc["metadata"]
    v = _validate(built)
    assert v.returncode == 0, v.stdout + v.stderr


def _pod() -> dict[str, Any]:
    return _docs()["StatefulSet"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def _container() -> dict[str, Any]:
    (c,) = _pod()["containers"]
    return c  # type: ignore[no-any-return]


def _env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in _container()["env"]}


def _settings_file() -> tuple[str, str]:
    """(path in the container, text) of the ConfigMap's settings file."""
    config = _docs()["ConfigMap"]
    (key, text), = config["data"].items()
    mount = next(m for m in _container()["volumeMounts"] if m["name"] == "config")
    volume = next(v for v in _pod()["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == config["metadata"]["name"]
    return f"{mount['mountPath']}/{key}", text


def _settings(tmp_path: Path) -> settings_module.Settings:
    _, text = _settings_file()
    f = tmp_path / "controller.toml"
    f.write_text(text)
    env = {k: v for k, v in _env().items() if k in settings_variables() and k != "OVERCAST_CONFIG"}
    return settings_module.load(config_file=str(f), env=env)


def test_one_replica_with_its_own_volume() -> None:
    sts = _docs()["StatefulSet"]["spec"]
    assert sts["replicas"] == 1  # RocksDB: one writing process
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    mount = next(m for m in _container()["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert sts["serviceName"] in {d["metadata"]["name"] for k, d in _docs().items()
                                  if k.startswith("Service/")}
    assert {mount["mountPath"]} == volumes()  # where the image expects its volume


def test_settings_file_is_valid_and_matches_the_pod(tmp_path: Path) -> None:
    path, _ = _settings_file()
    assert _env()["OVERCAST_CONFIG"] == path
    s = _settings(tmp_path)
    s.validate()
    # the data directory: inside the volume, a directory of its own (the controller makes it
    # 0700; the volume's root belongs to root)
    data_mount = next(m["mountPath"] for m in _container()["volumeMounts"] if m["name"] == "data")
    assert Path(s.data_dir).parent == Path(data_mount), s.data_dir
    ports = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    assert ports == {"http": s.http_port, "grpc": s.grpc_port, "agents": s.agents_port}
    assert set(ports.values()) == exposed_ports()
    # the Ingress's hostname is the external URL, and agents are told the LoadBalancer's
    host = _docs()["Ingress"]["spec"]["rules"][0]["host"]
    assert s.public_url == f"https://{host}" and s.behind_proxy
    assert s.agents_endpoint and port_of(s.agents_endpoint) == s.agents_port
    # a start-up self-check through the Ingress cannot pass before the pod is ready
    assert s.check_external_url is False


def test_probes_ask_the_health_endpoint_in_the_scheme_the_settings_give(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    scheme = "HTTPS" if s.tls_enabled else "HTTP"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = _container()[probe]["httpGet"]
        assert (get["path"], get["port"], get["scheme"]) == ("/api/v2/health", "http", scheme)


def test_only_known_variables_and_no_service_links(tmp_path: Path) -> None:
    known = settings_variables() | entrypoint_variables()
    assert set(_env()) <= known, set(_env()) - known
    # service links would add OVERCAST_<SERVICE>_* variables, read as settings
    assert _pod()["enableServiceLinks"] is False


def test_secrets_reach_the_entrypoint_as_files(tmp_path: Path) -> None:
    secret = _docs()["Secret"]
    keys = set(secret["stringData"])
    mount = next(m for m in _container()["volumeMounts"] if m["name"] == "secrets")
    volume = next(v for v in _pod()["volumes"] if v["name"] == "secrets")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert mount["readOnly"] is True
    # 0440 and fsGroup: the controller's group reads them, nobody else
    assert volume["secret"]["defaultMode"] == 0o440
    files = {k: v for k, v in _env().items() if k.endswith("_FILE")}
    assert {Path(v).name for v in files.values()} == keys
    assert all(Path(v).parent == Path(mount["mountPath"]) for v in files.values())
    # shipped empty: nothing runs with a known key or password
    assert all(v == "" for v in secret["stringData"].values())


def test_restricted_security_context() -> None:
    pod, c = _pod(), _container()
    users = [i.args for i in dockerfile() if i.keyword == "USER"]
    uid, _, gid = users[-1].partition(":")
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (int(uid), int(gid), int(gid))
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    csc = c["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["readOnlyRootFilesystem"] is True and csc["capabilities"]["drop"] == ["ALL"]
    # with a read-only root, /tmp (git clones, ansible runs) is a volume
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])
    assert pod["automountServiceAccountToken"] is False
    labels = _docs()["Namespace"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_services_and_ingress_point_at_named_container_ports() -> None:
    names = {p["name"] for p in _container()["ports"]}
    pod_labels = _docs()["StatefulSet"]["spec"]["template"]["metadata"]["labels"]
    services = {k: d for k, d in _docs().items() if k.startswith("Service/")}
    for svc in services.values():
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in names, p
    # agents over a TCP LoadBalancer (mutual TLS end to end), never through the Ingress
    lb = [s for s in services.values() if s["spec"].get("type") == "LoadBalancer"]
    assert len(lb) == 1 and {p["targetPort"] for p in lb[0]["spec"]["ports"]} >= {"agents"}
    backend = _docs()["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    target = services[f"Service/{backend['name']}"]
    port = next(p for p in target["spec"]["ports"] if p["name"] == backend["port"]["name"])
    assert port["targetPort"] == "http"
    # the controller serves TLS itself: the Ingress talks HTTPS to it
    annotations = _docs()["Ingress"]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS"


def test_the_image_settings_and_the_configmap_listen_alike() -> None:
    """The ConfigMap replaces the image's controller.toml: it keeps its listeners."""
    _, text = _settings_file()
    mine = tomllib.loads(text)
    for key in ("http", "grpc", "agents"):
        assert mine[key] == image_settings()[key], key
