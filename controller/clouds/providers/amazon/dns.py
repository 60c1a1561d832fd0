"""Route53 zones and records for the AWS adapter, over the fixed libcloud driver in
``route53.py``. Blocking, like the adapter that owns it; failures leave through
``libcloud_errors``.

Route53 keeps one record *set* per name and type. Overcast shows one record per value:
creating a record whose set exists adds the value to the set, deleting one removes only its
value (both in one atomic change batch). Deleting a zone deletes its records first (Route53
refuses a zone that still has any besides its NS and SOA)."""

from __future__ import annotations

from typing import Any

from controller.clouds.providers.base import JSON, DnsRecord, ZoneRecord
from controller.clouds.providers.errors import libcloud_errors
from controller.errors import Invalid, NotFound

RECORD_TYPES = ("A", "AAAA", "CAA", "CNAME", "MX", "NS", "PTR", "SPF", "SRV", "TXT")
DEFAULT_TTL = 300


def _signing(region: str) -> tuple[str, str]:
    """Route53 is global per partition: (its host, the region its SigV4 scope names)."""
    if region.startswith("cn-"):
        return "route53.amazonaws.com.cn", "cn-northwest-1"
    if region.startswith("us-gov-"):
        return "route53.us-gov.amazonaws.com", "us-gov-west-1"
    return "route53.amazonaws.com", "us-east-1"


def _unquote(type_: str, value: str) -> str:
    """A TXT value as the user wrote it: Route53 stores one quoted string."""
    if type_ in ("TXT", "SPF") and len(value) >= 2 and value[0] == value[-1] == '"' \
            and '" "' not in value:
        return value[1:-1].replace('\\"', '"')
    return value


def _quote(type_: str, value: str) -> str:
    if type_ in ("TXT", "SPF") and not (len(value) >= 2 and value[0] == value[-1] == '"'):
        return '"' + value.replace('"', '\\"') + '"'
    return value


