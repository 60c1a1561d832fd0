"""The image's entrypoint (packaging/docker/entrypoint.sh) and health check
(packaging/docker/healthcheck.py), run here without a container: the entrypoint under
/bin/sh with a recording `overcast` first on PATH, then with the real one, starting a real
controller that the health check asks and SIGTERM stops."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import signal
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.packaging.files import (
    ENTRYPOINT,
    HEALTHCHECK,
    INIT_CONTRACT,
    controller_flags,
    flags_in_shell,
)
from tests.support.controller import Controller, Http, env_for

SH = "/bin/sh"

RECORDER = """#!{python}
import json, os, sys
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "env": {{k: v for k, v in os.environ.items()
                                                        if k.startswith("OVERCAST_")}},
                        "pid": os.getpid()}}) + "\\n")
sys.exit(int(os.environ.get("INIT_EXIT", "0")) if "--init" in sys.argv else 0)
"""


def test_entrypoint_passes_only_real_flags_of_overcast_controller() -> None:
    """Every option the entrypoint gives `overcast controller`: a real one, or (for --init,
    built in parallel) one of the contract until the command exists here."""
    used = flags_in_shell(ENTRYPOINT.read_text())
    assert {"--init", "--admin-email", "--admin-password-file", "--org"} <= used, used
    real = controller_flags()
    if "--init" in real:
        assert used <= real, used - real
    else:
        assert used <= INIT_CONTRACT, used - INIT_CONTRACT


@pytest.mark.skipif("--init" not in controller_flags(),
                    reason="`overcast controller --init` is not in this tree yet: the "
                           "entrypoint's flags are checked against its agreed contract")
def test_init_flags_are_real_flags() -> None:
    used = flags_in_shell(ENTRYPOINT.read_text())
    assert used <= controller_flags(), used - controller_flags()


@pytest.fixture
def recorder(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "overcast"
    stub.write_text(RECORDER.format(python=sys.executable))
    stub.chmod(0o755)
    return tmp_path


def _run(tmp: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str],
                                                     list[dict[str, Any]]]:
    record = tmp / "record.jsonl"
    record.unlink(missing_ok=True)
    full = {"PATH": f"{tmp / 'bin'}:/usr/bin:/bin", "RECORD": str(record), **env}
    r = subprocess.run([SH, str(ENTRYPOINT), *args], capture_output=True, text=True,
                       env=full, timeout=30)
    calls = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return r, calls


def _secret(tmp: Path, name: str, text: str) -> str:
    p = tmp / name
    p.write_text(text)
    return str(p)


def test_no_arguments_runs_the_controller(recorder: Path) -> None:
    r, calls = _run(recorder)
    assert r.returncode == 0, r.stderr
    assert [c["argv"] for c in calls] == [["controller"]]


def test_flags_alone_go_to_the_controller(recorder: Path) -> None:
    r, calls = _run(recorder, "--tls", "on")
    assert [c["argv"] for c in calls] == [["controller", "--tls", "on"]]


def test_other_commands_run_as_they_are(recorder: Path) -> None:
    r, calls = _run(recorder, "adduser", "a@example.com", "--admin",
                    OVERCAST_ADMIN_EMAIL="admin@example.com")
    assert r.returncode == 0, r.stderr
    assert [c["argv"] for c in calls] == [["adduser", "a@example.com", "--admin"]]  # no --init


def test_secret_key_file_becomes_the_setting(recorder: Path) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    r, calls = _run(recorder, OVERCAST_SECRET_KEY_FILE=_secret(recorder, "k", key + "\n"))
    assert r.returncode == 0, r.stderr
    (call,) = calls
    assert call["env"]["OVERCAST_SECRET_KEY"] == key  # the newline dropped
    assert "OVERCAST_SECRET_KEY_FILE" not in call["env"]


@pytest.mark.parametrize("case, env, message", [
    ("both", {"OVERCAST_SECRET_KEY": "x", "OVERCAST_SECRET_KEY_FILE": "KEY"}, "not both"),
    ("missing", {"OVERCAST_SECRET_KEY_FILE": "/nonexistent/key"}, "cannot read"),
    ("empty", {"OVERCAST_SECRET_KEY_FILE": "EMPTY"}, "is empty"),
    ("no password", {"OVERCAST_ADMIN_EMAIL": "a@example.com"}, "needs OVERCAST_ADMIN_PASSWORD_FILE"),
    ("unreadable password", {"OVERCAST_ADMIN_EMAIL": "a@example.com",
                             "OVERCAST_ADMIN_PASSWORD_FILE": "/nonexistent/pw"}, "cannot read"),
])
def test_bad_secrets_stop_before_anything_runs(recorder: Path, case: str, env: dict[str, str],
                                               message: str) -> None:
    files = {"KEY": _secret(recorder, "k", "a2V5"), "EMPTY": _secret(recorder, "e", "")}
    r, calls = _run(recorder, **{k: files.get(v, v) for k, v in env.items()})
    assert r.returncode == 2 and message in r.stderr, (r.returncode, r.stderr)
    assert r.stderr.startswith("overcast-entrypoint: ")
    assert calls == []


@pytest.mark.parametrize("org", ["", "Acme Corp"])
def test_admin_email_runs_init_first_with_the_same_flags(recorder: Path, org: str) -> None:
    pw = _secret(recorder, "pw", "correct horse battery\n")
    env = {"OVERCAST_ADMIN_EMAIL": "admin@example.com", "OVERCAST_ADMIN_PASSWORD_FILE": pw}
    if org:
        env["OVERCAST_ADMIN_ORG"] = org
    r, calls = _run(recorder, "controller", "--external-url", "https://x.example.com:7080",
                    **env)
    assert r.returncode == 0, r.stderr
    init, run = calls
    expected = ["controller", "--init", "--external-url", "https://x.example.com:7080",
                "--admin-email", "admin@example.com", "--admin-password-file", pw]
    assert init["argv"] == expected + (["--org", org] if org else [])
    assert run["argv"] == ["controller", "--external-url", "https://x.example.com:7080"]
    # the controller itself never sees the admin's variables
    assert not [k for k in run["env"] if k.startswith("OVERCAST_ADMIN")], run["env"]


def test_a_failed_init_starts_no_controller(recorder: Path) -> None:
    pw = _secret(recorder, "pw", "correct horse battery\n")
    r, calls = _run(recorder, OVERCAST_ADMIN_EMAIL="admin@example.com",
                    OVERCAST_ADMIN_PASSWORD_FILE=pw, INIT_EXIT="1")
    assert r.returncode == 1
    assert [c["argv"][1] for c in calls] == ["--init"]


# ---- the health check


class _Health(http.server.BaseHTTPRequestHandler):
    body = b'{"status": "ok"}'

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        code = 200 if self.path == "/api/v2/health" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_health() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()


def _healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HEALTHCHECK)], capture_output=True, text=True,
                          env=env, timeout=30, cwd="/")


def _plain_env(tmp: Path, http: str) -> dict[str, str]:
    return env_for(tmp / "data", {"OVERCAST_HTTP": http, "OVERCAST_TLS": "off"})


def test_healthcheck_plain_http(tmp_path: Path, fake_health: http.server.HTTPServer) -> None:
    port = fake_health.server_address[1]
    assert _healthcheck(_plain_env(tmp_path, f"127.0.0.1:{port}")).returncode == 0
    # a listener on all addresses is asked on loopback
    assert _healthcheck(_plain_env(tmp_path, f"0.0.0.0:{port}")).returncode == 0


def test_healthcheck_fails_on_a_bad_answer_or_settings(tmp_path: Path,
                                                       fake_health: http.server.HTTPServer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    port = fake_health.server_address[1]
    monkeypatch.setattr(_Health, "body", b'{"status": "starting"}')
    r = _healthcheck(_plain_env(tmp_path, f"127.0.0.1:{port}"))
    assert r.returncode == 1 and "answered" in r.stderr
    r = _healthcheck(_plain_env(tmp_path, "127.0.0.1:notaport"))
    assert r.returncode == 1 and "settings" in r.stderr


def _start(c: Controller, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """The entrypoint as the image runs it (no arguments), until the controller is ready."""
    with open(log, "w") as out:
        # a session of its own: whatever it leaves (were it not to exec) is killed with it
        proc = subprocess.Popen([SH, str(ENTRYPOINT)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd="/", start_new_session=True)
    deadline = time.monotonic() + 60
    while "overcast controller ready" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill(proc)
            pytest.fail(f"not ready (exit {proc.returncode}):\n{log.read_text()}")
        time.sleep(0.1)
    return proc


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(30) == 0, log.read_text()
    finally:
        _kill(proc)  # and anything left in its session


def test_entrypoint_inits_then_execs_a_real_controller(tmp_path: Path) -> None:
    """The real thing, as in the image: TLS on (the image's listeners are not loopback), the
    secret key from a file, the first admin from OVERCAST_ADMIN_EMAIL and a password file
    (`overcast controller --init`), `exec` (the entrypoint's process becomes the controller,
    and SIGTERM stops it cleanly); the health check over HTTPS. Started twice: --init on a
    prepared data directory changes nothing and the controller starts again."""
    c = Controller(tmp_path, {"OVERCAST_TLS": "on"})
    c.extra_env["OVERCAST_EXTERNAL_URL"] = f"https://127.0.0.1:{c.http_port}"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "overcast"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m controller.cli.main "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    key = base64.b64encode(os.urandom(32)).decode()
    password = "correct horse battery staple"
    env = {**c.env(), "PATH": f"{bin_dir}:/usr/bin:/bin",
           "OVERCAST_SECRET_KEY_FILE": _secret(tmp_path, "secret-key", key + "\n"),
           "OVERCAST_ADMIN_EMAIL": "root@example.com",
           "OVERCAST_ADMIN_PASSWORD_FILE": _secret(tmp_path, "admin-password", password + "\n")}
    log = tmp_path / "entrypoint.log"
    proc = _start(c, env, log)
    try:
        assert "made" in log.read_text() and "the admin root@example.com" in log.read_text()
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"controller.cli.main" in cmdline and b"controller" in cmdline, cmdline
        assert not any(b"entrypoint" in part for part in cmdline), cmdline  # exec'd
        # the key came through the setting: none was made in the data directory
        assert not (c.data_dir / "secret.key").exists()
        r = _healthcheck(env)
        assert r.returncode == 0, r.stderr
        # the admin that --init made signs in
        ca = ssl.create_default_context(cafile=str(c.data_dir / "pki" / "ca.crt"))
        http = Http(f"https://127.0.0.1:{c.http_port}", context=ca)
        assert http.post("/api/v2/auth/sessions", {"email": "root@example.com",
                                                   "password": password}).status in (200, 201)
    finally:
        _stop(proc, log)
    proc = _start(c, env, log)  # again: the admin exists, nothing is made
    try:
        assert "already initialised: nothing changed" in log.read_text(), log.read_text()
        assert _healthcheck(env).returncode == 0
    finally:
        _stop(proc, log)
    r = _healthcheck(env)
    assert r.returncode == 1 and f"https://127.0.0.1:{c.http_port}/api/v2/health" in r.stderr
