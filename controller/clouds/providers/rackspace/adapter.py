"""Rackspace Cloud Servers over libcloud's OpenStack-based driver."""

from __future__ import annotations

from typing import Any

from controller.clouds.providers.base import JSON, Capability, LocationRecord, MachineRecord
from controller.clouds.providers.libcloud_compute import LibcloudComputeAdapter
from controller.clouds.providers.rackspace import REGIONS, SPEC
from controller.errors import Invalid

_REGION_NAMES = {"dfw": "Dallas", "ord": "Chicago", "iad": "Northern Virginia",
                 "lon": "London", "syd": "Sydney", "hkg": "Hong Kong"}
_REGION_COUNTRIES = {"dfw": "US", "ord": "US", "iad": "US", "lon": "GB", "syd": "AU",
                     "hkg": "HK"}
# in a server's extra but not for the user's eyes: the admin password a create returns
_HIDDEN = ("password",)


class RackspaceAdapter(LibcloudComputeAdapter):
    provider = SPEC.name
    capabilities = SPEC.capabilities
    credential = "apikey"

    def region(self) -> str:
        region = self._field("region").lower()
        if region not in REGIONS:
            raise Invalid(f"rackspace: unknown region {region!r}; one of: {', '.join(REGIONS)}",
                          field="region")
        return region

    def driver(self) -> Any:
        from libcloud.compute.drivers.rackspace import RackspaceNodeDriver

        return RackspaceNodeDriver(self._field("username"), self._field("apikey", secret=True),
                                   region=self.region(), timeout=self.timeout)

    def to_machine(self, node: Any) -> MachineRecord:
        extra = node.extra or {}
        for key in _HIDDEN:
            extra.pop(key, None)
        metadata = extra.pop("metadata", None) or {}
        extra["tags"] = metadata  # server metadata is the key/value tagging OpenStack has
        record = super().to_machine(node)
        record.size = str(extra.get("flavorId") or "")
        record.image = str(extra.get("imageId") or "")
        record.location = self.region()
        record.price_per_hour = self.size_price(record.size)
        for drop in ("addresses", "uri", "flavor_details", "service_name"):
            record.extra.pop(drop, None)
        return record

    def machine_action(self, action: Capability, external_id: str, params: dict[str, JSON]) -> None:
        # a soft reboot (the guest restarts itself), as for OpenStack; ``params.hard`` power-
        # cycles it (libcloud's reboot_node alone would always be HARD)
        if action is Capability.REBOOT and not params.get("hard"):
            node = self.node(external_id)
            self._call("running reboot", self.conn.ex_soft_reboot_node, node)
            return
        super().machine_action(action, external_id, params)

    def list_locations(self) -> list[LocationRecord]:
        # one region per cloud; the OpenStack driver answers a single nameless location
        region = self.region()
        return [LocationRecord(external_id=region, name=_REGION_NAMES[region],
                               country=_REGION_COUNTRIES[region])]
