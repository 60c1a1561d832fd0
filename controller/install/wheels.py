"""Filling the wheels directory the controller serves to hosts without the package index:
``pip download`` of the agent's dependencies (binary wheels only) for each platform and
Python version asked, on the controller's host. Blocks (runs pip)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from controller.install.package import REQUIRES

PLATFORMS = ("x86_64", "aarch64")
PYTHONS = ("3.11", "3.12", "3.13")
# glibc 2.28 (RHEL 8) is the oldest the install script supports: manylinux_2_28 wheels
# and every older manylinux tag pip expands it to
MANYLINUX = ("manylinux_2_28_{arch}", "manylinux2014_{arch}")


def download_argv(dest: Path, arch: str, python: str) -> list[str]:
    """The pip command that downloads the agent's dependencies for ``arch`` and CPython
    ``python`` (like "3.11") into ``dest``."""
    if arch not in PLATFORMS:
        raise ValueError(f"platform must be one of {', '.join(PLATFORMS)}, not {arch!r}")
    major, _, minor = python.partition(".")
    if not (major == "3" and minor.isdigit()):
        raise ValueError(f"python must be like 3.11, not {python!r}")
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
            "--only-binary=:all:", "--dest", str(dest), "--python-version", python,
            "--implementation", "cp", "--abi", f"cp3{minor}", "--abi", "abi3", "--abi", "none"]
    for tag in MANYLINUX:
        argv += ["--platform", tag.format(arch=arch)]
    return [*argv, *REQUIRES]


def fetch(dest: Path, platforms: list[str], pythons: list[str]) -> list[tuple[str, str, int, str]]:
    """Download for every (platform, python); returns (platform, python, pip's exit code, its
    last lines) for each. Files already there are kept (pip skips them)."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for arch in platforms:
        for python in pythons:
            r = subprocess.run(download_argv(dest, arch, python), capture_output=True, text=True,
                               check=False, stdin=subprocess.DEVNULL)
            tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-5:])
            out.append((arch, python, r.returncode, tail))
    return out
