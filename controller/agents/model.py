"""Agent and join-token documents, and how an agent appears as a machine.

The machine model for agents (agreed here for the clouds issue): every organisation has one
cloud named "Agents" with provider ``other`` (bare metal / "other server"); each enrolled
agent is a machine of that cloud whose id is the agent id. A host that is also a cloud VM is
linked to its cloud machine by the clouds issue, not merged."""

from __future__ import annotations

from typing import Any

from controller.clouds.model import CLOUD as CLOUD  # the "Agents" cloud is a cloud document
from controller.store.docs import DocKind

AGENT = DocKind("agent")
JOIN_TOKEN = DocKind("jointoken")
KINDS = (AGENT, JOIN_TOKEN)

PROTOCOL_VERSION = 1  # see proto/overcast/agent/v1/agent.proto for the dated history
JOIN_PREFIX = "ocj_"


def agent_key(org: str, agent_id: str) -> str:
    return f"agent/{org}/{agent_id}"


def older(version: str, than: str) -> bool:
    """Whether agent version ``version`` comes before ``than``: their numbers compared in
    order (0.1.10 after 0.1.9); an unknown version ("") is not called older."""
    import re

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", v))

    return bool(version) and key(version) < key(than)


def machine_facts(inv: dict[str, Any]) -> dict[str, Any]:
    """The machine fields an agent's inventory fills in."""
    public: list[str] = []
    private: list[str] = []
    for iface in inv.get("interfaces", []):
        if iface.get("name") == "lo":
            continue
        for addr in iface.get("addresses", []):
            ip = addr.split("/")[0]
            (private if _is_private(ip) else public).append(ip)
    return {
        "hostname": inv.get("hostname", ""),
        "os_type": inv.get("os", "linux"),
        "cores": inv.get("cpus", 0),
        "public_ips": public,
        "private_ips": private,
        "extra": {k: inv[k] for k in ("os_name", "os_version", "kernel", "arch", "cpu_model",
                                      "memory_bytes", "swap_bytes", "disks", "filesystems",
                                      "interfaces", "boot_time", "agent_version", "system_uuid",
                                      "instance_id") if k in inv},
    }


def _is_private(ip: str) -> bool:
    import ipaddress

    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return True
    return a.is_private or a.is_loopback or a.is_link_local
