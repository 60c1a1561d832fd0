"""The DigitalOcean adapter against a local stand-in of the v2 API (tests/support/
fake_digitalocean.py), over HTTP through libcloud: droplets, volumes, DNS, sizes, images and
regions as a user sees them, and the errors a user gets."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.clouds.providers import registry
from controller.clouds.providers.base import Capability, CreateMachine, Unsupported
from controller.clouds.providers.digitalocean import SPEC
from controller.clouds.providers.digitalocean.adapter import DigitalOceanAdapter
from controller.clouds.providers.digitalocean.driver import parse_endpoint
from controller.errors import (
    Conflict,
    CredentialsRefused,
    Invalid,
    NotFound,
    ProviderUnavailable,
)
from tests.support.fake_digitalocean import FakeServer, fingerprint, start_fake_digitalocean


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = start_fake_digitalocean()
    yield server
    server.stop()


def adapter(server: FakeServer, token: str | None = None) -> DigitalOceanAdapter:
    return DigitalOceanAdapter({"endpoint": server.url},
                               {"token": server.token if token is None else token}, 5.0)


@pytest.fixture
def do(fake: FakeServer) -> Iterator[DigitalOceanAdapter]:
    a = adapter(fake)
    yield a
    a.close()


def public_key() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return raw.decode() + " alice@laptop"


def create(do: DigitalOceanAdapter, name: str = "web-1", **kw: object) -> str:
    req = CreateMachine(name=name, size="s-1vcpu-1gb", image="ubuntu-22-04-x64", location="nyc3")
    for k, v in kw.items():
        setattr(req, k, v)
    return do.create_machine(req).external_id


def posted(fake: FakeServer, path: str) -> list[dict[str, object]]:
    return [body for method, p, body in fake.state.requests if method == "POST" and p == path]


# -- spec, endpoint, credentials ------------------------------------------------------------------
def test_spec_is_registered_with_mist_fields_and_the_endpoint_extension(fake: FakeServer) -> None:
    assert registry.spec("digitalocean") is SPEC
    fields = {f.name: f for f in SPEC.fields}
    assert fields["token"].secret and fields["token"].required
    assert not fields["endpoint"].secret and not fields["endpoint"].required
    a = registry.build("digitalocean", {"endpoint": fake.url}, {"token": fake.token}, 5.0)
    assert isinstance(a, DigitalOceanAdapter)
    a.check()
    assert fake.state.requests[-1][:2] == ("GET", "/v2/account")


def test_endpoint_parsing() -> None:
    assert parse_endpoint("") == (True, "api.digitalocean.com", 443, "")
    assert parse_endpoint("https://gw.example/do/") == (True, "gw.example", 443, "/do")
    assert parse_endpoint("http://127.0.0.1:8080") == (False, "127.0.0.1", 8080, "")
    for bad in ("ftp://x", "not a url", "http://:80"):
        with pytest.raises(Invalid) as err:
            parse_endpoint(bad)
        assert err.value.details["field"] == "endpoint"


def test_a_wrong_token_is_refused_in_words_and_never_quoted(fake: FakeServer) -> None:
    bad = adapter(fake, token="dop_v1_wrong-token-value")
    for call in (bad.check, bad.list_machines, bad.list_zones):
        with pytest.raises(CredentialsRefused) as err:
            call()
        assert "refused the API token" in err.value.message
        assert err.value.details["field"] == "credentials.token" and err.value.status == 422
        assert "wrong-token-value" not in str(err.value.to_dict())
    with pytest.raises(Invalid) as missing:
        adapter(fake, token="").check()
    assert missing.value.details["field"] == "token"


def test_an_endpoint_that_does_not_answer_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    a = DigitalOceanAdapter({"endpoint": f"http://127.0.0.1:{port}"}, {"token": "t"}, 2.0)
    with pytest.raises(ProviderUnavailable):
        a.list_machines()


# -- catalogue ------------------------------------------------------------------------------------
def test_sizes_images_and_open_regions(do: DigitalOceanAdapter) -> None:
    sizes = {s.external_id: s for s in do.list_sizes()}
    small = sizes["s-1vcpu-1gb"]
    assert (small.cpus, small.ram_mb, small.disk_gb) == (1, 1024, 25)
    assert small.price_per_hour == pytest.approx(6.0 / 672, abs=1e-5)
    assert small.extra["price_monthly"] == 6.0
    images = {i.extra["slug"]: i for i in do.list_images()}
    assert images["ubuntu-22-04-x64"].external_id == "129211873"
    assert images["ubuntu-22-04-x64"].os_type == "linux"
    regions = {r.external_id: r for r in do.list_locations()}
    assert set(regions) == {"nyc3", "ams3", "fra1"}  # sfo1 takes no new droplets
    assert regions["nyc3"].name == "New York 3"
    assert "storage" in regions["nyc3"].extra["features"]


# -- droplets -------------------------------------------------------------------------------------
def test_create_imports_the_key_once_and_sends_user_data_and_tags(
        fake: FakeServer, do: DigitalOceanAdapter) -> None:
    key = public_key()
    made = do.create_machine(CreateMachine(
        name="web-1", size="s-1vcpu-1gb", image="129211873", location="nyc3", public_key=key,
        cloud_init="#cloud-config\npackages: [nginx]\n", tags={"env": "prod", "web": ""}))
    assert made.state == "pending" and made.location == "nyc3" and made.size == "s-1vcpu-1gb"
    assert made.tags == {"env": "prod", "web": ""}
    [body] = posted(fake, "/v2/droplets")
    [stored_key] = fake.state.keys.values()
    assert stored_key["fingerprint"] == fingerprint(key)
    assert body["image"] == 129211873  # an integer id, as documented (not "129211873")
    assert body["ssh_keys"] == [stored_key["id"]]
    assert body["tags"] == ["env:prod", "web"]
    assert body["user_data"] == "#cloud-config\npackages: [nginx]\n"

    create(do, "web-2", public_key=key)  # the same key: found by fingerprint, not imported again
    assert len(fake.state.keys) == 1
    assert posted(fake, "/v2/droplets")[-1]["ssh_keys"] == [stored_key["id"]]

    listed = {m.name: m for m in do.list_machines()}
    web = listed["web-1"]
    assert web.state == "running" and web.external_id == made.external_id
    assert web.public_ips and web.private_ips and web.cores == 1
    assert web.price_per_hour == pytest.approx(6.0 / 672, abs=1e-5)
    assert web.os_type == "linux" and web.image == "129211873"


def test_create_with_keys_named_by_fingerprint(fake: FakeServer, do: DigitalOceanAdapter) -> None:
    fp = fingerprint(key := public_key())
    fake.state.keys[7] = {"id": 7, "fingerprint": fp, "public_key": key, "name": "laptop"}
    create(do, extra={"ssh_keys": [fp, "7"], "ipv6": True})
    body = posted(fake, "/v2/droplets")[-1]
    assert body["ssh_keys"] == [fp, 7] and body["ipv6"] is True


def test_create_errors_say_what_is_wrong(fake: FakeServer, do: DigitalOceanAdapter) -> None:
    with pytest.raises(Invalid) as no_region:
        create(do, location="")
    assert no_region.value.details["field"] == "location"
    assert not posted(fake, "/v2/droplets")  # refused before asking
    with pytest.raises(Invalid, match="invalid size"):
        create(do, size="s-64vcpu-huge")
    with pytest.raises(Invalid, match="not available in this region"):
        create(do, size="s-2vcpu-4gb", location="ams3")
    with pytest.raises(Invalid) as bad_key:
        create(do, public_key="ssh-ed25519 not-base64!")
    assert bad_key.value.details["field"] == "public_key"
    assert not fake.state.droplets


def test_droplet_lifecycle(fake: FakeServer, do: DigitalOceanAdapter) -> None:
    mid = create(do)
    state = {m.external_id: m for m in do.list_machines()}
    assert state[mid].state == "running"

    with pytest.raises(Invalid, match="power it off"):
        do.machine_action(Capability.RESIZE, mid, {"size": "s-1vcpu-2gb"})
    do.machine_action(Capability.STOP, mid, {})
    assert do.list_machines()[0].state == "stopped"
    with pytest.raises(Invalid, match="already powered off"):
        do.machine_action(Capability.STOP, mid, {"force": True})
    do.machine_action(Capability.RESIZE, mid, {"size": "s-1vcpu-2gb"})
    do.machine_action(Capability.RENAME, mid, {"name": "web-renamed"})
    do.machine_action(Capability.START, mid, {})
    [m] = do.list_machines()
    assert (m.name, m.state, m.size, m.extra["memory"]) == ("web-renamed", "running", "s-1vcpu-2gb", 2048)
    assert m.extra["disk"] == 25  # CPU/RAM only: the resize can be undone

    do.machine_action(Capability.REBOOT, mid, {})
    do.machine_action(Capability.REBOOT, mid, {"hard": True})
    do.machine_action(Capability.STOP, mid, {"force": True})
    types = [b["type"] for b in posted(fake, f"/v2/droplets/{mid}/actions")]
    assert types == ["resize", "shutdown", "power_off", "resize", "rename", "power_on",
                     "reboot", "power_cycle", "power_off"]

    do.machine_action(Capability.DESTROY, mid, {})
    assert do.list_machines() == []
    with pytest.raises(NotFound):
        do.machine_action(Capability.START, mid, {})
    sent = len(fake.state.requests)
    with pytest.raises(NotFound):
        do.machine_action(Capability.REBOOT, "../account", {})
    assert len(fake.state.requests) == sent  # an id that cannot exist is not sent
    with pytest.raises(Unsupported):
        do.machine_action(Capability.SUSPEND, mid, {})
    with pytest.raises(Invalid):
        do.machine_action(Capability.RENAME, mid, {"name": " "})


def test_listings_follow_every_page() -> None:
    server = start_fake_digitalocean(page_cap=2)
    try:
        do = adapter(server)
        made = {create(do, f"n-{i}") for i in range(5)}
        assert {m.external_id for m in do.list_machines()} == made
        pages = [p for m, p, _ in server.state.requests if p == "/v2/droplets" and m == "GET"]
        assert len(pages) == 3
    finally:
        server.stop()


# -- volumes --------------------------------------------------------------------------------------
def test_volume_create_attach_detach_delete(fake: FakeServer, do: DigitalOceanAdapter) -> None:
    mid = create(do)
    with pytest.raises(Invalid) as no_region:
        do.create_volume("data", 10, "", {})
    assert no_region.value.details["field"] == "location"
    vol = do.create_volume("data", 10, "nyc3", {})
    assert (vol.name, vol.size_gb, vol.location, vol.state) == ("data", 10, "nyc3", "available")

    do.attach_volume(vol.external_id, mid, "")
    [listed] = do.list_volumes()
    assert listed.attached_to == [mid] and listed.state == "in-use"
    attach = posted(fake, "/v2/volumes/actions")[-1]
    assert attach == {"type": "attach", "volume_name": "data", "droplet_id": int(mid), "region": "nyc3"}
    assert do.list_machines()[0].extra["volume_ids"] == [vol.external_id]

    with pytest.raises(Conflict):
        do.delete_volume(vol.external_id)
    do.detach_volume(vol.external_id, mid)
    with pytest.raises(Invalid, match="not attached"):
        do.detach_volume(vol.external_id, mid)
    do.delete_volume(vol.external_id)
    assert do.list_volumes() == []
    with pytest.raises(NotFound):
        do.delete_volume(vol.external_id)
    with pytest.raises(NotFound):
        do.attach_volume("no/such", mid, "")


# -- DNS ------------------------------------------------------------------------------------------
def test_zones_and_records(fake: FakeServer, do: DigitalOceanAdapter) -> None:
    zone = do.create_zone("example.com", "master", 3600)
    assert (zone.external_id, zone.domain) == ("example.com", "example.com")
    assert posted(fake, "/v2/domains") == [{"name": "example.com"}]  # no 127.0.0.1 apex record
    assert [z.domain for z in do.list_zones()] == ["example.com"]
    assert sorted(r.type for r in do.list_records("example.com")) == ["NS", "NS", "NS", "SOA"]

    a = do.create_record("example.com", "www", "A", "192.0.2.10", 300)
    mx = do.create_record("example.com", "", "MX", "10 mail.example.com.", 0)
    do.create_record("example.com", "@", "TXT", "v=spf1 -all", 0)
    assert (a.name, a.ttl) == ("www", 300)
    assert posted(fake, "/v2/domains/example.com/records")[1]["priority"] == 10
    records = {(r.name, r.type): r for r in do.list_records("example.com")}
    assert records[("www", "A")].data == "192.0.2.10"
    assert records[("@", "MX")].data == "10 mail.example.com."
    assert records[("@", "MX")].external_id == mx.external_id
    assert records[("@", "TXT")].data == "v=spf1 -all"

    with pytest.raises(Invalid):
        do.create_record("example.com", "x", "PTR", "host.example.com.", 0)
    with pytest.raises(Invalid):
        do.create_record("example.com", "x", "MX", "mail.example.com.", 0)  # no priority
    with pytest.raises(Invalid, match="IPv4"):
        do.create_record("example.com", "x", "A", "not-an-ip", 0)
    with pytest.raises(Invalid):
        do.create_zone("example.com", "slave", 0)

    do.delete_record("example.com", a.external_id)
    assert ("www", "A") not in {(r.name, r.type) for r in do.list_records("example.com")}
    with pytest.raises(NotFound):
        do.delete_record("example.com", a.external_id)
    do.delete_zone("example.com")
    assert do.list_zones() == []
    with pytest.raises(NotFound):
        do.list_records("example.com")


def test_what_digitalocean_does_not_offer_here(do: DigitalOceanAdapter) -> None:
    assert Capability.NETWORKS not in do.capabilities
    with pytest.raises(Unsupported):
        do.list_networks()
