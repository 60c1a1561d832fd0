"""The agent's side of an upgrade: who may upgrade itself (only an agent in an environment of
its own that it may write: not a --user agent, whose environment is root's), the answer it
sends and the restart it asks for, the package checked against the
announced SHA-256 before pip ever runs (served by a real local HTTP server), and how pip
reaches the controller's wheels. The whole path, pip included, runs in
tests/e2e/test_agent_install.py."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import upgrade
from overcast.agent.v1 import agent_pb2 as pb


def test_a_source_tree_agent_does_not_upgrade_itself() -> None:
    why = upgrade.own_environment()  # this test runs the agent from the source tree
    assert why and ("virtual environment of its own" in why or "not installed in" in why)


class _Sent:
    def __init__(self) -> None:
        self.messages: list[pb.AgentMessage] = []
        self.restarts = 0

    async def send(self, msg: pb.AgentMessage) -> None:
        self.messages.append(msg)

    def restart(self) -> None:
        self.restarts += 1


def _upgrade_msg() -> pb.Upgrade:
    return pb.Upgrade(request_id="r1", package_url="/install/packages/x.whl", version="9.9.9",
                      sha256="ab" * 32, find_links="/install/wheels/")


async def test_a_refusal_is_answered_and_nothing_restarts(tmp_path: Path) -> None:
    sent = _Sent()
    u = upgrade.Upgrader(tmp_path, sent.send, sent.restart)
    u.start(_upgrade_msg())
    assert u.task is not None
    await u.task
    [msg] = sent.messages
    r = msg.upgrade_result
    assert r.request_id == "r1" and not r.ok and "upgrade it the way it was installed" in r.error
    assert sent.restarts == 0


async def test_an_agent_that_cannot_write_its_environment_refuses_in_words(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The install script's --user agent runs as overcast-agent from an environment that is
    root's (0755): it says so, and that the script, run again as root, upgrades it; pip
    never runs, nothing restarts, and the controller's job gets the words."""
    import agent

    venv = tmp_path / "venv"
    package = venv / "lib" / "python3.11" / "site-packages" / "agent"
    package.mkdir(parents=True)
    (venv / "bin").mkdir()
    (package / "__init__.py").write_text("")
    for d in (venv, venv / "bin", package.parent, package):
        d.chmod(0o755)
    monkeypatch.setattr(sys, "prefix", str(venv))
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    monkeypatch.setattr(agent, "__file__", str(package / "__init__.py"))
    assert upgrade.own_environment() == ""  # its owner (root) may write it
    # as a user who does not own it: only what others may write is writable
    monkeypatch.setattr(upgrade.os, "access",
                        lambda path, mode: not mode & os.W_OK or bool(os.stat(path).st_mode & 0o002))
    why = upgrade.own_environment()
    assert why.startswith("this agent cannot write its environment; re-run the install script "
                          "as root to upgrade ("), why
    monkeypatch.setattr(upgrade.subprocess, "run", lambda *a, **kw: pytest.fail("pip ran"))
    sent = _Sent()
    u = upgrade.Upgrader(tmp_path, sent.send, sent.restart)
    u.start(_upgrade_msg())
    assert u.task is not None
    await u.task
    [msg] = sent.messages
    assert not msg.upgrade_result.ok and msg.upgrade_result.error == why
    assert sent.restarts == 0


async def test_an_installed_upgrade_answers_then_restarts(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The child's JSON answer becomes UpgradeResult, sent before the restart is asked; a
    second Upgrade meanwhile is refused."""
    calls: list[list[str]] = []

    def child(argv: list[str], **kw: Any) -> Any:
        calls.append(argv)
        return type("R", (), {"returncode": 0, "stderr": "",
                              "stdout": "pip says things\n" + json.dumps(
                                  {"ok": True, "version": "9.9.9", "output": "Successfully"})})()

    monkeypatch.setattr(upgrade, "own_environment", lambda: "")
    monkeypatch.setattr(upgrade.subprocess, "run", child)
    sent = _Sent()
    u = upgrade.Upgrader(tmp_path, sent.send, sent.restart)
    u.start(_upgrade_msg())
    u.start(pb.Upgrade(request_id="r2", version="9.9.9"))
    assert u.task is not None
    await u.task
    await asyncio.sleep(0)
    results = {m.upgrade_result.request_id: m.upgrade_result for m in sent.messages}
    assert results["r1"].ok and results["r1"].version == "9.9.9"
    assert not results["r2"].ok and "running already" in results["r2"].error
    assert sent.restarts == 1
    [argv] = calls
    assert argv[:3] == [sys.executable, "-m", "agent.upgrade"]
    assert argv[argv.index("--sha256") + 1] == "ab" * 32
    assert argv[argv.index("--state-dir") + 1] == str(tmp_path)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server for tmp_path/www (the controller's packages)."""
    www = tmp_path / "www"
    (www / "install" / "packages").mkdir(parents=True)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, directory=str(www), **kw)

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", www
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_package_that_is_not_the_announced_one_is_not_installed(
        tmp_path: Path, served: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    url, www = served
    state = tmp_path / "state"
    state.mkdir()
    (state / "agent.json").write_text(json.dumps({"agent_id": "a1", "controller_url": url}))
    (state / "ca.pem").write_text("")
    (www / "install" / "packages" / "overcast_agent-9.9.9-py3-none-any.whl").write_bytes(b"evil")
    pips: list[list[str]] = []

    def pip(args: list[str], lines: list[str]) -> bool:
        pips.append(args)
        return True

    monkeypatch.setattr(upgrade, "_pip", pip)
    work = tmp_path / "work"
    work.mkdir()
    good = hashlib.sha256(b"good").hexdigest()
    with pytest.raises(upgrade.UpgradeError, match="not installing it"):
        upgrade.install(state, "/install/packages/overcast_agent-9.9.9-py3-none-any.whl", good,
                        "9.9.9", "/install/wheels/", work)
    assert pips == []
    with pytest.raises(upgrade.UpgradeError, match="HTTP 404"):
        upgrade.install(state, "/install/packages/overcast_agent-1.0-py3-none-any.whl", good,
                        "1.0", "", work)
    # the child's own answer, as the running agent reads it
    out = upgrade.main(["--state-dir", str(state), "--package-url",
                        "/install/packages/overcast_agent-9.9.9-py3-none-any.whl",
                        "--sha256", good])
    assert out == 1


def test_pip_reaches_the_controllers_wheels() -> None:
    opts = upgrade.pip_options("http://10.1.0.1:7080/install/packages/x.whl",
                               "http://10.1.0.1:7080/install/wheels/", None)
    # pip ignores plain-http indexes off loopback unless told the host is trusted
    assert opts == ["--find-links", "http://10.1.0.1:7080/install/wheels/",
                    "--trusted-host", "10.1.0.1:7080"]
    opts = upgrade.pip_options("https://c:7080/x.whl", "https://c:7080/install/wheels/",
                               Path("/state/ca.pem"))
    assert opts == ["--find-links", "https://c:7080/install/wheels/", "--cert", "/state/ca.pem"]
    assert upgrade._last_json('noise\n{"ok": true}\n') == {"ok": True}
    assert upgrade._last_json("no json") is None
