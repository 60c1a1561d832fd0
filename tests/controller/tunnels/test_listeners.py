"""Hosts behind tunnels reach the controller at the hub's address: the hub tells its
listeners when it is up and before it goes down, the hub certificate (the controller's own
CA, naming the hub address) is made once and reused, the hub's endpoints, and which
listeners a wildcard main address makes unnecessary."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import cast

from cryptography import x509

from controller.pki import ensure_hub_cert, ensure_pki
from controller.settings import Settings
from controller.store.base import Store
from controller.tunnels.hub import Hub
from controller.tunnels.listeners import HubListeners
from tests.controller.tunnels.test_service import FakeInterface, service, store  # noqa: F401
from tunnel.backend import Interface


def test_the_hub_certificate_names_the_hub_address_and_is_issued_by_the_own_ca(tmp_path: Path) -> None:
    pki = ensure_pki(str(tmp_path), ["ctl.example.com"])
    hub = ensure_hub_cert(pki, ["100.96.0.1"])
    assert hub.server_cert != pki.server_cert and hub.ca_cert == pki.ca_cert
    cert = x509.load_pem_x509_certificate(hub.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca_pem)
    assert cert.issuer == ca.subject
    ips = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("100.96.0.1") in ips
    assert oct(hub.server_key.stat().st_mode & 0o777) == "0o600"
    first = hub.server_cert.read_bytes()
    assert ensure_hub_cert(pki, ["100.96.0.1"]).server_cert.read_bytes() == first  # reused
    assert ensure_hub_cert(pki, ["100.96.0.9"]).server_cert.read_bytes() != first  # re-issued
    hub.server_ssl_context()  # loads


async def test_the_hub_calls_its_listeners_with_its_address() -> None:
    iface = FakeInterface("ocL")
    hub = Hub("ocL", 51820, lambda name: cast(Interface, iface))
    seen: list[str] = []

    async def up(address: str) -> None:
        seen.append(address)

    async def broken(address: str) -> None:
        raise OSError("address in use")

    async def down() -> None:
        seen.append("down")

    hub.on_up += [broken, up]  # a failing listener does not keep the hub down
    hub.on_down.append(down)
    await hub.up("k" * 43 + "=", "100.96.0.1/16")
    assert hub.is_up and hub.address == "100.96.0.1" and seen == ["100.96.0.1"]
    await hub.close()
    assert seen == ["100.96.0.1", "down"] and hub.address == "" and not iface.is_up
    await hub.close()
    assert seen == ["100.96.0.1", "down"]


def test_hub_endpoints_and_tunnel_tokens(store: Store, tmp_path: Path) -> None:  # noqa: F811
    svc = service(store, tmp_path, FakeInterface("ocT"))
    assert svc.hub_address() == "100.96.0.1"  # before the hub exists: nothing written
    assert store.get("tunnelhub") is None
    url, grpc = svc.hub_endpoints()
    assert url == f"https://100.96.0.1:{svc.settings.http_port}"
    assert grpc == f"100.96.0.1:{svc.settings.agents_port}"
    assert svc.agent_endpoints("o1", "nope") is None and svc.agent_endpoints("o1", "") is None


def test_wildcard_main_listeners_are_not_duplicated(tmp_path: Path) -> None:
    s = Settings(data_dir=str(tmp_path), http="0.0.0.0:7080", agents="10.0.0.1:7444")
    listeners = HubListeners(s, None, None)
    assert not listeners.wants_http("100.96.0.1") and listeners.wants_agents("100.96.0.1")
    s = Settings(data_dir=str(tmp_path), http="10.0.0.1:7080", agents="[::]:7444")
    listeners = HubListeners(s, None, None)
    assert listeners.wants_http("100.96.0.1") and not listeners.wants_agents("100.96.0.1")
