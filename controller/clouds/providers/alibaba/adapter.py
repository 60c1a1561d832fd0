"""Alibaba Cloud ECS over libcloud's driver (its XML API, signed requests)."""

from __future__ import annotations

import re
from typing import Any

from controller.clouds.providers.alibaba import SPEC
from controller.clouds.providers.base import LocationRecord, MachineRecord, SizeRecord
from controller.clouds.providers.errors import blame, libcloud_errors
from controller.clouds.providers.libcloud_compute import LibcloudComputeAdapter, iso_time
from controller.errors import Invalid

# a region id goes into the endpoint's host name: nothing but its documented shape
_REGION = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]+){1,4}")
# the driver's error is the str() of a dict; Aliyun answers a wrong AccessKey with 404
# (InvalidAccessKeyId.NotFound) and a wrong secret with 400 (SignatureDoesNotMatch)
_CODE = re.compile(r"'code': '([^']*)'")
_MESSAGE = re.compile(r"'message': '([^']*)'")
# refusals by their code, and the field each is about: a key unknown, disabled or without the
# RAM permission is the AccessKey ID's; a signature that does not match is the secret's
_AUTH_CODES = {"InvalidAccessKeyId": "apikey", "Forbidden.AccessKeyDisabled": "apikey",
               "InvalidSecurityToken": "apikey", "Forbidden.RAM": "apikey",
               "SignatureDoesNotMatch": "apisecret", "IncompleteSignature": "apisecret"}


class AlibabaAdapter(LibcloudComputeAdapter):
    provider = SPEC.name
    capabilities = SPEC.capabilities
    credential = "apisecret"

    def region(self) -> str:
        region = self._field("region")
        if not _REGION.fullmatch(region):
            raise Invalid(f"alibaba: {region!r} is not a region id (like eu-central-1)",
                          field="region")
        return region

    def driver(self) -> Any:
        from libcloud.compute.drivers.ecs import ECSDriver

        region = self.region()
        return ECSDriver(self._field("apikey"),
                         self._field("apisecret", secret=True), region=region,
                         host=f"ecs.{region}.aliyuncs.com", timeout=self.timeout)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from libcloud.common.exceptions import BaseHTTPError
        from libcloud.common.types import InvalidCredsError

        with libcloud_errors(self.provider, what, self.refused_credential()):
            try:
                return fn(*args, **kwargs)
            except BaseHTTPError as exc:
                text = str(exc.message)
                code = _CODE.search(text)
                message = _MESSAGE.search(text)
                said = ": ".join(m.group(1) for m in (code, message) if m) or text
                refused = next((field for prefix, field in _AUTH_CODES.items()
                                if code and code.group(1).startswith(prefix)), "")
                if code and refused:
                    raise blame(InvalidCredsError(said), refused, code.group(1)) from None
                if code and code.group(1).startswith("InvalidRegionId"):
                    raise Invalid(f"alibaba: {said}", field="region") from None
                raise BaseHTTPError(exc.code, said) from None

    def to_machine(self, node: Any) -> MachineRecord:
        record = super().to_machine(node)
        extra = node.extra or {}
        record.location = str(extra.get("zone_id") or "")
        record.created = iso_time(extra.get("creation_time"))
        record.hostname = str(extra.get("hostname") or "")
        return record

    def size_price(self, size_id: str) -> float | None:
        return None  # DescribeInstanceTypes has no prices (and libcloud none either)

    @staticmethod
    def to_size(s: Any) -> SizeRecord:
        record = LibcloudComputeAdapter.to_size(s)
        record.ram_mb = int(float(s.ram or 0) * 1024)  # the driver keeps MemorySize in GiB
        record.cpus = int((s.extra or {}).get("cpu_core_count") or 0)
        return record

    def list_locations(self) -> list[LocationRecord]:
        # the region's zones: what machines name as their place and creation asks for
        zones = self._call("listing locations", self.conn.ex_list_zones)
        return [LocationRecord(external_id=str(z.id), name=str(z.name or z.id),
                               extra={"region": self.region()}) for z in zones]