class AmazonDns:
    provider = "amazon"

    def __init__(self, config: dict[str, JSON], secrets: dict[str, str], timeout: float) -> None:
        self.config = config
        self.secrets = secrets
        self.timeout = timeout
        self._driver: Any = None

    @property
    def conn(self) -> Any:
        if self._driver is None:
            from controller.clouds.providers.amazon.aws import parse_endpoint
            from controller.clouds.providers.amazon.route53 import Driver

            host, region = _signing(str(self.config.get("region") or ""))
            port, secure = 443, True
            endpoint = str(self.config.get("endpoint") or "")
            if endpoint:
                host, port, secure = parse_endpoint(endpoint)
            with libcloud_errors(self.provider, "connecting"):
                self._driver = Driver(str(self.config.get("apikey") or ""),
                                      self.secrets.get("apisecret", ""), region_name=region,
                                      host=host, port=port, secure=secure, timeout=self.timeout)
                self._driver.connection.timeout = self.timeout
        return self._driver

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with libcloud_errors(self.provider, what):
            return fn(*args, **kwargs)

    def probe(self) -> None:
        """One cheap signed Route53 call (the first zone, if any): raises as any call does."""
        from libcloud.dns.drivers.route53 import API_ROOT

        self._call("asking Route53 which credential it refuses",
                   lambda: self.conn.connection.request(API_ROOT + "hostedzone",
                                                        params={"maxitems": "1"}))

    # -- zones -----------------------------------------------------------------------------------
    @staticmethod
    def to_zone(z: Any) -> ZoneRecord:
        extra = z.extra or {}
        return ZoneRecord(external_id=str(z.id), domain=str(z.domain).rstrip("."), type="master",
                          ttl=0, extra={"comment": extra.get("Comment") or "",
                                        "records": int(extra.get("ResourceRecordSetCount") or 0)})

    def _zone(self, zone_id: str) -> Any:
        if not zone_id or "/" in zone_id:
            raise NotFound(f"amazon has no DNS zone {zone_id!r}", {"zone": zone_id})
        return self._call("finding the zone", self.conn.get_zone, zone_id)

    def list_zones(self) -> list[ZoneRecord]:
        return [self.to_zone(z) for z in self._call("listing zones", lambda: list(self.conn.iterate_zones()))]

    def create_zone(self, domain: str, type_: str, ttl: int) -> ZoneRecord:
        domain = domain.strip().rstrip(".").lower()
        if not domain or " " in domain or "." not in domain:
            raise Invalid(f"{domain!r} is not a domain name", field="domain")
        if type_ not in ("", "master"):
            raise Invalid("Route53 hosts master zones only", field="type")
        return self.to_zone(self._call("creating the zone", self.conn.create_zone, domain + "."))

    def delete_zone(self, zone_id: str) -> None:
        zone = self._zone(zone_id)
        sets = self._sets(zone)
        deletions = [("DELETE", name, type_, ttl, values) for (name, type_), (ttl, values, alias)
                     in sets.items() if not (name == "" and type_ in ("NS", "SOA")) and not alias]
        if deletions:
            self._call("deleting the zone's records", self.conn.ex_change, zone, deletions)
        self._call("deleting the zone", self.conn.delete_zone, zone)

    # -- records ---------------------------------------------------------------------------------
    def _records(self, zone: Any) -> list[Any]:
        return list(self._call("listing records", lambda: list(self.conn.iterate_records(zone))))

    def _sets(self, zone: Any) -> dict[tuple[str, str], tuple[int, list[str], bool]]:
        sets: dict[tuple[str, str], tuple[int, list[str], bool]] = {}
        for r in self._records(zone):
            sets[(r.name, r.type)] = (int(r.ttl or 0), list(r.extra["values"]), bool(r.extra["alias"]))
        return sets

    def to_record(self, r: Any, zone_id: str) -> DnsRecord:
        return DnsRecord(external_id=str(r.id), zone=zone_id, name=str(r.name), type=str(r.type),
                         data=_unquote(str(r.type), str(r.data)), ttl=int(r.ttl or 0),
                         extra={"alias": True} if r.extra.get("alias") else {})

    def list_records(self, zone_id: str) -> list[DnsRecord]:
        return [self.to_record(r, zone_id) for r in self._records(self._zone(zone_id))]

    def _name(self, zone: Any, name: str) -> str:
        """A record name relative to the zone ("" for its apex), from what a user may type:
        ``www``, ``www.example.com.``, ``@``."""
        name = name.strip().rstrip(".").lower()
        domain = str(zone.domain).rstrip(".").lower()
        if name in ("", "@", domain):
            return ""
        return name[: -len(domain) - 1] if name.endswith("." + domain) else name

    def create_record(self, zone_id: str, name: str, type_: str, data: str, ttl: int) -> DnsRecord:
        from controller.clouds.providers.amazon.route53 import record_id

        type_ = type_.strip().upper()
        if type_ not in RECORD_TYPES:
            raise Invalid(f"Route53 records are one of {', '.join(RECORD_TYPES)}", field="type")
        data = data.strip()
        if not data:
            raise Invalid("a record needs data", field="data")
        if type_ == "MX" and not data.split()[0].isdigit():
            raise Invalid("MX data is a priority and a host, e.g. '10 mail.example.com'", field="data")
        zone = self._zone(zone_id)
        rel = self._name(zone, name)
        value = _quote(type_, data)
        ttl_, values, alias = self._sets(zone).get((rel, type_), (0, [], False))
        if alias:
            raise Invalid(f"{type_} {rel or '@'} is an alias record; change it in Route53", field="name")
        if value in values:
            raise Invalid(f"{type_} {rel or '@'} already has {data!r}", field="data")
        values = [*values, value]
        self._call("creating the record", self.conn.ex_change, zone,
                   [("UPSERT", rel, type_, ttl or ttl_ or DEFAULT_TTL, values)])
        return DnsRecord(external_id=record_id(type_, rel, value, len(values) > 1), zone=zone_id,
                         name=rel, type=type_, data=data, ttl=ttl or ttl_ or DEFAULT_TTL)

    def delete_record(self, zone_id: str, record_id: str) -> None:
        zone = self._zone(zone_id)
        record = next((r for r in self._records(zone) if r.id == record_id), None)
        if record is None:
            raise NotFound(f"amazon has no record {record_id!r} in zone {zone_id!r}",
                           {"zone": zone_id, "record": record_id})
        if record.extra["alias"]:
            raise Invalid("alias records are changed in Route53 itself", field="record")
        values = list(record.extra["values"])
        rest = [v for v in values if v != record.data]
        ttl = int(record.ttl or 0)
        change = ("UPSERT", record.name, record.type, ttl, rest) if rest else \
            ("DELETE", record.name, record.type, ttl, values)
        self._call("deleting the record", self.conn.ex_change, zone, [change])

    def update_record(self, zone_id: str, record_id: str, name: str, type_: str, data: str,
                      ttl: int) -> DnsRecord:
        """One record set change: the value is replaced in its set (an UPSERT), so the name
        never goes missing. A new name or type is a new set: made first, then the old value
        removed."""
        from controller.clouds.providers.amazon.route53 import record_id as make_id

        zone = self._zone(zone_id)
        record = next((r for r in self._records(zone) if r.id == record_id), None)
        if record is None:
            raise NotFound(f"amazon has no record {record_id!r} in zone {zone_id!r}",
                           {"zone": zone_id, "record": record_id})
        if record.extra["alias"]:
            raise Invalid("alias records are changed in Route53 itself", field="record")
        type_ = type_.strip().upper()
        rel = self._name(zone, name)
        if (rel, type_) != (record.name, record.type):
            made = self.create_record(zone_id, name, type_, data, ttl)
            old = next((r for r in self._records(zone) if r.name == record.name
                        and r.type == record.type and r.data == record.data), None)
            if old is not None:
                self.delete_record(zone_id, str(old.id))
            return made
        data = data.strip()
        if not data:
            raise Invalid("a record needs data", field="data")
        value = _quote(type_, data)
        values = [value if v == record.data else v for v in record.extra["values"]]
        values = list(dict.fromkeys(values))  # the new value may already be in the set
        ttl = ttl or int(record.ttl or 0) or DEFAULT_TTL
        self._call("changing the record", self.conn.ex_change, zone,
                   [("UPSERT", rel, type_, ttl, values)])
        return DnsRecord(external_id=make_id(type_, rel, value, len(values) > 1), zone=zone_id,
                         name=rel, type=type_, data=data, ttl=ttl)

    def close(self) -> None:
        conn = getattr(self._driver, "connection", None)
        if conn is not None and getattr(conn, "connection", None) is not None:
            try:
                conn.connection.close()
            except Exception:  # closing is best effort
                pass
        self._driver = None
