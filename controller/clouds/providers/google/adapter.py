"""Google Compute Engine over libcloud's ``gce`` driver."""

from __future__ import annotations

import json
import os
from typing import Any

from controller.clouds.providers.base import JSON, MachineRecord, SizeRecord
from controller.clouds.providers.errors import blame, libcloud_errors
from controller.clouds.providers.google import SPEC
from controller.clouds.providers.libcloud_compute import (
    STATE_MAP,
    LibcloudComputeAdapter,
    json_safe,
    price,
)
from controller.errors import Invalid

# 403 reasons that are about the project, not the service account
_API_OFF = ("accessNotConfigured", "SERVICE_DISABLED")


def token_refusal(description: str) -> str:
    """The field Google's token endpoint refuses (its ``error_description``): an account it
    does not know (or disabled, deleted) is the email's; a bad signature, the key's."""
    return "email" if "account" in description.lower() else "privateKey"


def private_key(text: str) -> str | dict[str, Any]:
    """The key as libcloud should get it: the parsed JSON key file, or the PEM text.

    Never anything else: libcloud reads ``key`` as a *file path* when such a file exists,
    which would let a cloud's credentials name a file on the controller."""
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and "PRIVATE KEY" in str(data.get("private_key") or ""):
            return data
    elif text.startswith("-----BEGIN") and "PRIVATE KEY-----" in text:
        return text
    raise Invalid("google: privateKey must be a PEM private key or the service account's JSON "
                  "key file", field="privateKey")


class GoogleAdapter(LibcloudComputeAdapter):
    provider = SPEC.name
    capabilities = SPEC.capabilities
    credential = "privateKey"

    def __init__(self, config: dict[str, JSON], secrets: dict[str, str], timeout: float = 30.0) -> None:
        super().__init__(config, secrets, timeout)
        self._zone_sizes: dict[str, dict[str, Any]] = {}

    def driver(self) -> Any:
        from libcloud.common.google import GoogleAuthError, GoogleBaseError
        from libcloud.common.types import InvalidCredsError
        from libcloud.compute.drivers.gce import GCENodeDriver

        project, email = self._field("projectId"), self._field("email")
        key = private_key(self._field("privateKey", secret=True))
        try:  # the driver fetches its OAuth token while it is built
            return GCENodeDriver(
                email, key, project=project,
                # say it: guessing may query the GCE metadata server
                auth_type="SA",
                # libcloud caches tokens in ~/.google_libcloud_auth.<project> and reuses them
                # for any account naming the same project: neither read nor write a cache
                credential_file=os.devnull,
                timeout=self.timeout)
        except GoogleAuthError as exc:
            if "PEM" in str(exc.value):
                raise Invalid("google: privateKey is not a readable private key",
                              field="privateKey") from None
            raise blame(InvalidCredsError(str(exc.value)), "privateKey") from None
        except GoogleBaseError as exc:  # the token endpoint refusing the signed assertion
            if exc.http_code in (400, 401, 403):
                raise blame(InvalidCredsError(str(exc.value)), token_refusal(str(exc.value)),
                            str(exc.code or "")) from None
            raise

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from libcloud.common.google import GoogleBaseError

        with libcloud_errors(self.provider, what, self.refused_credential()):
            try:
                return fn(*args, **kwargs)
            except GoogleBaseError as exc:
                if exc.http_code == 403:  # signed in, not allowed: the account lacks a role,
                    # or the project has not enabled the Compute Engine API
                    raise blame(exc, "projectId" if exc.code in _API_OFF else "email",
                                str(exc.code or "")) from exc
                raise

    def check(self) -> None:
        self._call("checking the credentials", self.conn.ex_get_project)

    def zone_sizes(self, zone: str) -> dict[str, Any]:
        """Machine types of one zone by name (prices differ by region), fetched once."""
        if zone not in self._zone_sizes:
            try:
                sizes = self._call("listing sizes", self.conn.list_sizes, location=zone)
            except Exception:  # prices and cores are a nicety: leave them unknown
                sizes = []
            self._zone_sizes[zone] = {s.name: s for s in sizes}
        return self._zone_sizes[zone]

    def to_machine(self, node: Any) -> MachineRecord:
        extra: dict[str, Any] = node.extra or {}
        zone = str(getattr(extra.get("zone"), "name", "") or "")
        size_name = str(node.size or "")
        size = self.zone_sizes(zone).get(size_name) if zone and size_name else None
        boot = extra.get("boot_disk")
        kept: dict[str, Any] = {
            "status": extra.get("status"), "status_message": extra.get("statusMessage"),
            "description": extra.get("description"), "network_tags": extra.get("tags"),
            "cpu_platform": extra.get("cpuPlatform"),
            "preemptible": (extra.get("scheduling") or {}).get("preemptible"),
            "boot_disk": getattr(boot, "name", None),
        }  # not metadata: startup scripts and ssh-keys live there
        state = str(getattr(node.state, "value", node.state)).lower()
        return MachineRecord(
            external_id=str(node.id), name=str(node.name), state=STATE_MAP.get(state, "unknown"),
            public_ips=[ip for ip in node.public_ips or [] if ip],
            private_ips=[ip for ip in node.private_ips or [] if ip],
            size=size_name, image=str(node.image or ""), location=zone,
            cores=int((size.extra or {}).get("guestCpus") or 0) if size else 0,
            created=str(extra.get("creationTimestamp") or ""),
            tags={str(k): str(v) for k, v in (extra.get("labels") or {}).items()},
            price_per_hour=price(size.price) if size else None,
            extra={k: json_safe(v) for k, v in kept.items() if v not in (None, "", [])},
        )

    def list_sizes(self) -> list[SizeRecord]:
        # the aggregated list repeats each machine type in every zone, priced per region:
        # one record per type, without a price
        out: dict[str, SizeRecord] = {}
        for s in self._call("listing sizes", self.conn.list_sizes):
            if s.name not in out:
                out[s.name] = SizeRecord(
                    external_id=str(s.name), name=str(s.name),
                    cpus=int((s.extra or {}).get("guestCpus") or 0), ram_mb=int(s.ram or 0),
                    extra={"description": json_safe((s.extra or {}).get("description"))})
        return list(out.values())
