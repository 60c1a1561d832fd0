"""Equinix Metal over libcloud's driver, avoiding the parts that break on Python 3.11."""

from __future__ import annotations

from typing import Any

from controller.clouds.providers.base import LocationRecord, MachineRecord, SizeRecord
from controller.clouds.providers.equinix import SPEC
from controller.clouds.providers.libcloud_compute import (
    LibcloudComputeAdapter,
    iso_time,
    json_safe,
    price,
)
from controller.errors import NotFound


class EquinixAdapter(LibcloudComputeAdapter):
    provider = SPEC.name
    capabilities = SPEC.capabilities
    credential = "apikey"

    def driver(self) -> Any:
        from libcloud.compute.drivers.equinixmetal import EquinixMetalNodeDriver

        from controller.clouds.providers.equinix.response import EquinixResponse

        project = str(self.config.get("project_id") or "").strip() or None
        d = EquinixMetalNodeDriver(self._field("apikey", secret=True), project=project)
        # the driver takes no timeout and raises bare Exceptions without the status: give
        # its connection both, then connect again so the session uses them
        d.connection.responseCls = EquinixResponse
        d.connection.timeout = self.timeout
        d.connection.connect()
        return d

    def project_ids(self) -> list[str]:
        project = str(self.config.get("project_id") or "").strip()
        if project:
            return [project]
        return [str(p.id) for p in self._call("listing projects", lambda: self.conn.projects) or []]

    def nodes(self) -> list[Any]:
        # not driver.list_nodes(): without a project it lists them through an
        # ``@asyncio.coroutine``, which Python 3.11 no longer has
        out: list[Any] = []
        for project in self.project_ids():
            out.extend(self._call("listing machines", self.conn.ex_list_nodes_for_project,
                                  ex_project_id=project))
        return out

    def check(self) -> None:
        self.nodes()

    def list_machines(self) -> list[MachineRecord]:
        return [self.to_machine(n) for n in self.nodes()]

    def node(self, external_id: str) -> Any:
        for n in self.nodes():
            if str(n.id) == external_id:
                return n
        raise NotFound(f"{self.provider} has no machine {external_id!r}",
                       {"external_id": external_id})

    def size_price(self, size_id: str) -> float | None:
        return None  # not by listing plans: each device carries its plan and price

    def to_machine(self, node: Any) -> MachineRecord:
        record = super().to_machine(node)
        extra = node.extra or {}
        metro = extra.get("metro") or extra.get("facility") or {}
        record.location = str(metro.get("code") or "") if isinstance(metro, dict) else ""
        record.created = iso_time(extra.get("created_at"))
        size = node.size
        if size is not None:  # the device carries its plan (``include=plan``) and its price
            record.cores = int((size.extra or {}).get("cpus") or 0)
            record.price_per_hour = price(size.price)
        record.extra["project"] = json_safe(extra.get("project"))
        return record

    @staticmethod
    def to_size(s: Any) -> SizeRecord:
        record = LibcloudComputeAdapter.to_size(s)
        record.cpus = int((s.extra or {}).get("cpus") or 0)
        return record

    @staticmethod
    def to_location(loc: Any) -> LocationRecord:
        # metros by their code ("da", "sv"): what devices name as their metro
        extra = dict(loc.extra or {})
        return LocationRecord(external_id=str(extra.get("code") or loc.id), name=str(loc.name),
                              country=str(extra.get("country") or ""),
                              extra={"id": str(loc.id)})
