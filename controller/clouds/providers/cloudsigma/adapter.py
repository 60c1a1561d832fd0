"""CloudSigma over libcloud's API 2.0 driver."""

from __future__ import annotations

from typing import Any

from controller.clouds.providers.base import LocationRecord, MachineRecord, SizeRecord
from controller.clouds.providers.cloudsigma import REGIONS, SPEC
from controller.clouds.providers.libcloud_compute import LibcloudComputeAdapter
from controller.errors import Invalid

# in a server's extra but not for the user's eyes (the VNC console password)
_HIDDEN = ("vnc_password",)


class CloudSigmaAdapter(LibcloudComputeAdapter):
    provider = SPEC.name
    capabilities = SPEC.capabilities
    credential = "password"

    def region(self) -> str:
        region = self._field("region")
        if region not in REGIONS:
            raise Invalid(f"cloudsigma: unknown region {region!r}; one of: {', '.join(REGIONS)}",
                          field="region")
        return region

    def driver(self) -> Any:
        from libcloud.compute.drivers.cloudsigma import CloudSigma_2_0_NodeDriver

        return CloudSigma_2_0_NodeDriver(self._field("username"),
                                         self._field("password", secret=True),
                                         region=self.region(), timeout=self.timeout)

    def to_machine(self, node: Any) -> MachineRecord:
        for key in _HIDDEN:
            (node.extra or {}).pop(key, None)
        record = super().to_machine(node)
        extra = node.extra or {}
        record.location = self.region()
        record.cores = max(1, round(float(extra.get("cpus") or 0))) if extra.get("cpus") else 0
        record.image = ""  # the driver names the boot drive's distribution, not an image id
        if isinstance(node.image, str) and node.image.strip():
            record.extra["image_name"] = node.image.strip()
        record.macs = [str(n["mac"]) for n in extra.get("nics") or []
                       if isinstance(n, dict) and n.get("mac")]
        return record

    def size_price(self, size_id: str) -> float | None:
        return None  # libcloud's CloudSigma prices are old Zurich examples, for every region

    @staticmethod
    def to_size(s: Any) -> SizeRecord:
        record = LibcloudComputeAdapter.to_size(s)
        record.cpus = int(getattr(s, "cpu", 0) or 0)
        record.price_per_hour = None
        return record

    def list_locations(self) -> list[LocationRecord]:
        # one region per cloud (the API host is the region's); the v2 driver lists none
        from libcloud.common.cloudsigma import API_ENDPOINTS_2_0

        region = self.region()
        info = API_ENDPOINTS_2_0[region]
        return [LocationRecord(external_id=region, name=str(info["name"]),
                               country=str(info["country"]))]
