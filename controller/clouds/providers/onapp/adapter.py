"""OnApp over libcloud's driver, with the panel's power calls libcloud lacks."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from controller.clouds.providers.base import JSON, Capability, MachineRecord
from controller.clouds.providers.libcloud_compute import LibcloudComputeAdapter, price
from controller.clouds.providers.onapp import SPEC
from controller.errors import Invalid

# in a server's extra but not for the user's eyes
_HIDDEN = ("initial_root_password", "remote_access_password", "service_password",
           "initial_root_password_encrypted")
# the panel's power calls (OnApp API: Virtual Servers > power options)
_POWER = {Capability.START: "startup", Capability.STOP: "shutdown",
          Capability.REBOOT: "reboot"}


def endpoint(host: str) -> tuple[str, int, bool]:
    """``host`` as (host name, port, TLS): a bare name means HTTPS on 443."""
    text = host.strip()
    parts = urlsplit(text if "//" in text else f"https://{text}")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
        raise Invalid("onapp: host must be a host name or an http(s):// URL without a path",
                      field="host")
    secure = parts.scheme == "https"
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError:
        raise Invalid("onapp: host has a bad port", field="host") from None
    return parts.hostname, port, secure


class OnAppAdapter(LibcloudComputeAdapter):
    provider = SPEC.name
    capabilities = SPEC.capabilities
    credential = "apikey"

    def driver(self) -> Any:
        from libcloud.compute.drivers.onapp import OnAppNodeDriver

        host, port, secure = endpoint(self._field("host"))
        d = OnAppNodeDriver(self._field("username"), self._field("apikey", secret=True),
                            host=host, port=port, secure=secure, timeout=self.timeout)
        if self.config.get("verify") is False:  # this panel only, not libcloud's global
            d.connection.connection.verify = False
            d.connection.connection.ca_cert = None
        return d

    def to_machine(self, node: Any) -> MachineRecord:
        extra = node.extra or {}
        for key in _HIDDEN:
            extra.pop(key, None)
        node.state = _state(extra)  # the driver passes the panel's raw "state" (often None)
        record = super().to_machine(node)
        record.cores = int(extra.get("cpus") or 0)
        record.hostname = str(extra.get("hostname") or "")
        record.image = str(extra.get("template_id") or "")
        record.os_type = str(extra.get("operating_system") or "")
        record.created = str(extra.get("created_at") or "")
        on = record.state == "running"
        record.price_per_hour = price(extra.get("price_per_hour" if on else
                                                "price_per_hour_powered_off"))
        return record

    def list_sizes(self) -> list[Any]:
        raise self._unsupported("listing sizes")

    def list_locations(self) -> list[Any]:
        raise self._unsupported("listing locations")

    def machine_action(self, action: Capability, external_id: str, params: dict[str, JSON]) -> None:
        if action not in _POWER:
            super().machine_action(action, external_id, params)
            return
        node = self.node(external_id)
        path = f"/virtual_machines/{node.id}/{_POWER[action]}.json"
        self._call(f"running {action}", self.conn.connection.request, path, method="POST")


def _state(extra: dict[str, Any]) -> str:
    if extra.get("suspended"):
        return "suspended"
    if not extra.get("built"):
        return "pending"
    if extra.get("locked"):  # a transaction (boot, shutdown, resize) is running
        return "pending"
    return "running" if extra.get("booted") else "stopped"
