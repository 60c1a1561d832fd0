"""A private cloud behind a tunnel, end to end: the stand-in OpenStack API the clouds tests use
(tests/support/fake_openstack.py) served inside the private host's network namespace, on its
private address only (no route to it from the controller but the tunnel); a tunnel whose
gateway runs the install command; an OpenStack cloud added with the private address as its
endpoint: keystone, nova and glance answer through the tunnel, a machine is created and
listed through it. Deleting the tunnel is refused while the cloud's endpoint lies inside it;
deleted with force, the cloud's poll fails, in words.
Needs root, iproute2, iptables, curl and wireguard-go."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_tunnels import start_gateway, state, stop, wait_for
from tests.support import netns
from tests.support.clouds import machines, poll, wait_job
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, ROOT, Controller, Http, free_port
from tests.support.netns import Host, Lab


def _why() -> str | None:
    import shutil

    for tool in ("wireguard-go", "wg", "curl", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (packaging/dev/bootstrap.sh test installs it)"
    return netns.available()


why = _why()
pytestmark = [pytest.mark.root, pytest.mark.skipif(why is not None, reason=why or "")]

OS_PORT = 5000  # keystone's usual port; the fake serves every service on it
SERVE = """
import sys
from aiohttp import web
from tests.support.fake_openstack import Api, State
web.run_app(Api(State(), 1000).app(), host=sys.argv[1], port=int(sys.argv[2]), print=None,
            access_log=None)
"""


@dataclass
class Private:
    c: Controller
    h: Http
    lab: Lab
    private: Host
    subnet: str
    tunnel: dict[str, Any]

    @property
    def auth_url(self) -> str:
        return f"http://{self.private.address}:{OS_PORT}/identity/v3"


def serve_openstack(host: Host, log: Path) -> subprocess.Popen[bytes]:
    """The fake OpenStack API in ``host``'s namespace, on its address; returns once it
    answers there (asked from inside the namespace)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "proto")]))
    with open(log, "ab") as out:
        proc = subprocess.Popen(host.cmd(sys.executable, "-c", SERVE, host.address, str(OS_PORT)),
                                env=env, cwd=str(ROOT), stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL)
    probe = host.cmd("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                     f"http://{host.address}:{OS_PORT}/identity/v3/auth/tokens")

    def answers() -> bool:
        assert proc.poll() is None, log.read_text()
        return subprocess.run(probe, capture_output=True, text=True).stdout.strip() not in ("", "000")

    wait_for(answers, 20, "the fake OpenStack API answering in the private namespace")
    return proc


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Private]:
    tmp: Path = tmp_path_factory.mktemp("tunnel-clouds")
    os.chmod(tmp, 0o755)
    n = random.randint(150, 249)
    subnet = f"172.26.{n}.0/24"
    with Lab(subnet=n) as lab:
        gw = lab.add_host()
        private = lab.add_private(gw, subnet)
        api = serve_openstack(private, tmp / "openstack.log")
        port = free_port()
        c = Controller(tmp / "ctl", {"OVERCAST_HTTP": f"{lab.gateway}:{port}",
                                     "OVERCAST_AGENTS": f"{lab.gateway}:{free_port()}",
                                     "OVERCAST_TUNNEL_INTERFACE": f"ochc{lab.tag}",
                                     "OVERCAST_TUNNEL_PORT": str(free_port()),
                                     "OVERCAST_TUNNEL_HEALTH_INTERVAL": "1",
                                     "OVERCAST_CLOUD_CALL_TIMEOUT": "5"},
                       url=f"https://{lab.gateway}:{port}")
        c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "PrivateClouds")
        c.start()
        gateway: subprocess.Popen[bytes] | None = None
        try:
            h = c.session()
            r = h.post("/api/v2/tunnels", {"name": "dc", "cidrs": [subnet]})
            assert r.status == 201, r.body
            t = r.body["data"]
            gateway = start_gateway(tmp, gw, t["install_command"], f"ocgc{lab.tag}",
                                    tmp / "gwstate", tmp / "gateway.log")
            try:
                wait_for(lambda: state(h, t["id"]) == "up", 30, "the tunnel up")
            except AssertionError:
                raise AssertionError(f"gateway: {(tmp / 'gateway.log').read_text()}") from None
            yield Private(c, h, lab, private, subnet, t)
        finally:
            if gateway is not None:
                stop(gateway)
            if c.proc is not None and c.proc.poll() is None:
                c.stop()
            api.terminate()
            api.wait(10)
            # the route the test below adds (the root namespace's, not the lab's)
            subprocess.run(["ip", "route", "del", "unreachable", subnet], capture_output=True)


def test_an_openstack_cloud_behind_the_tunnel_is_managed_through_it(lab: Private) -> None:
    h = lab.h
    creds = {"authUrl": lab.auth_url, "user": "demo", "password": "secret-pass", "tenant": "demo"}
    r = h.post("/api/v2/clouds", {"name": "Private OpenStack", "provider": "openstack",
                                  "credentials": dict(creds, password="nope")})
    assert r.status == 422 and r.body["error"]["code"] == "provider_auth", r.body  # keystone said no
    assert r.body["error"]["details"]["field"] == "credentials.password", r.body
    r = h.post("/api/v2/clouds", {"name": "Private OpenStack", "provider": "openstack",
                                  "credentials": creds})
    assert r.status == 201, r.body
    cid = r.body["data"]["id"]
    status = poll(h, cid)
    assert status.get("state") == "ok", status
    images = h.get(f"/api/v2/images?cloud={cid}").body["data"]
    assert images, "glance listed its images through the tunnel"
    r = h.post("/api/v2/machines", {"cloud": cid, "name": "behind-1", "size": "1",
                                    "image": images[0]["external_id"]})
    assert r.status == 202, r.body
    job = wait_job(h, r.body["job_id"])
    assert job["status"] == "succeeded", job
    poll(h, cid)
    poll(h, cid)  # the fake settles BUILD on the next read, as nova does
    [m] = [m for m in machines(h, cid) if m["name"] == "behind-1"]
    assert m["state"] == "running", m
    # the tunnel saw the traffic: bytes both ways at the hub's peer
    health = h.get(f"/api/v2/tunnels/{lab.tunnel['id']}").body["data"]["health"]
    assert health["rx_bytes"] > 0 and health["tx_bytes"] > 0, health

    r = h.delete(f"/api/v2/tunnels/{lab.tunnel['id']}")  # the cloud's API goes through it
    assert r.status == 409 and "clouds Private OpenStack" in r.body["error"]["message"], r.body
    r = h.delete(f"/api/v2/tunnels/{lab.tunnel['id']}?force=true")
    assert r.status == 204, r.body
    # keep what would now follow the default route on this machine (as TESTBED.md asks)
    subprocess.run(["ip", "route", "add", "unreachable", lab.subnet, "metric", "4000"], check=True)
    t0 = time.monotonic()
    status = poll(h, cid)
    took = time.monotonic() - t0
    print(f"poll of the private cloud after its tunnel went: {took:.1f}s: {status}")
    assert status.get("state") == "error", status
    error = str(status.get("last_error", ""))
    assert lab.private.address in error or "reach" in error or "connect" in error, error
    assert took < 30, took
