"""The running agent is small: restarted as ``python -m agent`` after enrolment or from the
controller's CLI, with one malloc arena, and without Python's OpenSSL modules."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent import main as agent_main
from agent.state import AgentState

ROOT = Path(__file__).resolve().parents[2]


def _args(**kw: Any) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    agent_main.add_arguments(p)
    return p.parse_args([f"--{k.replace('_', '-')}={v}" for k, v in kw.items()])


def test_the_restart_keeps_what_running_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(agent_main.os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.delenv(agent_main.LEAN_ENV, raising=False)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    state = AgentState(tmp_path / "state")
    agent_main.restart_lean(state, _args(token="ocj_x", controller="https://c", interval=2.5,
                                         spool_max_mb=8, log_level="debug"))
    [(path, argv, env)] = calls
    assert path == sys.executable
    assert argv == [sys.executable, "-m", "agent", "--state-dir", str(state.directory),
                    "--log-level", "debug", "--spool-max-mb", "8", "--interval", "2.5"]
    assert env[agent_main.LEAN_ENV] == "1" and env["MALLOC_ARENA_MAX"] == "1"
    assert str(ROOT) in env["PYTHONPATH"].split(os.pathsep)  # what imported this, imports it
    # once restarted (or where the operator chose an arena count) it is left alone
    calls.clear()
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    agent_main.restart_lean(state, _args())
    assert calls[0][2]["MALLOC_ARENA_MAX"] == "4" and "--interval" not in calls[0][1]
    calls.clear()
    monkeypatch.setenv(agent_main.LEAN_ENV, "1")
    agent_main.restart_lean(state, _args())
    assert not calls


def test_exec_failing_means_running_in_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*a: Any) -> None:
        raise OSError(8, "Exec format error")

    monkeypatch.setattr(agent_main.os, "execve", fail)
    monkeypatch.delenv(agent_main.LEAN_ENV, raising=False)
    agent_main.restart_lean(AgentState(tmp_path / "s"), _args())  # returns


def test_the_running_agent_loads_no_openssl() -> None:
    """After block_openssl, the agent's modules load and work without ssl/_hashlib, and no
    OpenSSL library is mapped (gRPC's TLS is grpcio's own BoringSSL)."""
    code = """
import sys
from agent.main import block_openssl
block_openssl()
import asyncio, hashlib
import grpc
import agent.control, agent.spool, agent.collect.inventory
from agent.collect.inventory import fingerprint, inventory
fingerprint(inventory("test"))
assert hashlib.sha256(b"x").hexdigest().startswith("2d711642")
maps = open("/proc/self/maps").read()
print(sorted({l.split()[-1].rsplit("/", 1)[-1] for l in maps.splitlines()
              if "libssl" in l or "libcrypto" in l or "_hashlib" in l or "_ssl." in l}))
print("cryptography" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'proto'}"},
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "False"]
