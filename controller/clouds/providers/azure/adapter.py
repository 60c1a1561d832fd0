"""Azure Resource Manager over libcloud's ``azure_arm`` driver."""

from __future__ import annotations

from typing import Any

from controller.clouds.providers.azure import SPEC
from controller.clouds.providers.base import JSON, Capability, MachineRecord
from controller.clouds.providers.errors import blame
from controller.clouds.providers.libcloud_compute import (
    STATE_MAP,
    LibcloudComputeAdapter,
    json_safe,
)
from controller.errors import ProviderError

# destroy_node waits for the VM to go before deleting its NIC and disks: poll more often
# than its 10 s, for the same bound (100 s)
_POLL_WAIT = 5
_POLL_QTY = 20


# Microsoft Entra sign-in errors (AADSTS codes) and the field each is about
_SIGN_IN = (("AADSTS7000215", "secret"),   # invalid client secret
            ("AADSTS7000222", "secret"),   # the client secret has expired
            ("AADSTS700016", "key"),       # no such application in the directory
            ("AADSTS90002", "tenantId"),   # no such tenant
            ("AADSTS900023", "tenantId"))  # not a tenant name or id


def sign_in_refusal(text: str) -> str:
    """The field an Entra sign-in refusal is about (the secret when it does not say)."""
    return next((field for code, field in _SIGN_IN if code in text), "secret")


class AzureAdapter(LibcloudComputeAdapter):
    provider = SPEC.name
    capabilities = SPEC.capabilities
    credential = "secret"

    def driver(self) -> Any:
        from libcloud.common.exceptions import BaseHTTPError
        from libcloud.common.types import InvalidCredsError
        from libcloud.compute.drivers.azure_arm import AzureNodeDriver

        args = {"tenant_id": self._field("tenantId"),
                "subscription_id": self._field("subscriptionId"),
                "key": self._field("key"), "secret": self._field("secret", secret=True)}
        try:  # the driver signs in (client credentials) while it is built
            return AzureNodeDriver(**args, timeout=self.timeout)
        except BaseHTTPError as exc:
            # the sign-in answers 400 for an unknown tenant or application, 401 for a wrong
            # secret: all of them are refused credentials
            if exc.code in (400, 401, 403):
                text = str(exc.message)
                raise blame(InvalidCredsError(text), sign_in_refusal(text)) from None
            raise

    def to_machine(self, node: Any) -> MachineRecord:
        # node.extra is the whole ARM document: read it here, keep what a user reads
        data: dict[str, Any] = node.extra or {}
        props: dict[str, Any] = data.get("properties") or {}
        storage: dict[str, Any] = props.get("storageProfile") or {}
        ref: dict[str, Any] = storage.get("imageReference") or {}
        if ref.get("publisher"):
            image = ":".join(str(ref.get(k) or "") for k in ("publisher", "offer", "sku", "version"))
        else:
            image = str(ref.get("id") or "")
        extra: dict[str, JSON] = {
            "resource_group": _resource_group(str(node.id)), "vm_id": props.get("vmId"),
            "provisioning_state": props.get("provisioningState"), "zones": data.get("zones"),
        }
        state = str(getattr(node.state, "value", node.state)).lower()
        return MachineRecord(
            external_id=str(node.id), name=str(node.name or node.id),
            state=STATE_MAP.get(state, "unknown"),
            public_ips=[ip for ip in node.public_ips or [] if ip],
            private_ips=[ip for ip in node.private_ips or [] if ip],
            hostname=str((props.get("osProfile") or {}).get("computerName") or ""),
            size=str((props.get("hardwareProfile") or {}).get("vmSize") or ""), image=image,
            location=str(data.get("location") or ""),
            os_type=str((storage.get("osDisk") or {}).get("osType") or "").lower(),
            created=str(props.get("timeCreated") or ""),
            tags={str(k): str(v) for k, v in (data.get("tags") or {}).items()},
            extra={k: json_safe(v) for k, v in extra.items() if v not in (None, "", [])},
        )

    def machine_action(self, action: Capability, external_id: str, params: dict[str, JSON]) -> None:
        if action is Capability.REBOOT:  # reboot_node answers False instead of raising
            node = self.node(external_id)
            if self._call("running reboot", self.conn.reboot_node, node) is False:
                raise ProviderError(f"{self.provider} refused to restart {node.name}",
                                    {"provider": self.provider})
            return
        if action is Capability.DESTROY:
            node = self.node(external_id)
            self._call("running destroy", self.conn.destroy_node, node,
                       ex_poll_qty=_POLL_QTY, ex_poll_wait=_POLL_WAIT)
            return
        super().machine_action(action, external_id, params)


def _resource_group(resource_id: str) -> str:
    """``/subscriptions/<s>/resourceGroups/<rg>/providers/...`` -> ``<rg>``."""
    parts = resource_id.split("/")
    for i, part in enumerate(parts[:-1]):
        if part.lower() == "resourcegroups":
            return parts[i + 1]
    return ""
