"""One host, one machine: a cloud machine and an Overcast agent on that same host are linked.

They match by the firmware's ids (the agent reports the DMI system UUID, which is a KVM or
VMware guest's id, and the asset tag EC2 sets to the instance id), else by a network
interface's MAC address (cloud adapters report the MACs they know), else by an address
together with the hostname. Once linked, the agent reports into the cloud machine
(``agent``, ``agent_state``, ``agent_facts``; its metrics keep ``machine_id`` = the agent id)
and its own machine in the Agents cloud is removed, so lists show the host once, with cloud
facts, cost and live metrics together."""

from __future__ import annotations

import json
from typing import Any

from controller.clouds.inventory import AGENT_FILLS
from controller.clouds.model import agents_cloud_id, index_prefix
from controller.events.writer import Change
from controller.machines.model import key as machine_key
from controller.store.base import Store

_NO_MAC = {"", "00:00:00:00:00:00"}


def _agent_macs(m: dict[str, Any]) -> set[str]:
    out = set()
    for iface in (m.get("extra") or {}).get("interfaces", []) or []:
        mac = str(iface.get("mac", "")).lower()
        if mac not in _NO_MAC and iface.get("name") != "lo":
            out.add(mac)
    return out


def link_agents(store: Store, org: str, cloud_id: str) -> list[Change]:
    """Changes that link this cloud's machines to the organisation's unlinked agents."""
    unlinked: list[tuple[dict[str, Any], dict[str, Any]]] = []
    raws: dict[str, bytes] = {}
    for _, raw in store.scan(f"agent/{org}/"):
        a = json.loads(raw)
        raws[a["id"]] = raw
        if a.get("revoked") or (a.get("machine") and a["machine"] != a["id"]):
            continue
        mraw = store.get(machine_key(org, a["id"]))
        if mraw is not None:
            unlinked.append((a, json.loads(mraw)))
    if not unlinked:
        return []
    by_id = {str(v).lower(): pair for pair in unlinked
             for v in ((pair[1].get("extra") or {}).get("system_uuid"),
                       (pair[1].get("extra") or {}).get("instance_id")) if v}
    by_mac = {mac: pair for pair in unlinked for mac in _agent_macs(pair[1])}
    by_addr = {(ip, str(pair[1].get("hostname", "")).lower()): pair for pair in unlinked
               for ip in pair[1].get("private_ips", []) + pair[1].get("public_ips", [])}
    changes: list[Change] = []
    taken: set[str] = set()
    for _, k in store.scan(index_prefix(org, cloud_id, "machine")):
        mdoc = store.get(k.decode())
        if mdoc is None:
            continue
        m = json.loads(mdoc)
        if m.get("agent") or m.get("missing_since"):
            continue
        pair = by_id.get(str(m.get("external_id", "")).lower())
        how = "instance id"
        if pair is None:
            pair = next((by_mac[mac] for mac in (x.lower() for x in m.get("macs", []))
                         if mac in by_mac), None)
            how = "mac"
        if pair is None:
            host = str(m.get("hostname") or m.get("name", "")).lower()
            pair = next((by_addr[(ip, host)] for ip in m.get("private_ips", []) + m.get("public_ips", [])
                         if (ip, host) in by_addr), None)
            how = "address and hostname"
        if pair is None or pair[0]["id"] in taken:
            continue
        agent, own = pair
        taken.add(agent["id"])
        facts = {k: own.get(k) for k in ("hostname", "os_type", "cores", "public_ips", "private_ips",
                                         "extra") if own.get(k)}
        linked = dict(m, agent=agent["id"], monitoring=True, agent_facts=facts,
                      agent_state="connected" if own.get("state") == "running" else "unreachable",
                      agent_last_seen=own.get("last_seen", ""),
                      tags={**own.get("tags", {}), **m.get("tags", {})},
                      _user_tags={**own.get("tags", {}), **m.get("_user_tags", {})})
        for f in AGENT_FILLS:  # kept by later polls while the provider has none
            if not linked.get(f) and own.get(f):
                linked[f] = own[f]
        c = Change("machine.link", org=org, target_kind="machine", target_id=m["id"],
                   details={"agent": agent["id"], "matched_by": how, "cloud": cloud_id,
                            "detected_by": "polling"})
        c.put(k.decode(), json.dumps(linked, separators=(",", ":"), ensure_ascii=False).encode())
        c.expect(k.decode(), mdoc)
        c.put(f"agent/{org}/{agent['id']}", json.dumps(dict(agent, machine=m["id"])).encode())
        c.expect(f"agent/{org}/{agent['id']}", raws[agent["id"]])
        c.delete(machine_key(org, agent["id"]))
        c.event("changed", "machine", m["id"], {"agent": agent["id"]})
        c.event("deleted", "machine", agent["id"], {"merged_into": m["id"]})
        changes.append(c)
    return changes


def unlink_cloud(store: Store, org: str, cloud_id: str, change: Change) -> int:
    """When a cloud is removed: its agents go back to their own machines (the agent service
    recreates them on the next report). Adds to ``change``; returns how many."""
    n = 0
    for _, raw in store.scan(f"agent/{org}/"):
        a = json.loads(raw)
        if not a.get("machine") or a["machine"] == a["id"]:
            continue
        mraw = store.get(machine_key(org, a["machine"]))
        if mraw is None or json.loads(mraw).get("cloud") != cloud_id:
            continue
        linked = json.loads(mraw)
        own = {"id": a["id"], "org": org, "name": a.get("name", ""), "cloud": agents_cloud_id(org),
               "provider": "other", "agent": a["id"], "monitoring": True, "tags": a.get("tags", {}),
               "created": a.get("created", ""), "state": "running"
               if linked.get("agent_state") == "connected" else "unreachable",
               "last_seen": linked.get("agent_last_seen", ""), **(linked.get("agent_facts") or {})}
        change.put(f"agent/{org}/{a['id']}", json.dumps(dict(a, machine=a["id"])).encode())
        change.put(machine_key(org, a["id"]), json.dumps(own).encode())
        change.event("created", "machine", a["id"], {"name": own["name"]})
        n += 1
    return n
