"""Admin commands run as root on a data directory a service user owns (the systemd layout:
`overcast` owns /var/lib/overcast, the operator types `sudo overcast adduser ...` or
`overcast restore` while the controller is stopped) leave every file to that user, so the
controller, started as its user again, still opens its store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.controller import OVERCAST, ROOT, env_for, free_port

NOBODY = 65534
PASSWORD = "owner password 1"


@pytest.fixture
def home() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("running as another user needs root")
    d = Path(tempfile.mkdtemp(prefix="overcast-owner-"))
    os.chmod(d, 0o755)
    os.chown(d, NOBODY, NOBODY)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _run(env: dict[str, str], *args: str, as_nobody: bool = False,
         input: str | None = None) -> subprocess.CompletedProcess[str]:
    pre = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"] if as_nobody else []
    return subprocess.run([*pre, *OVERCAST, *args], env=env, cwd=str(ROOT), input=input,
                          capture_output=True, text=True, timeout=90)


def _root_owned(d: Path) -> list[str]:
    return [str(p.relative_to(d)) for p in [d, *d.rglob("*")] if p.lstat().st_uid == 0]


def _start_as_nobody(env: dict[str, str], port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                             "--", *OVERCAST, "controller"], env=env, cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    out = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        out.append(line)
        if "overcast controller ready" in line or (not line and proc.poll() is not None):
            break
    assert any(f"ready: http://127.0.0.1:{port}" in x for x in out), "".join(out)
    return proc


def _login(port: int, email: str) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v2/auth/sessions", method="POST",
                                 data=json.dumps({"email": email, "password": PASSWORD}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return int(r.status)


def test_root_admin_commands_leave_the_store_to_its_owner(home: Path) -> None:
    data = home / "data"
    port = free_port()
    env = env_for(data, {"OVERCAST_HTTP": f"127.0.0.1:{port}", "OVERCAST_GRPC": f"127.0.0.1:{free_port()}",
                         "OVERCAST_AGENTS": f"127.0.0.1:{free_port()}",
                         "OVERCAST_CONFIG": str(home / "controller.toml")})
    env["HOME"] = str(home)
    (home / "controller.toml").write_text("")
    # the service user prepares its data directory (as the systemd unit's user would)
    r = _run(env, "adduser", "first@example.com", "--admin", "--password-stdin", as_nobody=True,
             input=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    assert data.stat().st_uid == NOBODY and not _root_owned(data)

    # root, with no controller running: a user added, a backup made, the backup restored
    r = _run(env, "adduser", "second@example.com", "--password-stdin", input=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    assert _root_owned(data) == []  # RocksDB's new log, manifest and tables: nobody's
    r = _run(env, "backup", str(home / "backup"))
    assert r.returncode == 0, r.stderr
    assert _root_owned(data) == []
    r = _run(env, "restore", str(home / "backup"), "--force")
    assert r.returncode == 0, r.stderr
    assert _root_owned(data) == []  # the restored store, keys, CA and the set-aside old data
    r = _run(env, "audit", "verify")
    assert r.returncode == 0, r.stderr
    assert _root_owned(data) == []

    # the controller, as its user, opens all of it; the user root added logs in
    proc = _start_as_nobody(env, port)
    try:
        assert _login(port, "second@example.com") == 200
    finally:
        proc.terminate()
        proc.wait(20)
