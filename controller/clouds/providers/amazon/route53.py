"""libcloud's Route53 DNS driver brought to the API AWS (and moto) serve today.

libcloud speaks API 2012-02-29 with the old ``X-Amzn-Authorization`` (AWS3) header; moto
serves only 2013-04-01 and routes requests by their SigV4 scope. This driver sends SigV4 and
the 2013-04-01 paths and namespace, pages zones by ``marker`` and records by name *and* type,
and reads record sets itself: one record per value, the value as stored (an MX keeps its
priority), and record types libcloud does not know (CAA, DS, ...) without failing the list.
Imports libcloud: load it only through the adapter."""

from __future__ import annotations

import hashlib
import re
from typing import Any, cast
from xml.etree import ElementTree as ET

from libcloud.common.aws import SignedAWSConnection
from libcloud.dns.base import Record
from libcloud.dns.drivers.route53 import API_ROOT, NAMESPACE, Route53DNSDriver, Route53DNSResponse

from controller.clouds.providers.amazon.aws import RestSigV4, local, raise_error, renamespace

API_VERSION = "2013-04-01"
NEW_ROOT = f"/{API_VERSION}/"
NEW_NAMESPACE = f"https://route53.amazonaws.com/doc/{API_VERSION}/"
_OCTAL = re.compile(r"\\(\d{3})")


class Response(Route53DNSResponse):
    def parse_body(self) -> Any:
        # libcloud's parsers look for its 2012-02-29 namespace: give it that one
        return renamespace(super().parse_body(), NAMESPACE)

    def parse_error(self) -> str:
        return raise_error(int(self.status), self.body or "", str(self.error or ""))


class Connection(SignedAWSConnection):
    host = "route53.amazonaws.com"
    version = API_VERSION
    service_name = "route53"
    responseCls = Response

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["signature_version"] = "4"
        super().__init__(*args, **kwargs)
        self.signer = cast(Any, RestSigV4(access_key=self.user_id, access_secret=self.key,
                                          version=self.version, connection=self))

    def request(self, action: Any, params: Any = None, data: Any = None, headers: Any = None,
                method: Any = "GET", raw: Any = False, stream: Any = False, json: Any = None,
                retry_failed: Any = None) -> Any:
        if action.startswith(API_ROOT):
            action = NEW_ROOT + action[len(API_ROOT):]
        if isinstance(data, bytes):
            data = data.replace(NAMESPACE.encode(), NEW_NAMESPACE.encode())
        elif isinstance(data, str):
            data = data.replace(NAMESPACE, NEW_NAMESPACE)
        return super().request(action, params=params, data=data, headers=headers, method=method,
                               raw=raw, stream=stream, json=json, retry_failed=retry_failed)


def _text(el: Any, name: str) -> str:
    for child in el:
        if local(child.tag) == name:
            return (child.text or "").strip()
    return ""


def _children(el: Any, *path: str) -> list[Any]:
    found = [el]
    for name in path:
        found = [c for f in found for c in f if local(c.tag) == name]
    return found


def record_id(type_: str, name: str, value: str, multi: bool) -> str:
    """``TYPE:name`` for a one-value set (libcloud's id); a set of several values gets one id
    per value: ``TYPE:name#<8 hex of the value>``."""
    base = f"{type_}:{name}"
    return f"{base}#{hashlib.sha256(value.encode()).hexdigest()[:8]}" if multi else base


class Driver(Route53DNSDriver):
    # not a subclass of libcloud's Route53Connection: that one adds the old AWS3 header
    connectionCls = Connection  # type: ignore[assignment]

    def __init__(self, key: str, secret: str, region_name: str = "us-east-1", **kwargs: Any) -> None:
        self.region_name = region_name  # the SigV4 scope; Route53 is global, signed in one region
        super().__init__(key, secret, **kwargs)

    def _get_data(self, rtype: str, last_key: Any, **kwargs: Any) -> tuple[list[Any], Any, bool]:
        path = API_ROOT + "hostedzone"
        params: dict[str, str] = {}
        if rtype == "zones":
            if last_key:
                params["marker"] = last_key
            body = self.connection.request(path, params=params).object
            items = self._to_zones(data=body)
            following: Any = _text(body, "NextMarker") or None
        else:
            zone = kwargs["zone"]
            if last_key:
                params["name"], params["type"] = last_key
            self.connection.set_context({"zone_id": zone.id})
            body = self.connection.request(f"{path}/{zone.id}/rrset", params=params).object
            items = self._to_records(data=body, zone=zone)
            name, type_ = _text(body, "NextRecordName"), _text(body, "NextRecordType")
            following = (name, type_) if name and type_ else None
        truncated = _text(body, "IsTruncated") == "true"
        return items, following, not (truncated and following)

    def _to_records(self, data: Any, zone: Any) -> list[Any]:
        records = []
        for rrs in _children(data, "ResourceRecordSets", "ResourceRecordSet"):
            # Route53 writes "*" and other specials as octal escapes ("\052")
            fqdn = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), _text(rrs, "Name"))
            if fqdn == zone.domain:
                name = ""
            elif fqdn.endswith("." + zone.domain):
                name = fqdn[: -len(zone.domain) - 1]
            else:
                name = fqdn
            type_ = _text(rrs, "Type")
            ttl = int(_text(rrs, "TTL") or 0)
            values = [_text(r, "Value") for r in _children(rrs, "ResourceRecords", "ResourceRecord")]
            alias = _children(rrs, "AliasTarget")
            if alias and not values:  # an alias points at an AWS resource, not a value
                values = [f"ALIAS {_text(alias[0], 'DNSName')}"]
            for value in values:
                records.append(Record(
                    id=record_id(type_, name, value, len(values) > 1), name=name, type=cast(Any, type_),
                    data=value, zone=zone, driver=self, ttl=ttl,
                    extra={"ttl": ttl, "values": values, "alias": bool(alias)}))
        return records

    def ex_change(self, zone: Any, changes: list[tuple[str, str, str, int, list[str]]]) -> None:
        """Apply ``(action, name, type, ttl, values)`` changes to ``zone`` in one atomic
        change batch (a whole record set per change, as Route53 requires)."""
        root = ET.Element("ChangeResourceRecordSetsRequest", {"xmlns": NAMESPACE})
        batch = ET.SubElement(ET.SubElement(root, "ChangeBatch"), "Changes")
        for action, name, type_, ttl, values in changes:
            change = ET.SubElement(batch, "Change")
            ET.SubElement(change, "Action").text = action
            rrs = ET.SubElement(change, "ResourceRecordSet")
            ET.SubElement(rrs, "Name").text = f"{name}.{zone.domain}" if name else zone.domain
            ET.SubElement(rrs, "Type").text = type_
            ET.SubElement(rrs, "TTL").text = str(ttl)
            rrecs = ET.SubElement(rrs, "ResourceRecords")
            for value in values:
                ET.SubElement(ET.SubElement(rrecs, "ResourceRecord"), "Value").text = value
        self.connection.set_context({"zone_id": zone.id})
        self.connection.request(f"{API_ROOT}hostedzone/{zone.id}/rrset", method="POST",
                                data=ET.tostring(root))
