"""IBM Cloud classic infrastructure over our SoftLayer REST driver."""

from __future__ import annotations

from typing import Any

from controller.clouds.providers.base import JSON, MachineRecord
from controller.clouds.providers.ibm import SPEC
from controller.clouds.providers.libcloud_compute import (
    STATE_MAP,
    LibcloudComputeAdapter,
    price,
)

# the user name that goes with an IBM Cloud (IAM) API key on the classic API
IAM_USER = "apikey"


class IbmAdapter(LibcloudComputeAdapter):
    provider = SPEC.name
    capabilities = SPEC.capabilities
    credential = "apikey"

    def driver(self) -> Any:
        from controller.clouds.providers.ibm.driver import SoftLayerNodeDriver

        user = str(self.config.get("username") or "").strip() or IAM_USER
        return SoftLayerNodeDriver(user, self._field("apikey", secret=True),
                                   timeout=self.timeout)

    def to_machine(self, node: Any) -> MachineRecord:
        g: dict[str, Any] = node.extra or {}
        os_desc = (((g.get("operatingSystem") or {}).get("softwareLicense") or {})
                   .get("softwareDescription") or {})
        code = str(os_desc.get("referenceCode") or "")
        billing = g.get("billingItem") or {}
        hourly = price(billing.get("hourlyRecurringFee")) if g.get("hourlyBillingFlag") else None
        tags = [str(((t or {}).get("tag") or {}).get("name") or "")
                for t in g.get("tagReferences") or []]
        extra: dict[str, JSON] = {
            "domain": g.get("domain"), "status": (g.get("status") or {}).get("keyName"),
            "os": os_desc.get("name"), "max_memory_mb": g.get("maxMemory"),
            "hourly": bool(g.get("hourlyBillingFlag")),
            "monthly_price": price(billing.get("recurringFee")),
        }
        state = str(getattr(node.state, "value", node.state)).lower()
        return MachineRecord(
            external_id=str(node.id), name=str(node.name), state=STATE_MAP.get(state, "unknown"),
            public_ips=list(node.public_ips or []), private_ips=list(node.private_ips or []),
            hostname=str(g.get("fullyQualifiedDomainName") or ""),
            location=str((g.get("datacenter") or {}).get("name") or ""),
            os_type="windows" if code.upper().startswith("WIN") else ("linux" if code else ""),
            cores=int(g.get("maxCpu") or 0), created=str(g.get("createDate") or ""),
            tags={t: "" for t in tags if t}, price_per_hour=hourly,
            macs=[str(n["macAddress"]) for n in g.get("networkComponents") or []
                  if isinstance(n, dict) and n.get("macAddress")],
            extra={k: v for k, v in extra.items() if v not in (None, "")},
        )
