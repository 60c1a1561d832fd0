"""Vultr over libcloud's API v2 driver: errors, prices and ids put the way Overcast reads them."""

from __future__ import annotations

from typing import Any

from controller.clouds.providers.base import MachineRecord, SizeRecord
from controller.clouds.providers.errors import libcloud_errors
from controller.clouds.providers.libcloud_compute import LibcloudComputeAdapter, price
from controller.clouds.providers.vultr import SPEC

# Vultr prices by the month and bills by the hour, capped at the monthly price after 672
# hours (28 days): the hourly rate is the monthly one over 672
HOURS_PER_BILLED_MONTH = 672


class VultrAdapter(LibcloudComputeAdapter):
    provider = SPEC.name
    capabilities = SPEC.capabilities
    credential = "apikey"

    def driver(self) -> Any:
        from libcloud.compute.drivers.vultr import VultrNodeDriverV2

        return VultrNodeDriverV2(self._field("apikey", secret=True), api_version="2",
                                 timeout=self.timeout)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from libcloud.common.exceptions import BaseHTTPError
        from libcloud.common.vultr import VultrException

        with libcloud_errors(self.provider, what, self.refused_credential()):
            try:
                return fn(*args, **kwargs)
            except VultrException as exc:
                # the v2 driver raises this plain Exception (code = HTTP status) for every
                # error, 401 included: give it the status so it maps like any HTTP error
                raise BaseHTTPError(int(exc.code or 0), str(exc.message or "")) from None

    def to_machine(self, node: Any) -> MachineRecord:
        record = super().to_machine(node)
        extra = node.extra or {}
        # the driver keeps plan and os as plain ids and the creation time as the API's text
        record.size = str(node.size or "")
        record.image = str(node.image or "")
        record.created = str(node.created_at or "")
        record.cores = int(extra.get("vcpu_count") or extra.get("cpu_count") or 0)
        tag = extra.get("tag")
        record.tags = {str(tag): ""} if tag else {}
        record.price_per_hour = self.size_price(record.size)
        if extra.get("mac_address"):
            record.macs = [str(extra["mac_address"])]
        return record

    @staticmethod
    def to_size(s: Any) -> SizeRecord:
        record = LibcloudComputeAdapter.to_size(s)
        monthly = price(s.price)  # the driver puts the monthly cost in ``price``
        record.price_per_hour = round(monthly / HOURS_PER_BILLED_MONTH, 5) if monthly else None
        record.cpus = int(s.extra.get("vcpu_count") or s.extra.get("cpu_count") or 0)
        record.extra["monthly_price"] = monthly
        return record
