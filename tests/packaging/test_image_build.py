"""The Dockerfile's build stage, as far as it can run without a container engine: the build
context assembled from its COPY lines (as .dockerignore sends it), the wheel built from that
alone (offline: this venv's setuptools), and the controller run from the wheel's files away
from the source tree. What needs the base image (apt, the venv inside it) is not run here."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.packaging.files import ROOT, copies, dockerignore, sent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip wheel .` makes in the build stage's /src."""
    src = tmp_path_factory.mktemp("context") / "src"
    src.mkdir()
    rules = dockerignore()
    for _, dest, sources in copies(stage=0):
        for s in sources:
            origin = ROOT / s
            files = [origin] if origin.is_file() else [p for p in origin.rglob("*") if p.is_file()]
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                if not sent(rel, rules):
                    continue
                target = src / (rel if dest != "./" else f.name)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, target)
    out = src.parent / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", "--no-index", "--wheel-dir", str(out), "."],
                       capture_output=True, text=True, cwd=src, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("overcast-*.whl")
    return whl


def test_the_build_stage_copies_the_whole_source(wheel: Path) -> None:
    """Every module and data file of the packages (what setuptools would find in this tree)
    is in the wheel built from the copied context alone."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = project["tool"]["setuptools"]["package-data"]["*"]
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for top, base in (("controller", "controller"), ("agent", "agent"), ("tunnel", "tunnel"),
                      ("overcast", "proto/overcast")):
        for f in (ROOT / base).rglob("*"):
            if not f.is_file() or "__pycache__" in f.parts:
                continue
            rel = f.relative_to(ROOT / base).as_posix()
            if f.suffix == ".py" or any(fnmatch.fnmatch(f.name, p) for p in data):
                if (f.parent / "__init__.py").exists():  # inside a package
                    expected.add(f"{top}/{rel}")
    missing = expected - names
    assert not missing, sorted(missing)
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "overcast = controller.cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_the_wheel_runs_away_from_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c",
                        "import controller, overcast; print(controller.__file__); "
                        "print(overcast.__file__)"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert all(line.startswith(str(site)) for line in r.stdout.split()), r.stdout
    r = subprocess.run([sys.executable, "-m", "controller.cli.main", "controller", "--help"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert r.returncode == 0 and "--data-dir" in r.stdout, r.stderr
