"""``overcast scripts`` against a real controller and a git/file server on loopback: add from
a file, text, a URL and a repository at a ref; list, show, edit, refresh, download, delete;
bad input with one-line messages and the documented exit codes."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller
from tests.support.gitserver import GitServer

Run = Callable[..., subprocess.CompletedProcess[str]]
RUN = "#!/bin/sh\necho cli-marker\n"


@pytest.fixture(scope="module")
def cli(controller: Controller, tmp_path_factory: pytest.TempPathFactory) -> Run:
    xdg = tmp_path_factory.mktemp("xdg-scripts")

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return controller.cli(*args, input=input, env={"XDG_CONFIG_HOME": str(xdg)})

    r = run("login", controller.url, "--email", ADMIN_EMAIL, "--password-stdin", input=ADMIN_PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    return run


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    with GitServer(tmp_path_factory.mktemp("gitserver-cli")) as s:
        yield s


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r.stdout


def test_scripts_through_the_cli(cli: Run, srv: GitServer, tmp_path: Path) -> None:
    f = tmp_path / "hello.sh"
    f.write_text(RUN)
    made = json.loads(ok(cli("scripts", "add", "cli-hello", "--file", str(f), "--description",
                             "greets", "--json")))
    assert made["id"] and made["location_type"] == "inline" and made["description"] == "greets"
    assert made["sha256"] == hashlib.sha256(RUN.encode()).hexdigest()
    inline = json.loads(ok(cli("scripts", "add", "cli-inline", "--inline", "- hosts: all\n",
                               "--ansible", "--json")))
    assert inline["exec_type"] == "ansible"
    url = srv.add_repo("cli", {"run.sh": RUN}, executable=("run.sh",))
    dev = srv.commit("cli", {"run.sh": "#!/bin/sh\necho dev\n"}, branch="dev")
    git = json.loads(ok(cli("scripts", "add", "cli-git", "--git", url, "--ref", "dev",
                            "--entrypoint", "run.sh", "--json")))
    assert git["commit"] == dev and git["ref"] == "dev" and git["location_type"] == "git"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("run.sh")
        info.size = len(RUN)
        tar.addfile(info, io.BytesIO(RUN.encode()))
    archive = buf.getvalue()
    tgz = srv.add_file("/cli.tar.gz", archive)
    ok(cli("scripts", "add", "cli-url", "--url", tgz, "--entrypoint", "run.sh"))
    table = ok(cli("scripts"))
    assert all(n in table for n in ("cli-hello", "cli-inline", "cli-git", "cli-url"))
    assert "cli-marker" not in table
    shown = ok(cli("scripts", "show", "cli-git"))
    assert dev in shown and url in shown and "cli-marker" not in shown
    assert ok(cli("scripts", "download", "cli-hello")) == RUN
    out = tmp_path / "cli.tar.gz"
    assert "wrote" in ok(cli("scripts", "download", "cli-url", "-o", str(out)))
    assert out.read_bytes() == archive
    ok(cli("scripts", "edit", "cli-hello", "--name", "cli-hi", "--description", "hi"))
    listed = {s["name"]: s for s in json.loads(ok(cli("scripts", "list", "--json")))}
    assert listed["cli-hi"]["description"] == "hi" and "cli-hello" not in listed
    assert "unchanged" in ok(cli("scripts", "refresh", "cli-git"))
    newer = srv.commit("cli", {"run.sh": "#!/bin/sh\necho newer\n"}, branch="dev")
    assert "changed (sha256 " in ok(cli("scripts", "refresh", "cli-git"))
    assert json.loads(ok(cli("scripts", "show", "cli-git", "--json")))["commit"] == newer
    ok(cli("scripts", "delete", "cli-hi", "cli-inline"))
    assert "cli-hi" not in ok(cli("scripts"))


def test_bad_input_gives_one_line_and_an_exit_code(cli: Run, srv: GitServer, tmp_path: Path) -> None:
    r = cli("scripts", "add", "x", "--file", str(tmp_path / "missing.sh"))
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr
    binary = tmp_path / "tool.bin"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    r = cli("scripts", "add", "x", "--file", str(binary))
    assert r.returncode == 2 and "not a text file" in r.stderr
    r = cli("scripts", "add", "x")
    assert r.returncode == 2 and "one of the arguments" in r.stderr
    r = cli("scripts", "add", "x", "--inline", "echo", "--ref", "main")
    assert r.returncode == 2 and "--ref is for --git" in r.stderr
    r = cli("scripts", "add", "x", "--url", srv.url + "/nothing-here.sh")
    assert r.returncode == 1 and "HTTP 404" in r.stderr and "Traceback" not in r.stderr
    r = cli("scripts", "add", "x", "--git", "ssh://git@example.com/x.git", "--entrypoint", "a")
    assert r.returncode == 1 and "http:// or https://" in r.stderr
    r = cli("scripts", "add", "x", "--url", "http://127.0.0.1:1/x.sh")
    assert r.returncode == 1 and "cannot reach" in r.stderr
    big = tmp_path / "big.sh"
    big.write_text("x" * (600 * 1024))
    r = cli("scripts", "add", "x", "--file", str(big))
    assert r.returncode == 1 and "at most 524288 bytes" in r.stderr
    ok(cli("scripts", "add", "cli-dup", "--inline", RUN))
    r = cli("scripts", "add", "cli-dup", "--inline", RUN)
    assert r.returncode == 1 and "exists already" in r.stderr
    for args in (("show", "nope"), ("download", "nope"), ("refresh", "nope"), ("delete", "nope")):
        r = cli("scripts", *args)
        assert r.returncode == 4 and "no such script" in r.stderr, (args, r.stderr)
    r = cli("scripts", "refresh", "cli-dup")
    assert r.returncode == 1 and "inline script" in r.stderr
    r = cli("scripts", "edit", "cli-dup")
    assert r.returncode == 2 and "--name or --description" in r.stderr
