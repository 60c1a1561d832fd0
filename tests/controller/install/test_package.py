"""The agent's wheel the controller builds from its own code: a correct wheel (every file in
RECORD with its SHA-256 and size, METADATA with pyproject's dependencies, the WHEEL tag),
the same bytes every time, the agent half only; pip installs it into a fresh virtual
environment and the agent there runs. And the wheels directory served to offline hosts."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import tomllib
import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from agent import AGENT_VERSION
from controller.errors import NotFound
from controller.install import package, wheels
from controller.install.package import AgentPackages, build_wheel

ROOT = Path(__file__).resolve().parents[3]


def test_the_dependencies_are_pyprojects() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert list(package.REQUIRES) == project["dependencies"]
    assert package.REQUIRES_PYTHON == project["requires-python"]


def test_the_wheel_is_complete_and_reproducible() -> None:
    pkg = build_wheel()
    assert pkg.filename == f"overcast_agent-{AGENT_VERSION}-py3-none-any.whl"
    assert pkg.sha256 == hashlib.sha256(pkg.data).hexdigest()
    assert build_wheel().data == pkg.data  # the same code, the same bytes
    zf = zipfile.ZipFile(BytesIO(pkg.data))
    names = zf.namelist()
    info = f"overcast_agent-{AGENT_VERSION}.dist-info"
    assert names[-1] == f"{info}/RECORD"
    record = zf.read(f"{info}/RECORD").decode().splitlines()
    listed = {}
    for line in record:
        path, digest, size = line.rsplit(",", 2)
        listed[path] = (digest, size)
    assert set(listed) == set(names)
    for name in names:
        if name.endswith("RECORD"):
            assert listed[name] == ("", "")
            continue
        data = zf.read(name)
        want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert listed[name] == (f"sha256={want}", str(len(data))), name
    meta = zf.read(f"{info}/METADATA").decode()
    assert f"Name: overcast-agent\nVersion: {AGENT_VERSION}\n" in meta
    assert [ln.split(": ", 1)[1] for ln in meta.splitlines() if ln.startswith("Requires-Dist")] == \
        list(package.REQUIRES)
    assert "Tag: py3-none-any" in zf.read(f"{info}/WHEEL").decode()
    # the agent half: agent, tunnel, the version and the agent protocol; nothing else
    assert {"agent/__main__.py", "agent/upgrade.py", "agent/config.py", "tunnel/__init__.py",
            "overcast/__init__.py", "overcast/agent/v1/agent_pb2.py",
            "overcast/agent/v1/agent_pb2_grpc.py"} <= set(names)
    assert not [n for n in names if n.startswith(("controller/", "overcast/api/"))
                or "__pycache__" in n or n.endswith(".pyc")]


def test_pip_installs_it_and_the_agent_runs(tmp_path: Path) -> None:
    """Into a fresh virtual environment of this Python (its dependencies are this test
    environment's own: --no-deps, then the environment sees them through a .pth file)."""
    pkg = build_wheel()
    whl = tmp_path / pkg.filename
    whl.write_bytes(pkg.data)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_CONFIG_FILE"] = os.devnull
    pip = [sys.executable, "-m", "pip", "--python", str(py), "--disable-pip-version-check"]
    r = subprocess.run([*pip, "install", "-q", "--no-deps", "--no-index", str(whl)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    site = next((venv / "lib").glob("python3*/site-packages"))
    import grpc
    import psutil

    deps = {str(Path(m.__file__).parents[1]) for m in (grpc, psutil)}  # type: ignore[arg-type]
    (site / "deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    r = subprocess.run([str(py), "-c", "import agent, agent.control, agent.upgrade, tunnel; "
                        "print(agent.__file__, agent.AGENT_VERSION)"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    where, version = r.stdout.split()
    assert Path(where).is_relative_to(site) and version == AGENT_VERSION
    r = subprocess.run([*pip, "show", "-f", "overcast-agent"], capture_output=True, text=True,
                       env=env)
    assert f"Version: {AGENT_VERSION}" in r.stdout and "Requires: cryptography, grpcio" in r.stdout
    r = subprocess.run([str(py), "-m", "agent", "--help"], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0 and "--config FILE" in r.stdout, r.stderr


def test_the_wheels_directory_is_a_find_links_page(tmp_path: Path) -> None:
    p = AgentPackages(tmp_path / "wheels")
    assert p.wheels() == [] and b"<a " not in p.index_html()  # no directory: no wheels
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "psutil-7.0.0-cp36-abi3-manylinux_2_17_x86_64.whl").write_bytes(b"w1")
    (tmp_path / "wheels" / "notes.txt").write_text("not a wheel")
    [w] = p.wheels()
    assert w.sha256 == hashlib.sha256(b"w1").hexdigest() and w.size == 2
    page = p.index_html().decode()
    assert f'href="{w.name}#sha256={w.sha256}"' in page and "notes.txt" not in page
    assert p.wheel_path(w.name).read_bytes() == b"w1"
    for bad in ("notes.txt", "../wheels/" + w.name, "x.whl"):
        with pytest.raises(NotFound):
            p.wheel_path(bad)
    assert p.agent() is p.agent()  # built once


def test_wheels_fetch_asks_pip_for_each_platform() -> None:
    argv = wheels.download_argv(Path("/w"), "aarch64", "3.12")
    assert argv[1:4] == ["-m", "pip", "download"] and "--only-binary=:all:" in argv
    assert argv[argv.index("--python-version") + 1] == "3.12" and "cp312" in argv
    assert "manylinux_2_28_aarch64" in argv and argv[-4:] == list(package.REQUIRES)
    for arch, py in (("riscv64", "3.11"), ("x86_64", "2.7"), ("x86_64", "3")):
        with pytest.raises(ValueError):
            wheels.download_argv(Path("/w"), arch, py)
