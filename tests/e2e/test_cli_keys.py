"""``overcast keys`` against a real controller: generate, import, show (the private half only
with --private), rename, default, delete; bad input with clear messages and exit codes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import asyncssh
import pytest

from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def cli(controller: Controller, tmp_path_factory: pytest.TempPathFactory) -> Run:
    xdg = tmp_path_factory.mktemp("xdg-keys")

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return controller.cli(*args, input=input, env={"XDG_CONFIG_HOME": str(xdg)})

    r = run("login", controller.url, "--email", ADMIN_EMAIL, "--password-stdin", input=ADMIN_PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    return run


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r.stdout


def test_keys_through_the_cli(cli: Run, tmp_path: Path) -> None:
    made = json.loads(ok(cli("keys", "generate", "cli-ops", "--json")))
    assert made["id"] and made["algorithm"] == "ssh-ed25519" and "private" not in made
    rsa = json.loads(ok(cli("keys", "generate", "cli-rsa", "--algorithm", "rsa", "--bits", "2048", "--json")))
    assert rsa["algorithm"] == "ssh-rsa"
    mine = asyncssh.generate_private_key("ssh-ed25519")
    f = tmp_path / "id_ed25519"
    f.write_text(mine.export_private_key().decode())
    imported = json.loads(ok(cli("keys", "add", "cli-mine", "--private-file", str(f), "--json")))
    assert imported["fingerprint"] == mine.get_fingerprint("sha256")
    table = ok(cli("keys"))
    assert "cli-ops" in table and "cli-mine" in table and "BEGIN" not in table
    shown = ok(cli("keys", "show", "cli-ops"))
    assert made["fingerprint"] in shown and "BEGIN" not in shown
    private = ok(cli("keys", "show", "cli-ops", "--private"))
    assert asyncssh.import_private_key(private).get_fingerprint("sha256") == made["fingerprint"]
    ok(cli("keys", "rename", "cli-mine", "cli-mine-2"))
    ok(cli("keys", "default", "cli-mine-2"))
    listed = {k["name"]: k for k in json.loads(ok(cli("keys", "--json")))}
    assert listed["cli-mine-2"]["default"] is True and listed["cli-ops"]["default"] is False
    ok(cli("keys", "delete", "cli-rsa"))
    assert "cli-rsa" not in ok(cli("keys"))
    # bad input: one line, the right exit code, no traceback
    r = cli("keys", "add", "x", "--private-file", str(tmp_path / "missing"))
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr
    f.write_text("not a key")
    r = cli("keys", "add", "x", "--private-file", str(f))
    assert r.returncode == 1 and "not a private key" in r.stderr and "not a key\n" not in r.stderr
    r = cli("keys", "show", "nope")
    assert r.returncode == 4 and "no such key" in r.stderr
    r = cli("keys", "generate", "cli-ops")
    assert r.returncode == 1 and "exists already" in r.stderr
