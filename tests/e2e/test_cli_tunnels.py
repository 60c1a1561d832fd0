"""``overcast tunnels`` against a real controller (its own hub interface name and port):
create prints the install command (and --json the object with its id and token), list, show,
rotate, delete with and without --force, bad input as one line with the documented exit
codes; and a controller that cannot run WireGuard answers 503 in words while the rest runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import netns
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, free_port
from tunnel import keys

Run = Callable[..., subprocess.CompletedProcess[str]]
why = netns.available() or (None if shutil.which("wireguard-go") else "wireguard-go is not installed")


def _controller(tmp: Path, env: dict[str, str]) -> Controller:
    c = Controller(tmp, {"OVERCAST_TUNNEL_INTERFACE": f"occli{uuid.uuid4().hex[:6]}",
                         "OVERCAST_TUNNEL_PORT": str(free_port()), **env})
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "CliTunnels")
    return c.start()


def _cli(c: Controller, xdg: Path) -> Run:
    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return c.cli(*args, input=input, env={"XDG_CONFIG_HOME": str(xdg)})

    r = run("login", c.url, "--email", ADMIN_EMAIL, "--password-stdin", input=ADMIN_PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    return run


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    if why is not None:
        pytest.skip(why)
    c = _controller(tmp_path_factory.mktemp("ctl-tunnels"), {})
    try:
        yield _cli(c, tmp_path_factory.mktemp("xdg-tunnels"))
    finally:
        c.stop()


@pytest.mark.root
def test_create_list_show_rotate_delete(cli: Run) -> None:
    r = cli("tunnels", "create", "dc1", "--cidr", "172.28.0.0/16", "--exclude", "172.28.9.0/24")
    assert r.returncode == 0, r.stderr
    assert "Run this on the gateway host" in r.stdout and "/install/tunnel.sh" in r.stdout
    r = cli("tunnels", "create", "dc2", "--cidr", "172.27.0.0/24", "--json")
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)
    assert t["id"] and t["token"].startswith("oct_") and t["health"]["state"] == "waiting"
    r = cli("tunnels", "list")
    assert r.returncode == 0 and "dc1" in r.stdout and "waiting" in r.stdout, r.stdout
    r = cli("tunnels", "show", "dc1")
    assert r.returncode == 0 and "172.28.8.0/24" in r.stdout and "token" not in r.stdout, r.stdout
    r = cli("tunnels", "rotate", "dc2", "--json")
    assert r.returncode == 0 and "--rotate" in json.loads(r.stdout)["install_command"], r.stderr
    r = cli("tunnels", "show", "nope")
    assert r.returncode == 4 and r.stderr.count("\n") == 1, r.stderr
    r = cli("tunnels", "create", "dc3", "--cidr", "172.28.1.0/24")
    assert r.returncode != 0 and "overlaps tunnel 'dc1'" in r.stderr, r.stderr
    r = cli("tunnels", "create", "dc3", "--cidr", "127.0.0.0/8")
    assert r.returncode != 0 and "loopback" in r.stderr, r.stderr
    r = cli("tunnels", "delete", "dc1", "dc2", "--force")
    assert r.returncode == 0 and "deleted dc1" in r.stdout, r.stderr
    assert json.loads(cli("tunnels", "list", "--json").stdout) == []


def test_without_wireguard_tunnels_answer_503_and_the_rest_runs(tmp_path: Path) -> None:
    # no `ip`, `wg` or wireguard-go on its PATH: the hub cannot come up
    c = _controller(tmp_path / "ctl", {"PATH": str(tmp_path / "empty")})
    try:
        h = c.http(c.token())
        r = h.post("/api/v2/tunnels", {"name": "x", "cidrs": ["172.26.0.0/24"]})
        assert r.status == 503 and "not available on this controller" in r.body["error"]["message"], r.body
        assert h.get("/api/v2/tunnels").body["data"] == []
        assert h.get("/api/v2/machines").status == 200
        r = c.http().post("/api/v2/tunnels/register", {"token": "oct_x",
                                                       "public_key": keys.public_of(keys.generate_private())})
        assert r.status == 401
    finally:
        c.stop()
