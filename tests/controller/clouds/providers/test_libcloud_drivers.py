"""The ten providers wired through libcloud drivers (azure, google, cloudsigma, alibaba,
equinix, ibm, linode, rackspace, vultr, onapp): their specs against Mist's credential schemas,
the drivers their fields build, and the HTTP requests their adapters send (method, path,
query and body of listing and each action) and the answers they translate, against a
recording server on loopback answering like each provider's documented API: JSON APIs,
Rackspace's identity sign-in and service catalog, Google's operations, Alibaba's signed RPC
calls with XML answers (the signature checked as Alibaba documents it).

No test leaves this machine: drivers that sign in while they are built (Azure, Google) get
a token handed out (Google's token request itself is driven against the fake once, for its
refusals); every other request goes to ``FakeJsonApi`` on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.clouds.providers import registry
from controller.clouds.providers.base import Adapter, Capability, MachineRecord
from controller.clouds.providers.libcloud_compute import LibcloudComputeAdapter
from controller.errors import CredentialsRefused, Invalid, NotFound, OvercastError
from tests.support.fake_json_api import FakeJsonApi, Recorded, redirect

ROOT = Path(__file__).resolve().parents[4]
NAMES = ("azure", "google", "cloudsigma", "alibaba", "equinix", "ibm", "linode", "rackspace",
         "vultr", "onapp")

# Mist v2 ``<Provider>Credentials``: field names in order, required ones; then the fields
# that must be secret here. Overcast's additions are listed after Mist's.
MIST: dict[str, tuple[tuple[str, ...], set[str], set[str]]] = {
    "azure": (("tenantId", "subscriptionId", "key", "secret"),
              {"tenantId", "subscriptionId", "key", "secret"}, {"secret"}),
    "google": (("projectId", "email", "privateKey"), {"projectId", "email", "privateKey"},
               {"privateKey"}),
    "cloudsigma": (("username", "password", "region"), {"username", "password", "region"},
                   {"password"}),
    "alibaba": (("apikey", "apisecret", "region"), {"apikey", "apisecret", "region"},
                {"apisecret"}),
    "equinix": (("apikey", "project_id"), {"apikey"}, {"apikey"}),
    "ibm": (("username", "apikey"), {"apikey"}, {"apikey"}),
    "linode": (("apikey",), {"apikey"}, {"apikey"}),
    "rackspace": (("username", "apikey", "region"), {"username", "apikey", "region"}, {"apikey"}),
    "vultr": (("apikey",), {"apikey"}, {"apikey"}),
    "onapp": (("username", "apikey", "host", "verify", "authUrl"), {"username", "apikey", "host"},
              {"apikey"}),
}


def _pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


PEM = _pem()
# (config, secrets) of a working cloud per provider
FIELDS: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "azure": ({"tenantId": "tenant-1", "subscriptionId": "sub-1", "key": "app-1"},
              {"secret": "az-secret"}),
    "google": ({"projectId": "proj-1", "email": "sa@proj-1.iam.gserviceaccount.com"},
               {"privateKey": PEM}),
    "cloudsigma": ({"username": "me@example.com", "region": "fra"}, {"password": "cs-pass"}),
    "alibaba": ({"apikey": "LTAI-id", "region": "eu-central-1"}, {"apisecret": "ali-secret"}),
    "equinix": ({"project_id": "proj-uuid"}, {"apikey": "eq-token"}),
    "ibm": ({"username": "SL12345"}, {"apikey": "ibm-key"}),
    "linode": ({}, {"apikey": "lin-token"}),
    "rackspace": ({"username": "rackuser", "region": "lon"}, {"apikey": "rack-key"}),
    "vultr": ({}, {"apikey": "vul-key"}),
    "onapp": ({"username": "panel", "host": "https://cp.example.com:8443", "verify": False},
              {"apikey": "onapp-key"}),
}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Azure and Google sign in while their driver is built: hand them a token instead."""
    from libcloud.common.azure_arm import AzureResourceManagementConnection
    from libcloud.common.google import GoogleServiceAcctAuthConnection

    def azure_token(self: Any) -> None:
        self.access_token, self.expires_on = "azure-token", str(int(time.time()) + 3600)

    def google_token(self: Any) -> dict[str, str]:
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        return {"access_token": "google-token", "token_type": "Bearer",
                "expire_time": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}

    monkeypatch.setattr(AzureResourceManagementConnection, "get_token_from_credentials",
                        azure_token)
    monkeypatch.setattr(GoogleServiceAcctAuthConnection, "get_new_token", google_token)


def build(name: str, timeout: float = 7.0, **config: Any) -> Any:
    base, secrets = FIELDS[name]
    adapter = registry.build(name, {**base, **config}, dict(secrets), timeout)
    assert isinstance(adapter, LibcloudComputeAdapter)
    return adapter


@pytest.fixture
def api() -> Iterator[FakeJsonApi]:
    with FakeJsonApi() as server:
        yield server


def against(name: str, api: FakeJsonApi, **config: Any) -> Any:
    adapter = build(name, **config)
    redirect(adapter.conn.connection, api)
    return adapter


# ---- specs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_spec_fields_are_mists(name: str) -> None:
    names, required, secret = MIST[name]
    spec = registry.spec(name)
    assert spec.name == name and spec.proved == "unit"
    assert tuple(f.name for f in spec.fields) == names
    assert {f.name for f in spec.fields if f.required} == required
    assert {f.name for f in spec.fields if f.secret} == secret
    assert registry.adapter_class(spec).provider == name


