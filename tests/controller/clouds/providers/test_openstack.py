"""The OpenStack adapter against a local stand-in of keystone, nova, glance, neutron and
cinder (tests/support/fake_openstack.py), over HTTP through libcloud: servers, volumes,
networks, flavors, images and zones as a user sees them, and the errors a user gets."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.clouds.providers import registry
from controller.clouds.providers.base import Capability, CreateMachine, Unsupported
from controller.clouds.providers.openstack import SPEC
from controller.clouds.providers.openstack.adapter import OpenStackAdapter
from controller.clouds.providers.openstack.driver import auth_base
from controller.errors import Conflict, CredentialsRefused, Invalid, NotFound, ProviderError
from tests.support.fake_openstack import FakeServer, fingerprint, start_fake_openstack

C = "/compute/v2.1"


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = start_fake_openstack()
    yield server
    server.stop()


def adapter(server: FakeServer, password: str | None = None, **config: str) -> OpenStackAdapter:
    cfg = {"authUrl": server.url, "user": server.user, "tenant": server.tenant, **config}
    return OpenStackAdapter(cfg, {"password": server.password if password is None else password}, 5.0)


@pytest.fixture
def os_(fake: FakeServer) -> Iterator[OpenStackAdapter]:
    a = adapter(fake)
    yield a
    a.close()


def image_id(fake: FakeServer, name: str = "ubuntu-22.04") -> str:
    return str(next(i["id"] for i in fake.state.images if i["name"] == name))


def create(os_: OpenStackAdapter, fake: FakeServer, name: str = "web-1", **kw: Any) -> str:
    req = CreateMachine(name=name, size="1", image=image_id(fake))
    for k, v in kw.items():
        setattr(req, k, v)
    return os_.create_machine(req).external_id


def sent(fake: FakeServer, method: str, path: str) -> list[dict[str, Any]]:
    return [b for m, p, b in fake.state.requests if m == method and p.split("?")[0] == path]


def public_key() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return raw.decode() + " alice@laptop"


# -- spec, login ----------------------------------------------------------------------------------
def test_spec_is_registered_with_mist_fields(fake: FakeServer) -> None:
    assert registry.spec("openstack") is SPEC
    fields = {f.name: f for f in SPEC.fields}
    assert [n for n, f in fields.items() if f.required] == ["authUrl", "user", "password"]
    assert [n for n, f in fields.items() if f.secret] == ["password"]
    a = registry.build("openstack", {"authUrl": fake.url, "user": fake.user,
                                     "tenant": fake.tenant}, {"password": fake.password}, 5.0)
    a.check()
    assert fake.state.auth_count == 1


def test_auth_url_with_or_without_version() -> None:
    assert auth_base("https://k.example:5000/v3/") == "https://k.example:5000"
    assert auth_base("https://k.example/identity/v3") == "https://k.example/identity"
    assert auth_base("https://k.example/identity") == "https://k.example/identity"
    with pytest.raises(Invalid) as err:
        auth_base("k.example:5000")
    assert err.value.details["field"] == "authUrl"


def test_a_wrong_password_is_refused_by_keystone_in_words(fake: FakeServer) -> None:
    for a in (adapter(fake, password="Wr0ng-Pa55word"), adapter(fake, tenant="other-project")):
        with pytest.raises(CredentialsRefused) as err:
            a.list_machines()
        assert "keystone" in err.value.message
        assert err.value.details["field"] == "credentials.password" and err.value.status == 422
        assert "Wr0ng-Pa55word" not in str(err.value.to_dict())
    assert fake.state.auth_count == 0
    with pytest.raises(Invalid) as no_tenant:
        adapter(fake, tenant="").check()
    assert no_tenant.value.details["field"] == "tenant"


def test_a_revoked_token_is_replaced_once(fake: FakeServer, os_: OpenStackAdapter) -> None:
    os_.list_machines()
    assert fake.state.auth_count == 1
    fake.state.tokens.clear()  # keystone revoked every token
    assert os_.list_machines() == []
    assert fake.state.auth_count == 2


def test_region_and_compute_endpoint(fake: FakeServer) -> None:
    assert adapter(fake, region="RegionOne").list_machines() == []
    with pytest.raises(ProviderError, match="endpoint"):
        adapter(fake, region="RegionTwo").list_machines()
    # nova at the given URL, the other services still from the catalog
    moved = adapter(fake, computeEndpoint=f"{fake.base_url}/elsewhere/v2.1")
    with pytest.raises(NotFound):
        moved.list_machines()
    assert [n.name for n in moved.list_networks()] == ["private", "public"]
    assert adapter(fake, computeEndpoint=f"{fake.base_url}{C}").list_machines() == []


# -- catalogue ------------------------------------------------------------------------------------
def test_flavors_images_and_zones(fake: FakeServer) -> None:
    fake.state.zones.append("az-2")
    server = start_fake_openstack(page_cap=2, state=fake.state)
    try:
        a = adapter(server)
        sizes = {s.name: s for s in a.list_sizes()}
        assert (sizes["m1.medium"].cpus, sizes["m1.medium"].ram_mb, sizes["m1.medium"].disk_gb) == (2, 4096, 40)
        assert sizes["m1.medium"].price_per_hour is None  # OpenStack publishes no prices
        images = a.list_images()  # three images, two a page, through glance's "next"
        assert [i.name for i in images] == [i["name"] for i in fake.state.images]
        assert images[0].os_type == "linux"
        assert len(sent(server, "GET", "/image/v2/images")) == 2
        assert [z.external_id for z in a.list_locations()] == ["nova", "az-2"]
    finally:
        server.stop()


# -- servers --------------------------------------------------------------------------------------
def test_create_imports_the_key_once_and_sends_user_data_metadata_and_zone(
        fake: FakeServer, os_: OpenStackAdapter) -> None:
    key = public_key()
    made = os_.create_machine(CreateMachine(
        name="web-1", size="2", image=image_id(fake), location="nova", public_key=key,
        cloud_init="#cloud-config\n", tags={"env": "prod"}))
    assert (made.state, made.size, made.location, made.tags) == ("pending", "2", "nova", {"env": "prod"})
    [kp] = fake.state.keypairs.values()
    assert kp["fingerprint"] == fingerprint(key)
    body = sent(fake, "POST", f"{C}/servers")[0]["server"]
    assert body["key_name"] == kp["name"] and body["availability_zone"] == "nova"
    assert base64.b64decode(body["user_data"]) == b"#cloud-config\n"
    assert body["metadata"] == {"env": "prod"}

    create(os_, fake, "web-2", public_key=key)
    assert len(fake.state.keypairs) == 1
    listed = {m.name: m for m in os_.list_machines()}
    web = listed["web-1"]
    assert web.state == "running" and web.external_id == made.external_id
    assert web.private_ips == ["10.0.0.10"] and web.macs[0].startswith("fa:16:3e:")
    assert web.cores == 1 and web.image == image_id(fake)


def test_create_errors_say_what_is_wrong(fake: FakeServer, os_: OpenStackAdapter) -> None:
    with pytest.raises(Invalid) as no_size:
        create(os_, fake, size="")
    assert no_size.value.details["field"] == "size"
    with pytest.raises(Invalid, match="flavorRef"):
        create(os_, fake, size="42")
    with pytest.raises(Invalid, match="image"):
        create(os_, fake, image="no-such-image")
    with pytest.raises(Invalid, match="availability zone"):
        create(os_, fake, location="az-9")
    net = fake.state.add_network("second")
    fake.state.add_subnet(net, "second-subnet", "10.9.0.0/24")
    with pytest.raises(Conflict, match="Multiple possible networks"):
        create(os_, fake)
    create(os_, fake, extra={"networks": [net["id"]], "security_groups": ["default"]})
    body = sent(fake, "POST", f"{C}/servers")[-1]["server"]
    assert body["networks"] == [{"uuid": net["id"]}]
    assert body["security_groups"] == [{"name": "default"}]
    assert os_.list_machines()[0].private_ips == ["10.9.0.10"]


def test_server_lifecycle(fake: FakeServer, os_: OpenStackAdapter) -> None:
    mid = create(os_, fake)
    assert os_.list_machines()[0].state == "running"
    with pytest.raises(Conflict):
        os_.machine_action(Capability.START, mid, {})
    os_.machine_action(Capability.STOP, mid, {})
    assert os_.list_machines()[0].state == "stopped"

    os_.machine_action(Capability.RESIZE, mid, {"size": "3"})  # waits for VERIFY_RESIZE, confirms
    actions = [next(iter(b)) for b in sent(fake, "POST", f"{C}/servers/{mid}/action")]
    assert actions == ["os-start", "os-stop", "resize", "confirmResize"]
    [m] = os_.list_machines()
    assert (m.state, m.size, m.cores) == ("stopped", "3", 2)
    with pytest.raises(Invalid, match="must change flavor"):
        os_.machine_action(Capability.RESIZE, mid, {"size": "3"})

    os_.machine_action(Capability.START, mid, {})
    os_.machine_action(Capability.RENAME, mid, {"name": "web-renamed"})
    assert sent(fake, "PUT", f"{C}/servers/{mid}") == [{"server": {"name": "web-renamed"}}]
    os_.machine_action(Capability.REBOOT, mid, {})
    assert sent(fake, "POST", f"{C}/servers/{mid}/action")[-1] == {"reboot": {"type": "SOFT"}}
    assert [(m.name, m.state) for m in os_.list_machines()] == [("web-renamed", "rebooting")]
    assert os_.list_machines()[0].state == "running"
    os_.machine_action(Capability.SUSPEND, mid, {})
    assert os_.list_machines()[0].state == "suspended"
    os_.machine_action(Capability.RESUME, mid, {})
    assert os_.list_machines()[0].state == "running"

    os_.machine_action(Capability.DESTROY, mid, {})
    assert os_.list_machines() == []
    with pytest.raises(NotFound):
        os_.machine_action(Capability.STOP, mid, {})
    count = len(fake.state.requests)
    with pytest.raises(NotFound):
        os_.machine_action(Capability.STOP, "../../os-keypairs", {})
    assert len(fake.state.requests) == count


def test_listings_follow_every_page(fake: FakeServer) -> None:
    server = start_fake_openstack(page_cap=2, state=fake.state)
    try:
        a = adapter(server)
        made = {create(a, server, f"n-{i}") for i in range(5)}
        assert {m.external_id for m in a.list_machines()} == made
        assert len(sent(server, "GET", f"{C}/servers/detail")) == 3
        for i in range(3):
            a.create_volume(f"v-{i}", 1, "", {})
        assert len(a.list_volumes()) == 3
    finally:
        server.stop()


# -- volumes --------------------------------------------------------------------------------------
def test_volume_create_attach_detach_delete(fake: FakeServer, os_: OpenStackAdapter) -> None:
    mid = create(os_, fake)
    os_.list_machines()
    vol = os_.create_volume("data", 10, "nova", {"volume_type": "ssd"})
    assert (vol.name, vol.size_gb, vol.state, vol.location) == ("data", 10, "creating", "nova")
    with pytest.raises(Invalid, match="creating"):
        os_.attach_volume(vol.external_id, mid, "")
    assert os_.list_volumes()[0].state == "available"
    os_.attach_volume(vol.external_id, mid, "")
    [v] = os_.list_volumes()
    assert (v.state, v.attached_to, v.extra["volume_type"]) == ("in-use", [mid], "ssd")
    assert os_.list_machines()[0].extra["volumes_attached"] == [{"id": vol.external_id}]

    with pytest.raises(Invalid, match="Volume status must be available"):
        os_.delete_volume(vol.external_id)
    os_.detach_volume(vol.external_id, mid)
    with pytest.raises(NotFound):
        os_.detach_volume(vol.external_id, mid)  # not attached: said, not silently "done"
    os_.delete_volume(vol.external_id)
    assert os_.list_volumes() == []
    with pytest.raises(NotFound):
        os_.delete_volume(vol.external_id)
    with pytest.raises(Invalid, match="Availability zone"):
        os_.create_volume("data", 1, "az-9", {})


# -- networks -------------------------------------------------------------------------------------
def test_networks_and_subnets(fake: FakeServer, os_: OpenStackAdapter) -> None:
    nets = {n.name: n for n in os_.list_networks()}
    assert nets["private"].cidr == "10.0.0.0/26" and nets["public"].extra["router:external"]
    with pytest.raises(Invalid) as bad:
        os_.create_network("lab", "10.1.0.0/33", {})
    assert bad.value.details["field"] == "cidr"
    assert not sent(fake, "POST", "/networking/v2.0/networks")

    lab = os_.create_network("lab", "10.1.0.0/24", {})
    assert lab.cidr == "10.1.0.0/24" and lab.subnets[0].name == "lab-subnet"
    extra = os_.create_subnet(lab.external_id, "lab-2", "10.2.0.0/24", "")
    with pytest.raises(Invalid, match="overlaps"):
        os_.create_subnet(lab.external_id, "lab-3", "10.1.0.128/25", "")
    listed = {n.name: n for n in os_.list_networks()}["lab"]
    assert [s.cidr for s in listed.subnets] == ["10.1.0.0/24", "10.2.0.0/24"]
    with pytest.raises(NotFound):
        os_.delete_subnet(nets["private"].external_id, extra.external_id)  # not in that network
    os_.delete_subnet(lab.external_id, extra.external_id)

    mid = create(os_, fake, extra={"networks": [lab.external_id]})
    with pytest.raises(Conflict, match="ports still in use"):
        os_.delete_network(lab.external_id)
    os_.machine_action(Capability.DESTROY, mid, {})
    os_.delete_network(lab.external_id)
    assert "lab" not in {n.name for n in os_.list_networks()}
    with pytest.raises(NotFound):
        os_.delete_network(lab.external_id)


def test_what_openstack_does_not_offer_here(os_: OpenStackAdapter) -> None:
    assert Capability.DNS not in os_.capabilities
    with pytest.raises(Unsupported):
        os_.list_zones()
