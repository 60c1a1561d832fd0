"""The AWS adapter: EC2 machines, EBS volumes, VPCs, sizes, images and zones through the fixed
libcloud EC2 driver (``ec2.py``), and Route53 DNS (``dns.py``). Blocking: the runner calls it
from its executor; every failure leaves through ``libcloud_errors``."""

from __future__ import annotations

import fnmatch
import hashlib
from typing import Any

from controller.clouds.providers.amazon import REGIONS, SPEC
from controller.clouds.providers.amazon.dns import AmazonDns
from controller.clouds.providers.base import (
    JSON,
    Capability,
    CreateMachine,
    DnsRecord,
    ImageRecord,
    LocationRecord,
    MachineRecord,
    NetworkRecord,
    SizeRecord,
    SubnetRecord,
    VolumeRecord,
    ZoneRecord,
)
from controller.clouds.providers.libcloud_compute import LibcloudComputeAdapter, json_safe, price
from controller.errors import CredentialsRefused, Invalid, NotFound

# Public images worth offering beside the account's own: (owner, AMI name pattern). AWS lists
# tens of thousands of public AMIs (moto ships ~1,300); one DescribeImages call asks for these
# families only, and the newest FEATURED_PER_FAMILY of each are kept. Any other AMI id still
# works in a create request: it is looked up by id.
FEATURED_IMAGES = (
    ("amazon", "al2023-ami-2023.*"),                       # Amazon Linux 2023
    ("amazon", "amzn2-ami-hvm-*"),                         # Amazon Linux 2
    ("099720109477", "ubuntu/images/*ubuntu-noble-24.04-*-server-*"),  # Canonical
    ("099720109477", "ubuntu/images/*ubuntu-jammy-22.04-*-server-*"),
    ("136693071363", "debian-12-*"),                       # Debian
    ("amazon", "Windows_Server-2022-English-Full-Base-*"),
)
FEATURED_PER_FAMILY = 3
# Route53's answers that tell a wrong key from a wrong secret (see ``which_refused``)
TELLING = ("InvalidClientTokenId", "InvalidAccessKeyId", "SignatureDoesNotMatch")
VOLUME_TYPES = ("gp3", "gp2", "io1", "io2", "st1", "sc1", "standard")


def _count(value: Any) -> int:
    """libcloud's "vcpu" is a string ("2", sometimes "NA")."""
    try:
        return int(str(value).split()[0])
    except (ValueError, IndexError):
        return 0


