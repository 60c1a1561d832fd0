"""The DigitalOcean adapter: libcloud's v2 compute and DNS drivers, translated to records.

Blocking, like every adapter. A few calls go through the driver's connection directly,
where libcloud's helper would send the wrong thing (see ``driver.py`` for the others):

* create: libcloud's ``NodeImage`` turns every id into a string, where the API documents
  an image as an integer id or a slug; the body here sends ids (image, SSH keys) as integers.
* volume attach/detach: libcloud sends ``droplet_id`` as a string where the API documents an
  integer, and its detach detaches from every droplet; here exactly one, by integer id.
* zone create: libcloud always sends ``ip_address`` (127.0.0.1 when none is given), which
  makes DigitalOcean add an ``A @ 127.0.0.1`` record nobody asked for.

Ids are checked for shape before they go into a URL path: an id that cannot exist at
DigitalOcean is :class:`NotFound` without a request."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any

from libcloud.compute.base import Node, NodeLocation, StorageVolume
from libcloud.compute.types import NodeState
from libcloud.dns.base import Record, Zone
from libcloud.dns.types import RecordType

from controller.clouds.providers.base import (
    JSON,
    Capability,
    CreateMachine,
    DnsRecord,
    ImageRecord,
    LocationRecord,
    MachineRecord,
    SizeRecord,
    VolumeRecord,
    ZoneRecord,
)
from controller.clouds.providers.digitalocean import SPEC
from controller.clouds.providers.digitalocean.driver import DNSDriver, NodeDriver
from controller.clouds.providers.digitalocean.errors import do_errors
from controller.clouds.providers.libcloud_compute import (
    STATE_MAP,
    LibcloudComputeAdapter,
    iso_time,
    json_safe,
    price,
)
from controller.errors import Invalid, NotFound

_DROPLET_ID = re.compile(r"^[0-9]{1,20}$")
_VOLUME_ID = re.compile(r"^[0-9a-fA-F-]{1,64}$")
_ZONE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$")
_NODE_EXTRA = ("memory", "vcpus", "disk", "locked", "features", "region", "volume_ids",
               "backup_ids", "snapshot_ids")


def tags_to_dict(tags: Any) -> dict[str, str]:
    """DigitalOcean tags (a list of names) as Overcast tags: ``k:v`` -> ``{k: v}``."""
    out: dict[str, str] = {}
    for tag in tags or []:
        key, _, value = str(tag).partition(":")
        out[key] = value
    return out


def tags_to_list(tags: dict[str, str]) -> list[str]:
    return [f"{k}:{v}" if v else k for k, v in tags.items()]


def key_fingerprint(public_key: str) -> str:
    """The MD5 fingerprint DigitalOcean lists keys by; :class:`Invalid` for a malformed key."""
    try:
        blob = base64.b64decode(public_key.split()[1], validate=True)
    except (IndexError, ValueError, binascii.Error):
        raise Invalid("public_key is not an OpenSSH public key ('type base64 [comment]')",
                      field="public_key") from None
    return ":".join(f"{b:02x}" for b in hashlib.md5(blob).digest())


def _os_type(distribution: Any) -> str:
    d = str(distribution or "").lower()
    return "" if d in ("", "unknown") else ("freebsd" if d == "freebsd" else "linux")


def _int_or_str(value: Any) -> int | str:
    text = str(value).strip()
    return int(text) if text.isdigit() else text


class DigitalOceanAdapter(LibcloudComputeAdapter):
    provider = "digitalocean"
    credential = "token"
    capabilities = SPEC.capabilities

    def __init__(self, config: dict[str, JSON], secrets: dict[str, str], timeout: float = 30.0) -> None:
        super().__init__(config, secrets, timeout)
        self._dns: Any = None

    # -- drivers -------------------------------------------------------------------------------
    def _token(self) -> str:
        token = str(self.secrets.get("token") or "").strip()
        if not token:
            raise Invalid("DigitalOcean needs an API token", field="token")
        return token

    def driver(self) -> Any:
        return NodeDriver(self._token(), str(self.config.get("endpoint") or ""), self.timeout)

    @property
    def dns(self) -> Any:
        if self._dns is None:
            with do_errors("connecting"):
                self._dns = DNSDriver(self._token(), str(self.config.get("endpoint") or ""),
                                      self.timeout)
        return self._dns

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with do_errors(what):
            return fn(*args, **kwargs)

    def _request(self, what: str, path: str, body: dict[str, Any] | None = None,
                 method: str = "GET") -> Any:
        data = json.dumps(body) if body is not None else None
        return self._call(what, self.conn.connection.request, path, data=data,
                          method=method).object

    @staticmethod
    def _id(kind: str, value: str, shape: re.Pattern[str]) -> str:
        if not shape.fullmatch(value or ""):
            raise NotFound(f"digitalocean has no {kind} {value!r}", {"external_id": value})
        return value

    # -- translation ---------------------------------------------------------------------------
    def to_machine(self, node: Any) -> MachineRecord:
        extra = node.extra or {}
        size, image = node.size, node.image
        state = getattr(node.state, "value", node.state)
        return MachineRecord(
            external_id=str(node.id), name=str(node.name),
            state=STATE_MAP.get(str(state).lower(), "unknown"),
            public_ips=[ip for ip in node.public_ips if ip],
            private_ips=[ip for ip in node.private_ips if ip],
            size=str(extra.get("size_slug") or ""), image=str(image.id) if image else "",
            location=str(extra.get("region_slug") or ""),
            os_type=_os_type(image.extra.get("distribution")) if image else "",
            cores=int(extra.get("vcpus") or 0), created=iso_time(node.created_at),
            tags=tags_to_dict(extra.get("tags")),
            price_per_hour=price(size.price) if size else None,
            extra={k: json_safe(extra[k]) for k in _NODE_EXTRA if k in extra}
            | ({"image_slug": image.extra.get("slug")} if image else {}),
        )

    @staticmethod
    def to_size(s: Any) -> SizeRecord:
        return SizeRecord(external_id=str(s.id), name=str(s.name), cpus=int(s.extra.get("vcpus") or 0),
                          ram_mb=int(s.ram or 0), disk_gb=int(s.disk or 0), price_per_hour=price(s.price),
                          extra={"price_monthly": json_safe(s.extra.get("price_monthly")),
                                 "transfer_tb": json_safe(s.bandwidth),
                                 "regions": json_safe(s.extra.get("regions"))})

    @staticmethod
    def to_image(i: Any) -> ImageRecord:
        return ImageRecord(external_id=str(i.id), name=str(i.name),
                           os_type=_os_type(i.extra.get("distribution")),
                           extra={k: json_safe(i.extra.get(k)) for k in
                                  ("distribution", "slug", "public", "min_disk_size", "regions")})

    @staticmethod
    def to_location(loc: Any) -> LocationRecord:
        # libcloud puts the region's feature list where other drivers put a dict
        return LocationRecord(external_id=str(loc.id), name=str(loc.name),
                              extra={"features": json_safe(loc.extra or [])})

    @staticmethod
    def to_volume(v: Any) -> VolumeRecord:
        droplets = [str(i) for i in v.extra.get("droplet_ids") or []]
        return VolumeRecord(external_id=str(v.id), name=str(v.name), size_gb=int(v.size or 0),
                            state="in-use" if droplets else "available",
                            location=str(v.extra.get("region_slug") or ""), attached_to=droplets,
                            extra={"created_at": json_safe(v.extra.get("created_at"))})

    # -- inventory -------------------------------------------------------------------------------
    def check(self) -> None:
        self._call("checking the API token", self.conn.ex_account_info)

    def list_volumes(self) -> list[VolumeRecord]:
        return [self.to_volume(v) for v in self._call("listing volumes", self.conn.list_volumes)]

    # -- machines --------------------------------------------------------------------------------
    def _stub(self, external_id: str) -> Any:
        droplet_id = self._id("droplet", external_id, _DROPLET_ID)
        return Node(id=droplet_id, name="", state=NodeState.UNKNOWN, public_ips=[],
                    private_ips=[], driver=self.conn)

    def machine_action(self, action: Capability, external_id: str, params: dict[str, JSON]) -> None:
        if action not in self.capabilities:
            raise self._unsupported(str(action))
        d, node = self.conn, self._stub(external_id)
        path = f"/v2/droplets/{node.id}/actions"
        what = f"running {action}"
        if action == Capability.START:
            self._call(what, d.ex_power_on_node, node)
        elif action == Capability.STOP:
            if params.get("force"):
                self._request(what, path, {"type": "power_off"}, "POST")
            else:
                self._call(what, d.ex_shutdown_node, node)
        elif action == Capability.REBOOT:
            self._call(what, d.ex_hard_reboot if params.get("hard") else d.reboot_node, node)
        elif action == Capability.DESTROY:
            self._call(what, d.destroy_node, node)
        elif action == Capability.RENAME:
            name = str(params.get("name") or "").strip()
            if not name:
                raise Invalid("rename needs a name", field="name")
            self._call(what, d.ex_rename_node, node, name)
        elif action == Capability.RESIZE:
            size = str(params.get("size") or "").strip()
            if not size:
                raise Invalid("resize needs a size", field="size")
            self._request(what, path, {"type": "resize", "size": size,
                                       "disk": bool(params.get("disk"))}, "POST")
        else:
            raise self._unsupported(str(action))

    def create_machine(self, req: CreateMachine) -> MachineRecord:
        for name, value in (("size", req.size), ("image", req.image), ("location", req.location)):
            if not value:
                raise Invalid(f"DigitalOcean needs a {name} to create a droplet", field=name)
        keys: list[int | str] = [_int_or_str(k) for k in req.extra.get("ssh_keys") or []]
        if req.public_key:
            keys.append(self._key_id(req.public_key))
        body: dict[str, Any] = {"name": req.name, "size": req.size, "image": _int_or_str(req.image),
                                "region": req.location, "ssh_keys": keys,
                                "tags": tags_to_list(req.tags), "user_data": req.cloud_init or None}
        for flag in ("ipv6", "backups", "monitoring"):
            if flag in req.extra:
                body[flag] = bool(req.extra[flag])
        if req.extra.get("vpc_uuid"):
            body["vpc_uuid"] = str(req.extra["vpc_uuid"])
        created = self._request("creating the droplet", "/v2/droplets", body, "POST")
        return self.to_machine(self._call("reading the new droplet", self.conn._to_node,
                                          created["droplet"]))

    def _key_id(self, public_key: str) -> int:
        """The account's key with this public key's fingerprint, imported when missing."""
        fp = key_fingerprint(public_key)
        for key in self._call("listing SSH keys", self.conn.list_key_pairs):
            if key.fingerprint == fp:
                return int(key.extra["id"])
        name = f"overcast-{fp.replace(':', '')[:12]}"
        key = self._call("importing the SSH key", self.conn.create_key_pair, name, public_key.strip())
        return int(key.extra["id"])

    # -- volumes ---------------------------------------------------------------------------------
    def _volume(self, volume_id: str) -> Any:
        vid = self._id("volume", volume_id, _VOLUME_ID)
        obj = self._request("finding the volume", f"/v2/volumes/{vid}")
        return self.conn._to_volume(obj["volume"])

    def create_volume(self, name: str, size_gb: int, location: str,
                      extra: dict[str, JSON]) -> VolumeRecord:
        if not location:
            raise Invalid("DigitalOcean needs a region to create a volume", field="location")
        d = self.conn
        region = NodeLocation(id=location, name=location, country="", driver=d)
        return self.to_volume(self._call("creating the volume", d.create_volume, size_gb, name,
                                         location=region))

    def delete_volume(self, external_id: str) -> None:
        vid = self._id("volume", external_id, _VOLUME_ID)
        self._call("deleting the volume", self.conn.destroy_volume,
                   StorageVolume(id=vid, name="", size=0, driver=self.conn))

    def _volume_action(self, type_: str, volume_id: str, machine_id: str) -> None:
        droplet = int(self._id("droplet", machine_id, _DROPLET_ID))
        vol = self._volume(volume_id)
        self._request(f"{type_}ing the volume", "/v2/volumes/actions",
                      {"type": type_, "volume_name": vol.name, "droplet_id": droplet,
                       "region": vol.extra["region_slug"]}, "POST")

    def attach_volume(self, volume_id: str, machine_id: str, device: str) -> None:
        self._volume_action("attach", volume_id, machine_id)  # DigitalOcean picks the device

    def detach_volume(self, volume_id: str, machine_id: str) -> None:
        self._volume_action("detach", volume_id, machine_id)

    # -- DNS -------------------------------------------------------------------------------------
    def _zone(self, zone_id: str) -> Any:
        zid = self._id("zone", zone_id, _ZONE)
        return Zone(id=zid, domain=zid, type="master", ttl=0, driver=self.dns)

    def list_zones(self) -> list[ZoneRecord]:
        return [ZoneRecord(external_id=str(z.id), domain=str(z.domain), ttl=int(z.ttl or 0))
                for z in self._call("listing DNS zones", self.dns.list_zones)]

    def list_records(self, zone_id: str) -> list[DnsRecord]:
        out = []
        for r in self._call("listing DNS records", self.dns.list_records, self._zone(zone_id)):
            extra = r.extra or {}
            data = str(r.data)
            if r.type in ("MX", "SRV") and extra.get("priority") is not None:
                data = " ".join(str(p) for p in (extra["priority"], extra.get("weight"),
                                                 extra.get("port"), r.data) if p is not None)
            out.append(DnsRecord(external_id=str(r.id), zone=zone_id, name=str(r.name), type=str(r.type),
                                 data=data, ttl=int(r.ttl or 0)))
        return out

    def create_zone(self, domain: str, type_: str, ttl: int) -> ZoneRecord:
        if type_ not in ("", "master"):
            raise Invalid("DigitalOcean hosts primary (master) zones only", field="type")
        obj = self._call("creating the DNS zone", self.dns.connection.request, "/v2/domains",
                         data=json.dumps({"name": domain}), method="POST").object["domain"]
        return ZoneRecord(external_id=str(obj["name"]), domain=str(obj["name"]),
                          ttl=int(obj.get("ttl") or 0))

    def delete_zone(self, zone_id: str) -> None:
        self._call("deleting the DNS zone", self.dns.delete_zone, self._zone(zone_id))

    def create_record(self, zone_id: str, name: str, type_: str, data: str, ttl: int) -> DnsRecord:
        type_ = type_.upper()
        if type_ not in self.dns.RECORD_TYPE_MAP:
            raise Invalid(f"DigitalOcean record types here: {', '.join(sorted(self.dns.RECORD_TYPE_MAP))}",
                          field="type")
        extra: dict[str, Any] = {"ttl": ttl} if ttl else {}
        value = data
        if type_ in ("MX", "SRV"):  # "10 mail.example.com." / "10 5 5060 sip.example.com."
            parts = data.split()
            numbers = ["priority"] if type_ == "MX" else ["priority", "weight", "port"]
            if len(parts) != len(numbers) + 1 or not all(p.isdigit() for p in parts[:-1]):
                raise Invalid(f"{type_} data is '{' '.join(numbers)} target'", field="data")
            extra.update({k: int(v) for k, v in zip(numbers, parts, strict=False)})
            value = parts[-1]
        rec = self._call("creating the DNS record", self.dns.create_record, name or "@",
                         self._zone(zone_id), type_, value, extra or None)
        return DnsRecord(external_id=str(rec.id), zone=zone_id, name=str(rec.name), type=type_,
                         data=data, ttl=int(rec.ttl or 0))

    def delete_record(self, zone_id: str, record_id: str) -> None:
        rid = self._id("record", record_id, _DROPLET_ID)
        zone = self._zone(zone_id)
        type_: Any = RecordType.A  # not used to delete; libcloud's Record wants one
        self._call("deleting the DNS record", self.dns.delete_record,
                   Record(id=rid, name="", type=type_, data="", zone=zone, driver=self.dns))

    def close(self) -> None:
        for drv in (self._driver, self._dns):
            conn = getattr(getattr(drv, "connection", None), "connection", None)
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # closing is best effort
                    pass
        self._driver = self._dns = None
