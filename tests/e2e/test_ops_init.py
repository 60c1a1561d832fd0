"""``overcast controller --init``: a data directory, a settings file and the first admin made
without questions, then a controller started on them; idempotent; through the admin socket
when a controller already runs; refusals before anything is made; and, for a user other
than root, the settings file in the data directory, where the controller finds it."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.controller import OVERCAST, ROOT, Controller, env_for, free_port

PASSWORD = "init password 1"
NOBODY = 65534


def init(c: Controller, *args: str, input: str | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return c.cli("controller", "--init", *args, input=input, env=env)


def _new(tmp: Path) -> tuple[Controller, Path]:
    """A controller not started, whose settings file (the one its environment names) does
    not exist yet: --init writes it."""
    config = tmp / "init" / "controller.toml"
    return Controller(tmp, {"OVERCAST_CONFIG": str(config)}), config


def test_init_then_start(tmp_path: Path) -> None:
    c, config = _new(tmp_path)
    pwfile = tmp_path / "pw"
    pwfile.write_text(PASSWORD + "\n")
    url = f"http://127.0.0.1:{c.http_port}"
    r = init(c, "--data-dir", str(c.data_dir), "--http", f"127.0.0.1:{c.http_port}",
             "--agents", f"127.0.0.1:{c.agents_port}",
             "--external-url", url, "--admin-email", "Root@Example.com",
             "--admin-password-file", str(pwfile), "--org", "Ops", "--json")
    assert r.returncode == 0, r.stderr
    assert PASSWORD not in r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["data_dir"] == str(c.data_dir) and out["config"] == str(config)
    assert out["admin"]["email"] == "root@example.com" and set(out["admin"]) == {"id", "email"}
    assert out["created"] == {"data_dir": True, "config": True, "secret_key": True,
                              "store": True, "ca": True, "admin": True}
    assert out["ca_fingerprint"].startswith("sha256:") and len(out["ca_fingerprint"]) == 71
    assert stat.S_IMODE(c.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((c.data_dir / "secret.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((c.data_dir / "pki" / "ca.key").stat().st_mode) == 0o600
    text = config.read_text()
    assert tomllib.loads(text) == {"data_dir": str(c.data_dir), "http": f"127.0.0.1:{c.http_port}",
                                   "agents": f"127.0.0.1:{c.agents_port}", "external_url": url}
    assert "# tls_cert" in text and PASSWORD not in text

    c.start()
    try:
        assert c.ca_fingerprint == out["ca_fingerprint"]  # the CA --init made is the one served
        h = c.session("root@example.com", PASSWORD)
        me = h.get("/api/v2/auth").body["data"]
        assert me["user"]["is_admin"] and me["org"]["name"] == "Ops"
        # the admin's creation is audited as an admin action
        logs = h.get("/api/v2/logs?action=user.create").body["data"]
        assert [e["actor"] for e in logs] == [{"kind": "admin", "via": "admin"}]
        assert PASSWORD not in json.dumps(logs) and PASSWORD not in c.log_path.read_text()

        # again, with the controller running: nothing changes, through its admin socket
        before = config.read_text()
        r = init(c, "--admin-email", "root@example.com", "--admin-password-stdin",
                 input=PASSWORD + "\n")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"{c.data_dir} is already initialised: nothing changed")
        assert config.read_text() == before
        # another e-mail on an initialised store: ignored, said so, exit 0
        r = init(c, "--admin-email", "other@example.com", "--admin-password-stdin", "--json",
                 input="other password 1\n")
        assert r.returncode == 0, r.stderr
        out2 = json.loads(r.stdout)
        assert not any(out2["created"].values()) and out2["online"] is True
        assert out2["admin"]["email"] == "root@example.com"
        assert "--admin-email other@example.com was ignored" in r.stderr
        assert c.http().post("/api/v2/auth/sessions", {"email": "other@example.com",
                                                       "password": "other password 1"}).status == 401
    finally:
        c.stop()
    # and stopped: the same answer, from the files
    r = init(c, "--admin-email", "root@example.com", "--admin-password-file", str(pwfile))
    assert r.returncode == 0 and "nothing changed" in r.stdout, r.stderr


def test_init_makes_the_admin_through_a_running_controller(tmp_path: Path) -> None:
    c = Controller(tmp_path)
    c.start()  # no user yet (a controller started before --init)
    try:
        r = init(c, "--admin-email", "first@example.com", "--admin-password-stdin", "--json",
                 input=PASSWORD + "\n")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["online"] is True and out["created"]["admin"] is True
        assert out["created"]["config"] is False  # the test's settings file exists
        assert out["ca_fingerprint"] == c.ca_fingerprint
        assert c.session("first@example.com", PASSWORD).get("/api/v2/auth").status == 200
    finally:
        c.stop()


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--admin-password-stdin"], 2, "--init needs --admin-email"),
    (["--admin-email", "a@example.com"], 2, "--admin-password-file FILE or --admin-password-stdin"),
    (["--admin-email", "a@example.com", "--admin-password-file", "/nonexistent/pw"], 2,
     "cannot read the admin password"),
    (["--admin-email", "not-an-email", "--admin-password-stdin"], 1, "not a valid e-mail"),
    (["--admin-email", "a@example.com", "--admin-password-stdin", "--external-url",
      "http://cloud.example.com:7080"], 1, "in clear over the network"),
])
def test_bad_input_makes_nothing(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    c, config = _new(tmp_path)
    r = init(c, *args, input=PASSWORD + "\n")
    assert r.returncode == code, (r.stdout, r.stderr)
    assert r.stderr.startswith("overcast: ") and message in r.stderr
    assert "Traceback" not in r.stderr and PASSWORD not in r.stderr
    assert not c.data_dir.exists() and not config.exists()


def test_init_flags_only_go_with_init(tmp_path: Path) -> None:
    c = Controller(tmp_path)
    r = c.cli("controller", "--admin-email", "a@example.com")
    assert r.returncode == 2 and r.stderr == "overcast: --admin-email only goes with --init\n"
    assert not c.data_dir.exists()


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("running as another user needs root")
    d = Path(tempfile.mkdtemp(prefix="overcast-nobody-"))
    os.chmod(d, 0o755)
    os.chown(d, NOBODY, NOBODY)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _as_nobody(d: Path, *args: str, **kw: object) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
            *OVERCAST, *args]


def test_not_root_the_settings_file_goes_in_the_data_directory(nobody_dir: Path) -> None:
    data = nobody_dir / "data"
    port = free_port()
    env = {k: v for k, v in env_for(nobody_dir / "x" / "data").items() if k != "OVERCAST_CONFIG"}
    env.pop("OVERCAST_DATA_DIR")
    env["HOME"] = str(nobody_dir)
    (nobody_dir / "pw").write_text(PASSWORD)
    os.chown(nobody_dir / "pw", NOBODY, NOBODY)
    r = subprocess.run(_as_nobody(nobody_dir, "controller", "--init", "--data-dir", str(data),
                                  "--http", f"127.0.0.1:{port}", "--admin-email",
                                  "nobody@example.com", "--admin-password-file",
                                  str(nobody_dir / "pw")),
                       env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    config = data / "controller.toml"
    assert f"the settings file {config}" in r.stdout
    assert "start it with: overcast controller\n" in r.stdout  # found there without --config
    assert config.stat().st_uid == NOBODY
    # the controller, given only the data directory, reads that file (its HTTP port)
    env["OVERCAST_DATA_DIR"] = str(data)
    proc = subprocess.Popen(_as_nobody(nobody_dir, "controller"), env=env, cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline and "ready" not in line:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert f"overcast controller ready: http://127.0.0.1:{port}" in line, line
    finally:
        proc.terminate()
        proc.wait(20)
    r = subprocess.run(_as_nobody(nobody_dir, "doctor", "--json"), env=env, cwd=str(ROOT),
                       capture_output=True, text=True, timeout=60)
    settings_check = next(x for x in json.loads(r.stdout)["checks"] if x["name"] == "settings")
    assert settings_check["message"] == f"valid ({config})", r.stdout
