"""The AWS adapter against a real local AWS (moto server): machines, volumes, networks, DNS,
sizes, images and zones as a user sees them, and the errors a user gets for bad input,
refused credentials and an endpoint that does not answer."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.clouds.providers import registry
from controller.clouds.providers.amazon import REGIONS, SPEC
from controller.clouds.providers.amazon.adapter import (
    FEATURED_IMAGES,
    FEATURED_PER_FAMILY,
    AmazonAdapter,
)
from controller.clouds.providers.base import Capability, CreateMachine, Unsupported
from controller.errors import CredentialsRefused, Invalid, NotFound, ProviderUnavailable
from tests.support.moto import ACCESS_KEY, SECRET_KEY, MotoServer, moto_fixture

moto = moto_fixture("module")
ROOT = Path(__file__).resolve().parents[4]
REGION = "us-east-1"


def adapter_for(server: MotoServer, key: str = ACCESS_KEY, secret: str = SECRET_KEY,
                region: str = REGION, timeout: float = 10.0) -> AmazonAdapter:
    return AmazonAdapter({"apikey": key, "region": region, "endpoint": server.url},
                         {"apisecret": secret}, timeout)


def boto(server: MotoServer, service: str, key: str = ACCESS_KEY, secret: str = SECRET_KEY) -> Any:
    """A boto3 client: the tests' independent view of what the adapter did."""
    import boto3

    return boto3.client(service, endpoint_url=server.url, region_name=REGION,
                        aws_access_key_id=key, aws_secret_access_key=secret)


def public_key() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return raw.decode() + " alice@laptop"


@pytest.fixture
def aws(moto: MotoServer) -> Iterator[AmazonAdapter]:
    moto.reset()
    a = adapter_for(moto)
    yield a
    a.close()


@pytest.fixture
def ami(aws: AmazonAdapter) -> str:
    return next(i.external_id for i in aws.list_images() if i.name.startswith("al2023")
                and i.extra.get("architecture") == "x86_64")


def machine(aws: AmazonAdapter, ami: str, **kw: Any) -> str:
    req = CreateMachine(name=kw.pop("name", "web-1"), size=kw.pop("size", "t2.micro"), image=ami, **kw)
    return aws.create_machine(req).external_id


def by_id(aws: AmazonAdapter, external_id: str) -> Any:
    return next(m for m in aws.list_machines() if m.external_id == external_id)