class AmazonAdapter(LibcloudComputeAdapter):
    provider = "amazon"
    capabilities = SPEC.capabilities

    def __init__(self, config: dict[str, JSON], secrets: dict[str, str], timeout: float = 30.0) -> None:
        super().__init__(config, secrets, timeout)
        self._sizes: list[Any] | None = None
        self._size_records: dict[str, SizeRecord] | None = None
        self.dns = AmazonDns(config, secrets, timeout)

    # -- building ----------------------------------------------------------------------------
    def driver(self) -> Any:
        from controller.clouds.providers.amazon.aws import parse_endpoint
        from controller.clouds.providers.amazon.ec2 import Driver

        region = str(self.config.get("region") or "")
        if region not in REGIONS:
            raise Invalid(f"amazon has no region {region!r}", field="region")
        # SigV4 everywhere: AWS accepts it in every region (libcloud picks the deprecated SigV2
        # for some), and endpoints such as moto route by its scope (SigV2 lands in S3's mock)
        kwargs: dict[str, Any] = {"signature_version": "4"}
        endpoint = str(self.config.get("endpoint") or "")
        if endpoint:
            host, port, secure = parse_endpoint(endpoint)
            kwargs.update(host=host, port=port, secure=secure)
        return Driver(str(self.config.get("apikey") or ""), self.secrets.get("apisecret", ""),
                      region=region, timeout=self.timeout, **kwargs)

    # -- translation ---------------------------------------------------------------------------
    def to_machine(self, node: Any) -> MachineRecord:
        m = super().to_machine(node)
        extra = node.extra or {}
        m.hostname = str(extra.get("dns_name") or extra.get("private_dns") or "")
        m.os_type = "windows" if extra.get("platform") == "windows" else "linux"
        m.macs = sorted({str(i.extra.get("mac_address")) for i in extra.get("network_interfaces") or []
                         if getattr(i, "extra", {}).get("mac_address")})
        try:
            self.list_sizes()
        except Exception:  # cores are a nicety, as prices are (see size_price)
            pass
        size = (self._size_records or {}).get(m.size)
        m.cores = size.cpus if size is not None else 0
        return m

    @staticmethod
    def to_size(s: Any) -> SizeRecord:
        extra = dict(s.extra or {})
        return SizeRecord(external_id=str(s.id), name=str(s.name or s.id),
                          cpus=_count(extra.get("vcpu")),
                          ram_mb=int(s.ram or 0), disk_gb=int(s.disk or 0),
                          price_per_hour=price(s.price),
                          extra={k: json_safe(extra.get(k)) for k in (
                              "instanceFamily", "physicalProcessor", "clockSpeed",
                              "networkPerformance", "storage", "currentGeneration", "gpu")
                              if extra.get(k) is not None})

    @staticmethod
    def to_image(i: Any) -> ImageRecord:
        extra = dict(i.extra or {})
        keep = ("description", "architecture", "owner_id", "owner_alias", "creation_date",
                "root_device_type", "virtualization_type", "state", "is_public")
        return ImageRecord(external_id=str(i.id), name=str(i.name or i.id),
                           os_type="windows" if extra.get("platform") == "windows" else "linux",
                           extra={k: json_safe(extra.get(k)) for k in keep if extra.get(k) is not None})

    @staticmethod
    def to_volume(v: Any) -> VolumeRecord:
        extra = dict(v.extra or {})
        tags = extra.pop("tags", {}) or {}
        attached = str(extra.get("instance_id") or "")
        return VolumeRecord(external_id=str(v.id), name=str(v.name or v.id), size_gb=int(v.size or 0),
                            state=str(extra.get("state") or getattr(v.state, "value", v.state) or ""),
                            location=str(extra.get("zone") or ""),
                            attached_to=[attached] if attached else [],
                            tags={str(k): str(val) for k, val in tags.items()},
                            extra={k: json_safe(val) for k, val in extra.items()})

    # -- refusals ----------------------------------------------------------------------------------
    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._call(what, fn, *args, **kwargs)
        except CredentialsRefused as exc:
            if exc.credential or exc.details.get("provider_code") != "AuthFailure":
                raise
            which, words = self.which_refused()
            if not which:
                raise
            raise CredentialsRefused(f"amazon refused the credentials ({which}) while {what}: "
                                     f"{words} (EC2 said AuthFailure, Route53 told which)",
                                     which, **exc.details) from None

    def which_refused(self) -> tuple[str, str]:
        """(field, words) of the credential AWS refuses, by asking Route53: EC2 answers
        AuthFailure to a wrong key and to a wrong secret alike; Route53 (global, and checking
        the signature before any permission) tells them apart. ("", "") when it cannot."""
        from controller.clouds.providers.amazon.aws import AUTH_WORDS

        try:
            self.dns.probe()
        except CredentialsRefused as exc:
            code = str(exc.details.get("provider_code", ""))
            if code in TELLING:  # not AccessDenied: the key and secret may be fine for EC2
                return exc.credential, AUTH_WORDS[code]
        except Exception:  # Route53 unreachable (an EC2-only endpoint): leave it unsaid
            pass
        return "", ""

    # -- inventory -------------------------------------------------------------------------------
    def check(self) -> None:
        self._call("checking the credentials", self.conn.ex_list_availability_zones)

    def _size_list(self) -> list[Any]:
        if self._sizes is None:  # libcloud's bundled data: the same for the adapter's life
            self._sizes = list(self._call("listing sizes", self.conn.list_sizes))
        return self._sizes

    def list_sizes(self) -> list[SizeRecord]:
        if self._size_records is None:
            self._size_records = {str(s.id): self.to_size(s) for s in self._size_list()}
        return list(self._size_records.values())

    def list_images(self) -> list[ImageRecord]:
        d = self.conn
        own = self._call("listing images", d.list_images, ex_owner="self")
        public = self._call("listing images", d.ex_list_images_named,
                            sorted({owner for owner, _ in FEATURED_IMAGES}),
                            [pattern for _, pattern in FEATURED_IMAGES])
        seen = {str(i.id) for i in own}
        images = list(own)
        for _, pattern in FEATURED_IMAGES:
            family = [i for i in public if fnmatch.fnmatchcase(str(i.name or ""), pattern)
                      and str(i.id) not in seen]
            family.sort(key=lambda i: str(i.extra.get("creation_date") or ""), reverse=True)
            for image in family[:FEATURED_PER_FAMILY]:
                seen.add(str(image.id))
                images.append(image)
        return [self.to_image(i) for i in images]

    def list_locations(self) -> list[LocationRecord]:
        zones = self._call("listing locations", self.conn.ex_list_availability_zones)
        return [LocationRecord(external_id=str(z.name), name=str(z.name),
                               country=str(self.conn.country or ""),
                               extra={"region": str(z.region_name), "state": str(z.zone_state)})
                for z in zones]

    def list_volumes(self) -> list[VolumeRecord]:
        return [self.to_volume(v) for v in self._call("listing volumes", self.conn.list_volumes)]

    def list_networks(self) -> list[NetworkRecord]:
        vpcs = self._call("listing networks", self.conn.ex_list_networks)
        subnets = self._call("listing subnets", self.conn.ex_list_subnets)
        region = str(self.config.get("region") or "")
        records = []
        for vpc in vpcs:
            extra = dict(vpc.extra or {})
            tags = extra.pop("tags", {}) or {}
            records.append(NetworkRecord(
                external_id=str(vpc.id), name=str(vpc.name or vpc.id), cidr=str(vpc.cidr_block or ""),
                location=region,
                subnets=[self.to_subnet(s) for s in subnets if s.extra.get("vpc_id") == vpc.id],
                tags={str(k): str(v) for k, v in tags.items()},
                extra={k: json_safe(v) for k, v in extra.items()}))
        return records

    @staticmethod
    def to_subnet(s: Any) -> SubnetRecord:
        return SubnetRecord(external_id=str(s.id), name=str(s.name or s.id),
                            cidr=str(s.extra.get("cidr_block") or ""), location=str(s.extra.get("zone") or ""))

    # -- machines --------------------------------------------------------------------------------
    def node(self, external_id: str) -> Any:
        nodes = self._call("finding the machine", self.conn.list_nodes, ex_node_ids=[external_id])
        if not nodes:
            raise NotFound(f"amazon has no machine {external_id!r}", {"external_id": external_id})
        return nodes[0]

    def _size(self, size_id: str) -> Any:
        # moto (and AWS, for a type the region lacks, only at launch) accepts any name
        for s in self._size_list():
            if str(s.id) == size_id:
                return s
        raise Invalid(f"amazon has no size {size_id!r} in {self.config.get('region')}", field="size")

    def _image(self, image_id: str) -> Any:
        if not image_id.startswith(("ami-", "aki-", "ari-")):
            raise Invalid(f"{image_id!r} is not an AMI id (ami-...)", field="image")
        try:
            images = self._call("finding the image", self.conn.list_images, ex_image_ids=[image_id])
        except (NotFound, Invalid):
            images = []
        if not images:
            raise Invalid(f"amazon has no image {image_id!r}", field="image")
        return images[0]

    def _location(self, zone: str) -> Any:
        for loc in self._call("listing locations", self.conn.list_locations):
            if loc.availability_zone.name == zone:
                return loc
        raise Invalid(f"amazon has no availability zone {zone!r} in {self.config.get('region')}",
                      field="location")

    def machine_action(self, action: Capability, external_id: str, params: dict[str, JSON]) -> None:
        if action == Capability.RENAME:
            name = str(params.get("name") or "").strip()
            if not name:
                raise Invalid("a new name is required", field="name")
            node = self.node(external_id)
            self._call("renaming the machine", self.conn.ex_create_tags, node, {"Name": name})
            return
        if action == Capability.RESIZE:
            self._resize(external_id, str(params.get("size") or ""))
            return
        super().machine_action(action, external_id, params)

    def _resize(self, external_id: str, size_id: str) -> None:
        size = self._size(size_id)
        node = self.node(external_id)
        state = getattr(node.state, "value", node.state)
        if state != "stopped":
            raise Invalid(f"amazon can change the size of a stopped machine only; "
                          f"{node.name} is {state}: stop it first", field="size")
        if node.extra.get("instance_type") == size.id:
            raise Invalid(f"{node.name} already has size {size.id}", field="size")
        self._call("resizing the machine", self.conn.ex_change_node_size, node, size)

    def create_machine(self, req: CreateMachine) -> MachineRecord:
        d = self.conn
        if not req.size or not req.image:
            raise Invalid("amazon needs a size and an image", field="size" if not req.size else "image")
        kwargs: dict[str, Any] = {"name": req.name, "size": self._size(req.size),
                                  "image": self._image(req.image)}
        if req.location:
            kwargs["location"] = self._location(req.location)
        if req.public_key.strip():
            kwargs["ex_keyname"] = self._key_pair(req.public_key)
        if req.cloud_init:
            kwargs["ex_userdata"] = req.cloud_init
        if req.tags:
            kwargs["ex_metadata"] = {str(k): str(v) for k, v in req.tags.items() if k != "Name"}
        subnet = str(req.extra.get("subnet") or "")
        if subnet:
            found = self._call("finding the subnet", d.ex_list_subnets, subnet_ids=[subnet])
            if not found:
                raise Invalid(f"amazon has no subnet {subnet!r}", field="subnet")
            kwargs["ex_subnet"] = found[0]
            groups = req.extra.get("security_groups") or []
            if groups:
                kwargs["ex_security_group_ids"] = [str(g) for g in groups]
        node = self._call("creating the machine", d.create_node, **kwargs)
        return self.to_machine(node)

    def _key_pair(self, public_key: str) -> str:
        """The name of an EC2 key pair holding ``public_key``, imported when new: named after
        the key's content, so the same key is imported once."""
        fields = public_key.split()
        if len(fields) < 2 or not fields[0].startswith(("ssh-", "ecdsa-")):
            raise Invalid("the public key must be an OpenSSH public key", field="key")
        name = "overcast-" + hashlib.sha256(fields[1].encode()).hexdigest()[:20]
        self._call("importing the key", self.conn.ex_import_key, name, " ".join(fields[:3]))
        return name

    # -- volumes ---------------------------------------------------------------------------------
    def create_volume(self, name: str, size_gb: int, location: str,
                      extra: dict[str, JSON]) -> VolumeRecord:
        volume_type = str(extra.get("volume_type") or "gp3")
        if volume_type not in VOLUME_TYPES:
            raise Invalid(f"volume_type must be one of {', '.join(VOLUME_TYPES)}", field="volume_type")
        if size_gb < 1:
            raise Invalid("a volume needs a size of at least 1 GB", field="size")
        loc = self._location(location) if location else None
        volume = self._call("creating the volume", self.conn.create_volume, size_gb, name,
                            location=loc, ex_volume_type=volume_type,
                            ex_iops=extra.get("iops"), ex_encrypted=bool(extra.get("encrypted")))
        return self.to_volume(volume)

    def _volume(self, volume_id: str) -> Any:
        from libcloud.compute.base import StorageVolume

        return StorageVolume(id=volume_id, name=volume_id, size=0, driver=self.conn)

    def delete_volume(self, external_id: str) -> None:
        self._call("deleting the volume", self.conn.destroy_volume, self._volume(external_id))

    def attach_volume(self, volume_id: str, machine_id: str, device: str) -> None:
        node = self.node(machine_id)
        self._call("attaching the volume", self.conn.attach_volume, node, self._volume(volume_id),
                   device or "/dev/sdf")

    def detach_volume(self, volume_id: str, machine_id: str) -> None:
        self._call("detaching the volume", self.conn.detach_volume, self._volume(volume_id),
                   ex_node_id=machine_id)

    # -- networks --------------------------------------------------------------------------------
    def create_network(self, name: str, cidr: str, extra: dict[str, JSON]) -> NetworkRecord:
        if not cidr:
            raise Invalid("amazon needs a CIDR block for a VPC, e.g. 10.0.0.0/16", field="cidr")
        vpc = self._call("creating the network", self.conn.ex_create_network, cidr, name=name or None,
                         instance_tenancy=str(extra.get("instance_tenancy") or "default"))
        return next((n for n in self.list_networks() if n.external_id == vpc.id),
                    NetworkRecord(external_id=str(vpc.id), name=str(vpc.name), cidr=cidr))

    def delete_network(self, external_id: str) -> None:
        from libcloud.compute.drivers.ec2 import EC2Network

        self._call("deleting the network", self.conn.ex_delete_network,
                   EC2Network(external_id, external_id, ""))

    def create_subnet(self, network_id: str, name: str, cidr: str, location: str) -> SubnetRecord:
        if not cidr:
            raise Invalid("amazon needs a CIDR block for a subnet, e.g. 10.0.1.0/24", field="cidr")
        zone = self._location(location).availability_zone.name if location else \
            self._call("listing locations", self.conn.list_locations)[0].availability_zone.name
        subnet = self._call("creating the subnet", self.conn.ex_create_subnet, network_id, cidr,
                            zone, name=name or None)
        return self.to_subnet(subnet)

    def delete_subnet(self, network_id: str, subnet_id: str) -> None:
        from libcloud.compute.drivers.ec2 import EC2NetworkSubnet

        self._call("deleting the subnet", self.conn.ex_delete_subnet,
                   EC2NetworkSubnet(subnet_id, subnet_id, ""))

    # -- DNS (Route53) ---------------------------------------------------------------------------
    def list_zones(self) -> list[ZoneRecord]:
        return self.dns.list_zones()

    def list_records(self, zone_id: str) -> list[DnsRecord]:
        return self.dns.list_records(zone_id)

    def create_zone(self, domain: str, type_: str, ttl: int) -> ZoneRecord:
        return self.dns.create_zone(domain, type_, ttl)

    def delete_zone(self, zone_id: str) -> None:
        self.dns.delete_zone(zone_id)

    def create_record(self, zone_id: str, name: str, type_: str, data: str, ttl: int) -> DnsRecord:
        return self.dns.create_record(zone_id, name, type_, data, ttl)

    def delete_record(self, zone_id: str, record_id: str) -> None:
        self.dns.delete_record(zone_id, record_id)

    def update_record(self, zone_id: str, record_id: str, name: str, type_: str, data: str,
                      ttl: int) -> DnsRecord:
        return self.dns.update_record(zone_id, record_id, name, type_, data, ttl)

    def close(self) -> None:
        super().close()
        self.dns.close()

