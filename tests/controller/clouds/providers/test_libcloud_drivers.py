"""The ten providers wired through libcloud drivers (azure, google, cloudsigma, alibaba,
equinix, ibm, linode, rackspace, vultr, onapp): their specs against Mist's credential schemas,
the drivers their fields build, and, for the plain JSON APIs, the HTTP requests their
adapters send and the answers they translate, against a recording server on loopback.

No test leaves this machine: drivers that sign in while they are built (Azure, Google) get
their token call replaced; every other request goes to ``FakeJsonApi`` on 127.0.0.1."""

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
from controller.errors import Invalid, NotFound, ProviderAuthError
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


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_a_refused_key_is_an_auth_error(name: str) -> None:
    with FakeJsonApi(default_status=401, default_body=REFUSALS[name]) as api:
        adapter = against(name, api)
        with pytest.raises(ProviderAuthError) as err:
            adapter.list_machines()
    assert name in err.value.message and err.value.details["provider"] == name
    for secret in FIELDS[name][1].values():
        assert secret not in err.value.message


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


@pytest.mark.parametrize(("status", "body", "raised"), [
    (404, {"code": "InvalidAccessKeyId.NotFound", "message": "Specified access key is not found."},
     ProviderAuthError),
    (400, {"code": "SignatureDoesNotMatch", "message": "Specified signature is not matched."},
     ProviderAuthError),
    (404, {"code": "InvalidRegionId.NotFound", "message": "The specified RegionId does not exist."},
     Invalid),
    (404, {"code": "InvalidInstanceId.NotFound", "message": "The instance does not exist."},
     NotFound),
])
def test_alibaba_reads_the_error_code_not_only_the_status(status: int, body: dict[str, str],
                                                          raised: type[Exception]) -> None:
    from libcloud.common.exceptions import BaseHTTPError

    adapter = build("alibaba")

    def fail() -> None:  # what the ECS driver raises: the str() of the parsed error
        raise BaseHTTPError(status, str({**body, "request_id": "r", "host_id": "h"}))

    with pytest.raises(raised) as err:
        adapter._call("listing machines", fail)
    assert body["code"] in str(err.value)


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