# -- the spec -----------------------------------------------------------------------------------
def test_spec_matches_mist_and_loads_without_libcloud() -> None:
    fields = {f.name: f for f in SPEC.fields}
    assert [n for n, f in fields.items() if f.required] == ["apikey", "apisecret", "region"]
    assert fields["apisecret"].secret and not fields["apikey"].secret
    assert len(REGIONS) == 22 and "us-gov-east-1" in fields["region"].choices
    assert not fields["endpoint"].required
    assert SPEC.proved == "e2e:moto" and Capability.SUSPEND not in SPEC.capabilities
    code = ("import sys, controller.clouds.providers.amazon as a; "
            "assert 'libcloud' not in sys.modules, 'libcloud imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=ROOT)
    assert registry.adapter_class(registry.spec("amazon")) is AmazonAdapter


def test_bad_region_and_endpoint_name_the_field() -> None:
    bad_region = AmazonAdapter({"apikey": "k", "region": "mars-1"}, {"apisecret": "s"})
    with pytest.raises(Invalid) as exc:
        bad_region.check()
    assert exc.value.details["field"] == "region"
    for endpoint in ("ftp://127.0.0.1:21", "http://127.0.0.1:5000/some/path", "127.0.0.1"):
        a = AmazonAdapter({"apikey": "k", "region": REGION, "endpoint": endpoint}, {"apisecret": "s"})
        with pytest.raises(Invalid) as exc:
            a.check()
        assert exc.value.details["field"] == "endpoint"


def test_a_region_newer_than_libcloud_still_lists_sizes() -> None:
    """us-gov-east-1 is in Mist's list, not in libcloud's tables: sizes come without prices
    (unknown, not free), and the endpoint follows AWS's naming."""
    a = AmazonAdapter({"apikey": "k", "region": "us-gov-east-1"}, {"apisecret": "s"})
    sizes = {s.external_id: s for s in a.list_sizes()}
    assert sizes["t3.micro"].cpus == 2 and sizes["t3.micro"].price_per_hour is None
    assert a.conn.connection.host == "ec2.us-gov-east-1.amazonaws.com"


# -- inventory ----------------------------------------------------------------------------------
def test_check_and_locations_are_the_regions_zones(aws: AmazonAdapter) -> None:
    aws.check()
    zones = [loc.external_id for loc in aws.list_locations()]
    assert "us-east-1a" in zones and all(z.startswith("us-east-1") for z in zones)
    assert {loc.country for loc in aws.list_locations()} == {"USA"}


def test_sizes_carry_libcloud_prices(aws: AmazonAdapter) -> None:
    sizes = {s.external_id: s for s in aws.list_sizes()}
    micro = sizes["t2.micro"]
    assert (micro.cpus, micro.ram_mb) == (1, 1024)
    assert micro.price_per_hour is not None and micro.price_per_hour > 0
    assert all(s.price_per_hour is None or s.price_per_hour > 0 for s in sizes.values())


def test_images_are_own_plus_a_bounded_featured_set(moto: MotoServer, aws: AmazonAdapter,
                                                    ami: str) -> None:
    vm = machine(aws, ami)
    own = boto(moto, "ec2").create_image(InstanceId=vm, Name="golden-image")["ImageId"]
    images = aws.list_images()
    ids = [i.external_id for i in images]
    assert own in ids and len(ids) == len(set(ids))
    assert len(images) <= 1 + len(FEATURED_IMAGES) * FEATURED_PER_FAMILY
    everything = boto(moto, "ec2").describe_images()["Images"]
    assert len(everything) > 5 * len(images)  # far fewer than moto (or AWS) could list
    assert {i.os_type for i in images} <= {"linux", "windows"}


# -- machines -----------------------------------------------------------------------------------
def test_create_machine_with_key_cloud_init_tags_and_zone(moto: MotoServer, aws: AmazonAdapter,
                                                          ami: str) -> None:
    key = public_key()
    created = aws.create_machine(CreateMachine(
        name="web-1", size="t2.micro", image=ami, location="us-east-1b", public_key=key,
        cloud_init="#cloud-config\nruncmd: [touch /tmp/hi]\n", tags={"env": "test"}))
    m = by_id(aws, created.external_id)
    assert (m.name, m.state, m.size, m.image, m.location) == ("web-1", "running", "t2.micro", ami, "us-east-1b")
    assert m.tags == {"Name": "web-1", "env": "test"}
    assert m.price_per_hour is not None and m.price_per_hour > 0 and m.cores == 1
    assert m.public_ips and m.private_ips and m.hostname and m.macs and m.os_type == "linux"
    ec2 = boto(moto, "ec2")
    user_data = ec2.describe_instance_attribute(InstanceId=m.external_id, Attribute="userData")
    assert base64.b64decode(user_data["UserData"]["Value"]).decode().startswith("#cloud-config")
    pairs = ec2.describe_key_pairs()["KeyPairs"]
    assert [p["KeyName"] for p in pairs] == [m.extra["key_name"]]
    machine(aws, ami, name="web-2", public_key=key)  # the same key is not imported twice
    assert len(ec2.describe_key_pairs()["KeyPairs"]) == 1


def test_create_machine_in_a_subnet(aws: AmazonAdapter, ami: str) -> None:
    net = aws.create_network("app", "10.20.0.0/16", {})
    sub = aws.create_subnet(net.external_id, "app-a", "10.20.1.0/24", "us-east-1a")
    vm = machine(aws, ami, extra={"subnet": sub.external_id})
    m = by_id(aws, vm)
    assert m.extra["subnet_id"] == sub.external_id and m.extra["vpc_id"] == net.external_id
    assert m.private_ips[0].startswith("10.20.1.")


def test_machine_lifecycle(aws: AmazonAdapter, ami: str) -> None:
    vm = machine(aws, ami)
    aws.machine_action(Capability.STOP, vm, {})
    assert by_id(aws, vm).state == "stopped"
    aws.machine_action(Capability.START, vm, {})
    assert by_id(aws, vm).state == "running"
    aws.machine_action(Capability.REBOOT, vm, {})
    assert by_id(aws, vm).state == "running"
    aws.machine_action(Capability.RENAME, vm, {"name": "web-renamed"})
    assert by_id(aws, vm).name == "web-renamed" and by_id(aws, vm).tags["Name"] == "web-renamed"
    aws.machine_action(Capability.DESTROY, vm, {})
    assert by_id(aws, vm).state == "terminated"


def test_resize_needs_a_stopped_machine(aws: AmazonAdapter, ami: str) -> None:
    vm = machine(aws, ami)
    with pytest.raises(Invalid, match="stop it first"):
        aws.machine_action(Capability.RESIZE, vm, {"size": "t2.small"})
    aws.machine_action(Capability.STOP, vm, {})
    before = by_id(aws, vm).price_per_hour
    aws.machine_action(Capability.RESIZE, vm, {"size": "t2.small"})
    after = by_id(aws, vm)
    assert after.size == "t2.small" and after.price_per_hour and before
    assert after.price_per_hour > before
    with pytest.raises(Invalid) as exc:
        aws.machine_action(Capability.RESIZE, vm, {"size": "t9.huge"})
    assert exc.value.details["field"] == "size"


@pytest.mark.parametrize(("change", "field"), [
    ({"size": "t9.huge"}, "size"),                 # moto would launch it: we check first
    ({"image": "ami-00000000000000000"}, "image"),  # no such AMI
    ({"image": "ubuntu"}, "image"),                 # not an AMI id
    ({"location": "eu-west-1a"}, "location"),       # a zone of another region
    ({"public_key": "not a key"}, "key"),
])
def test_create_machine_refuses_bad_input(aws: AmazonAdapter, ami: str, change: dict[str, str],
                                          field: str) -> None:
    req: dict[str, Any] = {"name": "bad", "size": "t2.micro", "image": ami, **change}
    with pytest.raises(Invalid) as exc:
        aws.create_machine(CreateMachine(**req))
    assert exc.value.details["field"] == field
    assert aws.list_machines() == []


def test_unsupported_action_and_missing_machine(aws: AmazonAdapter, ami: str) -> None:
    vm = machine(aws, ami)
    with pytest.raises(Unsupported, match="suspend"):
        aws.machine_action(Capability.SUSPEND, vm, {})
    with pytest.raises(NotFound):
        aws.machine_action(Capability.STOP, "i-0000000000000000f", {})


# -- volumes ------------------------------------------------------------------------------------
def test_volume_create_attach_detach_delete(aws: AmazonAdapter, ami: str) -> None:
    vm = machine(aws, ami, location="us-east-1a")
    created = aws.create_volume("data", 8, "us-east-1a", {"volume_type": "gp3"})
    vol = next(v for v in aws.list_volumes() if v.external_id == created.external_id)
    assert (vol.name, vol.size_gb, vol.state, vol.location, vol.attached_to) == \
        ("data", 8, "available", "us-east-1a", [])
    aws.attach_volume(vol.external_id, vm, "/dev/sdg")
    vol = next(v for v in aws.list_volumes() if v.external_id == created.external_id)
    assert vol.attached_to == [vm] and vol.state == "in-use" and vol.extra["device"] == "/dev/sdg"
    aws.detach_volume(vol.external_id, vm)
    vol = next(v for v in aws.list_volumes() if v.external_id == created.external_id)
    assert vol.attached_to == [] and vol.state == "available"
    aws.delete_volume(vol.external_id)
    assert created.external_id not in {v.external_id for v in aws.list_volumes()}
    with pytest.raises(NotFound):
        aws.delete_volume(created.external_id)
    with pytest.raises(Invalid):
        aws.create_volume("bad", 8, "us-east-1a", {"volume_type": "floppy"})


# -- networks -----------------------------------------------------------------------------------
def test_network_and_subnet_lifecycle(aws: AmazonAdapter) -> None:
    net = aws.create_network("backend", "10.30.0.0/16", {})
    assert (net.name, net.cidr, net.location) == ("backend", "10.30.0.0/16", REGION)
    sub = aws.create_subnet(net.external_id, "backend-a", "10.30.1.0/24", "us-east-1b")
    listed = next(n for n in aws.list_networks() if n.external_id == net.external_id)
    assert listed.tags["Name"] == "backend"
    assert [(s.name, s.cidr, s.location) for s in listed.subnets] == \
        [("backend-a", "10.30.1.0/24", "us-east-1b")]
    with pytest.raises(Invalid, match="dependencies"):  # AWS keeps a VPC that has subnets
        aws.delete_network(net.external_id)
    with pytest.raises(Invalid, match="CIDR"):
        aws.create_subnet(net.external_id, "outside", "10.99.1.0/24", "")
    aws.delete_subnet(net.external_id, sub.external_id)
    aws.delete_network(net.external_id)
    assert net.external_id not in {n.external_id for n in aws.list_networks()}
    with pytest.raises(Invalid) as exc:
        aws.create_network("nocidr", "", {})
    assert exc.value.details["field"] == "cidr"
    with pytest.raises(NotFound):
        aws.delete_network(net.external_id)


# -- DNS ----------------------------------------------------------------------------------------
def test_dns_zone_and_records(aws: AmazonAdapter) -> None:
    zone = aws.create_zone("example.com", "master", 0)
    assert (zone.domain, zone.type) in {(z.domain, z.type) for z in aws.list_zones()}
    zid = zone.external_id
    aws.create_record(zid, "www", "A", "192.0.2.10", 60)
    aws.create_record(zid, "www.example.com.", "A", "192.0.2.11", 60)  # a second value
    aws.create_record(zid, "@", "MX", "10 mail.example.com", 0)
    aws.create_record(zid, "", "TXT", "v=spf1 -all", 0)
    records = aws.list_records(zid)
    seen = {(r.name, r.type, r.data) for r in records}
    assert {("www", "A", "192.0.2.10"), ("www", "A", "192.0.2.11"),
            ("", "MX", "10 mail.example.com"), ("", "TXT", "v=spf1 -all")} <= seen
    assert any(r.type == "NS" for r in records)  # Route53 makes the zone's NS and SOA
    assert len({r.external_id for r in records}) == len(records)
    first = next(r for r in records if r.data == "192.0.2.10")
    aws.delete_record(zid, first.external_id)
    left = {(r.name, r.type, r.data) for r in aws.list_records(zid)}
    assert ("www", "A", "192.0.2.11") in left and ("www", "A", "192.0.2.10") not in left
    txt = next(r for r in aws.list_records(zid) if r.type == "TXT")
    aws.delete_record(zid, txt.external_id)
    assert all(r.type != "TXT" for r in aws.list_records(zid))
    with pytest.raises(NotFound):
        aws.delete_record(zid, txt.external_id)
    aws.delete_zone(zid)  # its records go first: Route53 refuses a zone that has any
    assert zid not in {z.external_id for z in aws.list_zones()}
    with pytest.raises(NotFound):
        aws.list_records(zid)


def test_dns_refuses_bad_records(aws: AmazonAdapter) -> None:
    zid = aws.create_zone("example.org", "master", 0).external_id
    for type_, data, field in (("BOGUS", "x", "type"), ("MX", "mail.example.org", "data"),
                               ("A", "", "data")):
        with pytest.raises(Invalid) as exc:
            aws.create_record(zid, "x", type_, data, 0)
        assert exc.value.details["field"] == field
    aws.create_record(zid, "x", "A", "192.0.2.1", 0)
    with pytest.raises(Invalid, match="already has"):
        aws.create_record(zid, "x", "A", "192.0.2.1", 0)
    with pytest.raises(Invalid):
        aws.create_zone("example.org", "slave", 0)


# -- credentials and reachability ------------------------------------------------------------------
def test_refused_credentials_say_so(moto: MotoServer) -> None:
    moto.reset()
    try:
        iam = boto(moto, "iam")
        iam.create_user(UserName="overcast")
        iam.put_user_policy(UserName="overcast", PolicyName="all", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="overcast")["AccessKey"]
        moto.enforce_auth()  # from now on moto checks signatures and permissions like AWS
        good = adapter_for(moto, key["AccessKeyId"], key["SecretAccessKey"], region="eu-west-1")
        good.check()
        assert good.list_zones() == []

        wrong_secret = "wrong-secret-do-not-show"
        bad = adapter_for(moto, key["AccessKeyId"], wrong_secret, region="eu-west-1")
        # EC2 answers AuthFailure to a wrong key and a wrong secret alike: Route53 tells which
        with pytest.raises(CredentialsRefused, match="refused") as exc:
            bad.check()
        assert "secret does not match" in exc.value.message
        assert exc.value.details["field"] == "credentials.apisecret"
        assert exc.value.details["provider_code"] == "AuthFailure" and exc.value.status == 422
        with pytest.raises(CredentialsRefused, match="secret does not match") as exc:
            bad.list_zones()
        assert wrong_secret not in exc.value.message
        assert exc.value.details["field"] == "credentials.apisecret"

        unknown = adapter_for(moto, "AKIAUNKNOWNUNKNOWN00", "x", region="eu-west-1")
        with pytest.raises(CredentialsRefused) as exc:
            unknown.list_machines()
        assert exc.value.details["field"] == "credentials.apikey"
        assert "API key is not known" in exc.value.message
        with pytest.raises(CredentialsRefused, match="API key is not known") as exc:
            unknown.create_zone("example.net", "master", 0)
        assert exc.value.details["field"] == "credentials.apikey"

        # when Route53 cannot be asked, the refusal says both and names no field
        mute = adapter_for(moto, key["AccessKeyId"], wrong_secret, region="eu-west-1")

        def unreachable() -> None:
            raise ProviderUnavailable("cannot reach amazon")

        mute.dns.probe = unreachable  # type: ignore[method-assign]
        with pytest.raises(CredentialsRefused) as exc:
            mute.check()
        assert "API key or the API secret was refused" in exc.value.message
        assert "field" not in exc.value.details
    finally:
        moto.reset()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_closed_port_is_unavailable_at_once() -> None:
    a = AmazonAdapter({"apikey": "k", "region": REGION, "endpoint": f"http://127.0.0.1:{_free_port()}"},
                      {"apisecret": "s"}, timeout=5)
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable):
        a.check()
    with pytest.raises(ProviderUnavailable):
        a.list_zones()
    assert time.monotonic() - started < 2


def test_silent_endpoint_times_out() -> None:
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        a = AmazonAdapter({"apikey": "k", "region": REGION, "endpoint": endpoint},
                          {"apisecret": "s"}, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable):
            a.list_machines()
        assert time.monotonic() - started < 3
