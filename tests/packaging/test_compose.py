"""packaging/docker/docker-compose.yml: parses, passes only variables the controller (or the
image's entrypoint) reads, agrees with the Dockerfile and the image's settings, and both
ways to TLS it documents make settings the controller accepts."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import settings as settings_module
from controller.errors import OvercastError
from tests.packaging.files import (
    DOCKER,
    IMAGE_SETTINGS,
    entrypoint_variables,
    exposed_ports,
    image_settings,
    port_of,
    settings_variables,
    volumes,
)

COMPOSE = DOCKER / "docker-compose.yml"
ENV_EXAMPLE = DOCKER / "env.example"
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def _service() -> dict[str, Any]:
    services = _compose()["services"]
    assert list(services) == ["controller"], list(services)
    return services["controller"]  # type: ignore[no-any-return]


def _environment() -> dict[str, str]:
    env = _service()["environment"]
    assert isinstance(env, dict), "environment as a mapping"
    return {k: str(v) for k, v in env.items()}


def _env_example() -> dict[str, str]:
    """Every variable env.example mentions (set or commented out) with its example value."""
    found = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^#?([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            found[m.group(1)] = m.group(2)
    return found


def _interpolated() -> set[str]:
    return {m.group(1) for m in INTERPOLATION.finditer(COMPOSE.read_text())}


def test_compose_parses_as_yaml_with_the_expected_shape() -> None:
    doc = _compose()
    assert set(doc) <= {"name", "services", "volumes", "secrets", "networks", "configs"}
    svc = _service()
    assert svc["build"] == {"context": "../..", "dockerfile": "packaging/docker/Dockerfile"}
    assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
    assert svc["restart"] in ("unless-stopped", "always")


def test_only_variables_the_controller_or_the_entrypoint_read() -> None:
    known = settings_variables() | entrypoint_variables()
    env = _environment()
    assert env
    unknown = [k for k in env if k not in known]
    assert not unknown, f"not settings (controller/settings.py) nor entrypoint variables: {unknown}"
    # interpolated variables named like settings must be settings too (a typo would be
    # passed on to nobody)
    overcast_like = {v for v in _interpolated() if v.startswith("OVERCAST_")}
    assert overcast_like <= known, overcast_like - known


def test_the_entrypoint_variables_are_not_settings() -> None:
    """Names the entrypoint reads for itself must never collide with a setting's variable:
    the controller would read them too (OVERCAST_SECRET_KEY is the one it sets on purpose)."""
    own = entrypoint_variables() - {"OVERCAST_SECRET_KEY"}
    assert own and not own & settings_variables(), own & settings_variables()


def test_env_example_documents_exactly_the_interpolated_variables() -> None:
    example = _env_example()
    assert set(example) == _interpolated(), (set(example) ^ _interpolated())
    required = {m.group(1) for m in INTERPOLATION.finditer(COMPOSE.read_text())
                if m.group(2) == ":?"}
    assert required == {"OVERCAST_EXTERNAL_URL"}
    active = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines()
              if re.match(r"^[A-Z]", line)}
    assert required <= active  # set in the example, not commented out


def test_ports_volume_and_secrets_agree_with_the_image() -> None:
    svc = _service()
    published = []
    for spec in svc["ports"]:
        resolved = INTERPOLATION.sub(lambda m: m.group(3) or "", spec)  # the defaults
        published.append(int(resolved.rsplit(":", 1)[1]))
    assert set(published) == exposed_ports() and len(published) == len(exposed_ports())
    # the named volume on the image's VOLUME, which is the image's data directory
    (volume,) = volumes()
    mounts = [v.split(":") for v in svc["volumes"]]
    named = [m for m in mounts if m[0] in (_compose().get("volumes") or {})]
    assert [m[1] for m in named] == [volume], mounts
    assert image_settings()["data_dir"] == volume
    # secrets: every *_FILE variable names a secret the service has, at /run/secrets/<name>
    env = _environment()
    declared = set(_compose()["secrets"])
    assert set(svc["secrets"]) == declared
    files = {k: v for k, v in env.items() if k.endswith("_FILE")}
    assert {Path(v).name for v in files.values()} == declared, files
    for v in files.values():
        assert Path(v).parent == Path("/run/secrets"), v
    for spec in _compose()["secrets"].values():
        assert not Path(spec["file"]).is_absolute()


def test_the_certificate_paths_of_the_example_are_inside_the_tls_mount() -> None:
    mounts = [v.split(":") for v in _service()["volumes"]]
    tls = next(m for m in mounts if m[0] == "./tls")
    assert tls[2] == "ro"
    example = _env_example()
    for key in ("OVERCAST_TLS_CERT", "OVERCAST_TLS_KEY"):
        assert Path(example[key]).parent == Path(tls[1]), example[key]


def test_read_only_root_with_tmp_and_no_capabilities() -> None:
    svc = _service()
    assert svc["read_only"] is True and "/tmp" in svc["tmpfs"]
    assert svc["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in svc["security_opt"]
    assert svc["ulimits"]["nofile"]["soft"] >= 20_000  # 10,000 agents, a socket each


def _container_settings(tmp_path: Path, values: dict[str, str]) -> settings_module.Settings:
    """Settings as the controller in the container would load them: the image's settings
    file, then what compose passes (with these .env values), the secrets left out."""
    env = {}
    for key, value in _environment().items():
        if key in settings_variables():
            env[key] = INTERPOLATION.sub(
                lambda m: values.get(m.group(1)) or (m.group(3) if m.group(2) == ":-" else ""),
                value)
    s = settings_module.load(config_file=str(IMAGE_SETTINGS), env=env)
    # the image's data directory does not exist here
    return dataclasses.replace(s, data_dir=str(tmp_path))


def test_direct_tls_example_is_accepted(tmp_path: Path) -> None:
    """(a) in env.example, as shipped: the controller serves TLS on the published port."""
    example = {k: v for k, v in _env_example().items()
               if re.search(rf"^{k}=", ENV_EXAMPLE.read_text(), re.M)}
    s = _container_settings(tmp_path, example)
    s.validate()
    assert s.tls_enabled and s.grpc_tls_enabled
    assert s.public_url == example["OVERCAST_EXTERNAL_URL"]
    assert port_of(s.public_url) == s.http_port


def test_own_certificate_example_is_accepted(tmp_path: Path) -> None:
    """(a) with a certificate and key: the paths env.example gives, mounted from ./tls."""
    example = _env_example()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("x")
    s = _container_settings(tmp_path, {
        "OVERCAST_EXTERNAL_URL": example["OVERCAST_EXTERNAL_URL"],
        "OVERCAST_TLS_CERT": example["OVERCAST_TLS_CERT"],
        "OVERCAST_TLS_KEY": example["OVERCAST_TLS_KEY"]})
    assert (s.tls_cert, s.tls_key) == (example["OVERCAST_TLS_CERT"], example["OVERCAST_TLS_KEY"])
    dataclasses.replace(s, tls_cert=str(cert), tls_key=str(key)).validate()


def test_reverse_proxy_example_needs_behind_proxy(tmp_path: Path) -> None:
    """(b): an https URL on the proxy's port is accepted with behind_proxy, refused without
    (the port is not the one the controller listens on): the example's two lines matter."""
    text = ENV_EXAMPLE.read_text()
    m = re.search(r"reverse proxy terminates TLS:\s+(https://\S+)", text)
    assert m, "env.example shows the proxy's URL"
    url = m.group(1)
    assert _env_example()["OVERCAST_BEHIND_PROXY"] == "true"
    s = _container_settings(tmp_path, {"OVERCAST_EXTERNAL_URL": url,
                                       "OVERCAST_BEHIND_PROXY": "true"})
    s.validate()
    assert s.behind_proxy and s.public_url == url
    without = _container_settings(tmp_path, {"OVERCAST_EXTERNAL_URL": url})
    with pytest.raises(OvercastError, match="external_url"):
        without.validate()
    # only the proxy on this host reaches the controller's HTTP port
    publish = _env_example()["HTTP_PUBLISH"]
    assert publish.startswith("127.0.0.1:") and port_of(publish) == s.http_port