def test_packages_do_not_import_libcloud() -> None:
    code = ("import sys\n"
            "from controller.clouds.providers import registry\n"
            f"for n in {NAMES!r}: registry.spec(n)\n"
            "assert not [m for m in sys.modules if m.startswith('libcloud')], 'libcloud'\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "proto")])}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


# what each action capability needs from the driver (or from an adapter override)
NEEDS = {Capability.START: "start_node", Capability.STOP: "stop_node",
         Capability.REBOOT: "reboot_node", Capability.DESTROY: "destroy_node",
         Capability.RESIZE: "ex_resize_node", Capability.RENAME: "ex_rename_node",
         Capability.CREATE: "create_node", Capability.MACHINES: "list_nodes",
         Capability.SIZES: "list_sizes", Capability.IMAGES: "list_images",
         Capability.LOCATIONS: "list_locations"}


@pytest.mark.parametrize("name", NAMES)
def test_capabilities_are_what_the_driver_does(name: str) -> None:
    from libcloud.compute.base import NodeDriver

    adapter = build(name)
    driver_cls = type(adapter.conn)
    adapter_cls = type(adapter)
    for cap in adapter.capabilities:
        method = NEEDS[cap]
        in_driver = getattr(driver_cls, method, None) not in (None, getattr(NodeDriver, method, None))
        listed = {Capability.SIZES: "list_sizes", Capability.LOCATIONS: "list_locations"}
        by_adapter = (cap in listed and listed[cap] in adapter_cls.__dict__) or (
            name == "onapp" and cap in (Capability.START, Capability.STOP, Capability.REBOOT))
        assert in_driver or by_adapter, f"{name} claims {cap} but nothing implements it"
    assert not {Capability.VOLUMES, Capability.NETWORKS, Capability.DNS} & adapter.capabilities


def test_region_choices_are_libclouds() -> None:
    from libcloud.common.cloudsigma import API_ENDPOINTS_2_0
    from libcloud.compute.drivers.rackspace import ENDPOINT_ARGS_MAP

    from controller.clouds.providers import cloudsigma, rackspace

    assert cloudsigma.REGIONS == tuple(API_ENDPOINTS_2_0)
    assert rackspace.REGIONS == tuple(ENDPOINT_ARGS_MAP)
    assert registry.spec("rackspace").fields[2].choices == rackspace.REGIONS


# ---- the drivers the fields build ------------------------------------------------------------
def _expect(name: str, d: Any) -> dict[str, Any]:
    """(what the driver holds) for each provider, to compare with ``EXPECTED``."""
    c = d.connection
    common = {"class": type(d).__name__, "host": c.host}
    if name == "azure":
        return {**common, "tenant": d.tenant_id, "subscription": d.subscription_id,
                "key": d.key, "secret": d.secret}
    if name == "google":
        cred = c.oauth2_credential
        return {**common, "project": d.project, "email": c.user_id, "auth": d.auth_type,
                "token_cache": cred.credential_file}
    if name == "rackspace":
        # the compute host comes from the service catalog after sign-in
        return {"class": type(d).__name__, "auth": c.auth_url, "key": d.key, "secret": d.secret,
                "region": d.region, "endpoint": c.get_endpoint_args["region"]}
    if name == "equinix":
        return {**common, "key": d.key, "project": d.project_name}
    if name == "alibaba":
        return {**common, "key": d.key, "secret": d.secret, "region": d.region}
    if name == "onapp":
        return {**common, "key": d.key, "secret": d.secret, "port": c.port,
                "secure": bool(c.secure), "verify": c.connection.verify}
    return {**common, "key": d.key, "secret": d.secret}


EXPECTED: dict[str, dict[str, Any]] = {
    "azure": {"class": "AzureNodeDriver", "host": "management.azure.com", "tenant": "tenant-1",
              "subscription": "sub-1", "key": "app-1", "secret": "az-secret"},
    "google": {"class": "GCENodeDriver", "host": "www.googleapis.com", "project": "proj-1",
               "email": "sa@proj-1.iam.gserviceaccount.com", "auth": "SA",
               "token_cache": os.devnull},
    "cloudsigma": {"class": "CloudSigma_2_0_NodeDriver", "host": "fra.cloudsigma.com",
                   "key": "me@example.com", "secret": "cs-pass"},
    "alibaba": {"class": "ECSDriver", "host": "ecs.eu-central-1.aliyuncs.com", "key": "LTAI-id",
                "secret": "ali-secret", "region": "eu-central-1"},
    "equinix": {"class": "EquinixMetalNodeDriver", "host": "api.equinix.com", "key": "eq-token",
                "project": "proj-uuid"},
    "ibm": {"class": "SoftLayerNodeDriver", "host": "api.softlayer.com", "key": "SL12345",
            "secret": "ibm-key"},
    "linode": {"class": "LinodeNodeDriverV4", "host": "api.linode.com", "key": "lin-token",
               "secret": None},
    "rackspace": {"class": "RackspaceNodeDriver", "auth": "https://identity.api.rackspacecloud.com",
                  "key": "rackuser",
                  "secret": "rack-key", "region": "lon", "endpoint": "LON"},
    "vultr": {"class": "VultrNodeDriverV2", "host": "api.vultr.com", "key": "vul-key",
              "secret": None},
    "onapp": {"class": "OnAppNodeDriver", "host": "cp.example.com", "key": "panel",
              "secret": "onapp-key", "port": 8443, "secure": True, "verify": False},
}


@pytest.mark.parametrize("name", NAMES)
def test_fields_build_the_driver(name: str) -> None:
    adapter = build(name, timeout=7.0)
    d = adapter.conn
    assert _expect(name, d) == EXPECTED[name]
    # the per-call timeout reaches the HTTP session (set after connect() it would not)
    session = getattr(d.connection.connection, "session", None)
    if session is not None:
        assert session.timeout == 7.0


def test_ibm_without_username_signs_in_with_an_ibm_cloud_api_key() -> None:
    d = registry.build("ibm", {}, {"apikey": "iam-key"}, 5.0)
    assert isinstance(d, LibcloudComputeAdapter)
    assert (d.conn.key, d.conn.secret) == ("apikey", "iam-key")


def test_onapp_verifies_tls_unless_told_and_takes_a_bare_host() -> None:
    d = build("onapp", host="cp.example.com", verify=True).conn
    assert (d.connection.host, d.connection.port, bool(d.connection.secure)) == \
        ("cp.example.com", 443, True)
    assert d.connection.connection.verify is not False
    import libcloud.security
    assert libcloud.security.VERIFY_SSL_CERT is True  # turning it off is per panel


def _missing() -> list[tuple[str, str]]:
    return [(n, f) for n in NAMES for f in sorted(MIST[n][1])]


@pytest.mark.parametrize(("name", "missing"), _missing())
def test_a_missing_required_field_is_named(name: str, missing: str) -> None:
    config, secrets = FIELDS[name]
    config = {k: v for k, v in config.items() if k != missing}
    secrets = {k: v for k, v in secrets.items() if k != missing}
    adapter = registry.build(name, config, secrets, 5.0)
    with pytest.raises(Invalid) as err:
        adapter.list_machines()  # builds the driver first, through the error mapping
    assert err.value.details["field"] == missing
    assert missing in err.value.message


@pytest.mark.parametrize(("name", "field", "value"), [
    ("cloudsigma", "region", "atlantis"),
    ("rackspace", "region", "mars"),
    ("alibaba", "region", "eu-central-1.evil.example/x"),  # it goes into a host name
    ("onapp", "host", "https://cp.example.com/panel"),
    ("google", "privateKey", "/etc/passwd"),  # libcloud would read a path as a key file
])
def test_bad_values_are_refused_before_any_call(name: str, field: str, value: str) -> None:
    config, secrets = dict(FIELDS[name][0]), dict(FIELDS[name][1])
    (secrets if field in MIST[name][2] else config)[field] = value
    adapter = registry.build(name, config, secrets, 5.0)
    assert isinstance(adapter, LibcloudComputeAdapter)
    with pytest.raises(Invalid) as err:
        adapter.conn  # noqa: B018 (building the driver is the point)
    assert err.value.details["field"] == field


def test_google_takes_the_whole_json_key_file() -> None:
    key_file = json.dumps({"type": "service_account", "project_id": "proj-1",
                           "private_key": PEM, "client_email": "sa@proj-1.iam.gserviceaccount.com"})
    adapter = registry.build("google", FIELDS["google"][0], {"privateKey": key_file}, 5.0)
    assert isinstance(adapter, LibcloudComputeAdapter)
    assert adapter.conn.project == "proj-1"


# ---- Linode (API v4) -------------------------------------------------------------------------
LINODE_INSTANCE = {
    "id": 123, "label": "web-1", "status": "running", "type": "g6-standard-2",
    "image": "linode/debian12", "region": "eu-central", "group": "",
    "ipv4": ["203.0.113.10", "192.168.130.7"], "ipv6": "2600:3c00::f03c:91ff:fe24:1234/128",
    "hypervisor": "kvm", "tags": ["env=prod", "web"], "watchdog_enabled": True,
    "specs": {"disk": 81920, "memory": 4096, "transfer": 4000, "vcpus": 2, "gpus": 0},
    "alerts": {"cpu": 180, "io": 10000, "network_in": 10, "network_out": 10,
               "transfer_quota": 80},
    "backups": {"enabled": False, "available": False, "schedule": {"day": None, "window": None}},
    "created": "2024-03-01T10:20:30", "updated": "2024-03-02T10:20:30",
}
LINODE_TYPE = {
    "id": "g6-standard-2", "label": "Linode 4GB", "class": "standard", "disk": 81920,
    "memory": 4096, "vcpus": 2, "gpus": 0, "network_out": 4000, "transfer": 4000,
    "price": {"hourly": 0.036, "monthly": 24.0}, "successor": None,
    "addons": {"backups": {"price": {"hourly": 0.008, "monthly": 5.0}}},
}


def _page(items: list[Any]) -> dict[str, Any]:
    return {"data": items, "page": 1, "pages": 1, "results": len(items)}


def test_linode_lists_machines_and_reboots(api: FakeJsonApi) -> None:
    api.route("GET", "/v4/linode/instances", _page([LINODE_INSTANCE]))
    api.route("GET", "/v4/linode/types", _page([LINODE_TYPE]))
    api.route("POST", "/v4/linode/instances/123/reboot", {})
    adapter = against("linode", api)

    [m] = adapter.list_machines()
    assert (m.external_id, m.name, m.state) == ("123", "web-1", "running")
    assert (m.public_ips, m.private_ips) == (["203.0.113.10"], ["192.168.130.7"])
    assert (m.size, m.image, m.location, m.cores) == ("g6-standard-2", "linode/debian12",
                                                      "eu-central", 2)
    assert m.tags == {"env": "prod", "web": ""}
    assert m.price_per_hour == 0.036 and m.created == "2024-03-01T10:20:30Z"
    first = api.requests[0]
    assert (first.method, first.path) == ("GET", "/v4/linode/instances")
    assert first.headers["Authorization"] == "Bearer lin-token"

    adapter.machine_action(Capability.REBOOT, "123", {})
    assert _last(api, "POST").path == "/v4/linode/instances/123/reboot"


def test_linode_survives_a_status_libcloud_does_not_know(api: FakeJsonApi) -> None:
    api.route("GET", "/v4/linode/instances",
              _page([{**LINODE_INSTANCE, "status": "billing_suspension"}]))
    api.route("GET", "/v4/linode/types", _page([]))
    [m] = against("linode", api).list_machines()
    assert m.state == "suspended"


def test_linode_a_gone_machine_is_not_found(api: FakeJsonApi) -> None:
    api.route("GET", "/v4/linode/instances", _page([LINODE_INSTANCE]))
    api.route("POST", "/v4/linode/instances/123/shutdown",
              {"errors": [{"reason": "Not found"}]}, status=404)
    with pytest.raises(NotFound):
        against("linode", api).machine_action(Capability.STOP, "123", {})


def test_linode_creates_with_the_key_and_cloud_init(api: FakeJsonApi) -> None:
    from controller.clouds.providers.base import CreateMachine

    api.route("GET", "/v4/linode/types", _page([LINODE_TYPE]))
    api.route("GET", "/v4/images", _page([{
        "id": "linode/debian12", "label": "Debian 12", "type": "manual", "description": "",
        "created": "2023-06-12T00:00:00", "created_by": "linode", "is_public": True,
        "size": 1300, "eol": None, "vendor": "Debian"}]))
    api.route("GET", "/v4/regions", _page([{
        "id": "eu-central", "country": "de", "status": "ok", "capabilities": ["Linodes"],
        "resolvers": {"ipv4": "", "ipv6": ""}}]))
    api.route("POST", "/v4/linode/instances", LINODE_INSTANCE)
    req = CreateMachine(name="web-1", size="g6-standard-2", image="linode/debian12",
                        location="eu-central", public_key="ssh-ed25519 AAAA me",
                        cloud_init="#cloud-config\n", tags={"env": "prod"})
    m = against("linode", api).create_machine(req)
    assert m.external_id == "123"
    body = _last(api, "POST").body
    assert (body["region"], body["type"], body["image"], body["label"]) == \
        ("eu-central", "g6-standard-2", "linode/debian12", "web-1")
    assert body["authorized_keys"] == ["ssh-ed25519 AAAA me"] and body["tags"] == ["env=prod"]
    assert body["metadata"]["user_data"] and len(body["root_pass"]) >= 20


# ---- Vultr (API v2) --------------------------------------------------------------------------
VULTR_INSTANCE = {
    "id": "cb676a46-66fd-4dfb-b839-443f2e6c0b60", "os": "Debian 12 x64 (bookworm)",
    "ram": 2048, "disk": 55, "main_ip": "192.0.2.123", "vcpu_count": 1, "region": "fra",
    "plan": "vc2-1c-2gb", "date_created": "2024-02-10T01:56:20+00:00", "status": "active",
    "allowed_bandwidth": 2, "netmask_v4": "255.255.254.0", "gateway_v4": "192.0.2.1",
    "power_status": "stopped", "server_status": "ok", "v6_network": "", "v6_main_ip": "",
    "v6_network_size": 0, "label": "api-1", "internal_ip": "10.1.96.3", "kvm": "",
    "hostname": "api-1", "tag": "prod", "tags": ["prod"], "os_id": 2136, "app_id": 0,
    "image_id": "", "firewall_group_id": "", "features": [], "user_scheme": "root",
}
VULTR_PLAN = {"id": "vc2-1c-2gb", "vcpu_count": 1, "ram": 2048, "disk": 55, "disk_count": 1,
              "bandwidth": 2048, "monthly_cost": 10, "type": "vc2", "locations": ["fra"]}
NO_MORE = {"total": 1, "links": {"next": "", "prev": ""}}


def test_vultr_lists_machines_and_stops(api: FakeJsonApi) -> None:
    api.route("GET", "/v2/instances", {"instances": [VULTR_INSTANCE], "meta": NO_MORE})
    api.route("GET", "/v2/bare-metals", {"bare_metals": [], "meta": NO_MORE})
    api.route("GET", "/v2/plans", {"plans": [VULTR_PLAN], "meta": NO_MORE})
    api.route("GET", "/v2/plans-metal", {"plans_metal": [], "meta": NO_MORE})
    api.route("POST", "/v2/instances/halt", None, status=204)
    adapter = against("vultr", api)

    [m] = adapter.list_machines()
    # "active" but powered off is stopped
    assert (m.external_id, m.name, m.state) == (VULTR_INSTANCE["id"], "api-1", "stopped")
    assert (m.public_ips, m.private_ips) == (["192.0.2.123"], ["10.1.96.3"])
    assert (m.size, m.image, m.location, m.cores) == ("vc2-1c-2gb", "2136", "fra", 1)
    assert m.created == "2024-02-10T01:56:20+00:00" and m.tags == {"prod": ""}
    assert m.price_per_hour == round(10 / 672, 5)  # monthly price, billed hourly to 672 h
    assert api.requests[0].headers["Authorization"] == "Bearer vul-key"

    [size] = adapter.list_sizes()
    assert (size.cpus, size.ram_mb, size.extra["monthly_price"]) == (1, 2048, 10.0)

    adapter.machine_action(Capability.STOP, VULTR_INSTANCE["id"], {})
    halt = _last(api, "POST")
    assert (halt.path, halt.body) == ("/v2/instances/halt",
                                      {"instance_ids": [VULTR_INSTANCE["id"]]})


# ---- Equinix Metal ---------------------------------------------------------------------------
EQUINIX_DEVICE = {
    "id": "9c1b6b1e-6d4a-4b7b-8b1c-1a2b3c4d5e6f", "hostname": "metal-1", "state": "active",
    "created_at": "2024-01-05T08:00:00Z", "updated_at": "2024-01-05T08:10:00Z",
    "billing_cycle": "hourly", "locked": False, "userdata": "", "iqn": "iqn.2024-01.net.x",
    "description": None, "project": {"href": "/metal/v1/projects/proj-uuid"},
    "ip_addresses": [{"address": "147.75.1.2", "public": True, "address_family": 4},
                     {"address": "10.70.1.3", "public": False, "address_family": 4}],
    "operating_system": {"slug": "ubuntu_22_04", "name": "Ubuntu 22.04 LTS",
                         "distro": "ubuntu", "version": "22.04", "provisionable_on": []},
    "plan": {"id": "plan-uuid", "slug": "c3.small.x86", "name": "c3.small.x86",
             "description": "c3.small", "line": "baremetal",
             "specs": {"cpus": [{"count": 1, "type": "Intel Xeon E-2278G"}],
                       "memory": {"total": "32GB"},
                       "drives": [{"count": 2, "size": "480GB", "type": "SSD"}]},
             "pricing": {"hour": 0.75}, "available_in_metros": []},
    "metro": {"id": "metro-uuid", "code": "da", "name": "Dallas", "country": "US"},
}


def test_equinix_lists_every_project_without_asyncio_and_reboots(api: FakeJsonApi) -> None:
    api.route("GET", "/metal/v1/projects",
              {"projects": [{"id": "p1", "name": "one"}, {"id": "p2", "name": "two"}]})
    api.route("GET", "/metal/v1/projects/p1/devices", {"devices": [EQUINIX_DEVICE]})
    api.route("GET", "/metal/v1/projects/p2/devices", {"devices": []})
    api.route("POST", "/metal/v1/devices/[^/]+/actions", {})
    adapter = against("equinix", api, project_id="")

    [m] = adapter.list_machines()
    assert (m.external_id, m.name, m.state) == (EQUINIX_DEVICE["id"], "metal-1", "running")
    assert (m.public_ips, m.private_ips) == (["147.75.1.2"], ["10.70.1.3"])
    assert (m.size, m.image, m.location, m.cores) == ("c3.small.x86", "ubuntu_22_04", "da", 1)
    assert (m.price_per_hour, m.created) == (0.75, "2024-01-05T08:00:00Z")
    listed = [r.path for r in api.only("GET")]
    assert listed == ["/metal/v1/projects", "/metal/v1/projects/p1/devices",
                      "/metal/v1/projects/p2/devices"]
    assert api.requests[1].param("include") == "plan"
    assert api.requests[0].headers["X-Auth-Token"] == "eq-token"

    adapter.machine_action(Capability.REBOOT, EQUINIX_DEVICE["id"], {})
    action = _last(api, "POST")
    assert action.path == f"/metal/v1/devices/{EQUINIX_DEVICE['id']}/actions"
    assert action.param("type") == "reboot"


def test_equinix_with_a_project_lists_only_it(api: FakeJsonApi) -> None:
    api.route("GET", "/metal/v1/projects/proj-uuid/devices", {"devices": [EQUINIX_DEVICE]})
    assert len(against("equinix", api).list_machines()) == 1
    assert [r.path for r in api.requests] == ["/metal/v1/projects/proj-uuid/devices"]


def test_equinix_an_error_keeps_its_status(api: FakeJsonApi) -> None:
    api.route("GET", "/metal/v1/projects/proj-uuid/devices", {"devices": [EQUINIX_DEVICE]})
    api.route("DELETE", "/metal/v1/devices/.+", {"errors": ["Not found"]}, status=404)
    with pytest.raises(NotFound, match="Not found"):
        against("equinix", api).machine_action(Capability.DESTROY, EQUINIX_DEVICE["id"], {})


# ---- IBM classic (SoftLayer REST) ------------------------------------------------------------
IBM_GUEST = {
    "id": 4711, "hostname": "app", "domain": "example.com",
    "fullyQualifiedDomainName": "app.example.com", "primaryIpAddress": "169.45.1.2",
    "primaryBackendIpAddress": "10.150.1.2", "maxCpu": 2, "maxMemory": 4096,
    "createDate": "2024-01-02T03:04:05-06:00", "hourlyBillingFlag": True,
    "powerState": {"keyName": "HALTED"}, "status": {"keyName": "ACTIVE"},
    "datacenter": {"name": "dal13", "longName": "Dallas 13"},
    "operatingSystem": {"softwareLicense": {"softwareDescription": {
        "name": "Ubuntu", "referenceCode": "UBUNTU_22_64"}}},
    "billingItem": {"hourlyRecurringFee": ".061", "recurringFee": "0"},
    "tagReferences": [{"tag": {"name": "web"}}],
    "networkComponents": [{"macAddress": "06:a1:b2:c3:d4:e5"}],
}


def test_ibm_lists_guests_and_starts(api: FakeJsonApi) -> None:
    api.route("GET", "/rest/v3.1/SoftLayer_Account/getVirtualGuests.json", [IBM_GUEST])
    api.route("GET", "/rest/v3.1/SoftLayer_Virtual_Guest/4711/powerOn.json", True)
    adapter = against("ibm", api)

    [m] = adapter.list_machines()
    assert (m.external_id, m.name, m.state, m.hostname) == ("4711", "app", "stopped",
                                                            "app.example.com")
    assert (m.public_ips, m.private_ips, m.location) == (["169.45.1.2"], ["10.150.1.2"], "dal13")
    assert (m.cores, m.os_type, m.price_per_hour, m.tags) == (2, "linux", 0.061, {"web": ""})
    assert m.macs == ["06:a1:b2:c3:d4:e5"]
    listing = api.requests[0]
    assert listing.param("objectMask").startswith("mask[") and listing.param("resultLimit") == "0,100"
    assert listing.headers["Authorization"] == "Basic U0wxMjM0NTppYm0ta2V5"  # SL12345:ibm-key

    adapter.machine_action(Capability.START, "4711", {})
    assert api.requests[-1].path == "/rest/v3.1/SoftLayer_Virtual_Guest/4711/powerOn.json"


# ---- OnApp -----------------------------------------------------------------------------------
ONAPP_VM = {"virtual_machine": {
    "identifier": "k3h8ff2mqolkxy", "label": "db-1", "id": 12, "hostname": "db-1.local",
    "booted": False, "built": True, "locked": False, "suspended": False, "cpus": 2,
    "memory": 2048, "template_id": 7, "operating_system": "linux",
    "created_at": "2024-01-01T10:00:00+00:00", "price_per_hour": 0.05,
    "price_per_hour_powered_off": 0.01, "initial_root_password": "do-not-show",
    "remote_access_password": "vnc-pass", "service_password": "svc-pass",
    "ip_addresses": [{"ip_address": {"address": "203.0.113.40"}},
                     {"ip_address": {"address": "10.0.0.40"}}],
}}


def test_onapp_lists_hides_passwords_and_starts(api: FakeJsonApi) -> None:
    api.route("GET", "/virtual_machines.json", [ONAPP_VM])
    api.route("POST", "/virtual_machines/k3h8ff2mqolkxy/startup.json", {})
    adapter = against("onapp", api)

    [m] = adapter.list_machines()
    assert (m.external_id, m.name, m.state, m.cores) == ("k3h8ff2mqolkxy", "db-1", "stopped", 2)
    assert (m.public_ips, m.private_ips) == (["203.0.113.40"], ["10.0.0.40"])
    assert m.price_per_hour == 0.01  # the powered-off price
    shown = json.dumps(m.extra)
    assert "do-not-show" not in shown and "vnc-pass" not in shown and "svc-pass" not in shown
    assert api.requests[0].headers["Authorization"].startswith("Basic ")

    adapter.machine_action(Capability.START, "k3h8ff2mqolkxy", {})
    assert _last(api, "POST").path == "/virtual_machines/k3h8ff2mqolkxy/startup.json"


# ---- Azure (Resource Manager) ----------------------------------------------------------------
VM_ID = "/subscriptions/sub-1/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm1"
NIC_ID = "/subscriptions/sub-1/resourceGroups/rg1/providers/Microsoft.Network/networkInterfaces/nic1"
IP_ID = "/subscriptions/sub-1/resourceGroups/rg1/providers/Microsoft.Network/publicIPAddresses/ip1"
AZURE_VM = {
    "id": VM_ID, "name": "vm1", "location": "westeurope", "tags": {"env": "prod"},
    "zones": ["1"],
    "properties": {
        "vmId": "0f47b100-583c-48e3-a4c0-aefc2c9bbcc1", "provisioningState": "Succeeded",
        "timeCreated": "2024-01-02T03:04:05.1234567+00:00",
        "hardwareProfile": {"vmSize": "Standard_B1s"},
        "storageProfile": {"imageReference": {"publisher": "Canonical",
                                              "offer": "0001-com-ubuntu-server-jammy",
                                              "sku": "22_04-lts-gen2", "version": "latest"},
                           "osDisk": {"osType": "Linux", "name": "vm1-disk"}},
        "osProfile": {"computerName": "vm1", "adminUsername": "azureuser"},
        "networkProfile": {"networkInterfaces": [{"id": NIC_ID}]},
    },
}


def test_azure_lists_machines_and_restarts(api: FakeJsonApi) -> None:
    api.route("GET", "/subscriptions/sub-1/providers/Microsoft.Compute/virtualMachines",
              {"value": [AZURE_VM]})
    api.route("GET", re.escape(NIC_ID), {"id": NIC_ID, "name": "nic1", "location": "westeurope",
                                         "properties": {"ipConfigurations": [{"properties": {
                                             "privateIPAddress": "10.0.0.4",
                                             "publicIPAddress": {"id": IP_ID}}}]}})
    api.route("GET", re.escape(IP_ID), {"id": IP_ID, "name": "ip1",
                                        "properties": {"ipAddress": "20.1.2.3"}})
    api.route("GET", re.escape(VM_ID + "/InstanceView"), {"statuses": [
        {"code": "ProvisioningState/succeeded"}, {"code": "PowerState/deallocated"}]})
    api.route("POST", re.escape(VM_ID + "/restart"), {})
    adapter = against("azure", api)

    [m] = adapter.list_machines()
    assert (m.external_id, m.name, m.state, m.location) == (VM_ID, "vm1", "stopped", "westeurope")
    assert (m.public_ips, m.private_ips) == (["20.1.2.3"], ["10.0.0.4"])
    assert m.size == "Standard_B1s" and m.os_type == "linux" and m.tags == {"env": "prod"}
    assert m.image == "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"
    assert m.extra["resource_group"] == "rg1" and "properties" not in m.extra
    assert api.requests[0].headers["Authorization"] == "Bearer azure-token"

    adapter.machine_action(Capability.REBOOT, VM_ID, {})
    assert _last(api, "POST").path == VM_ID + "/restart"


# ---- Rackspace (identity v2.0 with an API key, then Cloud Servers' nova API) -----------------
RACK_TENANT = "123456"
RACK_SERVER = {
    "id": "ef08aa7a-b5e4-4bb8-86df-5ac56230f841", "name": "api-1", "status": "ACTIVE",
    "tenant_id": RACK_TENANT, "user_id": "284275", "hostId": "e7b8ae3e0ee4ff8f",
    "created": "2024-01-02T03:04:05Z", "updated": "2024-01-02T03:10:00Z",
    "accessIPv4": "198.51.100.7", "accessIPv6": "2001:db8::7", "progress": 100,
    "flavor": {"id": "general1-1", "links": []}, "image": {"id": "img-1", "links": []},
    "addresses": {"public": [{"addr": "198.51.100.7", "version": 4},
                             {"addr": "2001:db8::7", "version": 6}],
                  "private": [{"addr": "10.176.1.7", "version": 4}]},
    "metadata": {"env": "prod"}, "key_name": None, "adminPass": "root-pass",
    "OS-DCF:diskConfig": "AUTO", "OS-EXT-STS:power_state": 1,
    "OS-EXT-STS:task_state": None, "OS-EXT-STS:vm_state": "active", "links": [
        {"rel": "self", "href": "https://lon.servers.api.rackspacecloud.com/v2/123456/servers/"
                                "ef08aa7a-b5e4-4bb8-86df-5ac56230f841"},
        {"rel": "bookmark", "href": "https://lon.servers.api.rackspacecloud.com/123456/servers/"
                                    "ef08aa7a-b5e4-4bb8-86df-5ac56230f841"}],
}
RACK_FLAVOR = {"id": "general1-1", "name": "1 GB General Purpose v1", "ram": 1024, "disk": 20,
               "vcpus": 1, "swap": "", "rxtx_factor": 200.0, "links": [],
               "OS-FLV-EXT-DATA:ephemeral": 0}


def rackspace(api: FakeJsonApi) -> Any:
    """The adapter, signing in at the fake identity service, whose catalog sends Cloud
    Servers' calls (region LON) to the fake too."""
    api.route("POST", "/v2.0/tokens", {"access": {
        "token": {"id": "rax-token-1", "expires": "2099-01-01T00:00:00.000Z",
                  "tenant": {"id": RACK_TENANT, "name": RACK_TENANT}},
        "serviceCatalog": [
            {"name": "cloudServersOpenStack", "type": "compute", "endpoints": [
                {"region": "DFW", "tenantId": RACK_TENANT,
                 "publicURL": "https://dfw.servers.api.rackspacecloud.com/v2/" + RACK_TENANT},
                {"region": "LON", "tenantId": RACK_TENANT,
                 "publicURL": f"{api.url}/v2/{RACK_TENANT}"}]},
            {"name": "cloudFilesCDN", "type": "rax:object-cdn", "endpoints": [
                {"region": "LON", "tenantId": "MossoCloudFS_1",
                 "publicURL": "https://cdn.example/v1/MossoCloudFS_1"}]}],
        "user": {"id": "284275", "name": "rackuser", "roles": []}}})
    api.route("GET", f"/v2/{RACK_TENANT}/servers/detail", {"servers": [RACK_SERVER]})
    api.route("GET", f"/v2/{RACK_TENANT}/flavors/detail", {"flavors": [RACK_FLAVOR]})
    api.route("POST", f"/v2/{RACK_TENANT}/servers/[^/]+/action", None, status=202)
    api.route("DELETE", f"/v2/{RACK_TENANT}/servers/[^/]+", None, status=204)
    adapter = build("rackspace")
    adapter.conn.connection._ex_force_auth_url = api.url  # instead of identity.api.rackspacecloud.com
    return adapter


def test_rackspace_signs_in_with_the_api_key_lists_reboots_and_deletes(api: FakeJsonApi) -> None:
    adapter = rackspace(api)
    [m] = adapter.list_machines()
    sign_in, listing = api.requests[0], api.requests[1]
    assert (sign_in.method, sign_in.path) == ("POST", "/v2.0/tokens")
    assert sign_in.body == {"auth": {"RAX-KSKEY:apiKeyCredentials": {
        "username": "rackuser", "apiKey": "rack-key"}}}
    assert (listing.method, listing.path) == ("GET", f"/v2/{RACK_TENANT}/servers/detail")
    assert listing.headers["X-Auth-Token"] == "rax-token-1"
    assert (m.external_id, m.name, m.state, m.location) == (RACK_SERVER["id"], "api-1",
                                                            "running", "lon")
    assert "198.51.100.7" in m.public_ips and m.private_ips == ["10.176.1.7"]
    assert (m.size, m.image, m.tags) == ("general1-1", "img-1", {"env": "prod"})
    assert "root-pass" not in json.dumps(m.extra)

    api.requests.clear()
    adapter.machine_action(Capability.REBOOT, RACK_SERVER["id"], {})
    reboot = _last(api, "POST")
    assert reboot.path == f"/v2/{RACK_TENANT}/servers/{RACK_SERVER['id']}/action"
    assert reboot.body == {"reboot": {"type": "SOFT"}}
    assert [r.path for r in api.only("POST")] == [reboot.path]  # the token is reused
    adapter.machine_action(Capability.REBOOT, RACK_SERVER["id"], {"hard": True})
    assert _last(api, "POST").body == {"reboot": {"type": "HARD"}}

    adapter.machine_action(Capability.DESTROY, RACK_SERVER["id"], {})
    delete = _last(api, "DELETE")
    assert (delete.path, delete.body) == (f"/v2/{RACK_TENANT}/servers/{RACK_SERVER['id']}", "")

    sent = len(api.requests)
    for action in (Capability.START, Capability.STOP):  # Rackspace has neither
        with pytest.raises(Invalid, match="does not support"):
            adapter.machine_action(action, RACK_SERVER["id"], {})
    assert len(api.requests) == sent  # refused before any call


def test_rackspace_a_refused_api_key_names_it(api: FakeJsonApi) -> None:
    adapter = rackspace(api)
    api.route("POST", "/v2.0/tokens", {"unauthorized": {
        "code": 401, "message": "Username or api key is invalid."}}, status=401)
    with pytest.raises(CredentialsRefused) as err:
        adapter.list_machines()
    assert err.value.details["field"] == "credentials.apikey" and "rack-key" not in str(
        err.value.to_dict())


# ---- CloudSigma (API 2.0) --------------------------------------------------------------------
SIGMA_SERVER = {
    "uuid": "4a1d3e8f-0a6f-4d2c-9cbb-2f3b6e1c7d10", "name": "db-1", "status": "running",
    "cpu": 4000, "mem": 4294967296, "vnc_password": "vnc-secret", "meta": {"env": "prod"},
    "runtime": {"active_since": "2024-01-01T10:00:00+00:00"},
    "drives": [{"boot_order": 1, "dev_channel": "0:0", "device": "virtio",
                "drive": {"uuid": "d7d3b0c1-1111-4222-8333-944455566677",
                          "resource_uri": "/api/2.0/drives/d7d3b0c1-1111-4222-8333-944455566677/"}}],
    "nics": [{"mac": "22:aa:bb:cc:dd:ee", "model": "virtio", "vlan": None,
              "ip_v4_conf": {"conf": "dhcp", "ip": None}, "ip_v6_conf": None,
              "runtime": {"interface_type": "public", "ip_v4": {"uuid": "185.12.6.7"},
                          "ip_v6": None}}],
}
SIGMA_DRIVE = {"uuid": "d7d3b0c1-1111-4222-8333-944455566677", "name": "db-1 disk",
               "size": 21474836480, "media": "disk", "status": "mounted",
               "storage_type": "dssd", "mounted_on": [{"uuid": SIGMA_SERVER["uuid"]}],
               "meta": {"distribution": "Ubuntu", "version": "22.04", "arch": "64"}}


def test_cloudsigma_lists_starts_stops_reboots_and_deletes(api: FakeJsonApi) -> None:
    sid = SIGMA_SERVER["uuid"]
    api.route("GET", "/api/2.0/servers/detail/", {"meta": {"total_count": 1, "limit": 0},
                                                  "objects": [SIGMA_SERVER]})
    api.route("GET", f"/api/2.0/drives/{SIGMA_DRIVE['uuid']}/", SIGMA_DRIVE)
    api.route("POST", f"/api/2.0/servers/{sid}/action/",
              lambda r: {"action": r.param("do"), "result": "success", "uuid": sid}, status=202)
    api.route("DELETE", f"/api/2.0/servers/{sid}/", None, status=204)
    adapter = against("cloudsigma", api)

    [m] = adapter.list_machines()
    listing = api.requests[0]
    assert (listing.method, listing.path, listing.param("limit")) == (
        "GET", "/api/2.0/servers/detail/", "0")
    # Basic me@example.com:cs-pass
    assert listing.headers["Authorization"] == "Basic bWVAZXhhbXBsZS5jb206Y3MtcGFzcw=="
    assert (m.external_id, m.name, m.state, m.cores) == (sid, "db-1", "running", 2)
    assert (m.public_ips, m.macs, m.location) == (["185.12.6.7"], ["22:aa:bb:cc:dd:ee"], "fra")
    assert m.extra["image_name"] == "Ubuntu 22.04" and "vnc-secret" not in json.dumps(m.extra)

    def sent(capability: Capability) -> list[tuple[str, str, str]]:
        api.requests.clear()
        adapter.machine_action(capability, sid, {})
        return [(r.method, r.path, r.param("do")) for r in api.requests
                if r.method != "GET"]

    action = f"/api/2.0/servers/{sid}/action/"
    assert sent(Capability.STOP) == [("POST", action, "stop")]
    assert sent(Capability.START) == [("POST", action, "start")]
    # CloudSigma has no reboot call: a running server is stopped, then started
    assert sent(Capability.REBOOT) == [("POST", action, "stop"), ("POST", action, "start")]
    assert sent(Capability.DESTROY) == [("DELETE", f"/api/2.0/servers/{sid}/", "")]
    assert all(r.body in ("", None) for r in api.requests)


def test_cloudsigma_a_refused_password_names_it(api: FakeJsonApi) -> None:
    api.route("GET", "/api/2.0/servers/detail/", [{"error_type": "permission",
                                                   "error_message": "Invalid credentials",
                                                   "error_point": None}], status=401)
    with pytest.raises(CredentialsRefused) as err:
        against("cloudsigma", api).list_machines()
    assert err.value.details["field"] == "credentials.password"
    assert "cs-pass" not in str(err.value.to_dict())


# ---- Google Compute Engine (its REST API, with a token handed out: see ``offline``) ----------
GCE = "/compute/v1/projects/proj-1"
GCE_URL = "https://www.googleapis.com" + GCE
GCE_ZONE = {"id": "2231", "name": "europe-west1-b", "status": "UP",
            "region": GCE_URL + "/regions/europe-west1", "selfLink": GCE_URL + "/zones/europe-west1-b"}
GCE_INSTANCE = {
    "id": "8123456789012345678", "name": "web-1", "status": "RUNNING",
    "zone": GCE_URL + "/zones/europe-west1-b",
    "machineType": GCE_URL + "/zones/europe-west1-b/machineTypes/e2-small",
    "creationTimestamp": "2024-01-10T01:02:03.000-08:00", "cpuPlatform": "AMD Rome",
    "tags": {"items": ["http-server"], "fingerprint": "42WmSpB8rSM="},
    "labels": {"team": "web"}, "labelFingerprint": "abc=",
    "metadata": {"items": [{"key": "startup-script", "value": "TOKEN=hunter2"}]},
    "networkInterfaces": [{"networkIP": "10.132.0.5", "accessConfigs": [
        {"type": "ONE_TO_ONE_NAT", "name": "External NAT", "natIP": "34.76.1.2"}]}],
    "disks": [{"boot": True, "type": "PERSISTENT", "deviceName": "web-1",
               "source": GCE_URL + "/zones/europe-west1-b/disks/web-1"}],
    "scheduling": {"preemptible": False}, "selfLink": GCE_URL + "/zones/europe-west1-b/instances/web-1",
}
GCE_DISK = {"id": "77", "name": "web-1", "sizeGb": "10", "status": "READY",
            "zone": GCE_URL + "/zones/europe-west1-b",
            "sourceImage": GCE_URL.replace("proj-1", "debian-cloud") + "/global/images/debian-12",
            "type": GCE_URL + "/zones/europe-west1-b/diskTypes/pd-balanced"}


def test_google_lists_and_acts_through_operations(api: FakeJsonApi) -> None:
    zone = f"{GCE}/zones/europe-west1-b"
    api.route("GET", f"{GCE}/aggregated/instances",
              {"items": {"zones/europe-west1-b": {"instances": [GCE_INSTANCE]}}})
    api.route("GET", f"{GCE}/aggregated/disks",
              {"items": {"zones/europe-west1-b": {"disks": [GCE_DISK]}}})
    api.route("GET", f"{GCE}/zones", {"items": [GCE_ZONE]})
    api.route("GET", f"{zone}/machineTypes", {"items": [{
        "id": "334002", "name": "e2-small", "guestCpus": 2, "memoryMb": 2048,
        "zone": "europe-west1-b", "selfLink": GCE_URL + "/zones/europe-west1-b/machineTypes/e2-small"}]})

    def operation(r: Recorded) -> dict[str, Any]:  # each action answers a running operation
        name = f"operation-{len(api.requests)}"
        return {"kind": "compute#operation", "name": name, "status": "RUNNING",
                "operationType": r.path.rsplit("/", 1)[-1], "targetLink": GCE_URL,
                "selfLink": f"{GCE_URL}/zones/europe-west1-b/operations/{name}"}

    for method, path in (("POST", f"{zone}/instances/web-1/(start|stop|reset)"),
                         ("DELETE", f"{zone}/instances/web-1")):
        api.route(method, path, operation)
    api.route("GET", f"{zone}/operations/.+", lambda r: {
        "kind": "compute#operation", "name": r.path.rsplit("/", 1)[-1], "status": "DONE",
        "selfLink": GCE_URL + r.path.removeprefix(GCE)})
    adapter = against("google", api)

    [m] = adapter.list_machines()
    assert (api.requests[0].method, api.requests[0].path) == ("GET", f"{GCE}/aggregated/instances")
    assert api.requests[0].headers["Authorization"] == "Bearer google-token"
    assert (m.external_id, m.name, m.state, m.location) == ("8123456789012345678", "web-1",
                                                            "running", "europe-west1-b")
    assert (m.public_ips, m.private_ips, m.size, m.cores) == (["34.76.1.2"], ["10.132.0.5"],
                                                              "e2-small", 2)
    assert m.tags == {"team": "web"} and "hunter2" not in json.dumps(m.extra)

    def sent(capability: Capability) -> list[tuple[str, str]]:
        api.requests.clear()
        adapter.machine_action(capability, "8123456789012345678", {})
        return [(r.method, r.path) for r in api.requests
                if not r.path.endswith(("/aggregated/instances", "/aggregated/disks"))]

    for capability, verb in ((Capability.STOP, "stop"), (Capability.START, "start"),
                             (Capability.REBOOT, "reset")):
        calls = sent(capability)
        assert calls[0] == ("POST", f"{zone}/instances/web-1/{verb}"), calls
        # then the operation it answered is polled until it is DONE
        assert calls[1:] == [("GET", f"{zone}/operations/operation-{calls_index(api, verb)}")]
    calls = sent(Capability.DESTROY)
    assert calls[0] == ("DELETE", f"{zone}/instances/web-1")
    assert calls[1][0] == "GET" and calls[1][1].startswith(f"{zone}/operations/")


def calls_index(api: FakeJsonApi, verb: str) -> int:
    """The number the fake gave the operation of the last ``verb`` call."""
    for i, r in enumerate(api.requests):
        if r.path.endswith("/" + verb):
            return i + 1
    raise AssertionError(f"no {verb} call")


# ---- Alibaba Cloud ECS (RPC API: ``?Action=...``, signed, XML answers) -----------------------
def _percent(text: str) -> str:
    """Alibaba's percent-encoding for signatures (RFC 3986 unreserved characters kept)."""
    from urllib.parse import quote

    return quote(text, safe="-_.~")


def alibaba_signature(query: dict[str, list[str]], secret: str, method: str = "GET") -> str:
    """The request's signature as Alibaba documents it (signature version 1.0, HMAC-SHA1):
    the sorted, percent-encoded parameters but ``Signature``, signed with ``secret&``."""
    import base64
    import hashlib
    import hmac

    pairs = sorted((k, v[0]) for k, v in query.items() if k != "Signature")
    canonical = "&".join(f"{_percent(k)}={_percent(v)}" for k, v in pairs)
    to_sign = f"{method}&{_percent('/')}&{_percent(canonical)}"
    digest = hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _ecs_instance(status: str) -> str:
    return f"""<Instance>
  <InstanceId>i-gw8abc123</InstanceId><InstanceName>web-1</InstanceName>
  <Status>{status}</Status><RegionId>eu-central-1</RegionId><ZoneId>eu-central-1a</ZoneId>
  <InstanceType>ecs.g6.large</InstanceType><ImageId>ubuntu_22_04_x64_20G_alibase.vhd</ImageId>
  <HostName>web-1</HostName><CreationTime>2024-01-01T10:00Z</CreationTime>
  <Cpu>2</Cpu><Memory>8192</Memory><InstanceChargeType>PostPaid</InstanceChargeType>
  <PublicIpAddress><IpAddress>47.91.1.2</IpAddress></PublicIpAddress>
  <InnerIpAddress></InnerIpAddress>
  <VpcAttributes><VpcId>vpc-1</VpcId><VSwitchId>vsw-1</VSwitchId>
    <PrivateIpAddress><IpAddress>172.16.0.5</IpAddress></PrivateIpAddress>
    <NatIpAddress></NatIpAddress></VpcAttributes>
  <EipAddress><AllocationId></AllocationId><IpAddress></IpAddress>
    <InternetChargeType></InternetChargeType><Bandwidth>0</Bandwidth></EipAddress>
  <OperationLocks></OperationLocks>
</Instance>"""


class FakeEcs:
    """ECS as documented for the calls the adapter makes: DescribeInstances (paged),
    Start/Stop/Reboot/DeleteInstance, each checked for its signature; the instance's status
    follows the actions, as ECS's does once an action completes."""

    def __init__(self) -> None:
        self.status = "Running"
        self.bad_signatures = 0

    def __call__(self, r: Recorded) -> Any:
        if r.param("Signature") != alibaba_signature(r.query, "ali-secret"):
            self.bad_signatures += 1
            return 400, b"<Error><Code>SignatureDoesNotMatch</Code></Error>"
        action, request_id = r.param("Action"), "<RequestId>5E0D3C8A</RequestId>"
        if action == "DescribeInstances":
            instances = "" if self.status == "Deleted" else _ecs_instance(self.status)
            total = 0 if self.status == "Deleted" else 1
            return (f"<DescribeInstancesResponse>{request_id}<TotalCount>{total}</TotalCount>"
                    f"<PageNumber>1</PageNumber><PageSize>10</PageSize>"
                    f"<Instances>{instances}</Instances></DescribeInstancesResponse>").encode()
        self.status = {"StartInstance": "Running", "StopInstance": "Stopped",
                       "RebootInstance": "Running", "DeleteInstance": "Deleted"}[action]
        return f"<{action}Response>{request_id}</{action}Response>".encode()


def test_alibaba_lists_and_acts_with_signed_requests(api: FakeJsonApi) -> None:
    ecs = FakeEcs()
    api.route("GET", "/", ecs, headers={"Content-Type": "text/xml"})
    adapter = against("alibaba", api)

    [m] = adapter.list_machines()
    listing = api.requests[0]
    assert (listing.method, listing.path, listing.param("Action")) == ("GET", "/",
                                                                       "DescribeInstances")
    assert (listing.param("RegionId"), listing.param("AccessKeyId")) == ("eu-central-1", "LTAI-id")
    assert (listing.param("Format"), listing.param("Version")) == ("XML", "2014-05-26")
    assert listing.param("SignatureMethod") == "HMAC-SHA1" and ecs.bad_signatures == 0
    assert "ali-secret" not in json.dumps(listing.query)
    assert (m.external_id, m.name, m.state, m.location) == ("i-gw8abc123", "web-1", "running",
                                                            "eu-central-1a")
    assert (m.public_ips, m.private_ips, m.size) == (["47.91.1.2"], ["172.16.0.5"],
                                                     "ecs.g6.large")

    def sent(capability: Capability) -> list[tuple[str, str]]:
        api.requests.clear()
        adapter.machine_action(capability, "i-gw8abc123", {})
        return [(r.param("Action"), r.param("InstanceId") or r.param("InstanceIds"))
                for r in api.requests]

    described = ("DescribeInstances", "")
    waited = ("DescribeInstances", '["i-gw8abc123"]')  # the driver waits for the new status
    assert sent(Capability.STOP) == [described, ("StopInstance", "i-gw8abc123"), waited]
    assert api.requests[1].param("ForceStop") == "false"
    assert sent(Capability.START) == [described, ("StartInstance", "i-gw8abc123"), waited]
    assert sent(Capability.REBOOT) == [described, ("RebootInstance", "i-gw8abc123"), waited]
    # a running instance is stopped (and waited for) before it is deleted
    assert sent(Capability.DESTROY) == [described, waited, ("StopInstance", "i-gw8abc123"),
                                        waited, waited, ("DeleteInstance", "i-gw8abc123")]
    assert ecs.status == "Deleted" and ecs.bad_signatures == 0


def test_alibaba_a_wrong_secret_is_refused_naming_it(api: FakeJsonApi) -> None:
    api.route("GET", "/", lambda r: (400, (
        b"<Error><RequestId>1</RequestId><HostId>ecs.aliyuncs.com</HostId>"
        b"<Code>SignatureDoesNotMatch</Code><Message>Specified signature is not matched with "
        b"our calculation.</Message></Error>")), headers={"Content-Type": "text/xml"})
    with pytest.raises(CredentialsRefused) as err:
        against("alibaba", api).list_machines()
    assert err.value.details["field"] == "credentials.apisecret"
    assert "SignatureDoesNotMatch" in err.value.message


# ---- a refused key ---------------------------------------------------------------------------
REFUSALS = {  # each API's documented answer to a bad token
    "linode": {"errors": [{"reason": "Invalid Token"}]},
    "vultr": {"error": "Invalid API token.", "status": 401},
    "equinix": {"errors": ["Invalid authentication token"]},
    "ibm": {"error": "Invalid API token.", "code": "SoftLayer_Exception_InvalidLegacyToken"},
    "onapp": {"errors": ["Invalid login or password"]},
    "azure": {"error": {"code": "InvalidAuthenticationToken",
                        "message": "The access token is invalid."}},
}


# the credential field each one's refusal names (the token, or the secret of a pair)
REFUSED_FIELD = {"linode": "apikey", "vultr": "apikey", "equinix": "apikey", "ibm": "apikey",
                 "onapp": "apikey", "azure": "secret"}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_a_refused_key_is_an_auth_error(name: str) -> None:
    with FakeJsonApi(default_status=401, default_body=REFUSALS[name]) as api:
        adapter = against(name, api)
        with pytest.raises(CredentialsRefused) as err:
            adapter.list_machines()
    assert name in err.value.message and err.value.details["provider"] == name
    assert err.value.status == 422 and err.value.code == "provider_auth"
    assert err.value.details["field"] == f"credentials.{REFUSED_FIELD[name]}"
    assert f"({REFUSED_FIELD[name]})" in err.value.message  # which, in the words too
    for secret in FIELDS[name][1].values():
        assert secret not in err.value.message


@pytest.mark.parametrize(("answer", "field"), [
    ("AADSTS7000215: Invalid client secret provided.", "secret"),
    ("AADSTS7000222: The provided client secret keys for app 'x' are expired.", "secret"),
    ("AADSTS700016: Application with identifier 'app-1' was not found in the directory.", "key"),
    ("AADSTS90002: Tenant 'tenant-1' not found.", "tenantId"),
    ("something else entirely", "secret"),
])
def test_azure_sign_in_refusals_name_their_field(answer: str, field: str) -> None:
    from libcloud.common.azure_arm import AzureResourceManagementConnection
    from libcloud.common.exceptions import BaseHTTPError

    def refuse(self: Any) -> None:
        raise BaseHTTPError(400 if "AADSTS9" in answer else 401, answer)

    original = AzureResourceManagementConnection.get_token_from_credentials
    AzureResourceManagementConnection.get_token_from_credentials = refuse  # type: ignore[method-assign]
    try:
        with pytest.raises(CredentialsRefused) as err:
            build("azure").check()
    finally:
        AzureResourceManagementConnection.get_token_from_credentials = original  # type: ignore[method-assign]
    assert err.value.details["field"] == f"credentials.{field}"
    assert "az-secret" not in err.value.message


@pytest.mark.parametrize(("status", "body", "field"), [
    (400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
     "privateKey"),
    (400, {"error": "invalid_grant", "error_description": "Invalid grant: account not found"},
     "email"),
])
def test_google_token_refusals_name_their_field(monkeypatch: pytest.MonkeyPatch, status: int,
                                                body: dict[str, str], field: str) -> None:
    """The real signed-assertion token request, answered by a fake of Google's token endpoint
    as documented for a service account."""
    from libcloud.common.google import GoogleBaseAuthConnection

    monkeypatch.undo()  # no handed-out token here: the driver asks for one
    with FakeJsonApi(default_status=status, default_body=body) as api:
        real = GoogleBaseAuthConnection._token_request

        def to_fake(self: Any, request_body: dict[str, str]) -> Any:
            redirect(self, api)
            return real(self, request_body)

        monkeypatch.setattr(GoogleBaseAuthConnection, "_token_request", to_fake)
        adapter = registry.build("google", dict(FIELDS["google"][0]), dict(FIELDS["google"][1]),
                                 5.0)
        with pytest.raises(CredentialsRefused) as err:
            adapter.check()
        [token] = api.requests
    assert (token.method, token.path) == ("POST", "/o/oauth2/token")
    assert "grant_type" in str(token.body) and "assertion" in str(token.body)
    assert err.value.details["field"] == f"credentials.{field}"


# ---- translations of drivers without a JSON fake ---------------------------------------------
def _node(adapter: Any, **kw: Any) -> Any:
    from libcloud.compute.base import Node

    args: dict[str, Any] = {"id": "n1", "name": "n1", "state": "running", "public_ips": [],
                            "private_ips": [], "driver": adapter.conn}
    return Node(**{**args, **kw})


def test_cloudsigma_hides_the_vnc_password() -> None:
    adapter = build("cloudsigma")
    node = _node(adapter, image="Ubuntu 22.04", extra={
        "cpus": 2.0, "memory": 2048, "vnc_password": "vnc-secret", "meta": {}, "drives": [],
        "runtime": {}, "nics": [{"mac": "22:aa:bb:cc:dd:ee"}]})
    m: MachineRecord = adapter.to_machine(node)
    assert "vnc-secret" not in json.dumps(m.extra)
    assert (m.location, m.cores, m.image, m.macs) == ("fra", 2, "", ["22:aa:bb:cc:dd:ee"])
    assert [loc.external_id for loc in adapter.list_locations()] == ["fra"]


def test_rackspace_hides_the_admin_password_and_reads_flavor_and_metadata() -> None:
    adapter = build("rackspace")
    adapter._prices = {"general1-1": 0.037}
    node = _node(adapter, extra={"password": "root-pass", "flavorId": "general1-1",
                                 "imageId": "img-1", "metadata": {"env": "dev"}})
    m = adapter.to_machine(node)
    assert "root-pass" not in json.dumps(m.extra)
    assert (m.size, m.image, m.location, m.tags, m.price_per_hour) == (
        "general1-1", "img-1", "lon", {"env": "dev"}, 0.037)


def test_google_reads_zone_labels_and_zone_prices_but_not_metadata() -> None:
    from libcloud.compute.base import NodeSize

    adapter = build("google")
    zone = type("Zone", (), {"name": "europe-west1-b"})()
    size = NodeSize("1", "e2-small", 2048, 10, 0, 0.0167, adapter.conn, extra={"guestCpus": 2})
    adapter._zone_sizes = {"europe-west1-b": {"e2-small": size}}
    node = _node(adapter, size="e2-small", image="debian-12-bookworm-v20240110", extra={
        "zone": zone, "labels": {"team": "web"}, "tags": ["http-server"],
        "metadata": {"items": [{"key": "startup-script", "value": "TOKEN=hunter2"}]},
        "creationTimestamp": "2024-01-10T01:02:03.000-08:00", "status": "RUNNING"})
    m = adapter.to_machine(node)
    assert (m.location, m.size, m.cores, m.price_per_hour) == ("europe-west1-b", "e2-small", 2,
                                                               0.0167)
    assert m.tags == {"team": "web"} and m.extra["network_tags"] == ["http-server"]
    assert "hunter2" not in json.dumps(m.extra)


@pytest.mark.parametrize(("status", "body", "raised", "field"), [
    (404, {"code": "InvalidAccessKeyId.NotFound", "message": "Specified access key is not found."},
     CredentialsRefused, "credentials.apikey"),
    (400, {"code": "SignatureDoesNotMatch", "message": "Specified signature is not matched."},
     CredentialsRefused, "credentials.apisecret"),
    (403, {"code": "Forbidden.RAM", "message": "User not authorized to operate on the resource."},
     CredentialsRefused, "credentials.apikey"),
    (404, {"code": "InvalidRegionId.NotFound", "message": "The specified RegionId does not exist."},
     Invalid, "region"),
    (404, {"code": "InvalidInstanceId.NotFound", "message": "The instance does not exist."},
     NotFound, None),
])
def test_alibaba_reads_the_error_code_not_only_the_status(status: int, body: dict[str, str],
                                                          raised: type[Exception],
                                                          field: str | None) -> None:
    from libcloud.common.exceptions import BaseHTTPError

    adapter = build("alibaba")

    def fail() -> None:  # what the ECS driver raises: the str() of the parsed error
        raise BaseHTTPError(status, str({**body, "request_id": "r", "host_id": "h"}))

    with pytest.raises(raised) as err:
        adapter._call("listing machines", fail)
    assert body["code"] in str(err.value)
    assert isinstance(err.value, OvercastError) and err.value.details.get("field") == field


def test_alibaba_sizes_are_in_mib_and_locations_are_zones() -> None:
    from libcloud.compute.base import NodeSize

    adapter = build("alibaba")
    # as the ECS driver makes it: MemorySize (GiB, a float) as ram, no disk, no price
    fields: dict[str, Any] = {"id": "ecs.g6.large", "name": "ecs.g6.large", "ram": 8.0,
                              "disk": None, "bandwidth": None, "price": None}
    size = NodeSize(**fields, driver=adapter.conn, extra={"cpu_core_count": 2})
    record = adapter.to_size(size)
    assert (record.ram_mb, record.cpus, record.price_per_hour) == (8192, 2, None)
    node = _node(adapter, extra={"zone_id": "eu-central-1a", "instance_type": "ecs.g6.large",
                                 "image_id": "ubuntu_22_04_x64", "hostname": "h1",
                                 "creation_time": "2024-01-01T10:00Z"})
    m = adapter.to_machine(node)
    assert (m.location, m.size, m.image, m.hostname) == ("eu-central-1a", "ecs.g6.large",
                                                         "ubuntu_22_04_x64", "h1")


def _last(api: FakeJsonApi, method: str) -> Recorded:
    return api.only(method)[-1]


def test_adapters_are_adapters() -> None:
    for name in NAMES:
        assert issubclass(registry.adapter_class(registry.spec(name)), Adapter)
