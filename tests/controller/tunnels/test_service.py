"""The tunnel service over a real store and an in-memory hub interface: CIDR rules (overlaps
across organisations worded without names, the controller's own networks, the tunnel
network, bad CIDRs), edit and rename, delete in use (409) and force, gateway tokens (one use,
expiry, wrong; refusals audited), the hub told the peer before the answer, rotation, health,
and the hub's private key sealed and never shown."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from controller.accounts.model import Principal
from controller.clouds.model import CLOUD
from controller.errors import Conflict, Invalid, NotFound, Unauthenticated
from controller.events.writer import Writer
from controller.machines.model import MACHINE
from controller.machines.model import key as machine_key
from controller.secrets import SecretBox
from controller.settings import Settings
from controller.store import open_store
from controller.store.base import Store
from controller.store.docs import dump
from controller.tunnels.hub import Hub
from controller.tunnels.model import HUB_KEY, TunnelsUnavailable, tunnel_key
from controller.tunnels.service import TunnelService
from tunnel import addressing, keys
from tunnel.backend import Interface, Peer, PeerStats, TunnelError

P = Principal({"id": "u1", "email": "a@example.com"}, {"id": "o1", "name": "Acme"}, "owner", "token", "t1")
OTHER = Principal({"id": "u2", "email": "t@example.com"}, {"id": "o2", "name": "T"}, "owner", "token", "t2")
LOCAL = ["10.0.0.0/24", "192.168.1.0/24"]


class FakeInterface:
    """An in-memory ``tunnel.backend.Interface``."""

    def __init__(self, name: str, fail: bool = False) -> None:
        self.name, self.fail = name, fail
        self.netns: str | None = None
        self.is_up = False
        self.private_key = ""
        self.port: int | None = None
        self.addresses: tuple[str, ...] = ()
        self.peers_: dict[str, Peer] = {}
        self.routes: set[str] = set()
        self.handshakes: dict[str, float] = {}
        self.log: list[str] = []

    def up(self) -> None:
        if self.fail:
            raise TunnelError("wireguard-go is not installed")
        self.is_up = True

    def down(self) -> None:
        self.is_up = False

    def configure(self, private_key: str, listen_port: int | None = None) -> None:
        self.private_key, self.port = private_key, listen_port

    def set_peer(self, peer: Peer) -> None:
        self.peers_[peer.public_key] = peer
        self.log.append(f"peer {peer.public_key}")

    def remove_peer(self, public_key: str) -> None:
        self.peers_.pop(public_key, None)

    def set_address(self, *cidrs: str) -> None:
        self.addresses = cidrs

    def add_route(self, cidr: str) -> None:
        self.routes.add(cidr)
        self.log.append(f"route {cidr}")

    def remove_route(self, cidr: str) -> None:
        self.routes.discard(cidr)

    def peers(self) -> dict[str, PeerStats]:
        return {k: PeerStats(self.handshakes.get(k), 10, 20, None, tuple(p.allowed_ips))
                for k, p in self.peers_.items()}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "db")
    yield s
    s.close()


@pytest.fixture
def iface() -> FakeInterface:
    return FakeInterface("ocT")


def service(store: Store, tmp_path: Path, iface: FakeInterface) -> TunnelService:
    settings = Settings(data_dir=str(tmp_path), tunnel_interface="ocT")
    svc = TunnelService(settings, store, Writer(store), SecretBox(b"k" * 32),
                        Hub("ocT", 51820, lambda name: cast(Interface, iface)), lambda: list(LOCAL))
    svc.ca_fingerprint = "ab" * 32
    return svc


async def test_behind_a_proxy_the_command_fetches_with_the_systems_trust(
        store: Store, tmp_path: Path, iface: FakeInterface) -> None:
    """A proxy terminating TLS shows its own (public) certificate, not one of the own CA: the
    command must not insist on the own CA (curl --cacert would refuse the proxy's)."""
    svc = service(store, tmp_path, iface)
    svc.own_ca = True
    direct = await svc.create(P, P.actor(), {"name": "dc1", "cidrs": ["172.20.0.0/16"]})
    svc.settings = Settings(data_dir=str(tmp_path), tunnel_interface="ocT",
                            external_url="https://overcast.example.com", behind_proxy=True)
    proxied = svc.install_command("oct_x")
    assert "--cacert" in direct["install_command"] or "http://" in direct["install_command"]
    assert "--cacert" not in proxied and proxied.startswith("curl -fsSL https://overcast.example.com/install/tunnel.sh")
    assert "--ca-fingerprint sha256:" + "ab" * 32 in proxied  # the script still pins the CA


def audit(store: Store, prefix: str = "tunnel.") -> list[dict[str, Any]]:
    return [e for _, v in store.scan("audit/") if (e := json.loads(v)).get("action", "").startswith(prefix)]


async def test_create_allocates_addresses_and_a_one_use_token(store: Store, tmp_path: Path,
                                                              iface: FakeInterface) -> None:
    svc = service(store, tmp_path, iface)
    t = await svc.create(P, P.actor(), {"name": "dc1", "cidrs": ["172.20.0.0/16"],
                                        "excluded": ["172.20.5.0/24"]})
    assert t["address"] == "100.96.0.2/32" and t["public_key"] == ""
    assert t["token"].startswith("oct_") and t["health"]["state"] == "waiting"
    assert "172.20.5.0/24" not in t["allowed_ips"] and "172.20.4.0/24" in t["allowed_ips"]
    cmd = t["install_command"]
    assert "/install/tunnel.sh" in cmd and f"--token {t['token']}" in cmd  # http: no CA to pin
    hub_public = keys.public_of(iface.private_key)
    twin = addressing.ipv6_twin("100.96.0.1", hub_public)  # IPv6 CIDRs are reached from it
    assert iface.is_up and iface.addresses == ("100.96.0.1/16", f"{twin}/96") and iface.port == 51820
    t2 = await svc.create(P, P.actor(), {"name": "dc2", "cidrs": ["172.21.0.0/16"]})
    assert t2["address"] == "100.96.0.3/32"
    # the hub's private key is sealed: the stored document does not hold it in clear
    hub = store.get(HUB_KEY)
    assert hub is not None and iface.private_key and iface.private_key.encode() not in hub
    assert "token" not in svc.get(P, "dc1") and t["token"] not in json.dumps(svc.list_tunnels(P))
    assert [e["action"] for e in audit(store)] == ["tunnel.hub", "tunnel.create", "tunnel.create"]
    assert t["token"] not in json.dumps([json.loads(v) for _, v in store.scan("audit/")])


@pytest.mark.parametrize("cidrs,excluded,what", [
    (["10.0.0.0/16"], [], "controller's own network 10.0.0.0/24"),
    (["192.168.1.128/25"], [], "controller's own network 192.168.1.0/24"),
    (["100.96.5.0/24"], [], "tunnel network 100.96.0.0/16"),
    (["0.0.0.0/0"], [], "default route"),
    (["127.0.0.0/8"], [], "loopback"),
    (["172.20.0.1/16"], [], "host bits set"),
    (["nonsense"], [], "is not a CIDR"),
    ([], [], "at least one CIDR"),
    (["172.20.0.0/16", "172.20.1.0/24"], [], "also listed"),
    (["172.20.0.0/16"], ["172.30.0.0/24"], "not inside"),
])
async def test_bad_cidrs_are_refused_in_words(store: Store, tmp_path: Path, iface: FakeInterface,
                                              cidrs: list[str], excluded: list[str], what: str) -> None:
    svc = service(store, tmp_path, iface)
    with pytest.raises(Invalid, match=what) as e:
        await svc.create(P, P.actor(), {"name": "x", "cidrs": cidrs, "excluded": excluded})
    assert e.value.details["field"] == "cidrs"
    assert not list(store.scan("tunnel/"))


async def test_overlaps_name_own_tunnels_but_never_another_organisations(
        store: Store, tmp_path: Path, iface: FakeInterface) -> None:
    svc = service(store, tmp_path, iface)
    await svc.create(OTHER, OTHER.actor(), {"name": "secret-site", "cidrs": ["172.20.0.0/16"],
                                            "excluded": ["172.20.9.0/24"]})
    with pytest.raises(Conflict) as e:
        await svc.create(P, P.actor(), {"name": "mine", "cidrs": ["172.20.1.0/24"]})
    assert "another tunnel" in e.value.message and "secret-site" not in e.value.message
    assert e.value.status == 409
    # what the other tunnel excludes is free to route
    t = await svc.create(P, P.actor(), {"name": "mine", "cidrs": ["172.20.9.0/24"]})
    with pytest.raises(Conflict, match="tunnel 'mine'"):
        await svc.create(P, P.actor(), {"name": "mine2", "cidrs": ["172.20.9.128/25"]})
    with pytest.raises(Conflict, match="exists already"):
        await svc.create(P, P.actor(), {"name": "mine", "cidrs": ["172.22.0.0/24"]})
    # per-organisation isolation
    with pytest.raises(NotFound):
        svc.get(OTHER, t["id"])
    with pytest.raises(NotFound):
        await svc.delete(OTHER, OTHER.actor(), "mine", force=True)
    assert [x["name"] for x in svc.list_tunnels(OTHER)] == ["secret-site"]


async def test_register_sets_the_peer_first_and_spends_the_token(store: Store, tmp_path: Path,
                                                                 iface: FakeInterface) -> None:
    svc = service(store, tmp_path, iface)
    t = await svc.create(P, P.actor(), {"name": "dc1", "cidrs": ["172.20.0.0/16"]})
    gw = keys.public_of(keys.generate_private())
    with pytest.raises(Invalid):
        await svc.register("10.9.9.9", t["token"], "not-a-key")
    with pytest.raises(Unauthenticated):
        await svc.register("10.9.9.9", "oct_wrong", gw)
    r = await svc.register("10.9.9.9", t["token"], gw)
    assert r["address"] == "100.96.0.2/32" and r["hub_address"] == "100.96.0.1"
    assert r["allowed_ips"] == "100.96.0.1/32" and r["hub_endpoint"] == "127.0.0.1:51820"
    assert r["hub_public_key"] == keys.public_of(iface.private_key) and r["keepalive"] == "25"
    assert iface.peers_[gw].allowed_ips == ("100.96.0.2/32", "172.20.0.0/16")
    assert iface.routes == {"172.20.0.0/16"}
    assert iface.log.index(f"peer {gw}") < iface.log.index("route 172.20.0.0/16")
    with pytest.raises(Unauthenticated, match="not valid"):
        await svc.register("10.9.9.9", t["token"], gw)  # one use
    denied = [e for e in audit(store, "tunnel.register") if e.get("outcome") == "denied"]
    assert len(denied) == 2
    assert svc.get(P, "dc1")["public_key"] == gw
    assert r["hub_address6"] == ""  # no IPv6 CIDR: the gateway leaves IPv6 alone


async def test_a_tunnel_to_ipv6_cidrs_gives_the_gateway_the_hubs_ipv6_twin(
        store: Store, tmp_path: Path, iface: FakeInterface) -> None:
    svc = service(store, tmp_path, iface)
    t = await svc.create(P, P.actor(), {"name": "dc6", "cidrs": ["172.20.0.0/16", "fd00:20::/64"]})
    r = await svc.register("10.9.9.9", t["token"], keys.public_of(keys.generate_private()))
    twin = addressing.ipv6_twin("100.96.0.1", r["hub_public_key"])
    assert r["hub_address6"] == twin and f"{twin}/96" in iface.addresses  # the hub sends from it
    assert r["allowed_ips"] == f"100.96.0.1/32,{twin}/128" and r["cidrs"] == "172.20.0.0/16 fd00:20::/64"
    assert iface.routes == {"172.20.0.0/16", "fd00:20::/64"}
    # no tunnel may route the twin's network
    net = addressing.ipv6_twin_network(r["hub_public_key"])
    with pytest.raises(Invalid, match=net):
        await svc.create(P, P.actor(), {"name": "clash", "cidrs": [net.replace("/96", "/64")]})


async def test_an_expired_token_is_refused(store: Store, tmp_path: Path, iface: FakeInterface,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    svc = service(store, tmp_path, iface)
    t = await svc.create(P, P.actor(), {"name": "dc1", "cidrs": ["172.20.0.0/16"]})
    monkeypatch.setattr(time, "time", lambda: 4e9)
    with pytest.raises(Unauthenticated, match="expired"):
        await svc.register("1.2.3.4", t["token"], keys.public_of(keys.generate_private()))


async def test_rotate_moves_the_tunnel_to_the_new_key(store: Store, tmp_path: Path,
                                                      iface: FakeInterface) -> None:
    svc = service(store, tmp_path, iface)
    t = await svc.create(P, P.actor(), {"name": "dc1", "cidrs": ["172.20.0.0/16"]})
    old, new = (keys.public_of(keys.generate_private()) for _ in range(2))
    await svc.register("1.2.3.4", t["token"], old)
    r = await svc.rotate(P, P.actor(), "dc1")
    assert "--rotate" in r["install_command"] and r["token"] != t["token"]
    await svc.register("1.2.3.4", r["token"], new)
    assert list(iface.peers_) == [new] and iface.routes == {"172.20.0.0/16"}
    assert [e["action"] for e in audit(store)][-2:] == ["tunnel.rotate", "tunnel.register"]


async def test_edit_moves_routes_and_delete_in_use_needs_force(store: Store, tmp_path: Path,
                                                               iface: FakeInterface) -> None:
    svc = service(store, tmp_path, iface)
    t = await svc.create(P, P.actor(), {"name": "dc1", "cidrs": ["172.20.0.0/16"]})
    gw = keys.public_of(keys.generate_private())
    await svc.register("1.2.3.4", t["token"], gw)
    e = await svc.edit(P, P.actor(), "dc1", {"name": "site", "cidrs": ["172.20.0.0/24", "172.21.0.0/24"]})
    assert e["name"] == "site" and iface.routes == {"172.20.0.0/24", "172.21.0.0/24"}
    assert iface.peers_[gw].allowed_ips == ("100.96.0.2/32", "172.20.0.0/24", "172.21.0.0/24")
    with pytest.raises(Invalid):
        await svc.edit(P, P.actor(), "site", {"cidrs": ["10.0.0.0/8"]})
    store.put(machine_key("o1", "m1"), dump(MACHINE, {"id": "m1", "name": "db", "public_ips": [],
                                                      "private_ips": ["172.21.0.7"]}))
    with pytest.raises(Conflict, match="machines db"):
        await svc.delete(P, P.actor(), "site", force=False)
    store.delete(machine_key("o1", "m1"))
    # a private cloud whose API is reached through it (its endpoint inside the CIDRs)
    store.put("cloud/o1/c1", dump(CLOUD, {"id": "c1", "name": "dc-openstack", "provider": "openstack",
                                          "config": {"authUrl": "http://172.20.0.9:5000/v3"}}))
    store.put("cloud/o1/c2", dump(CLOUD, {"id": "c2", "name": "elsewhere", "provider": "openstack",
                                          "config": {"authUrl": "http://10.9.0.9:5000/v3"}}))
    with pytest.raises(Conflict, match="clouds dc-openstack are reached") as refused:
        await svc.delete(P, P.actor(), "site", force=False)
    assert refused.value.details == {"machines": [], "clouds": ["dc-openstack"]}
    await svc.delete(P, P.actor(), "site", force=True)
    assert not iface.peers_ and not iface.routes and not list(store.scan("tunnel/"))
    assert not list(store.scan("tunnelhash/"))
    assert audit(store)[-1]["action"] == "tunnel.delete"


async def test_health_transitions_are_audited(store: Store, tmp_path: Path, iface: FakeInterface) -> None:
    svc = service(store, tmp_path, iface)
    t = await svc.create(P, P.actor(), {"name": "dc1", "cidrs": ["172.20.0.0/16"]})
    gw = keys.public_of(keys.generate_private())
    await svc.register("1.2.3.4", t["token"], gw)
    await svc.watch_once()
    assert svc.get(P, "dc1")["health"]["state"] == "waiting"
    iface.handshakes[gw] = time.time()
    await svc.watch_once()
    h = svc.get(P, "dc1")["health"]
    assert h["state"] == "up" and h["rx_bytes"] == 10 and h["tx_bytes"] == 20
    iface.handshakes[gw] = time.time() - 600
    await svc.watch_once()
    await svc.watch_once()
    assert [e["action"] for e in audit(store) if e["action"] in ("tunnel.up", "tunnel.down")] == [
        "tunnel.up", "tunnel.down"]


async def test_no_wireguard_answers_503_in_words(store: Store, tmp_path: Path) -> None:
    svc = service(store, tmp_path, FakeInterface("ocT", fail=True))
    with pytest.raises(TunnelsUnavailable, match="not available on this controller") as e:
        await svc.create(P, P.actor(), {"name": "dc1", "cidrs": ["172.20.0.0/16"]})
    assert e.value.status == 503
    assert not list(store.scan("tunnel/"))
    assert svc.list_tunnels(P) == []
    assert store.get(tunnel_key("o1", "x")) is None


class NoIPv6(FakeInterface):
    """A host with IPv6 disabled: an IPv6 address is refused."""

    def set_address(self, *cidrs: str) -> None:
        if any(":" in c for c in cidrs):
            raise TunnelError("ip address replace fd…: Permission denied")
        super().set_address(*cidrs)


async def test_a_host_without_ipv6_still_runs_ipv4_tunnels(store: Store, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    iface = NoIPv6("ocT")
    svc = service(store, tmp_path, iface)
    t = await svc.create(P, P.actor(), {"name": "dc1", "cidrs": ["172.20.0.0/16"]})
    assert iface.is_up and iface.addresses == ("100.96.0.1/16",) and t["address"] == "100.96.0.2/32"
    assert "IPv6 CIDRs of tunnels cannot be reached" in caplog.text


async def test_bad_tokens_from_one_address_cannot_flood_the_audit_log(
        store: Store, tmp_path: Path, iface: FakeInterface) -> None:
    from controller.accounts.service import AccountService

    svc = service(store, tmp_path, iface)
    accounts = AccountService(Settings(data_dir=str(tmp_path)), store, Writer(store))
    svc.commit_refusal = accounts.commit_unauthenticated
    gw = keys.public_of(keys.generate_private())
    for i in range(60):
        with pytest.raises(Unauthenticated):
            await svc.register("10.9.9.7", f"oct_wrong{i}", gw)
    with pytest.raises(Unauthenticated):
        await svc.register("10.9.9.8", "oct_other", gw)
    denied = [e for e in audit(store, "tunnel.register") if e.get("outcome") == "denied"]
    from_first = [e for e in denied if e["source"]["ip"] == "10.9.9.7"]
    # at most 20 a minute per address (the loop may straddle two minutes); others unaffected
    assert 1 <= len(from_first) <= 40, len(from_first)
    assert len([e for e in denied if e["source"]["ip"] == "10.9.9.8"]) == 1
