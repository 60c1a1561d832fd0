"""The machine document (Mist v2 ``Machine`` fields) and its store kind."""

from __future__ import annotations

from typing import Any

from controller.monitoring.model import monitoring_view
from controller.store.docs import DocKind

MACHINE = DocKind("machine")

STATES = ("running", "starting", "stopping", "stopped", "terminated", "pending", "rebooting",
          "suspended", "error", "paused", "unknown", "unreachable")

# fields every machine view has, with their empty values
FIELDS: dict[str, Any] = {
    "id": "", "external_id": "", "name": "", "cloud": "", "state": "unknown", "hostname": "",
    "public_ips": [], "private_ips": [], "tags": {}, "created": "", "last_seen": "",
    "unreachable_since": "", "missing_since": "", "size": "", "image": "", "location": "",
    "os_type": "", "cores": 0, "owned_by": "", "created_by": "", "extra": {}, "cost": {},
    "key_associations": [], "expiration": "", "monitoring": False,
}


def key(org: str, machine_id: str) -> str:
    return f"machine/{org}/{machine_id}"


def view(doc: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in doc.items() if not k.startswith("_") and k != "org"}
    for k, default in FIELDS.items():
        out.setdefault(k, default)
    out["monitoring"] = monitoring_view(doc)  # {enabled, agent_id, state}: see its module
    return out
